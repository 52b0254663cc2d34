"""bench/changes.py (bench-changes): it changes and reverts every device of a real server, and
judges liveness p99 against its target."""

import argparse
from pathlib import Path

from bench.changes import Operation, StoreResult, bench_store, report
from bench.search import directory_server


def operation(live_p99: float) -> Operation:
    return Operation(10.0, 1000, (2.0, live_p99), (3.0, 40.0), 150.0, 160.0)


def test_the_changes_bench_judges_liveness_p99_by_its_median() -> None:
    args = argparse.Namespace(devices=1000, runs=3)
    result = StoreResult(
        "directory", 1000, (1.0, 2.0), (1.5, 3.0),
        [operation(p99) for p99 in (40.0, 120.0, 60.0)],
        [operation(p99) for p99 in (90.0, 99.0, 30.0)],
    )  # fmt: skip
    page, passed = report([result], args, "1.00 1.00 1.00")
    assert "| change | 10.0 | 1000 | 100 | 2.0 | **60.0** | 150 | 3.0 | 40.0 | 160 |" in page
    assert passed
    result.reverts[:] = [operation(p99) for p99 in (90.0, 101.0, 150.0)]
    page, passed = report([result], args, "1.00 1.00 1.00")
    assert not passed
    assert page.endswith("Verdict: FAIL\n")


def test_the_changes_bench_changes_and_reverts_every_device_of_a_real_server(
    tmp_path: Path,
) -> None:
    args = argparse.Namespace(devices=20, runs=1, idle=0.2)
    with directory_server(tmp_path, 20) as server:
        result = bench_store("directory", server, args)
    assert [op.changed for op in result.changes] == [20]
    assert [op.changed for op in result.reverts] == [20]
    assert all(op.live[1] > 0 and op.device[1] > 0 for op in result.changes)

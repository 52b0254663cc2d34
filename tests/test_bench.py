import json
from pathlib import Path

from bench.documents import fill_directory, mac_of, make_document
from bench.replicas import percentile
from bench.report import Pair, SizeResult, markdown, targets
from bench.wrk import Measurement, measurement, parse_wrk
from quart_iot.documents import dump_document, parse_document
from quart_iot.store import canonical_mac


def test_bench_documents_are_realistic() -> None:
    sizes = [len(dump_document(make_document(index))) for index in range(200)]
    assert 1500 <= sum(sizes) / len(sizes) <= 2000
    documents = [make_document(index) for index in range(200)]
    assert all(len(document) >= 20 for document in documents)
    with_summary = [
        d for d in documents if {"deviceName", "deviceEntityId", "enableOTA"} <= d.keys()
    ]
    assert len(with_summary) > 150
    assert any(isinstance(value, list) for value in documents[0].values())
    assert make_document(7) == make_document(7)


def test_bench_fills_a_directory_with_canonical_names(tmp_path: Path) -> None:
    total = fill_directory(tmp_path, 20)
    files = sorted(tmp_path.iterdir())
    assert len(files) == 20
    assert total == sum(path.stat().st_size for path in files)
    assert all(canonical_mac(path.stem) == path.stem for path in files)
    assert parse_document(files[0].read_bytes()) == make_document(0)
    assert mac_of(0) != mac_of(1)


def test_bench_reads_wrk_output_and_judges_targets() -> None:
    line = json.dumps(
        {
            "requests": 3000,
            "duration_us": 3_000_000,
            "p50_us": 1500,
            "p99_us": 4000,
            "max_us": 9000,
            "errors": {"connect": 0, "read": 0, "write": 0, "status": 0, "timeout": 0},
        }
    )
    ceiling = measurement("ceiling", parse_wrk(f"Running 3s test\n{line}\n"), cpu=0.6)
    assert (ceiling.rps, ceiling.p99_ms, ceiling.cpu_us_per_request) == (1000, 4, 200)
    half = Measurement("list", 500, 1.0, 9.0, 300.0, 1500, ceiling.errors)
    result = SizeResult(200, 400_000, 60_000_000, [{"list": Pair(ceiling, half)}])
    verdicts = {target.label: target.passed for target in targets({200: result})}
    assert verdicts["list >= 60% of ceiling"] is False
    assert verdicts["list p99 <= 2x ceiling p99"] is False
    assert verdicts["list >= 45% of ceiling"] is None
    assert "| list | 500 | 50% |" in markdown({200: result}, "# results")
    postgres = {(t.label, t.documents): t.passed for t in targets({200: result}, "postgres")}
    assert postgres[("list >= 45% of ceiling", 200)] is True  # the PostgreSQL store's targets
    assert postgres[("get >= 50% of ceiling", 200)] is None  # not run
    assert postgres[("list >= 45% of ceiling", 2000)] is None
    assert len(postgres) == 8


def test_bench_replicas_percentiles() -> None:
    samples = [float(n) for n in range(1, 201)]
    assert (percentile(samples, 0.5), percentile(samples, 0.99)) == (101.0, 199.0)

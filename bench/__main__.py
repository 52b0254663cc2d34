"""`./pdmw run bench`: the service as deployed, driven by wrk at N = 200, 2000 and 20000.

For each N: a fresh scratch directory under bench/.work/ filled with N documents, a fresh
`python -m quart_iot`, then `--runs` rounds of every scenario (the ceiling first in each
round, so every ratio compares figures of the same round). Writes bench/results/.
`--store postgres`: the same with the documents copied into a throw-away PostgreSQL
(`python -m quart_iot copy`), written to bench/results/postgres.md.
"""

import argparse
import contextlib
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from dataclasses import asdict
from pathlib import Path

from bench import postgres
from bench.documents import fill_directory, mac_of, make_document
from bench.report import CEILING, Pair, SizeResult, markdown, targets, verdict
from bench.server import BenchServer, peak_memory
from bench.wrk import CONNECTIONS, Measurement, Scenario, require_wrk, run_wrk
from tests.pg import Cluster

HERE = Path(__file__).resolve().parent
WORK = HERE / ".work"
RESULTS = HERE / "results"
PUT_MACS = tuple(mac_of(index) for index in range(32))
READ_MAC = mac_of(101)


def save_results(name: str, page: str, raw: object) -> None:
    """bench/results/<name>.md (the page) and <name>.json (the raw figures)."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{name}.md").write_text(page, encoding="utf-8")
    (RESULTS / f"{name}.json").write_text(json.dumps(raw, indent=1) + "\n", encoding="utf-8")


def arguments(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="bench", description="Benchmark quart_iot with wrk.")
    parser.add_argument("--sizes", default="200,2000,20000", help="comma-separated N values")
    parser.add_argument("--runs", type=int, default=3, help="rounds per size (medians)")
    parser.add_argument("--seconds", type=int, default=5, help="seconds of each wrk run")
    parser.add_argument(
        "--warmup", type=int, default=1, help="seconds of an unmeasured run before each"
    )
    parser.add_argument("--out", type=Path, default=RESULTS, help="where results are written")
    parser.add_argument("--store", choices=("directory", "postgres"), default="directory")
    return parser.parse_args(argv)


CEILING_SCENARIO = Scenario(CEILING, "/api/health/live")


def scenarios(work: Path, etag: str) -> list[Scenario]:
    """The config routes, each measured right after the ceiling."""
    body = work / "put-body.json"
    body.write_text(json.dumps({"content": make_document(10**6 + 1)}), encoding="utf-8")
    return [
        Scenario("list", "/api/configs"),
        Scenario("get", f"/api/configs/{READ_MAC}"),
        Scenario("device get", f"/api/configs/{READ_MAC}.json"),
        Scenario("device get 304", f"/api/configs/{READ_MAC}.json", {"If-None-Match": etag}),
        Scenario("PUT", f"/api/configs/{PUT_MACS[0]}", put_macs=PUT_MACS, put_body=body),
    ]


def bench_size(
    wrk: str, size: int, args: argparse.Namespace, database: Cluster | None = None
) -> SizeResult:
    """Fill a fresh directory (and database) with `size` documents and measure every
    scenario on it."""
    work = WORK / f"n{size}"
    shutil.rmtree(work, ignore_errors=True)
    (work / "configs").mkdir(parents=True)
    total = fill_directory(work / "configs", size)
    print(f"N={size}: {total / 2**20:.1f} MiB of documents in {work / 'configs'}", flush=True)
    env = {}
    if database is not None:
        env["DATABASE_URL"] = postgres.database(database, f"n{size}", work / "configs")
    with BenchServer(work / "configs", work / "server.log", env) as server:
        listing, _ = server.fetch("/api/configs")
        assert json.loads(listing)["count"] == size, "the server does not list every document"
        _, headers = server.fetch(f"/api/configs/{READ_MAC}.json")
        plan = scenarios(work, headers["etag"])
        runs = [_round(wrk, server, plan, args) for _ in range(args.runs)]
        peak = peak_memory(server.pid)
    return SizeResult(size, total, peak, runs)


def _round(
    wrk: str, server: BenchServer, plan: list[Scenario], args: argparse.Namespace
) -> dict[str, Pair]:
    return {
        scenario.name: Pair(
            _measure(wrk, server, CEILING_SCENARIO, args), _measure(wrk, server, scenario, args)
        )
        for scenario in plan
    }


def _measure(
    wrk: str, server: BenchServer, scenario: Scenario, args: argparse.Namespace
) -> Measurement:
    if args.warmup > 0:
        run_wrk(wrk, server, scenario, args.warmup)
    result = run_wrk(wrk, server, scenario, args.seconds)
    if any(result.errors.values()):
        raise SystemExit(f"{scenario.name}: wrk reported errors {result.errors}")
    print(
        f"  {scenario.name:15} {result.rps:8.0f} req/s  p50 {result.p50_ms:6.2f} ms"
        f"  p99 {result.p99_ms:6.2f} ms  {result.cpu_us_per_request:5.0f} us CPU/req",
        flush=True,
    )
    return result


def header(args: argparse.Namespace) -> str:
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=HERE
    ).stdout.strip()
    return (
        f"# Benchmark results: the {args.store} store\n\n"
        f"`./pdmw run bench --store {args.store} --sizes {args.sizes} --runs {args.runs} "
        f"--seconds {args.seconds}` at commit {commit or '?'}, "
        f"{time.strftime('%Y-%m-%d %H:%M')}: "
        f"{os.cpu_count()} CPUs, {platform.system()} {platform.release()}, "
        f"Python {platform.python_version()}. wrk, 1 thread, {CONNECTIONS} connections, "
        f"{args.seconds:g} s per run after a {args.warmup:g} s warm-up; medians of "
        f"{args.runs} runs. The ceiling is `GET /api/health/live` on the same server, measured "
        "right before each scenario (the machine is shared): each ratio is taken within "
        "such a pair, then the median of the runs."
    )


def write_results(results: dict[int, SizeResult], args: argparse.Namespace) -> str:
    page = markdown(results, header(args), args.store)
    name = "results" if args.store == "directory" else args.store
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"{name}.md").write_text(page, encoding="utf-8")
    raw = {
        "settings": {key: str(value) for key, value in vars(args).items() if key != "out"},
        "sizes": [asdict(result) for result in results.values()],
        "targets": [asdict(target) for target in targets(results, args.store)],
    }
    (args.out / f"{name}.json").write_text(json.dumps(raw, indent=2) + "\n", encoding="utf-8")
    return page


def main(argv: list[str]) -> int:
    args = arguments(argv)
    wrk = require_wrk()
    sizes = [int(size) for size in args.sizes.split(",")]
    with contextlib.ExitStack() as stack:
        database = stack.enter_context(postgres.cluster()) if args.store == "postgres" else None
        results = {size: bench_size(wrk, size, args, database) for size in sizes}
    print(write_results(results, args))
    failed = [target for target in targets(results, args.store) if target.passed is False]
    for target in failed:
        print(f"{verdict(target)}: {target.label} at N={target.documents}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

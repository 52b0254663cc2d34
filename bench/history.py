"""`./pdmw run bench-history`: what version history costs.

Two `python -m quart_iot` on two copies of one directory of 200 documents, history off
(HISTORY_MAX_VERSIONS=0) and on (the defaults). Each scenario is measured right after the
ceiling (`GET /api/health/live`) on its own server, as `./pdmw run bench` does, so each
ratio compares figures of the same moment. Targets (issue 12): PUT with history on keeps at
least 0.9 of the ratio PUT has without it; the history of a device with 50 versions is
listed at least at 0.5 of the ceiling. Writes bench/results/history.md.
"""

import argparse
import json
import shutil
import statistics
import sys
import urllib.request

from bench.__main__ import CEILING_SCENARIO, PUT_MACS, READ_MAC, RESULTS, WORK
from bench.documents import fill_directory, make_document
from bench.report import Pair
from bench.server import BenchServer
from bench.wrk import CONNECTIONS, Measurement, Scenario, require_wrk, run_wrk

DOCUMENTS = 200
VERSIONS = 50
PUT_TARGET = 0.9
LIST_TARGET = 0.5


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="bench.history", description=__doc__)
    parser.add_argument("--runs", type=int, default=3, help="rounds (medians)")
    parser.add_argument("--seconds", type=int, default=3, help="seconds of each wrk run")
    args = parser.parse_args(argv)
    wrk = require_wrk()
    work = WORK / "history"
    shutil.rmtree(work, ignore_errors=True)
    (work / "off").mkdir(parents=True)
    fill_directory(work / "off", DOCUMENTS)
    shutil.copytree(work / "off", work / "on")
    body = work / "put-body.json"
    body.write_text(json.dumps({"content": make_document(10**6 + 1)}), encoding="utf-8")
    put = Scenario("PUT", f"/api/configs/{PUT_MACS[0]}", put_macs=PUT_MACS, put_body=body)
    listing = Scenario("history list", f"/api/configs/{READ_MAC}/history")
    off_env = {"HISTORY_MAX_VERSIONS": "0"}
    with (
        BenchServer(work / "off", work / "off.log", off_env) as off,
        BenchServer(work / "on", work / "on.log") as on,
    ):
        for seq in range(VERSIONS):
            put_json(on, f"/api/configs/{READ_MAC}", {"content": {"deviceName": f"v{seq}"}})
        runs = [
            {
                "PUT, history off": pair(wrk, off, put, args),
                "PUT, history on": pair(wrk, on, put, args),
                "history list (50 versions)": pair(wrk, on, listing, args),
            }
            for _ in range(args.runs)
        ]
    page, passed = report(runs, args)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "history.md").write_text(page, encoding="utf-8")
    print(page)
    return 0 if passed else 1


def put_json(server: BenchServer, path: str, body: object) -> None:
    data = json.dumps(body).encode()
    headers = {"Content-Type": "application/json"}
    request = urllib.request.Request(server.url + path, data, headers, method="PUT")
    with urllib.request.urlopen(request, timeout=60) as response:
        response.read()


def pair(wrk: str, server: BenchServer, scenario: Scenario, args: argparse.Namespace) -> Pair:
    return Pair(measure(wrk, server, CEILING_SCENARIO, args), measure(wrk, server, scenario, args))


def measure(
    wrk: str, server: BenchServer, scenario: Scenario, args: argparse.Namespace
) -> Measurement:
    run_wrk(wrk, server, scenario, 1)  # warm-up
    result = run_wrk(wrk, server, scenario, args.seconds)
    if any(result.errors.values()):
        raise SystemExit(f"{scenario.name}: wrk reported errors {result.errors}")
    print(f"  {scenario.name:15} {result.rps:8.0f} req/s  p99 {result.p99_ms:6.2f} ms", flush=True)
    return result


def report(runs: list[dict[str, Pair]], args: argparse.Namespace) -> tuple[str, bool]:
    def ratio(run: dict[str, Pair], name: str) -> float:
        return run[name].measured.rps / run[name].ceiling.rps

    lines = [
        "# History benchmark",
        "",
        f"`./pdmw run bench-history`: wrk, 1 thread, {CONNECTIONS} connections, {args.seconds} s "
        f"per run after a 1 s warm-up, medians of {args.runs} runs; {DOCUMENTS} documents. "
        "Ratio: the scenario's req/s over the ceiling's (`GET /api/health/live`, same server, "
        "measured right before).",
        "",
        "| scenario | req/s | ratio to ceiling | p50 ms | p99 ms |",
        "|---|---:|---:|---:|---:|",
    ]
    for name in runs[0]:
        rps = statistics.median(run[name].measured.rps for run in runs)
        p50 = statistics.median(run[name].measured.p50_ms for run in runs)
        p99 = statistics.median(run[name].measured.p99_ms for run in runs)
        median_ratio = statistics.median(ratio(run, name) for run in runs)
        lines.append(f"| {name} | {rps:.0f} | {median_ratio:.3f} | {p50:.2f} | {p99:.2f} |")
    put_cost = statistics.median(
        ratio(run, "PUT, history on") / ratio(run, "PUT, history off") for run in runs
    )
    listed = statistics.median(ratio(run, "history list (50 versions)") for run in runs)
    put_ok, list_ok = put_cost >= PUT_TARGET, listed >= LIST_TARGET
    lines += [
        "",
        f"- PUT with history on / PUT without: {put_cost:.2f}x (target >= {PUT_TARGET}): "
        f"{'PASS' if put_ok else 'FAIL'}",
        f"- history list of 50 versions / ceiling: {listed:.2f} (target >= {LIST_TARGET}): "
        f"{'PASS' if list_ok else 'FAIL'}",
        "",
    ]
    return "\n".join(lines), put_ok and list_ok


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

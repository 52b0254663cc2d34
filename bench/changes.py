"""`./pdmw run bench-changes`: a bulk change of 1,000 devices (issue 21): its wall time, and
liveness and a device's GET meanwhile (target: liveness p99 under 100 ms; the change never
stalls other requests).

For each store (the directory; PostgreSQL too when its binaries are installed): N realistic
documents (bench/documents.py, each with one of five device models, defined without a schema),
the service as deployed (`python -m quart_iot`). Then `--runs` rounds, each: a change of every
device (a new `mqtt/host`: every device is written) and its revert, each timed, while two
threads probe without pause, one `/api/health/live`, one `GET /api/configs/<mac>.json` of a
device the change does not select. Medians of the rounds; the probes' p50 and p99 over each
operation. Writes bench/results/changes.md and .json.
"""

import argparse
import json
import statistics
import sys
import threading
import time
import urllib.request
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from functools import partial
from typing import Any

from bench.__main__ import WORK, save_results
from bench.rql import MODELS
from bench.search import directory_server, percentiles, postgres_server, timed_get
from bench.server import BenchServer

TARGET_P99_MS = 100.0
OUTSIDE = "ff-ff-ff-ff-ff-ff"  # a device no change selects: its GET is the "other request"
EVERY = 'ne(mac_address,"ff-ff-ff-ff-ff-ff")'


@dataclass(frozen=True)
class Operation:
    """One change or revert: its wall time, what it did, and the probes meanwhile."""

    seconds: float
    changed: int
    live: tuple[float, float]  # liveness p50, p99 (ms)
    device: tuple[float, float]  # a device's GET p50, p99 (ms)
    live_max: float
    device_max: float


@dataclass(frozen=True)
class StoreResult:
    store: str
    devices: int
    idle_live: tuple[float, float]
    idle_device: tuple[float, float]
    changes: list[Operation]
    reverts: list[Operation]


def call(server: BenchServer, method: str, path: str, body: Any) -> dict[str, Any]:
    request = urllib.request.Request(
        f"{server.url}{path}",
        json.dumps(body).encode(),
        {"Content-Type": "application/json"},
        method=method,
    )
    with urllib.request.urlopen(request, timeout=600) as response:
        answer: dict[str, Any] = json.loads(response.read())
        return answer


def probe(server: BenchServer, path: str, until: threading.Event) -> list[float]:
    found = []
    while not until.is_set():
        found.append(timed_get(server, path)[0])
    return found


def probed(server: BenchServer, work: Callable[[], dict[str, Any]]) -> Operation:
    """work() timed, with the two probes running meanwhile."""
    done = threading.Event()
    with ThreadPoolExecutor(2) as pool:
        live = pool.submit(probe, server, "/api/health/live", done)
        device = pool.submit(probe, server, f"/api/configs/{OUTSIDE}.json", done)
        started = time.perf_counter()
        try:
            answer = work()
        finally:
            seconds = time.perf_counter() - started
            done.set()
        lives, devices = live.result(), device.result()
    changed = sum(d["status"] == "changed" for d in answer["devices"])
    return Operation(
        seconds, changed, percentiles(lives), percentiles(devices), max(lives), max(devices)
    )


def prepare(server: BenchServer) -> None:
    """The models the documents name (no schema), and the device outside every change."""
    for code in MODELS:
        call(server, "PUT", f"/api/models/{code}", {"name": code, "configSchema": None})
    call(server, "PUT", f"/api/configs/{OUTSIDE}", {"content": {"deviceName": "outside"}})


def bench_store(store: str, server: BenchServer, args: argparse.Namespace) -> StoreResult:
    prepare(server)
    idle = probed(server, idle_for(args.idle))
    changes, reverts = [], []
    for number in range(args.runs):
        body = {"filter": EVERY, "patch": {"mqtt": {"host": f"broker-{time.time_ns()}.lan"}}}
        change = probed(server, partial(call, server, "POST", "/api/configs/changes", body))
        assert change.changed == args.devices, f"{change.changed} devices changed"
        listed = call_get(server, "/api/configs/changes?limit=1")["changes"][0]["changeId"]
        path = f"/api/configs/changes/{listed}/revert"
        revert = probed(server, partial(call, server, "POST", path, {}))
        changes.append(change)
        reverts.append(revert)
        print(f"{store}, round {number + 1}: change {change.seconds:.1f} s, live p99 "
              f"{change.live[1]:.1f} ms, device p99 {change.device[1]:.1f} ms; revert "
              f"{revert.seconds:.1f} s", flush=True)  # fmt: skip
    return StoreResult(store, args.devices, idle.live, idle.device, changes, reverts)


def idle_for(seconds: float) -> Callable[[], dict[str, Any]]:
    def idle() -> dict[str, Any]:
        time.sleep(seconds)
        return {"devices": []}

    return idle


def call_get(server: BenchServer, path: str) -> dict[str, Any]:
    body, _ = server.fetch(path)
    found: dict[str, Any] = json.loads(body)
    return found


def summary(name: str, operations: list[Operation]) -> tuple[str, bool]:
    def med(get: Callable[[Operation], float]) -> float:
        return float(statistics.median(get(op) for op in operations))

    live_p99 = med(lambda op: op.live[1])
    line = (
        f"| {name} | {med(lambda op: op.seconds):.1f} | {med(lambda op: op.changed):.0f} "
        f"| {med(lambda op: op.changed / op.seconds):.0f} | {med(lambda op: op.live[0]):.1f} "
        f"| **{live_p99:.1f}** | {med(lambda op: op.live_max):.0f} "
        f"| {med(lambda op: op.device[0]):.1f} | {med(lambda op: op.device[1]):.1f} "
        f"| {med(lambda op: op.device_max):.0f} |"
    )
    return line, live_p99 < TARGET_P99_MS


def report(results: list[StoreResult], args: argparse.Namespace, load: str) -> tuple[str, bool]:
    lines = [
        "# Bulk changes: 1,000 devices, and the requests meanwhile",
        "",
        f"`./pdmw run bench-changes --devices {args.devices} --runs {args.runs}`, "
        f"{time.strftime('%Y-%m-%d %H:%M')}, load average before: {load}. Each round: a "
        "change of every device (each one written), then its revert, each timed while two "
        "threads probe without pause (`/api/health/live`; `GET /api/configs/<mac>.json` of a "
        "device outside the change). Medians of the rounds; p50/p99/max of the probes over "
        f"each operation. Target: liveness p99 < {TARGET_P99_MS:.0f} ms.",
    ]
    passed = True
    for result in results:
        lines += [
            "",
            f"## {result.store}, N = {result.devices}",
            "",
            f"Idle: liveness p50 {result.idle_live[0]:.1f} ms, p99 {result.idle_live[1]:.1f} ms; "
            f"device GET p50 {result.idle_device[0]:.1f} ms, p99 {result.idle_device[1]:.1f} ms.",
            "",
            "| operation | wall s | devices written | devices/s | live p50 ms | live p99 ms "
            "| live max ms | device GET p50 ms | device GET p99 ms | device GET max ms |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for name, operations in (("change", result.changes), ("revert", result.reverts)):
            line, ok = summary(name, operations)
            lines.append(line)
            passed = passed and ok
    lines += ["", f"Verdict: {'PASS' if passed else 'FAIL'}"]
    return "\n".join(lines) + "\n", passed


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="bench.changes", description=__doc__)
    parser.add_argument("--devices", type=int, default=1000)
    parser.add_argument("--runs", type=int, default=3, help="rounds (medians)")
    parser.add_argument("--stores", default="directory,postgres", help="comma-separated")
    parser.add_argument("--idle", type=float, default=3.0, help="seconds of idle probing")
    args = parser.parse_args(argv)
    load = " ".join(open("/proc/loadavg").read().split()[:3])  # noqa: SIM115
    work = WORK / f"changes-n{args.devices}"
    servers = {"directory": directory_server, "postgres": postgres_server}
    results = []
    for store in args.stores.split(","):
        with servers[store](work, args.devices) as server:
            results.append(bench_store(store, server, args))
    page, passed = report(results, args, load)
    save_results("changes", page, [asdict(result) for result in results])
    print(page)
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

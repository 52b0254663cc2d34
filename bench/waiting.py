"""`./pdmw run bench-waiting`: what 10,000 waiting clients cost one process, and wake-up latency.

- memory: resident memory (VmRSS) of the idle server, then with `--waiters` long polls held
  (`--per-device` per device); the difference per waiter, and the server's CPU while they wait.
- wake-up: with them all waiting, PUTs one after another to random devices; the time from
  sending a PUT to each of its device's waiters receiving the new document (p50/p99).
- list throughput: wrk on `GET /api/configs` with no waiter, then with them all waiting.
- workers: wrk on list and get with WORKERS=1, then WORKERS=2 (absolute req/s).

The client is this process (asyncio, raw HTTP/1.1), the server `python -m quart_iot`.
Writes bench/results/waiting.md and waiting.json.
"""

import argparse
import asyncio
import json
import random
import resource
import shutil
import statistics
import time
from pathlib import Path
from typing import Any

from bench.documents import fill_directory, mac_of
from bench.server import BenchServer, cpu_seconds
from bench.wrk import Scenario, require_wrk, run_wrk

HERE = Path(__file__).resolve().parent
WORK = HERE / ".work"
SERVER_ENV = {  # the bench sets the counts
    "MAX_WAIT_SECONDS": "3600",
    "MAX_WAITERS": "1000000",
    "MAX_WAITERS_PER_DEVICE": "1000000",
}


def resident_memory(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS")


class Poller:
    """One keep-alive connection holding a long poll on one device, polling again each time."""

    def __init__(self, port: int, mac: str, etag: str) -> None:
        self.port, self.mac, self.etag = port, mac, etag
        self.answered: asyncio.Queue[float] = asyncio.Queue()
        self.task: asyncio.Task[None] | None = None

    async def run(self, connected: asyncio.Semaphore) -> None:
        async with connected:
            reader, writer = await asyncio.open_connection("127.0.0.1", self.port)
        while True:
            head = (
                f"GET /api/configs/{self.mac}.json HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                f'If-None-Match: "{self.etag}"\r\nPrefer: wait=3600\r\n\r\n'
            )
            writer.write(head.encode())
            status, headers = await read_response(reader)
            if status == 200:
                self.etag = headers["etag"].strip('"')
                self.answered.put_nowait(time.perf_counter())


async def read_response(reader: asyncio.StreamReader) -> tuple[int, dict[str, str]]:
    head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1")
    status_line, *lines = head.split("\r\n")
    headers = {}
    for line in lines:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    await reader.readexactly(int(headers.get("content-length", "0")))
    return int(status_line.split()[1]), headers


async def put(port: int, mac: str, version: int) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    body = json.dumps({"content": {"v": version}}).encode()
    writer.write(
        f"PUT /api/configs/{mac} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json"
        f"\r\nContent-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode()
        + body
    )
    status, _ = await read_response(reader)
    writer.close()
    assert status == 200, status


async def held_count(server: BenchServer) -> float:
    body, _ = await asyncio.to_thread(server.fetch, "/metrics")
    for line in body.decode().splitlines():
        if line.startswith('iot_waiting_requests{kind="long_poll"}'):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


async def start_polls(server: BenchServer, waiters: int, devices: int) -> list[Poller]:
    """Start `waiters` long polls spread over the first `devices` devices, each with its ETag."""
    etags = {}
    for index in range(devices):
        _, headers = await asyncio.to_thread(server.fetch, f"/api/configs/{mac_of(index)}.json")
        etags[mac_of(index)] = headers["etag"].strip('"')
    connected = asyncio.Semaphore(200)
    pollers = [
        Poller(server.port, mac_of(n % devices), etags[mac_of(n % devices)]) for n in range(waiters)
    ]
    for poller in pollers:
        poller.task = asyncio.create_task(poller.run(connected))
    return pollers


async def hold(server: BenchServer, waiters: int, per_device: int) -> list[Poller]:
    """Open the long polls and return once the server holds them all."""
    pollers = await start_polls(server, waiters, waiters // per_device)
    while await held_count(server) < waiters:
        await asyncio.sleep(0.5)
    return pollers


async def wake_ups(server: BenchServer, pollers: list[Poller], samples: int) -> list[float]:
    """Seconds from sending each PUT to each of its waiters holding the answer."""
    by_mac: dict[str, list[Poller]] = {}
    for poller in pollers:
        by_mac.setdefault(poller.mac, []).append(poller)
    latencies = []
    rng = random.Random(7)
    for version in range(samples):
        mac = rng.choice(sorted(by_mac))
        sent = time.perf_counter()
        await put(server.port, mac, version)
        for poller in by_mac[mac]:
            latencies.append(await asyncio.wait_for(poller.answered.get(), 30) - sent)
        await asyncio.sleep(0.02)
    return latencies


async def waiting_scenarios(args: argparse.Namespace, directory: Path) -> dict[str, Any]:
    out: dict[str, Any] = {}
    wrk = require_wrk()
    list_scenario = Scenario("list", "/api/configs")
    with BenchServer(directory, WORK / "waiting.log", SERVER_ENV) as server:
        for _ in range(3):  # warm: the list cache, the worker threads
            await asyncio.to_thread(run_wrk, wrk, server, list_scenario, 2)
        without = await asyncio.to_thread(run_wrk, wrk, server, list_scenario, args.seconds)
        idle = resident_memory(server.pid)
        pollers = await hold(server, args.waiters, args.per_device)
        await asyncio.sleep(2)
        held = resident_memory(server.pid)
        before = cpu_seconds(server.pid)
        await asyncio.sleep(5)
        out["idle_cpu_percent_with_waiters"] = (cpu_seconds(server.pid) - before) / 5 * 100
        latencies = await wake_ups(server, pollers, args.samples)
        with_waiters = await asyncio.to_thread(run_wrk, wrk, server, list_scenario, args.seconds)
        out["waiters_still_held"] = await held_count(server)
        for poller in pollers:
            assert poller.task is not None
            poller.task.cancel()
    ordered = sorted(latencies)
    out.update(
        waiters=args.waiters,
        idle_rss_mb=idle / 2**20,
        held_rss_mb=held / 2**20,
        kb_per_waiter=(held - idle) / args.waiters / 1024,
        wake_p50_ms=statistics.median(ordered) * 1000,
        wake_p99_ms=ordered[int(len(ordered) * 0.99)] * 1000,
        wake_samples=len(ordered),
        list_rps_without=without.rps,
        list_rps_with=with_waiters.rps,
        list_ratio=with_waiters.rps / without.rps,
    )
    return out


async def cross_worker_wake_ups(args: argparse.Namespace, directory: Path) -> dict[str, float]:
    """With WORKERS=2: wake-up latency of 400 waiters spread over both workers by the kernel."""
    with BenchServer(
        directory, WORK / "workers-wake.log", {**SERVER_ENV, "WORKERS": "2"}
    ) as server:
        pollers = await start_polls(server, 400, devices=40)
        await asyncio.sleep(5)  # the gauge is per worker: give every poll time to be held
        ordered = sorted(await wake_ups(server, pollers, 100))
        for poller in pollers:
            assert poller.task is not None
            poller.task.cancel()
    return {
        "p50_ms": statistics.median(ordered) * 1000,
        "p99_ms": ordered[int(len(ordered) * 0.99)] * 1000,
        "max_ms": ordered[-1] * 1000,
        "samples": len(ordered),
    }


def workers_scenarios(args: argparse.Namespace, directory: Path) -> dict[str, dict[str, float]]:
    """req/s of list and get with WORKERS=1 and 2, alternated, medians of `--runs`."""
    wrk = require_wrk()
    scenarios = [Scenario("list", "/api/configs"), Scenario("get", f"/api/configs/{mac_of(1)}")]
    rps: dict[str, dict[str, list[float]]] = {}
    for _ in range(args.runs):
        for workers in ("1", "2"):
            env = {"WORKERS": workers}
            with BenchServer(directory, WORK / f"workers-{workers}.log", env) as server:
                for scenario in scenarios:
                    run_wrk(wrk, server, scenario, 2)  # warm every worker
                    done = run_wrk(wrk, server, scenario, args.seconds)
                    rps.setdefault(scenario.name, {}).setdefault(workers, []).append(done.rps)
    return {
        name: {f"workers_{n}": statistics.median(values) for n, values in by_workers.items()}
        | {"ratio": statistics.median(by_workers["2"]) / statistics.median(by_workers["1"])}
        for name, by_workers in rps.items()
    }


def report(result: dict[str, Any]) -> str:
    lines = ["# Waiting: results of `./pdmw run bench-waiting`", ""]
    lines += [
        f"- {name}: {value:.3f}" if isinstance(value, float) else f"- {name}: {value}"
        for name, value in result.items()
        if name != "workers"
    ]
    for name, figures in result.get("workers", {}).items():
        lines.append(
            f"- {name} req/s: WORKERS=1 {figures['workers_1']:.0f}, WORKERS=2 "
            f"{figures['workers_2']:.0f}, ratio {figures['ratio']:.2f}"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--waiters", type=int, default=10_000)
    parser.add_argument("--per-device", type=int, default=10)
    parser.add_argument("--samples", type=int, default=200, help="PUTs for the wake-up latency")
    parser.add_argument("--seconds", type=int, default=10, help="each wrk run")
    parser.add_argument("--runs", type=int, default=3, help="of the WORKERS comparison")
    parser.add_argument("--skip-workers", action="store_true")
    args = parser.parse_args()
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    directory = WORK / "waiting-configs"
    shutil.rmtree(directory, ignore_errors=True)
    directory.mkdir(parents=True)
    fill_directory(directory, max(args.waiters // args.per_device, 2))
    result = asyncio.run(waiting_scenarios(args, directory))
    if not args.skip_workers:
        result["cross_worker_wake"] = asyncio.run(cross_worker_wake_ups(args, directory))
        result["workers"] = workers_scenarios(args, directory)
    (HERE / "results" / "waiting.json").write_text(json.dumps(result, indent=2) + "\n")
    (HERE / "results" / "waiting.md").write_text(report(result))
    print(report(result))


if __name__ == "__main__":
    main()

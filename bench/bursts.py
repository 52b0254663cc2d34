"""`./pdmw run bench-bursts`: a burst of writes against many waiting clients (issue 17).

- fan-out (item 13): `--streams` open event streams (2,000), then `--writes` PUTs (1,000) as
  fast as `--writers` keep-alive connections send them. /api/health/live latency, sampled one
  request after another, alone and then from the first PUT until every stream has received
  every event; and how long that took. Target: liveness p99 < 100 ms during the fan-out.
- peers (item 17): `WORKERS=2`, one long poll on each of `--writes` devices (the kernel spreads
  their connections over both workers), then one PUT to each device, `--peers-writers` (32)
  connections at a time. The time from sending a PUT, and from its answer, to its waiter
  holding the new document; how many waiters were answered more than 100 ms after their
  PUT's answer (a wake-up lost between workers waits for the 0.5 s directory sweep).

The streams are held by a process of their own, so that reading them competes with the
server for the CPU as real clients would, and not with the measuring. Each run uses a fresh
server; the figures are the medians over `--runs` of each run's percentiles.
Writes bench/results/bursts.md and bursts.json.
"""

import argparse
import asyncio
import concurrent.futures
import functools
import http.client
import json
import multiprocessing
import multiprocessing.synchronize
import resource
import shutil
import statistics
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

from bench.documents import fill_directory, mac_of
from bench.server import BenchServer
from bench.waiting import Poller, start_polls

HERE = Path(__file__).resolve().parent
WORK = HERE / ".work"
SERVER_ENV = {"MAX_WAIT_SECONDS": "3600", "MAX_WAITERS": "1000000"}
SLOW_MS = 100.0


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * share))]


def figures(seconds: list[float]) -> dict[str, float]:
    """p50, p99 and max in milliseconds."""
    return {
        "p50_ms": statistics.median(seconds) * 1000,
        "p99_ms": percentile(seconds, 0.99) * 1000,
        "max_ms": max(seconds) * 1000,
    }


# -- the streams, in a process of their own ----------------------------------------------------


class StreamReader(asyncio.Protocol):
    """One event stream: counts the `saved` events it receives."""

    MARK = b"event: saved"

    def __init__(self, connected: asyncio.Event) -> None:
        self.connected = connected
        self.events = 0
        self.tail = b""

    def data_received(self, data: bytes) -> None:
        text = self.tail + data
        self.events += text.count(self.MARK)
        self.tail = text[-len(self.MARK) + 1 :]  # a mark cut in two is counted once
        if b": connected" in text:
            self.connected.set()


async def hold_streams(port: int, count: int, expected: int, ready: Any, done: Any) -> int:
    loop = asyncio.get_running_loop()
    readers = []
    for _ in range(count):
        connected = asyncio.Event()
        transport, reader = await loop.create_connection(
            functools.partial(StreamReader, connected), "127.0.0.1", port
        )
        transport.write(b"GET /api/configs/events HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        await connected.wait()
        readers.append(reader)
    ready.set()
    deadline = loop.time() + 300
    while min(reader.events for reader in readers) < expected and loop.time() < deadline:
        await asyncio.sleep(0.005)
    done.set()
    short = Counter(reader.events for reader in readers if reader.events < expected)
    if short:
        print(f"streams short of {expected} events (events: streams): {dict(short)}")
    return min(reader.events for reader in readers)


def streams_process(
    port: int,
    count: int,
    expected: int,
    ready: multiprocessing.synchronize.Event,
    done: multiprocessing.synchronize.Event,
    result: "multiprocessing.Queue[int]",
) -> None:
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    result.put(asyncio.run(hold_streams(port, count, expected, ready, done)))


# -- writes and liveness -----------------------------------------------------------------------


def write_burst(
    port: int, macs: list[str], writers: int, sent: dict[str, float], acked: dict[str, float]
) -> None:
    """PUT each MAC once, `writers` keep-alive connections at a time; when each was sent, and
    when its answer came."""
    work = iter(enumerate(macs))
    lock = threading.Lock()

    def writer() -> None:
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        while True:
            with lock:
                item = next(work, None)
            if item is None:
                return
            index, mac = item
            body = json.dumps({"content": {"burst": index, "at": time.time()}})
            sent[mac] = time.perf_counter()
            connection.request(
                "PUT", f"/api/configs/{mac}", body, {"Content-Type": "application/json"}
            )
            response = connection.getresponse()
            response.read()
            acked[mac] = time.perf_counter()
            assert response.status == 200, response.status

    threads = [threading.Thread(target=writer) for _ in range(writers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()


def liveness(port: int, until: threading.Event | None, count: int = 0) -> list[float]:
    """Latencies of sequential liveness probes: `count`, or until `until` is set."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    seconds: list[float] = []
    while (until is None and len(seconds) < count) or (until is not None and not until.is_set()):
        started = time.perf_counter()
        connection.request("GET", "/api/health/live")
        response = connection.getresponse()
        response.read()
        assert response.status == 200, response.status
        seconds.append(time.perf_counter() - started)
        time.sleep(0.002)
    return seconds


def fan_out_run(args: argparse.Namespace, directory: Path, run: int) -> dict[str, float]:
    """One fresh server: liveness alone, then during a burst against `--streams` streams."""
    spawn = multiprocessing.get_context("spawn")
    ready, done, result = spawn.Event(), spawn.Event(), spawn.Queue()
    with BenchServer(directory, WORK / f"fanout-{run}.log", SERVER_ENV) as server:
        holder = spawn.Process(
            target=streams_process,
            args=(server.port, args.streams, args.writes, ready, done, result),
        )
        holder.start()
        if not ready.wait(300):
            raise RuntimeError("the streams did not open")
        idle = liveness(server.port, None, 300)
        delivered = threading.Event()
        waiter = threading.Thread(target=lambda: delivered.set() if done.wait(300) else None)
        waiter.start()
        started = time.perf_counter()
        macs = [mac_of(n % args.documents) for n in range(args.writes)]
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            burst = pool.submit(write_burst, server.port, macs, args.writers, {}, {})
            during = liveness(server.port, delivered)
            took = time.perf_counter() - started
            burst.result()  # a failed PUT fails the bench
        waiter.join()
        fewest = result.get(timeout=60)
        holder.join(60)
    return {
        "idle_p50_ms": statistics.median(idle) * 1000,
        "idle_p99_ms": percentile(idle, 0.99) * 1000,
        **{f"fan_out_{name}": value for name, value in figures(during).items()},
        "fan_out_seconds": took,
        "probes": len(during),
        "fewest_events_on_a_stream": fewest,
    }


# -- wake-ups between workers ------------------------------------------------------------------


async def peers_burst(
    server: BenchServer, args: argparse.Namespace
) -> tuple[list[float], list[float]]:
    """One long poll per device, then one PUT per device: the time from the PUT sent, and from
    its answer, to its waiter answered (the second one negative when the waiter came first)."""
    pollers: list[Poller] = await start_polls(server, args.writes, devices=args.writes)
    await asyncio.sleep(max(5.0, args.writes / 200))  # the gauge is per worker: time to connect
    sent: dict[str, float] = {}
    acked: dict[str, float] = {}
    macs = [poller.mac for poller in pollers]
    await asyncio.to_thread(write_burst, server.port, macs, args.peers_writers, sent, acked)
    from_sent, from_acked = [], []
    for poller in pollers:
        answered = await asyncio.wait_for(poller.answered.get(), 30)
        from_sent.append(answered - sent[poller.mac])
        from_acked.append(answered - acked[poller.mac])
    for poller in pollers:
        assert poller.task is not None
        poller.task.cancel()
    return from_sent, from_acked


def peers_run(args: argparse.Namespace, directory: Path, run: int) -> dict[str, float]:
    env = {**SERVER_ENV, "WORKERS": "2"}
    with BenchServer(directory, WORK / f"peers-{run}.log", env) as server:
        from_sent, from_acked = asyncio.run(peers_burst(server, args))
    late = [latency for latency in from_acked if latency * 1000 > SLOW_MS]
    return {
        **figures(from_sent),
        **{f"after_answer_{name}": value for name, value in figures(from_acked).items()},
        "over_100_ms_after_answer": len(late),
        "waiters": len(from_sent),
    }


# -- the report --------------------------------------------------------------------------------


def medians(runs: list[dict[str, float]]) -> dict[str, float]:
    return {name: statistics.median(run[name] for run in runs) for name in runs[0]}


def report(result: dict[str, Any]) -> str:
    lines = ["# Bursts: results of `./pdmw run bench-bursts`", ""]
    lines.append(f"Arguments: {result['arguments']}; medians over the runs.")
    for scenario in ("fan_out", "peers"):
        if scenario in result:
            lines += ["", f"## {scenario}", ""]
            lines += [f"- {name}: {value:.1f}" for name, value in result[scenario].items()]
            lines.append(f"- each run: {json.dumps(result[scenario + '_runs'])}")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--streams", type=int, default=2000)
    parser.add_argument("--writes", type=int, default=1000)
    parser.add_argument("--writers", type=int, default=8, help="concurrent PUT connections")
    parser.add_argument("--peers-writers", type=int, default=32, help="the same, for peers")
    parser.add_argument("--documents", type=int, default=1000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--scenario", choices=("fan_out", "peers", "both"), default="both")
    args = parser.parse_args()
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    directory = WORK / "bursts-configs"
    shutil.rmtree(directory, ignore_errors=True)
    directory.mkdir(parents=True)
    fill_directory(directory, max(args.documents, args.writes))
    result: dict[str, Any] = {"arguments": vars(args)}
    if args.scenario in ("fan_out", "both"):
        runs = [fan_out_run(args, directory, run) for run in range(args.runs)]
        result["fan_out"], result["fan_out_runs"] = medians(runs), runs
    if args.scenario in ("peers", "both"):
        runs = [peers_run(args, directory, run) for run in range(args.runs)]
        result["peers"], result["peers_runs"] = medians(runs), runs
    (HERE / "results" / "bursts.json").write_text(json.dumps(result, indent=2) + "\n")
    (HERE / "results" / "bursts.md").write_text(report(result))
    print(report(result))


if __name__ == "__main__":
    main()

"""`./pdmw run bench-storms`: latency of cheap requests while heavy ones storm the server.

- cold-list storm (issue 9 item 5): a fresh server on N documents (its list cache cold);
  device GET latency alone, then while lists arrive 50 ms apart until every list has been
  answered (the first one pays the cold rescan). Target: storm p99 < 5x idle p99.
- maximal PUTs (issue 9 item 1): /api/health/live latency alone, then while several clients
  PUT maximal bodies (1 MiB of deeply nested arrays) to their own MACs; the server's peak RSS.

Each run uses a fresh server; the figures are the medians over runs of each run's p50/p99.
Writes bench/results/storms.md and storms.json.
"""

import argparse
import http.client
import json
import shutil
import statistics
import subprocess
import sys
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from bench.documents import fill_directory, mac_of
from bench.server import BenchServer, peak_memory
from quart_iot.documents import MAX_CONTAINERS, MAX_DEPTH, MAX_VALUES

HERE = Path(__file__).resolve().parent
WORK = HERE / ".work"
READ_MAC = mac_of(101)
LIST_EVERY = 0.05
MAX_BODY = 1024 * 1024


@dataclass(frozen=True)
class Latency:
    """Percentiles of one run, in milliseconds, and the number of samples."""

    p50_ms: float
    p99_ms: float
    samples: int

    @classmethod
    def of(cls, seconds: list[float]) -> "Latency":
        ordered = sorted(seconds)
        p99 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]
        return cls(statistics.median(ordered) * 1000, p99 * 1000, len(ordered))


@dataclass(frozen=True)
class StormRun:
    """One run: the cheap request alone, then during the storm, and what the storm did."""

    idle: Latency
    storm: Latency
    storm_requests: int
    storm_seconds: float
    peak_rss: int


class Client:
    """One keep-alive HTTP/1.1 connection."""

    def __init__(self, server: BenchServer) -> None:
        self.connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=120)

    def request(self, method: str, path: str, body: bytes | None = None) -> tuple[int, float]:
        headers = {"Content-Type": "application/json"} if body is not None else {}
        started = time.perf_counter()
        self.connection.request(method, path, body=body, headers=headers)
        response = self.connection.getresponse()
        response.read()
        return response.status, time.perf_counter() - started


def sample(client: Client, path: str, until: threading.Event | None, count: int) -> list[float]:
    """Latencies of sequential GETs: `count` of them, or as many as until `until` is set."""
    seconds: list[float] = []
    while (until is None and len(seconds) < count) or (until is not None and not until.is_set()):
        status, took = client.request("GET", path)
        assert status == 200, status
        seconds.append(took)
    return seconds


def cold_list_storm(directory: Path, log: Path) -> StormRun:
    """Device GETs alone, then while lists arrive every 50 ms at a cold server."""
    with BenchServer(directory, log) as server:
        client = Client(server)
        path = f"/api/configs/{READ_MAC}.json"
        idle = sample(client, path, None, 300)
        done = threading.Event()
        answered: list[float] = []
        storm = threading.Thread(target=_list_storm, args=(server, done, answered))
        started = time.perf_counter()
        storm.start()
        during = sample(client, path, done, 0)
        storm.join()
        return StormRun(
            Latency.of(idle),
            Latency.of(during),
            len(answered),
            time.perf_counter() - started,
            peak_memory(server.pid),
        )


def _list_storm(server: BenchServer, done: threading.Event, answered: list[float]) -> None:
    """Lists 50 ms apart, each on its own connection, until the first answer; then wait all."""
    threads: list[threading.Thread] = []

    def one() -> None:
        status, took = Client(server).request("GET", "/api/configs")
        assert status == 200, status
        answered.append(took)

    while not answered:
        thread = threading.Thread(target=one)
        thread.start()
        threads.append(thread)
        time.sleep(LIST_EVERY)
    for thread in threads:
        thread.join()
    done.set()


def maximal_body() -> bytes:
    """The costliest PUT body accepted: just under 1 MiB, as many arrays as allowed, nested as
    deep as allowed, as many values as allowed (small numbers), and a long string for the rest."""
    depth = MAX_DEPTH - 3  # below the body's object, "content" and "nested"
    item = "[" * depth + "0" + "]" * depth
    chunks = (MAX_CONTAINERS - 5) // depth
    nested = ",".join([item] * chunks)
    numbers = ",".join(["7"] * (MAX_VALUES - chunks * (depth + 1) - 10))
    head = '{"content":{"nested":[' + nested + '],"numbers":[' + numbers + '],"text":"'
    return (head + "x" * (MAX_BODY - len(head) - 4) + '"}}').encode()


def maximal_puts(directory: Path, log: Path, clients: int, seconds: float) -> StormRun:
    """Liveness alone, then while `clients` PUT maximal bodies back to back."""
    body = maximal_body()
    with BenchServer(directory, log) as server:
        probe = Client(server)
        idle = sample(probe, "/api/health/live", None, 300)
        stop = threading.Event()
        puts: list[float] = []
        writers = [
            threading.Thread(target=_put_loop, args=(server, mac_of(10**6 + n), body, stop, puts))
            for n in range(clients)
        ]
        started = time.perf_counter()
        for writer in writers:
            writer.start()
        timer = threading.Timer(seconds, stop.set)
        timer.start()
        during = sample(probe, "/api/health/live", stop, 0)
        for writer in writers:
            writer.join()
        return StormRun(
            Latency.of(idle),
            Latency.of(during),
            len(puts),
            time.perf_counter() - started,
            peak_memory(server.pid),
        )


def _put_loop(
    server: BenchServer, mac: str, body: bytes, stop: threading.Event, puts: list[float]
) -> None:
    client = Client(server)
    while not stop.is_set():
        status, took = client.request("PUT", f"/api/configs/{mac}", body)
        assert status == 200, f"PUT of the maximal body: {status}"
        puts.append(took)


def _median(runs: list[StormRun], value: str) -> float:
    return statistics.median(_get(run, value) for run in runs)


def _get(run: StormRun, value: str) -> float:
    kind, field = value.split(".")
    return float(getattr(getattr(run, kind), field))


def table(title: str, cheap: str, heavy: str, runs: list[StormRun]) -> list[str]:
    ratio = statistics.median(run.storm.p99_ms / run.idle.p99_ms for run in runs)
    rate = statistics.median(run.storm_requests / run.storm_seconds for run in runs)
    rss = statistics.median(run.peak_rss for run in runs) / 2**20
    return [
        f"### {title}",
        "",
        f"| {cheap} | p50 ms | p99 ms | samples (median) |",
        "|---|---:|---:|---:|",
        f"| alone | {_median(runs, 'idle.p50_ms'):.2f} | {_median(runs, 'idle.p99_ms'):.2f} "
        f"| {statistics.median(r.idle.samples for r in runs):.0f} |",
        f"| during {heavy} | {_median(runs, 'storm.p50_ms'):.2f} "
        f"| {_median(runs, 'storm.p99_ms'):.2f} "
        f"| {statistics.median(r.storm.samples for r in runs):.0f} |",
        "",
        f"p99 during / p99 alone: {ratio:.1f}x (median of {len(runs)} runs); {heavy}: "
        f"{rate:.1f} answered per second; server peak RSS {rss:.0f} MiB.",
    ]


def arguments(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="bench.storms", description=__doc__)
    parser.add_argument("--documents", type=int, default=20000, help="N for the list storm")
    parser.add_argument("--runs", type=int, default=3, help="fresh servers per scenario")
    parser.add_argument("--clients", type=int, default=4, help="concurrent maximal PUTs")
    parser.add_argument("--seconds", type=float, default=5.0, help="of maximal PUTs per run")
    parser.add_argument("--out", type=Path, default=HERE / "results")
    return parser.parse_args(argv)


def main(argv: list[str]) -> int:
    args = arguments(argv)
    work = WORK / "storms"
    shutil.rmtree(work, ignore_errors=True)
    (work / "configs").mkdir(parents=True)
    (work / "puts").mkdir()
    fill_directory(work / "configs", args.documents)
    lists = [cold_list_storm(work / "configs", work / "server.log") for _ in range(args.runs)]
    puts = [
        maximal_puts(work / "puts", work / "server.log", args.clients, args.seconds)
        for _ in range(args.runs)
    ]
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=HERE
    ).stdout.strip()
    page = "\n".join(
        [
            "# Storm benchmarks",
            "",
            f"`./pdmw run bench-storms` at commit {commit or '?'}, "
            f"{time.strftime('%Y-%m-%d %H:%M')}; {args.runs} fresh servers per scenario.",
            "",
            *table(
                f"Cold-list storm, N = {args.documents} (target: p99 during < 5x p99 alone)",
                "device GET",
                "lists 50 ms apart",
                lists,
            ),
            "",
            *table(
                f"{args.clients} clients PUT maximal bodies ({len(maximal_body())} bytes)",
                "GET /api/health/live",
                "maximal PUTs",
                puts,
            ),
        ]
    )
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "storms.md").write_text(page + "\n", encoding="utf-8")
    raw = {"lists": [asdict(r) for r in lists], "puts": [asdict(r) for r in puts]}
    (args.out / "storms.json").write_text(json.dumps(raw, indent=2) + "\n", encoding="utf-8")
    print(page)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

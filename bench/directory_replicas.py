"""`./pdmw run python -m bench.directory_replicas`: two replicas on one directory of 20,000
documents.

Each document has a history (one version, as a first save leaves it), so the history survey
has its full work. Measures, on replica A:

- idle CPU: A's CPU time over `--idle` seconds with no request, as a share of one core;
- cross-replica wake-up: a long poll held on A (`Prefer: wait=60`), a PUT of that device
  through B; the time from B's answer to A's answer of the long poll, `--samples` times,
  one device at a time, spread over the sweep's cycle. Nothing but the directory tells A
  of B's write: A learns of it at its next sweep.

`--survey-every 1` makes the history survey run every second (HISTORY_MAX_DAYS of two
seconds; a survey runs every half of it, and each device's one version, the newest of a
live device, stays): what every wake-up met while a survey ran, when it shared the sweep's
loop. Prints the figures (medians, p90, max). Run it from a checkout to measure that one.
"""

import argparse
import asyncio
import json
import os
import random
import shutil
import statistics
import time
from pathlib import Path

from bench.documents import fill_directory, mac_of
from bench.server import BenchServer, cpu_seconds

HERE = Path(__file__).resolve().parent
WORK = HERE / ".work" / "directory_replicas"
ENV = {"MAX_WAIT_SECONDS": "60", "LOG_LEVEL": "WARNING"}


def with_history(directory: Path, count: int) -> None:
    """Each document kept as one version, as a first save keeps it."""
    shelves = directory / ".history"
    shelves.mkdir()
    first = time.time_ns() - 86_400 * 10**9
    for index in range(count):
        mac = mac_of(index)
        (shelves / mac).mkdir()
        version = shelves / mac / f"{first + index:019d}-00000000.created.json"
        os.link(directory / f"{mac}.json", version)


async def exchange(port: int, head: str, body: bytes = b"") -> tuple[int, dict[str, str]]:
    """One HTTP/1.1 request on its own connection: the status and headers of the answer."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(head.encode() + body)
    raw = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1")
    status_line, *lines = raw.split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines)}
    await reader.readexactly(int(headers.get("content-length", "0")))
    writer.close()
    return int(status_line.split()[1]), headers


async def etag_of(port: int, mac: str) -> str:
    _, headers = await exchange(
        port, f"GET /api/configs/{mac}.json HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
    )
    return headers["etag"]


async def put(port: int, mac: str, value: int) -> None:
    body = json.dumps({"content": {"deviceName": mac, "v": value}}).encode()
    head = (
        f"PUT /api/configs/{mac} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    )
    status, _ = await exchange(port, head, body)
    assert status == 200, status


async def one_wake_up(a: BenchServer, b: BenchServer, mac: str, value: int) -> float:
    """Seconds from B's answer to a PUT to A's answer to the long poll held on that device."""
    etag = await etag_of(a.port, mac)
    head = (
        f"GET /api/configs/{mac}.json HTTP/1.1\r\nHost: 127.0.0.1\r\nIf-None-Match: {etag}\r\n"
        "Prefer: wait=60\r\n\r\n"
    )
    poll = asyncio.create_task(exchange(a.port, head))
    await asyncio.sleep(0.1)  # held (the write must not land before the poll reads its ETag)
    await put(b.port, mac, value)
    written = time.perf_counter()
    status, _ = await poll
    assert status == 200, status
    return time.perf_counter() - written


async def wake_ups(a: BenchServer, b: BenchServer, devices: int, samples: int) -> list[float]:
    rng = random.Random(11)
    latencies = []
    for value in range(samples):
        latencies.append(await one_wake_up(a, b, mac_of(rng.randrange(devices)), value))
        await asyncio.sleep(rng.uniform(0, 0.5))  # land anywhere in A's sweep cycle
    return latencies


def idle_cpu(server: BenchServer, seconds: float) -> float:
    """A's CPU over `seconds` with no request, as a share of one core."""
    before, started = cpu_seconds(server.pid), time.monotonic()
    time.sleep(seconds)
    return (cpu_seconds(server.pid) - before) / (time.monotonic() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--documents", type=int, default=20_000)
    parser.add_argument("--samples", type=int, default=40)
    parser.add_argument("--idle", type=float, default=65.0, help="seconds: a survey is in")
    parser.add_argument("--survey-every", type=float, help="seconds (default: a minute)")
    args = parser.parse_args()
    env = dict(ENV)
    if args.survey_every:
        env["HISTORY_MAX_DAYS"] = str(2 * args.survey_every / 86400)
    shutil.rmtree(WORK, ignore_errors=True)
    directory = WORK / "configs"
    directory.mkdir(parents=True)
    fill_directory(directory, args.documents)
    with_history(directory, args.documents)
    with (
        BenchServer(directory, WORK / "a.log", env) as a,
        BenchServer(directory, WORK / "b.log", env) as b,
    ):
        a.fetch("/api/configs")  # the first list reads every file; then the index is warm
        b.fetch("/api/configs")
        time.sleep(3)
        cpu = idle_cpu(a, args.idle)
        latencies = sorted(asyncio.run(wake_ups(a, b, args.documents, args.samples)))
    ms = [latency * 1000 for latency in latencies]
    every = f"every {args.survey_every:g} s" if args.survey_every else "every minute"
    print(
        f"{args.documents} documents, each with a history; two replicas on one directory; "
        f"a history survey {every}"
    )
    print(f"  idle CPU of replica A over {args.idle:g} s: {cpu * 100:.1f} % of one core")
    print(
        f"  cross-replica wake-up, {len(ms)} samples: median {statistics.median(ms):.0f} ms, "
        f"p90 {ms[int(len(ms) * 0.9)]:.0f} ms, max {ms[-1]:.0f} ms"
    )


if __name__ == "__main__":
    main()

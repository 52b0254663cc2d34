"""`./pdmw run bench-workers`: how WORKERS=2 share their one socket's connections.

- burst: `--rounds` times, `--connections` connections opened at once (as wrk opens its 32),
  each with one request answered; then which worker holds each (its socket inodes in /proc
  against /proc/net/tcp). The share of the busier worker: 0.5 is an even split, 1.0 one
  worker taking the whole burst.
- wrk: list and get for `--seconds` with 32 connections; req/s and each worker's share of
  the CPU time the workers used.

Writes bench/results/workers.md and workers.json.
"""

import argparse
import asyncio
import json
import shutil
import statistics
import time
from pathlib import Path
from typing import Any

from bench.documents import fill_directory, mac_of
from bench.server import BenchServer, cpu_seconds
from bench.wrk import Scenario, require_wrk, run_wrk
from tests.server import socket_inodes

HERE = Path(__file__).resolve().parent
WORK = HERE / ".work"
ESTABLISHED = "01"  # the state column of /proc/net/tcp


def workers_of(parent: int) -> list[int]:
    return [int(pid) for pid in Path(f"/proc/{parent}/task/{parent}/children").read_text().split()]


def established(port: int) -> set[str]:
    """Inodes of the server side of the connections established on `port`."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            if int(fields[1].rsplit(":", 1)[1], 16) == port and fields[3] == ESTABLISHED:
                inodes.add(fields[9])
    return inodes


async def connect(port: int) -> asyncio.StreamWriter:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"GET /api/health/live HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
    await reader.readuntil(b"\r\n\r\n")
    return writer


async def bursts(server: BenchServer, rounds: int, connections: int) -> list[list[int]]:
    """Per round, the connections each worker holds."""
    workers = workers_of(server.pid)
    counts = []
    for _ in range(rounds):
        writers = await asyncio.gather(*(connect(server.port) for _ in range(connections)))
        held = established(server.port)
        counts.append([len(socket_inodes(pid) & held) for pid in workers])
        for writer in writers:
            writer.close()
        await asyncio.sleep(0.3)
    return counts


def wait_for_both(server: BenchServer) -> None:
    """Until both workers serve (each logs hypercorn's "Running on" line at INFO)."""
    deadline = time.monotonic() + 60
    while server.log.read_text(errors="replace").count("Running on http") < 2:
        if time.monotonic() > deadline:
            raise RuntimeError(f"both workers did not start; see {server.log}")
        time.sleep(0.1)


def busier_share(counts: list[int]) -> float:
    return max(counts) / sum(counts)


def wrk_shares(server: BenchServer, seconds: int) -> dict[str, dict[str, float]]:
    wrk = require_wrk()
    workers = workers_of(server.pid)
    out = {}
    for scenario in (
        Scenario("list", "/api/configs"),
        Scenario("get", f"/api/configs/{mac_of(1)}"),
    ):
        run_wrk(wrk, server, scenario, 2)  # warm every worker
        before = [cpu_seconds(pid) for pid in workers]
        done = run_wrk(wrk, server, scenario, seconds)
        used = [cpu_seconds(pid) - start for pid, start in zip(workers, before, strict=True)]
        out[scenario.name] = {"rps": done.rps, "busier_cpu_share": max(used) / sum(used)}
    return out


def run(args: argparse.Namespace, directory: Path) -> dict[str, Any]:
    env = {"WORKERS": "2"}
    with BenchServer(directory, WORK / "workers.log", env) as server:
        wait_for_both(server)
        counts = asyncio.run(bursts(server, args.rounds, args.connections))
        shares = sorted(busier_share(c) for c in counts)
        result: dict[str, Any] = {
            "connections": args.connections,
            "rounds": counts,
            "busier_share_median": statistics.median(shares),
            "busier_share_worst": shares[-1],
            "rounds_all_to_one": sum(share == 1.0 for share in shares),
        }
        if not args.skip_wrk:
            result["wrk"] = wrk_shares(server, args.seconds)
    return result


def report(result: dict[str, Any]) -> str:
    lines = [
        "# WORKERS=2 on one socket: results of `./pdmw run bench-workers`",
        "",
        f"- bursts of {result['connections']} connections, {len(result['rounds'])} rounds: "
        f"the busier worker's share median {result['busier_share_median']:.2f}, worst "
        f"{result['busier_share_worst']:.2f}; rounds taken whole by one worker: "
        f"{result['rounds_all_to_one']}",
        f"- per round (connections of each worker): {result['rounds']}",
    ]
    for name, figures in result.get("wrk", {}).items():
        lines.append(
            f"- wrk {name}: {figures['rps']:.0f} req/s, the busier worker's share of the "
            f"workers' CPU time {figures['busier_cpu_share']:.2f}"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--seconds", type=int, default=10, help="each wrk run")
    parser.add_argument("--skip-wrk", action="store_true")
    args = parser.parse_args()
    directory = WORK / "workers-configs"
    shutil.rmtree(directory, ignore_errors=True)
    directory.mkdir(parents=True)
    fill_directory(directory, 200)
    result = run(args, directory)
    (HERE / "results" / "workers.json").write_text(json.dumps(result, indent=2) + "\n")
    (HERE / "results" / "workers.md").write_text(report(result))
    print(report(result))


if __name__ == "__main__":
    main()

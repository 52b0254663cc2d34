"""`./pdmw run bench-replicas`: replicas of the PostgreSQL store on one database.

- get throughput of two replicas (`python -m quart_iot` each) against one, the same wrk load
  (32 connections; split 16 + 16 over the two), medians of `--runs` rounds;
- the cross-replica wake-up: a device long polls replica B (`Prefer: wait`), a PUT of its
  document goes to replica A; the time from sending the PUT to B's answer, `--wakeups`
  samples, p50 and p99.

Writes bench/results/replicas.md and replicas.json.
"""

import argparse
import asyncio
import os
import platform
import statistics
import subprocess
import sys
import time

import httpx

from bench import postgres
from bench.__main__ import WORK as BENCH_WORK
from bench.__main__ import save_results
from bench.documents import fill_directory, mac_of
from bench.server import BenchServer
from bench.wrk import Scenario, parse_wrk, require_wrk, wrk_command

WORK = BENCH_WORK / "replicas"
READ_MAC = mac_of(101)


def arguments(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="bench.replicas", description=__doc__)
    parser.add_argument("--documents", type=int, default=2000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--seconds", type=int, default=5)
    parser.add_argument("--wakeups", type=int, default=200)
    return parser.parse_args(argv)


def get_rps(wrk: str, servers: list[BenchServer], seconds: int) -> float:
    """Requests per second of `GET /api/configs/<mac>` spread over the servers."""
    scenario = Scenario("get", f"/api/configs/{READ_MAC}")
    connections = str(32 // len(servers))
    commands = [
        [part if part != "-c32" else f"-c{connections}" for part in
         wrk_command(wrk, server, scenario, seconds)]
        for server in servers
    ]  # fmt: skip
    running = [subprocess.Popen(c, stdout=subprocess.PIPE, text=True) for c in commands]
    total = 0.0
    for process in running:
        out, _ = process.communicate(timeout=seconds + 60)
        raw = parse_wrk(out)
        if any(raw["errors"].values()):
            raise SystemExit(f"wrk reported errors {raw['errors']}")
        total += raw["requests"] / (raw["duration_us"] / 1e6)
    return total


async def wakeups(a: BenchServer, b: BenchServer, count: int) -> list[float]:
    """Milliseconds from a PUT sent to A to the answer of a long poll held on B."""
    samples = []
    async with httpx.AsyncClient(timeout=30) as http:
        for n in range(count):
            mac = mac_of(n % 50)
            etag = (await http.get(f"{b.url}/api/configs/{mac}.json")).headers["ETag"]
            wait = {"If-None-Match": etag, "Prefer": "wait=20"}
            held = asyncio.create_task(http.get(f"{b.url}/api/configs/{mac}.json", headers=wait))
            await asyncio.sleep(0.05)  # held on B by now
            sent = time.perf_counter()
            await http.put(f"{a.url}/api/configs/{mac}", json={"content": {"n": n}})
            answer = await held
            samples.append((time.perf_counter() - sent) * 1000)
            assert answer.status_code == 200, answer.text
    return samples


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(share * len(ordered)))]


def main(argv: list[str]) -> int:
    args = arguments(argv)
    wrk = require_wrk()
    WORK.mkdir(parents=True, exist_ok=True)
    (WORK / "configs").mkdir(exist_ok=True)
    fill_directory(WORK / "configs", args.documents)
    with postgres.cluster() as cluster:
        url = postgres.database(cluster, "replicas", WORK / "configs")
        env = {"DATABASE_URL": url}
        with (
            BenchServer(WORK / "configs", WORK / "a.log", env) as a,
            BenchServer(WORK / "configs", WORK / "b.log", env) as b,
        ):
            get_rps(wrk, [a, b], 1)  # warm-up
            rounds = [(get_rps(wrk, [a], args.seconds), get_rps(wrk, [a, b], args.seconds))
                      for _ in range(args.runs)]  # fmt: skip
            samples = asyncio.run(wakeups(a, b, args.wakeups))
    ratio = statistics.median(two / one for one, two in rounds)
    p50, p99 = percentile(samples, 0.5), percentile(samples, 0.99)
    page = report(args, rounds, ratio, p50, p99)
    save_results("replicas", page, {"args": vars(args), "rounds": rounds, "wakeup_ms": samples})
    print(page)
    return 0 if ratio >= 1.4 and p99 < 100 else 1


def report(
    args: argparse.Namespace,
    rounds: list[tuple[float, float]],
    ratio: float,
    p50: float,
    p99: float,
) -> str:
    load = os.getloadavg()
    each = ", ".join(f"{one:.0f} -> {two:.0f} req/s" for one, two in rounds)
    return "\n".join(
        [
            "# Replicas on one PostgreSQL database",
            "",
            f"`./pdmw run bench-replicas --documents {args.documents} --runs {args.runs} "
            f"--seconds {args.seconds} --wakeups {args.wakeups}`, "
            f"{time.strftime('%Y-%m-%d %H:%M')}: {os.cpu_count()} CPUs, {platform.system()} "
            f"{platform.release()}, Python {platform.python_version()}; the database, both "
            "replicas and wrk on the same machine; load average at the end "
            f"{load[0]:.1f} / {load[1]:.1f} / {load[2]:.1f} (1 / 5 / 15 min).",
            "",
            "| target | measured | verdict |",
            "|---|---:|---|",
            f"| get: two replicas >= 1.4x one | {ratio:.2f}x (median; rounds: {each}) "
            f"| {'PASS' if ratio >= 1.4 else 'FAIL'} |",
            f"| cross-replica wake-up p99 < 100 ms | p50 {p50:.1f} ms, p99 {p99:.1f} ms "
            f"| {'PASS' if p99 < 100 else 'FAIL'} |",
            "",
        ]
    )


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

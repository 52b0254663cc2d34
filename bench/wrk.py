"""Driving the server with wrk, one scenario at a time, and reading wrk's JSON line back."""

import json
import os
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.server import BenchServer, cpu_seconds

LUA = Path(__file__).with_name("wrk.lua")
CONNECTIONS = 32
INSTALL_HINT = (
    "bench: wrk is not installed; get it with `sudo apt-get install wrk` (Debian, Ubuntu)"
    " or `brew install wrk` (macOS)"
)


@dataclass(frozen=True)
class Scenario:
    """One kind of request: a path, extra headers, and for writes the MACs and body file (the
    method, its Content-Type, and the range of the number `__N__` stands for, wrk.lua)."""

    name: str
    path: str
    headers: dict[str, str] = field(default_factory=dict)
    put_macs: tuple[str, ...] = ()
    put_body: Path | None = None
    method: str = "PUT"
    content_type: str = "application/json"
    count: tuple[int, int] = (0, 1_000_000)


@dataclass(frozen=True)
class Measurement:
    """One wrk run of one scenario."""

    scenario: str
    rps: float
    p50_ms: float
    p99_ms: float
    cpu_us_per_request: float
    requests: int
    errors: dict[str, int]


def require_wrk() -> str:
    """The path of wrk, or SystemExit with how to install it."""
    path = shutil.which("wrk")
    if path is None:
        raise SystemExit(INSTALL_HINT)
    return path


def wrk_command(wrk: str, server: BenchServer, scenario: Scenario, seconds: int) -> list[str]:
    command = [wrk, "-t1", f"-c{CONNECTIONS}", f"-d{seconds}s", "--timeout", "10s", "-s", str(LUA)]
    for name, value in scenario.headers.items():
        command += ["-H", f"{name}: {value}"]
    return [*command, f"{server.url}{scenario.path}"]


def run_wrk(wrk: str, server: BenchServer, scenario: Scenario, seconds: int) -> Measurement:
    """Run wrk for `seconds` against the server; the figures and the server's CPU time."""
    env = dict(os.environ)
    if scenario.put_macs:
        env["BENCH_PUT_MACS"] = ",".join(scenario.put_macs)
        env["BENCH_PUT_BODY"] = str(scenario.put_body)
        env["BENCH_METHOD"] = scenario.method
        env["BENCH_CONTENT_TYPE"] = scenario.content_type
        env["BENCH_COUNT_FROM"], env["BENCH_COUNT_TO"] = map(str, scenario.count)
    before = cpu_seconds(server.pid)
    done = subprocess.run(
        wrk_command(wrk, server, scenario, seconds),
        env=env,
        capture_output=True,
        text=True,
        check=True,
        timeout=seconds + 60,
    )
    cpu = cpu_seconds(server.pid) - before
    return measurement(scenario.name, parse_wrk(done.stdout), cpu)


def parse_wrk(stdout: str) -> dict[str, Any]:
    """The JSON line that wrk.lua's done() prints, last in wrk's output."""
    line = stdout.strip().splitlines()[-1]
    result: dict[str, Any] = json.loads(line)
    return result


def measurement(scenario: str, raw: dict[str, Any], cpu: float) -> Measurement:
    requests = int(raw["requests"])
    return Measurement(
        scenario=scenario,
        rps=requests / (raw["duration_us"] / 1e6),
        p50_ms=raw["p50_us"] / 1000,
        p99_ms=raw["p99_us"] / 1000,
        cpu_us_per_request=cpu * 1e6 / requests if requests else float("nan"),
        requests=requests,
        errors={name: int(count) for name, count in raw["errors"].items()},
    )

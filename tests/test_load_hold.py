"""Load hold: 200 configs, 32 clients for 10 s (40% list, 40% get, 20% PUT), zero errors.

Latency percentiles are reported, never asserted: they are printed, and written as JSON to
$LOAD_HOLD_REPORT when it is set. $LOAD_HOLD_SECONDS shortens or lengthens the hold.
"""

import asyncio
import json
import os
import random
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.harness import temp_files
from tests.server import TLS, Server, running_server

CONFIGS = 200
CLIENTS = 32
SECONDS = float(os.environ.get("LOAD_HOLD_SECONDS", "10"))  # about 2,500 requests
MACS = [f"1a-00-00-00-{n // 256:02x}-{n % 256:02x}" for n in range(CONFIGS)]


def _document(mac: str, version: int) -> dict[str, Any]:
    return {
        "deviceName": f"Device {mac}",
        "deviceEntityId": f"light.{mac.replace('-', '_')}",
        "enableOTA": version % 2 == 0,
        "version": version,
        "settings": {f"key{i}": f"value {i} of {mac}" for i in range(30)},
    }


@dataclass
class Tally:
    latencies: dict[str, list[float]] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)

    def record(self, op: str, started: float) -> None:
        self.latencies.setdefault(op, []).append(time.perf_counter() - started)


async def _client(url: str, seed: int, deadline: float, tally: Tally) -> None:
    rng = random.Random(seed)
    async with httpx.AsyncClient(base_url=url, timeout=30, verify=TLS) as client:
        while time.monotonic() < deadline:
            pick, mac = rng.random(), rng.choice(MACS)
            started = time.perf_counter()
            try:
                if pick < 0.4:
                    op, response = "list", await client.get("/api/configs")
                    ok = response.status_code == 200 and response.json()["count"] == CONFIGS
                elif pick < 0.8:
                    op, response = "get", await client.get(f"/api/configs/{mac}")
                    ok = response.status_code == 200 and response.json()["mac_address"] == mac
                else:
                    body = {"content": _document(mac, rng.randrange(1000))}
                    op, response = "put", await client.put(f"/api/configs/{mac}", json=body)
                    ok = response.status_code == 200
            except httpx.HTTPError as error:
                tally.errors.append(f"{type(error).__name__}: {error}")
                continue
            tally.record(op, started)
            if not ok:
                tally.errors.append(f"{op} {mac}: {response.status_code} {response.text[:200]}")


def _percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def _report(tally: Tally, elapsed: float) -> dict[str, Any]:
    every = [v for values in tally.latencies.values() for v in values]
    figures: dict[str, Any] = {
        "configs": CONFIGS,
        "clients": CLIENTS,
        "seconds": round(elapsed, 1),
        "requests": len(every),
        "requests_per_second": round(len(every) / elapsed, 1),
        "errors": len(tally.errors),
    }
    for op, values in [("all", every), *sorted(tally.latencies.items())]:
        figures[op] = {
            "count": len(values),
            "p50_ms": round(_percentile(values, 0.50) * 1000, 1),
            "p99_ms": round(_percentile(values, 0.99) * 1000, 1),
        }
    return figures


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Server]:
    directory = tmp_path / "configs"
    directory.mkdir()
    for mac in MACS:
        (directory / f"{mac}.json").write_text(json.dumps(_document(mac, 0), indent=2))
    with running_server(directory) as server:
        yield server


async def test_load_hold_without_errors(server: Server, capsys: pytest.CaptureFixture[str]) -> None:
    tally = Tally()
    started = time.monotonic()
    deadline = started + SECONDS
    await asyncio.gather(*(_client(server.url, n, deadline, tally) for n in range(CLIENTS)))
    figures = _report(tally, time.monotonic() - started)
    with capsys.disabled():
        print(f"\nload hold: {json.dumps(figures)}")
    if report := os.environ.get("LOAD_HOLD_REPORT"):
        Path(report).write_text(json.dumps(figures, indent=2) + "\n")
    assert tally.errors == []
    assert set(tally.latencies) == {"list", "get", "put"}
    assert temp_files(server.directory) == []

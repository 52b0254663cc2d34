"""`./pdmw run python -m bench.metrics_cardinality`: what invented HTTP methods do to /metrics.

Starts `python -m quart_iot`, scrapes it, sends `--requests` requests with a different
invented method each (`M0 /api/configs`, `M1 ...`), scrapes again, and prints for each scrape:
the number of samples, the size of /metrics, the median time to fetch it, the slowest
/api/health/live answer while scrapes ran (what a render on the event loop makes others wait),
and the server's resident memory.
"""

import argparse
import http.client
import shutil
import statistics
import tempfile
import threading
import time
from pathlib import Path

from bench.server import BenchServer

SCRAPES = 5


def resident_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS in /proc/<pid>/status")


def invented_methods(port: int, count: int) -> None:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    for index in range(count):
        connection.request(f"M{index}", "/api/configs")
        connection.getresponse().read()
    connection.close()


def probe_while(port: int, running: threading.Event, worst: list[float]) -> None:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    while running.is_set():
        started = time.perf_counter()
        connection.request("GET", "/api/health/live")
        connection.getresponse().read()
        worst[0] = max(worst[0], time.perf_counter() - started)
    connection.close()


def measure(server: BenchServer, label: str) -> None:
    running, worst = threading.Event(), [0.0]
    running.set()
    prober = threading.Thread(target=probe_while, args=(server.port, running, worst))
    prober.start()
    times, body = [], b""
    connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=60)
    for _ in range(SCRAPES):
        started = time.perf_counter()
        connection.request("GET", "/metrics")
        body = connection.getresponse().read()
        times.append(time.perf_counter() - started)
    connection.close()
    running.clear()
    prober.join()
    samples = [line for line in body.decode().splitlines() if line and not line.startswith("#")]
    print(
        f"{label:>28}: {len(samples):6d} samples, {len(body) / 1e6:7.3f} MB, "
        f"scrape {statistics.median(times) * 1000:7.1f} ms (median of {SCRAPES}), "
        f"slowest live probe meanwhile {worst[0] * 1000:7.1f} ms, "
        f"RSS {resident_bytes(server.pid) / 1e6:6.1f} MB"
    )


def main() -> None:
    parser = argparse.ArgumentParser(prog="bench.metrics_cardinality")
    parser.add_argument("--requests", type=int, default=10_000)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="quart_iot-metrics-bench-"))
    try:
        (work / "configs").mkdir()
        with BenchServer(work / "configs", work / "server.log") as server:
            measure(server, "fresh")
            invented_methods(server.port, args.requests)
            measure(server, f"after {args.requests} invented")
    finally:
        shutil.rmtree(work)


if __name__ == "__main__":
    main()

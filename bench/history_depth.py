"""`./pdmw run python -m bench.history_depth`: what a save costs as a device's history grows.

In one process, for each depth (10 and 10,000 kept versions by default), a directory with
one device whose history holds that many versions (hard links of one document, named as the
store names them), then `--saves` saves of each device through the store's write path
(`Writer.save`, as a PUT runs it in its worker thread), the depths taking turns save by save
so that the machine's drift hits each alike. fsync is off unless `--fsync` (the disk's noise
is larger than the difference measured). Prints, per depth, the median and p90 of each
save's wall time, and the median of its CPU time (this process's, user and system).
"""

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

from quart_iot.store import DirectoryBackend, Precondition
from quart_iot.store.directory import HISTORY_NAME

MAC = "aa-bb-cc-dd-ee-ff"
DEPTHS = (10, 10_000)
CONTENT = {"deviceName": "bench device", "wifi": {"ssid": "lab", "password": "secret"}}


def shelve(directory: Path, depth: int) -> None:
    """The device's document, and `depth` versions of it, named as the store names them."""
    directory.mkdir()
    document = directory / f"{MAC}.json"
    document.write_bytes(b'{"deviceName":"bench device"}\n')
    shelf = directory / HISTORY_NAME / MAC
    shelf.mkdir(parents=True)
    start = time.time_ns() - depth * 1_000_000
    for index in range(depth):
        os.link(document, shelf / f"{start + index * 1_000_000:019d}-{index:08x}.updated.json")


def backend_of(directory: Path, depth: int, saves: int) -> DirectoryBackend:
    shelve(directory, depth)
    backend = DirectoryBackend(directory, history_max_versions=depth + saves + 2)
    save(backend, -1)  # a shelf from before the mark is listed once, by its first save
    return backend


def save(backend: DirectoryBackend, seq: int) -> tuple[float, float]:
    """(wall seconds, CPU seconds) of one save."""
    wall, cpu = time.perf_counter(), time.process_time()
    backend.writer.save(MAC, {**CONTENT, "seq": seq}, Precondition(), time.monotonic() + 5)
    return time.perf_counter() - wall, time.process_time() - cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--saves", type=int, default=500)
    parser.add_argument("--fsync", action="store_true", help="keep fsync (off: CPU only)")
    parser.add_argument("--depths", type=int, nargs="+", default=list(DEPTHS))
    args = parser.parse_args()
    if not args.fsync:
        os.fsync = lambda fd: None  # the store's own cost, not the disk's
    with tempfile.TemporaryDirectory() as scratch:
        backends = {d: backend_of(Path(scratch, str(d)), d, args.saves) for d in args.depths}
        timings: dict[int, list[tuple[float, float]]] = {depth: [] for depth in args.depths}
        for seq in range(args.saves):
            for depth, backend in backends.items():
                timings[depth].append(save(backend, seq))
    print(f"{args.saves} saves per depth, taking turns; fsync {'on' if args.fsync else 'off'}")
    for depth, measured in timings.items():
        walls = sorted(wall for wall, _ in measured)
        cpu = statistics.median(cpu for _, cpu in measured) * 1000
        median, p90 = statistics.median(walls) * 1000, walls[int(len(walls) * 0.9)] * 1000
        print(
            f"  {depth:6} versions kept: wall median {median:6.3f} ms, p90 {p90:6.3f} ms; "
            f"CPU median {cpu:6.3f} ms per save"
        )


if __name__ == "__main__":
    main()

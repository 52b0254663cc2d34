"""`./pdmw run python -m bench.history_memory`: what listing every device's history keeps.

In one process, makes `--devices` devices with `--versions` versions each through the
store's write path (fsync switched off: this measures memory, not the disk), waits out the
timestamp tick so the listings may be cached, lists every device's history once, and prints
the bytes listed and the resident memory before and after the listing.
"""

import argparse
import os
import tempfile
import time
from pathlib import Path

from quart_iot.store import DirectoryBackend, Precondition

CONTENT = {"deviceName": "bench device", "wifi": {"ssid": "lab", "password": "secret"}}


def resident_mib() -> float:
    pages = int(Path("/proc/self/statm").read_text().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20


def mac_of(index: int) -> str:
    return f"aa-bb-cc-{index >> 16 & 255:02x}-{index >> 8 & 255:02x}-{index & 255:02x}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--devices", type=int, default=2000)
    parser.add_argument("--versions", type=int, default=50)
    args = parser.parse_args()
    os.fsync = lambda fd: None  # memory, not durability
    with tempfile.TemporaryDirectory() as directory:
        store = DirectoryBackend(Path(directory), history_max_versions=args.versions)
        macs = [mac_of(index) for index in range(args.devices)]
        for mac in macs:
            for version in range(args.versions):
                content = {**CONTENT, "version": version}
                store.writer.save(mac, content, Precondition(), time.monotonic() + 5)
        time.sleep(2.1)  # past the timestamp tick: every listing may be cached
        before = resident_mib()
        started = time.perf_counter()
        listed = sum(len(store.catalogue.listing(mac)) for mac in macs)
        seconds = time.perf_counter() - started
        print(
            f"{args.devices} devices x {args.versions} versions: listed {listed / 2**20:.1f} MiB"
            f" in {seconds:.1f} s; resident memory {before:.0f} -> {resident_mib():.0f} MiB"
        )


if __name__ == "__main__":
    main()

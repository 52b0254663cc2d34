"""`python -m bench.threaded`: what a thread per waiting client costs (the threaded Flask design).

10,000 Python threads each blocked on an Event, as waitress threads held by long polls would
be: resident memory per thread above the idle process, and the time to start and to wake them.
"""

import threading
import time
from pathlib import Path

THREADS = 10_000


def resident_kb() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError("no VmRSS")


def main() -> None:
    idle = resident_kb()
    changed = threading.Event()
    threads = [threading.Thread(target=changed.wait, daemon=True) for _ in range(THREADS)]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    start_seconds = time.perf_counter() - started
    per_thread = (resident_kb() - idle) / THREADS
    woken = time.perf_counter()
    changed.set()
    for thread in threads:
        thread.join()
    print(
        f"{THREADS} threads blocked: {per_thread:.1f} KB each above idle; "
        f"started in {start_seconds:.1f} s; all woken and ended in "
        f"{time.perf_counter() - woken:.2f} s"
    )


if __name__ == "__main__":
    main()

"""`./pdmw run bench-rql`: what evaluating an RQL filter over 20,000 devices costs.

The benchmark's realistic documents (bench/documents.py, 1.6-2.1 KB each), each given one of
five `deviceModel`s, parsed and held in memory as a store would hold them. For each filter:
parse and compile (once per request), then the compiled predicate over every document
(`Filter.select`), the median of `--runs` passes. For scale, the same selection written by
hand as a list comprehension (the floor of any Python evaluation over dicts), and the
budget: issue 21's target is a filtered list at N = 20,000 at least 0.5 of the unfiltered
list, which is served from a cached body at about 2 ms of CPU per request (bench/results/
results.md), so the whole filtered request may cost about 4 ms. Writes bench/results/rql.md.
"""

import argparse
import gc
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

from bench.__main__ import RESULTS
from bench.documents import mac_of, make_document
from quart_iot.documents import Document
from quart_iot.rql import Fields, Filter

MODELS = ("relay_board", "env_sensor", "door_sensor", "led_strip", "plug")
Devices = list[tuple[str, Document]]

# (filter, the same selection by hand)
CASES: list[tuple[str, Callable[[Devices], list[str]] | None]] = [
    (
        'eq(deviceModel,"relay_board")',
        lambda ds: [m for m, d in ds if d.get("deviceModel") == "relay_board"],
    ),
    (
        'and(eq(deviceModel,"relay_board"),ne(mqtt/host,"broker.lan"))',
        lambda ds: [
            m
            for m, d in ds
            if d.get("deviceModel") == "relay_board"
            and not (type(d.get("mqtt")) is dict and d["mqtt"].get("host") == "broker.lan")
        ],
    ),
    (
        'ne(mqtt/host,"mqtt.local")',
        lambda ds: [
            m
            for m, d in ds
            if not (type(d.get("mqtt")) is dict and d["mqtt"].get("host") == "mqtt.local")
        ],
    ),
    (
        'like(deviceName,"Office*")',
        lambda ds: [
            m
            for m, d in ds
            if type(d.get("deviceName")) is str and d["deviceName"].startswith("Office")
        ],
    ),
    ('in(location/room,"kitchen","garage")', None),
    ('and(eq(mqtt/qos,1),gt(ledBrightness,100),in(location/room,"kitchen","garage"))', None),
    ('or(lt(location/floor,1),like(wifi/hostname,"*-porch-*"))', None),
    ("exists(enableOTA)", None),
    ('not(eq(sensors/0/type,"pir"))', None),
    ('in(mac_address,"24-0a-00-00-00-07","24-0a-00-00-4e-1f","24-0a-00-00-00-63")', None),
]


def devices(count: int) -> Devices:
    """The benchmark's documents, each with a model."""
    found = []
    for index in range(count):
        document = make_document(index)
        document["deviceModel"] = MODELS[index % len(MODELS)]
        found.append((mac_of(index), document))
    return found


def median_ms(work: Callable[[], Any], runs: int) -> float:
    """The median CPU time of this thread (the machine is shared: wall time is noisier)."""
    times = []
    for _ in range(runs):
        started = time.thread_time()
        work()
        times.append(time.thread_time() - started)
    return statistics.median(times) * 1000


def measure(fleet: Devices, runs: int) -> list[dict[str, Any]]:
    rows = [measure_filter(fleet, text, by_hand, runs) for text, by_hand in CASES]
    fields = Fields("mqtt/host,enableOTA,location/room")
    rows.append(
        {
            "filter": f"fields={fields.text} (every device)",
            "selected": len(fleet),
            "compile_us": None,
            "select_ms": median_ms(lambda: [fields.of(m, d) for m, d in fleet], runs),
            "by_hand_ms": None,
        }
    )
    return rows


def measure_filter(
    fleet: Devices, text: str, by_hand: Callable[[Devices], list[str]] | None, runs: int
) -> dict[str, Any]:
    compiled = Filter(text)
    selected = compiled.select(fleet)
    row = {
        "filter": text,
        "selected": len(selected),
        "compile_us": median_ms(lambda: Filter(text), runs * 20) * 1000,
        "select_ms": median_ms(lambda: compiled.select(fleet), runs),
        "by_hand_ms": None,
    }
    if by_hand is not None:
        assert by_hand(fleet) == selected, text
        row["by_hand_ms"] = median_ms(lambda: by_hand(fleet), runs)
    return row


def report(rows: list[dict[str, Any]], count: int, runs: int) -> str:
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=False
    ).stdout.strip()
    lines = [
        "# RQL filter evaluation",
        "",
        f"`./pdmw run bench-rql --devices {count} --runs {runs}` at {commit}: "
        f"Python {platform.python_version()}, {platform.machine()}; medians of {runs} passes "
        "over every document (in memory, parsed), CPU time of the thread.",
        "",
        "| filter | selected | parse + compile (us) | evaluation (ms) | ns per device "
        "| by hand (ms) |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for row in rows:
        compile_us = "" if row["compile_us"] is None else f"{row['compile_us']:.0f}"
        by_hand = "" if row["by_hand_ms"] is None else f"{row['by_hand_ms']:.1f}"
        per_device = row["select_ms"] * 1e6 / count
        lines.append(
            f"| `{row['filter']}` | {row['selected']} | {compile_us} | {row['select_ms']:.1f} "
            f"| {per_device:.0f} | {by_hand} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="bench.rql", description=__doc__)
    parser.add_argument("--devices", type=int, default=20_000)
    parser.add_argument("--runs", type=int, default=15, help="passes per filter (medians)")
    args = parser.parse_args(argv)
    fleet = devices(args.devices)
    gc.freeze()  # the documents are long-lived, as in a store: no collection walks them
    rows = measure(fleet, args.runs)
    page = report(rows, args.devices, args.runs)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "rql.md").write_text(page, encoding="utf-8")
    print(page)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

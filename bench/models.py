"""`./pdmw run bench-models`: what device models and PATCH cost.

One `python -m quart_iot` on a directory of 200 documents and the realistic ESP32 model
(tests/esp32_schema.json: Wi-Fi, MQTT, OTA, GPIO, about 70 properties). Each scenario is
measured right after the ceiling (`GET /api/health/live`) on the same server, as
`./pdmw run bench` does, so each ratio compares figures of the same moment; the verdicts
compare the two scenarios' ratios, run by run, then take the median. Odd rounds run the
scenarios in reverse order, so neither side of a pair always runs second. Every write changes its
document (wrk.lua's `__N__`: `reportIntervalSeconds` counts up), so each is a real write with
its history version, never a save of the very bytes already there.

- PUT, no model: the conforming 1.9 KB ESP32 document without `deviceModel` (no validation);
- PUT, ESP32 model: the same naming the model (validated);
- PUT, no model, again: the first scenario on 32 other devices, the control: its quotient to
  the first is what the runs' noise alone gives;
- PUT of 20 KB, ESP32 model: a conforming 20 KB document, whole;
- PATCH of one field of 20 KB: a merge patch of `reportIntervalSeconds` on those documents.

Targets (issue 20): PUT with the model >= 0.9x PUT without; the PATCH >= 0.9x the PUT of the
whole 20 KB. Writes bench/results/models.md.
"""

import argparse
import json
import os
import shutil
import statistics
import sys
from pathlib import Path
from typing import Any

from bench.__main__ import RESULTS, WORK
from bench.documents import fill_directory, mac_of
from bench.history import pair, put_json
from bench.report import Pair
from bench.server import BenchServer
from bench.wrk import CONNECTIONS, Scenario, require_wrk
from quart_iot.documents import dump_document
from quart_iot.patch import MERGE_PATCH
from tests.esp32_schema import MODEL_CODE, esp32_device, esp32_schema, large_esp32_device

DOCUMENTS = 200
TARGET = 0.9
COUNT = (5, 86_400)  # reportIntervalSeconds' range in the schema
WRITERS = 32  # devices each PUT of 1.9 KB rotates over, as `./pdmw run bench` does
SMALL_BARE = tuple(mac_of(10_000 + index) for index in range(WRITERS))
SMALL_MODEL = tuple(mac_of(20_000 + index) for index in range(WRITERS))
SMALL_AGAIN = tuple(mac_of(40_000 + index) for index in range(WRITERS))
# The 20 KB devices: 32 requests in flight over 32 devices would make two PATCHes of one
# device meet now and then, and the later applied again (as it must): over 256, what is
# measured is the PATCH itself, not the contention.
LARGE = tuple(mac_of(30_000 + index) for index in range(8 * WRITERS))
PAIRS = (
    ("PUT, ESP32 model", "PUT, no model"),
    ("PATCH of one field of 20 KB", "PUT of 20 KB, ESP32 model"),
)
# The same scenario twice, on other devices: how far apart two measurements of one thing land
# in these runs (the noise the verdicts stand on), reported beside them, judged by no target.
CONTROL = ("PUT, no model, again", "PUT, no model")


def counted(content: dict[str, Any]) -> str:
    """`{"content": ...}` whose reportIntervalSeconds is wrk.lua's `__N__`."""
    body = json.dumps({"content": {**content, "reportIntervalSeconds": "__N__"}})
    return body.replace('"__N__"', "__N__")


def scenarios(work: Path) -> list[Scenario]:
    bare = {key: value for key, value in esp32_device().items() if key != "deviceModel"}
    bodies = {
        "bare.json": counted(bare),
        "model.json": counted(esp32_device()),
        "large.json": counted(large_esp32_device(20_000)),
        "patch.json": '{"reportIntervalSeconds": __N__}',
    }
    for name, body in bodies.items():
        (work / name).write_text(body, encoding="utf-8")

    def write(name: str, macs: tuple[str, ...], body: str, **more: Any) -> Scenario:
        path = f"/api/configs/{macs[0]}"
        return Scenario(name, path, put_macs=macs, put_body=work / body, count=COUNT, **more)

    return [
        write("PUT, no model", SMALL_BARE, "bare.json"),
        write("PUT, ESP32 model", SMALL_MODEL, "model.json"),
        write("PUT, no model, again", SMALL_AGAIN, "bare.json"),
        write("PUT of 20 KB, ESP32 model", LARGE, "large.json"),
        write("PATCH of one field of 20 KB", LARGE, "patch.json", method="PATCH",
              content_type=MERGE_PATCH),
    ]  # fmt: skip


def prepare(server: BenchServer) -> None:
    """The model, and the 20 KB documents the PATCH changes."""
    put_json(server, f"/api/models/{MODEL_CODE}", {"name": "ESP32", "configSchema": esp32_schema()})
    for mac in LARGE:
        put_json(server, f"/api/configs/{mac}", {"content": large_esp32_device(20_000)})


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="bench.models", description=__doc__)
    parser.add_argument("--runs", type=int, default=9, help="rounds (medians)")
    parser.add_argument("--seconds", type=int, default=3, help="seconds of each wrk run")
    args = parser.parse_args(argv)
    wrk = require_wrk()
    work = WORK / "models"
    shutil.rmtree(work, ignore_errors=True)
    (work / "configs").mkdir(parents=True)
    fill_directory(work / "configs", DOCUMENTS)
    plan = scenarios(work)
    load = os.getloadavg()[0]
    with BenchServer(work / "configs", work / "server.log") as server:
        prepare(server)
        runs = [
            {s.name: pair(wrk, server, s, args) for s in in_order(plan, r)}
            for r in range(args.runs)
        ]
    args.load = (load, os.getloadavg()[0])
    page, passed = report(runs, args)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "models.md").write_text(page, encoding="utf-8")
    print(page)
    return 0 if passed else 1


def in_order(plan: list[Scenario], round_number: int) -> list[Scenario]:
    """The scenarios in their order on even rounds, reversed on odd ones: neither side of a
    pair always runs after the other (a later run meets more history and a warmer cache)."""
    return plan if round_number % 2 == 0 else plan[::-1]


def ratio(run: dict[str, Pair], name: str) -> float:
    return run[name].measured.rps / run[name].ceiling.rps


def cpu_per_request(run: dict[str, Pair], name: str) -> float:
    return run[name].measured.cpu_us_per_request


def report(runs: list[dict[str, Pair]], args: argparse.Namespace) -> tuple[str, bool]:
    load = getattr(args, "load", (float("nan"), float("nan")))
    sizes = {
        "1.9 KB": len(dump_document(esp32_device())),
        "20 KB": len(dump_document(large_esp32_device(20_000))),
    }
    lines = [
        "# Device models and PATCH benchmark",
        "",
        f"`./pdmw run bench-models`: wrk, 1 thread, {CONNECTIONS} connections, {args.seconds} s "
        f"per run after a 1 s warm-up, medians of {args.runs} runs; {DOCUMENTS} documents, the "
        f"directory store, history on; {os.cpu_count()} CPUs, load average {load[0]:.1f} at "
        f"the start and {load[1]:.1f} at the end. Documents of {sizes['1.9 KB']} and "
        f"{sizes['20 KB']} bytes; every write changes its document. Ratio: the scenario's "
        "req/s over the ceiling's (`GET /api/health/live`, same server, measured right "
        "before); each verdict is the median, over the runs, of the two ratios' quotient.",
        "",
        "| scenario | req/s | ratio to ceiling | p50 ms | p99 ms | CPU us/req |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for name in runs[0]:
        measured = [run[name].measured for run in runs]
        lines.append(
            f"| {name} | {statistics.median(m.rps for m in measured):.0f} "
            f"| {statistics.median(ratio(run, name) for run in runs):.3f} "
            f"| {statistics.median(m.p50_ms for m in measured):.2f} "
            f"| {statistics.median(m.p99_ms for m in measured):.2f} "
            f"| {statistics.median(m.cpu_us_per_request for m in measured):.0f} |"
        )
    lines.append("")
    passed = True
    for name, against in PAIRS:
        cost = statistics.median(ratio(run, name) / ratio(run, against) for run in runs)
        ok = cost >= TARGET
        passed = passed and ok
        verdict = "PASS" if ok else "FAIL"
        cpu = statistics.median(
            cpu_per_request(run, against) / cpu_per_request(run, name) for run in runs
        )
        lines.append(
            f"- {name} / {against}: {cost:.2f}x (target >= {TARGET}): {verdict}; "
            f"by CPU per request {cpu:.2f}x"
        )
    name, against = CONTROL
    if name in runs[0]:
        quotients = sorted(ratio(run, name) / ratio(run, against) for run in runs)
        lines.append(
            f"- {name} / {against}: {statistics.median(quotients):.2f}x, from "
            f"{quotients[0]:.2f}x to {quotients[-1]:.2f}x over the runs (the same request twice: "
            "the noise of these runs, no target)"
        )
    return "\n".join([*lines, ""]), passed


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

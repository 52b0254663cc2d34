import argparse
import json
from pathlib import Path

from bench.models import PAIRS, counted, in_order, report, scenarios
from bench.report import Pair
from bench.wrk import Measurement
from tests.esp32_schema import esp32_device


def measured(rps: float) -> Measurement:
    return Measurement("x", rps, 1.0, 2.0, 100.0, int(rps), {})


def test_each_write_of_the_bench_changes_its_document(tmp_path: Path) -> None:
    body = counted(esp32_device())
    assert "__N__" in body
    sent = json.loads(body.replace("__N__", "77"))
    assert sent["content"]["reportIntervalSeconds"] == 77
    plan = {scenario.name: scenario for scenario in scenarios(tmp_path)}
    patch = plan["PATCH of one field of 20 KB"]
    assert (patch.method, patch.content_type) == ("PATCH", "application/merge-patch+json")
    assert patch.put_macs == plan["PUT of 20 KB, ESP32 model"].put_macs
    assert "deviceModel" not in (tmp_path / "bare.json").read_text()
    for name, against in PAIRS:
        assert {name, against} <= plan.keys()


def test_the_bench_judges_each_pair_within_its_runs() -> None:
    run = {
        "PUT, no model": Pair(measured(1000), measured(300)),
        "PUT, ESP32 model": Pair(measured(800), measured(270)),  # 0.3375 / 0.3: 1.125x, shown 1.13x
        "PUT of 20 KB, ESP32 model": Pair(measured(1000), measured(100)),
        "PATCH of one field of 20 KB": Pair(measured(1000), measured(80)),  # 0.8x
    }
    page, passed = report([run], argparse.Namespace(runs=1, seconds=3))
    assert passed is False
    assert "PUT, ESP32 model / PUT, no model: 1.13x (target >= 0.9): PASS" in page
    assert "PATCH of one field of 20 KB / PUT of 20 KB, ESP32 model: 0.80x" in page
    assert "| PUT, no model | 300 | 0.300 |" in page


def test_odd_rounds_run_the_scenarios_in_reverse(tmp_path: Path) -> None:
    plan = scenarios(tmp_path)
    assert in_order(plan, 0) == plan
    assert in_order(plan, 1) == plan[::-1]


def test_the_control_shows_the_noise_and_judges_nothing() -> None:
    def run(again: float) -> dict[str, Pair]:
        return {
            "PUT, no model": Pair(measured(1000), measured(300)),
            "PUT, ESP32 model": Pair(measured(1000), measured(300)),
            "PUT, no model, again": Pair(measured(1000), measured(again)),
            "PUT of 20 KB, ESP32 model": Pair(measured(1000), measured(100)),
            "PATCH of one field of 20 KB": Pair(measured(1000), measured(100)),
        }

    page, passed = report([run(150), run(300), run(450)], argparse.Namespace(runs=3, seconds=3))
    assert passed is True
    assert (
        "- PUT, no model, again / PUT, no model: 1.00x, from 0.50x to 1.50x over the runs" in page
    )
    assert "PUT, ESP32 model / PUT, no model: 1.00x (target >= 0.9): PASS; by CPU" in page

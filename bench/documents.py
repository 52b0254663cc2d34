"""Realistic device documents for the benchmark: 1.5-2 KB, 20+ keys, nested, deterministic."""

import random
from pathlib import Path
from typing import Any

from quart_iot.documents import Document, dump_document

ROOMS = ("kitchen", "living_room", "bedroom", "garage", "porch", "office", "cellar", "attic")
SENSORS = ("bme280", "sht31", "pir", "ds18b20", "bh1750", "ccs811", "hc-sr04")


def mac_of(index: int) -> str:
    """The canonical MAC of the index-th benchmark device."""
    return "24-0a-" + "-".join(f"{byte:02x}" for byte in index.to_bytes(4, "big"))


def make_document(index: int) -> Document:
    """The document of the index-th device; most carry the three summary keys."""
    rng = random.Random(index)
    room = rng.choice(ROOMS)
    doc: Document = {}
    if index % 10:  # one device in ten lacks them, as hand-made configs do
        doc["deviceName"] = f"{room.replace('_', ' ').title()} node {index}"
        doc["deviceEntityId"] = f"sensor.{room}_{index}"
        doc["enableOTA"] = rng.random() < 0.7
    doc.update(_identity(index, rng, room))
    doc.update(_network(index, rng, room))
    doc["sensors"] = [_sensor(rng, pin) for pin in rng.sample(range(2, 40), rng.randint(2, 4))]
    doc["schedule"] = [
        {"at": f"{hour:02d}:00", "action": rng.choice(("report", "calibrate", "sleep"))}
        for hour in sorted(rng.sample(range(24), 3))
    ]
    doc["tags"] = rng.sample(("indoor", "outdoor", "battery", "mains", "beta", "prod"), 3)
    doc["changelog"] = [
        {"version": f"1.{minor}.0", "by": f"team-{rng.randint(1, 12)}", "note": _NOTE % minor}
        for minor in sorted(rng.sample(range(10), 3))
    ]
    return doc


_NOTE = "Reflashed over the air after the %d.x release; calibration and Wi-Fi settings kept."


def _identity(index: int, rng: random.Random, room: str) -> dict[str, Any]:
    return {
        "firmwareVersion": f"1.{rng.randint(0, 9)}.{rng.randint(0, 30)}",
        "hardwareRevision": rng.choice(("esp32-devkitc-v4", "esp32-s3-zero", "esp32-c3-mini")),
        "location": {"building": "main", "floor": rng.randint(0, 3), "room": room},
        "timezone": "Europe/Berlin",
        "logLevel": rng.choice(("debug", "info", "warning")),
        "deepSleepSeconds": rng.choice((0, 60, 300, 900)),
        "reportIntervalSeconds": rng.choice((10, 30, 60, 120)),
        "watchdogSeconds": 30,
        "ledBrightness": rng.randint(0, 255),
        "calibration": {"temperatureOffset": round(rng.uniform(-2, 2), 2), "humidityScale": 1.0},
        "owner": f"team-{rng.randint(1, 12)}",
        "createdBy": "provisioning",
        "notes": f"Mounted near the {room.replace('_', ' ')} window, device {index}.",
    }


def _network(index: int, rng: random.Random, room: str) -> dict[str, Any]:
    return {
        "wifi": {
            "ssid": "homelab-iot",
            "hostname": f"esp32-{room.replace('_', '-')}-{index}",
            "powerSave": rng.choice(("none", "min", "max")),
            "fallbackAp": {"ssid": f"esp32-setup-{index}", "channel": rng.randint(1, 11)},
        },
        "mqtt": {
            "host": "mqtt.local",
            "port": 8883,
            "tls": True,
            "topicPrefix": f"home/{room}/{index}",
            "qos": rng.choice((0, 1)),
            "keepAliveSeconds": 60,
        },
        "ota": {"url": "https://ota.local/firmware", "channel": rng.choice(("stable", "beta"))},
        "ntpServers": ["0.pool.ntp.org", "1.pool.ntp.org"],
    }


def _sensor(rng: random.Random, pin: int) -> dict[str, Any]:
    return {
        "type": rng.choice(SENSORS),
        "pin": pin,
        "intervalSeconds": rng.choice((5, 15, 30, 60)),
        "enabled": rng.random() < 0.9,
        "thresholds": {"low": rng.randint(0, 20), "high": rng.randint(25, 40)},
    }


def fill_directory(directory: Path, count: int) -> int:
    """Write `count` documents as the service stores them; their total size in bytes."""
    total = 0
    for index in range(count):
        data = dump_document(make_document(index))
        (directory / f"{mac_of(index)}.json").write_bytes(data)
        total += len(data)
    return total

"""A realistic ESP32 device model (Wi-Fi, MQTT, OTA, GPIO), a document that conforms, one that
does not, and the violations it has: for the validation tests, the routes' and the benchmark."""

import copy
import json
from pathlib import Path
from typing import Any

from quart_iot.documents import Document, dump_document

HERE = Path(__file__).parent
MODEL_CODE = "esp32_devkitc"


def _load(name: str) -> Any:
    return json.loads((HERE / name).read_text(encoding="utf-8"))


def esp32_schema() -> Document:
    """The model's JSON Schema (draft 2020-12, `$defs` with local `$ref`s)."""
    schema: Document = _load("esp32_schema.json")
    return schema


def esp32_device() -> Document:
    """A document that conforms to the schema."""
    device: Document = _load("esp32_schema_device.json")
    return device


def esp32_invalid_device() -> Document:
    """A document wrong in the places INVALID_VIOLATIONS lists."""
    device: Document = _load("esp32_schema_invalid.json")
    return device


# (JSON Pointer, keyword) of every violation of esp32_invalid_device(), in document order.
INVALID_VIOLATIONS = [
    ("/logLevel", "enum"),
    ("/reportIntervalSeconds", "minimum"),
    ("/wifi/password", "minLength"),
    ("/wifi/countryCode", "pattern"),
    ("/wifi/staticIp/address", "format"),
    ("/mqtt", "required"),  # no host
    ("/mqtt/port", "type"),  # "1883x"
    ("/mqtt", "additionalProperties"),  # "prot", a typo of "port"
    ("/ota/channel", "enum"),
    ("/gpio/pins/1/pin", "not"),  # GPIO 7 is wired to the flash
    ("/gpio/pins/2", "required"),  # a PWM pin without its frequency (if/then)
    ("/schedule/0/at", "pattern"),
]


def large_esp32_device(size: int = 20_000) -> Document:
    """A conforming document of at least `size` stored bytes (a long schedule)."""
    device = esp32_device()
    schedule = device["schedule"]
    days = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"]
    while len(dump_document(device)) < size:
        minute = len(schedule)
        entry = {"at": f"{minute // 60 % 24:02d}:{minute % 60:02d}", "action": "report"}
        schedule.append({**entry, "days": copy.copy(days[: 1 + minute % 7])})
    return device

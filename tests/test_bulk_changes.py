"""Bulk changes through HTTP, on both stores (issue 21): `POST /api/configs/changes` writes each
selected device conditionally, validated against its model, through the one write path; the
change is a unit in history (`changeId` on each version it wrote, its record, the recent
ones) and is undone by a revert that leaves later edits alone."""

import asyncio
import json
from typing import Any

import pytest
from quart import Quart

from quart_iot.documents import dump_document, etag_of
from quart_iot.store import ConfigStore
from tests.conftest import Client

RELAYS = 'eq(deviceModel,"relay_board")'
NEW_BROKER = {"mqtt": {"host": "broker.lan"}}
RELAY_SCHEMA = {
    "type": "object",
    "properties": {
        "mqtt": {
            "type": "object",
            "properties": {"port": {"type": "integer", "minimum": 1, "maximum": 65535}},
        }
    },
}


def mac_of(n: int) -> str:
    return f"aa-00-00-00-{n // 256:02x}-{n % 256:02x}"


def relay(n: int) -> dict[str, Any]:
    return {"deviceModel": "relay_board", "deviceName": f"relay {n}", "mqtt": {"host": "old.lan"}}


async def put(client: Client, mac: str, content: dict[str, Any]) -> str:
    response = await client.put(f"/api/configs/{mac}", json={"content": content})
    assert response.status_code == 200, await response.get_data()
    return str(response.headers["ETag"]).strip('"')


async def fleet(client: Client, count: int, model: bool = True) -> dict[str, str]:
    """`count` relay boards (and their model); each one's ETag by MAC."""
    if model:
        body = {"name": "Relay board", "configSchema": RELAY_SCHEMA}
        assert (await client.put("/api/models/relay_board", json=body)).status_code in (200, 201)
    etags = await asyncio.gather(*(put(client, mac_of(n), relay(n)) for n in range(count)))
    return {mac_of(n): etag for n, etag in enumerate(etags)}


async def change(client: Client, status: int = 200, **body: Any) -> dict[str, Any]:
    response = await client.post("/api/configs/changes", json=body)
    assert response.status_code == status, await response.get_data()
    answer: dict[str, Any] = await response.get_json()
    return answer


async def document(client: Client, mac: str) -> dict[str, Any]:
    response = await client.get(f"/api/configs/{mac}")
    assert response.status_code == 200
    content: dict[str, Any] = (await response.get_json())["content"]
    return content


def statuses(answer: dict[str, Any]) -> dict[str, str]:
    return {device["mac_address"]: device["status"] for device in answer["devices"]}


async def test_a_change_writes_every_selected_device_and_keeps_its_record(client: Client) -> None:
    await fleet(client, 5)
    await put(client, "bb-00-00-00-00-01", {"deviceName": "other", "mqtt": {"host": "x"}})
    answer = await change(client, filter=RELAYS, patch=NEW_BROKER, comment="new broker")
    assert answer["dryRun"] is False
    assert answer["count"] == 5
    assert set(statuses(answer).values()) == {"changed"}
    for device in answer["devices"]:
        content = await document(client, device["mac_address"])
        assert content["mqtt"]["host"] == "broker.lan"
        assert device["etag"] == etag_of(dump_document(content))
    assert (await document(client, "bb-00-00-00-00-01"))["mqtt"]["host"] == "x"

    record = await (await client.get(f"/api/configs/changes/{answer['changeId']}")).get_json()
    assert record["state"] == "completed"
    assert record["comment"] == "new broker"
    assert record["filter"] == RELAYS
    assert record["patch"] == NEW_BROKER
    assert record["counts"] == {"changed": 5}
    assert statuses(record) == statuses(answer)
    history = await (await client.get(f"/api/configs/{mac_of(0)}/history")).get_json()
    assert history["versions"][0]["changeId"] == answer["changeId"]
    assert history["versions"][1]["changeId"] is None


async def test_unchanged_devices_are_not_written(client: Client) -> None:
    await fleet(client, 3)
    first = await change(client, filter=RELAYS, patch=NEW_BROKER)
    again = await change(client, filter=RELAYS, patch=NEW_BROKER)
    assert set(statuses(again).values()) == {"unchanged"}
    assert [d["etag"] for d in again["devices"]] == [d["etag"] for d in first["devices"]]
    history = await (await client.get(f"/api/configs/{mac_of(0)}/history")).get_json()
    assert history["count"] == 2

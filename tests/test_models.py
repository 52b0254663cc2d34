import asyncio
import json
import logging
import socket
import stat
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from quart import Quart

from quart_iot.app import create_app
from quart_iot.documents import etag_of
from quart_iot.errors import UnknownModel
from quart_iot.settings import Settings
from quart_iot.store import ConfigStore, Precondition, WriteMeta
from quart_iot.store.devicemodels import ModelChanged
from tests.conftest import MAC, OTHER_MAC, Client
from tests.esp32_schema import (
    INVALID_VIOLATIONS,
    MODEL_CODE,
    esp32_device,
    esp32_invalid_device,
    esp32_schema,
)

MODEL = f"/api/models/{MODEL_CODE}"
THIRD_MAC = "00-00-00-00-00-03"


async def put_model(
    client: Client, code: str, body: Any, headers: dict[str, str] | None = None
) -> Any:
    return await client.put(f"/api/models/{code}", json=body, headers=headers or {})


async def put_config(client: Client, mac: str, content: Any) -> Any:
    return await client.put(f"/api/configs/{mac}", json={"content": content})


async def error_of(response: Any, status: int, code: str) -> dict[str, Any]:
    body: dict[str, Any] = await response.get_json()
    assert (response.status_code, body["status"], body["code"]) == (status, status, code), body
    assert set(body) == {"error", "code", "details", "correlationId", "status"}
    return body


async def esp32_model(client: Client, schema: Any = None) -> str:
    """The ESP32 model saved; its ETag (quoted)."""
    body = {"name": "ESP32-DevKitC node", "configSchema": schema or esp32_schema()}
    response = await put_model(client, MODEL_CODE, body)
    assert response.status_code == 200, await response.get_data()
    etag: str = response.headers["ETag"]
    return etag


async def test_a_model_is_saved_read_listed_and_deleted(client: Client) -> None:
    assert await (await client.get("/api/models")).get_json() == {"models": [], "count": 0}
    await error_of(await client.get(MODEL), 404, "RECORD_NOT_FOUND")
    body = {"name": "ESP32-DevKitC node", "configSchema": esp32_schema()}
    created = await put_model(client, MODEL_CODE, body)
    assert created.status_code == 200
    detail = await created.get_json()
    assert detail == {
        "code": MODEL_CODE,
        "name": "ESP32-DevKitC node",
        "has_schema": True,
        "device_count": 0,
        "configSchema": esp32_schema(),
    }
    assert list(detail["configSchema"]) == list(esp32_schema())  # key order kept
    read = await client.get(MODEL)
    assert (read.status_code, await read.get_json()) == (200, detail)
    assert read.headers["ETag"] == created.headers["ETag"]
    await put_model(client, "relay", {"name": "Relay board", "configSchema": None})
    assert await (await client.get("/api/models")).get_json() == {
        "models": [
            {
                "code": MODEL_CODE,
                "name": "ESP32-DevKitC node",
                "has_schema": True,
                "device_count": 0,
            },
            {"code": "relay", "name": "Relay board", "has_schema": False, "device_count": 0},
        ],
        "count": 2,
    }
    deleted = await client.delete(MODEL)
    assert (deleted.status_code, await deleted.get_data()) == (204, b"")
    await error_of(await client.get(MODEL), 404, "RECORD_NOT_FOUND")
    await error_of(await client.delete(MODEL), 404, "RECORD_NOT_FOUND")
    assert [m["code"] for m in (await (await client.get("/api/models")).get_json())["models"]] == [
        "relay"
    ]


async def test_a_replaced_model_gets_a_new_etag_and_the_same_bytes_keep_it(client: Client) -> None:
    first = await esp32_model(client)
    again = await esp32_model(client)
    assert again == first
    renamed = await put_model(
        client, MODEL_CODE, {"name": "renamed", "configSchema": esp32_schema()}
    )
    assert renamed.headers["ETag"] != first
    assert (await renamed.get_json())["name"] == "renamed"


async def test_model_writes_honour_their_conditions(client: Client) -> None:
    body = {"name": "n", "configSchema": None}
    absent = await put_model(client, "m", body, {"If-Match": "*"})
    await error_of(absent, 412, "PRECONDITION_FAILED")
    await error_of(await client.delete("/api/models/m", headers={"If-Match": "*"}), 412,
                   "PRECONDITION_FAILED")  # fmt: skip
    created = await put_model(client, "m", body, {"If-None-Match": "*"})
    assert created.status_code == 200
    etag = created.headers["ETag"]
    again = await put_model(client, "m", body, {"If-None-Match": "*"})
    assert (
        "Device model m does not match"
        in (await error_of(again, 412, "PRECONDITION_FAILED"))["error"]
    )
    stale = await put_model(client, "m", {"name": "x", "configSchema": None}, {"If-Match": '"0"'})
    await error_of(stale, 412, "PRECONDITION_FAILED")
    updated = await put_model(client, "m", {"name": "x", "configSchema": None}, {"If-Match": etag})
    assert updated.status_code == 200
    cached = await client.get("/api/models/m", headers={"If-None-Match": updated.headers["ETag"]})
    assert (cached.status_code, cached.headers["ETag"]) == (304, updated.headers["ETag"])
    assert (await client.get("/api/models/m", headers={"If-None-Match": etag})).status_code == 200
    old = await client.delete("/api/models/m", headers={"If-Match": etag})
    await error_of(old, 412, "PRECONDITION_FAILED")
    current = {"If-Match": updated.headers["ETag"]}
    assert (await client.delete("/api/models/m", headers=current)).status_code == 204


# Refused before the store is asked: one test per store for each kind.
NOT_CODES = ["ESP32", "esp-32", "a" * 65, "esp32%0A", "%C3%A9", "a.b", "%20esp32"]
NOT_MODEL_BODIES: list[Any] = [
    {"name": "ESP32"},  # a PUT that forgets the schema must not drop it
    {"name": "ESP32", "configSchema": None, "extra": 1},
    {"name": "", "configSchema": None},
    {"name": "ESP32", "configSchema": []},
    ["ESP32"],
]
PORT = {"type": "integer", "minimum": "1"}  # a minimum that is no number
ID = {"type": "string", "pattern": "(["}  # a pattern that is no regex
INVALID_SCHEMAS: list[tuple[dict[str, Any], tuple[str, str]]] = [
    ({"type": "objekt"}, ("/type", "anyOf")),
    ({"properties": {"port": PORT}}, ("/properties/port/minimum", "type")),
    ({"properties": {"id": ID}}, ("/properties/id/pattern", "format")),
    ({"$schema": "http://json-schema.org/draft-07/schema#"}, ("/$schema", "$schema")),
    ({"$ref": "#/$defs/missing"}, ("/$ref", "$ref")),
]


async def test_anything_but_a_model_code_is_400(client: Client) -> None:
    for code in NOT_CODES:
        path = f"/api/models/{code}"
        for response in (
            await client.get(path),
            await client.put(path, json={"name": "n", "configSchema": None}),
            await client.delete(path),
            await client.get(f"{path}/violations"),
        ):
            await error_of(response, 400, "INVALID_OPERATION")


async def test_a_model_body_is_a_name_and_a_schema_or_null(client: Client) -> None:
    for body in NOT_MODEL_BODIES:
        await error_of(await put_model(client, "m", body), 400, "VALIDATION_FAILED")
    text = await client.put("/api/models/m", data="{}", headers={"Content-Type": "text/plain"})
    await error_of(text, 415, "UNSUPPORTED_MEDIA_TYPE")
    await error_of(await client.get("/api/models/m"), 404, "RECORD_NOT_FOUND")


async def test_an_invalid_schema_is_422_saying_where(client: Client) -> None:
    for schema, where in INVALID_SCHEMAS:
        response = await put_model(client, "m", {"name": "n", "configSchema": schema})
        body = await error_of(response, 422, "INVALID_SCHEMA")
        found = [(v["path"], v["keyword"]) for v in body["details"]["violations"]]
        assert where in found, (schema, found)
    await error_of(await client.get("/api/models/m"), 404, "RECORD_NOT_FOUND")


@pytest.fixture
def schema_server() -> Iterator[tuple[str, list[str]]]:
    """An HTTP server that records every request it gets (and would answer a schema)."""
    requests: list[str] = []

    class Recorder(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            requests.append(self.path)
            body = json.dumps({"type": "integer"}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/schema+json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Recorder)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", requests
    finally:
        server.shutdown()
        server.server_close()


async def test_a_remote_reference_is_refused_and_never_fetched(
    client: Client, schema_server: tuple[str, list[str]]
) -> None:
    url, requests = schema_server
    for schema, where in (
        ({"properties": {"port": {"$ref": f"{url}/port.json"}}}, "/properties/port/$ref"),
        ({"$id": f"{url}/r.json", "properties": {"a": {"$ref": "b.json"}}}, "/properties/a/$ref"),
        ({"$schema": f"{url}/dialect.json"}, "/$schema"),
    ):
        response = await put_model(client, "remote", {"name": "n", "configSchema": schema})
        body = await error_of(response, 422, "INVALID_SCHEMA")
        assert body["details"]["violations"][0]["path"] == where
    assert requests == []
    await error_of(await client.get("/api/models/remote"), 404, "RECORD_NOT_FOUND")


async def test_put_is_validated_against_the_esp32_model(client: Client) -> None:
    await esp32_model(client)
    saved = await put_config(client, MAC, esp32_device())
    assert saved.status_code == 200
    assert (await saved.get_json())["device_model"] == MODEL_CODE
    refused = await put_config(client, OTHER_MAC, esp32_invalid_device())
    body = await error_of(refused, 422, "SCHEMA_VIOLATION")
    details = body["details"]
    assert [(v["path"], v["keyword"]) for v in details["violations"]] == INVALID_VIOLATIONS
    assert all(v["message"] for v in details["violations"])
    assert (details["deviceModel"], details["truncated"]) == (MODEL_CODE, False)
    assert "12 violation(s), the first at /logLevel" in body["error"]
    await error_of(await client.get(f"/api/configs/{OTHER_MAC}"), 404, "RECORD_NOT_FOUND")
    # An update that breaks the schema leaves the document as it was.
    broken = {**esp32_device(), "mqtt": {**esp32_device()["mqtt"], "port": "1883x"}}
    body = await error_of(await put_config(client, MAC, broken), 422, "SCHEMA_VIOLATION")
    assert [(v["path"], v["keyword"]) for v in body["details"]["violations"]] == [
        ("/mqtt/port", "type")
    ]
    current = await client.get(f"/api/configs/{MAC}")
    assert current.headers["ETag"] == saved.headers["ETag"]
    history = await (await client.get(f"/api/configs/{MAC}/history")).get_json()
    assert history["count"] == 1


async def test_a_model_nobody_defined_is_422_unknown_model(client: Client) -> None:
    response = await put_config(client, MAC, {"deviceModel": "nobody"})
    body = await error_of(response, 422, "UNKNOWN_MODEL")
    assert body["details"] == {"deviceModel": "nobody"}
    for value in ("ESP32", 5, ["esp32"], "x" * 100):
        body = await error_of(await put_config(client, MAC, {"deviceModel": value}), 422,
                              "UNKNOWN_MODEL")  # fmt: skip
        assert body["details"] == {"deviceModel": value if value == "ESP32" else None}
    await error_of(await client.get(f"/api/configs/{MAC}"), 404, "RECORD_NOT_FOUND")
    for content in ({}, {"deviceModel": None}):  # no model: not validated, as before
        assert (await put_config(client, MAC, content)).status_code == 200


async def test_a_model_without_a_schema_validates_nothing(client: Client) -> None:
    await put_model(client, "relay", {"name": "Relay board", "configSchema": None})
    response = await put_config(client, MAC, {"deviceModel": "relay", "anything": [1, "x"]})
    assert response.status_code == 200
    assert (await (await client.get("/api/models/relay")).get_json())["device_count"] == 1


async def test_devices_are_counted_and_a_model_in_use_is_not_deleted(client: Client) -> None:
    await esp32_model(client)
    for mac in (MAC, OTHER_MAC):
        assert (await put_config(client, mac, esp32_device())).status_code == 200
    await put_config(client, THIRD_MAC, {"deviceName": "no model"})
    listing = await (await client.get("/api/models")).get_json()
    assert listing["models"][0]["device_count"] == 2
    configs = await (await client.get("/api/configs")).get_json()
    assert [c["device_model"] for c in configs["configs"]] == [None, MODEL_CODE, MODEL_CODE]
    body = await error_of(await client.delete(MODEL), 409, "MODEL_IN_USE")
    assert body["details"] == {"devices": 2}
    assert "2 device config(s)" in body["error"]
    assert (await client.get(MODEL)).status_code == 200
    await client.delete(f"/api/configs/{MAC}")
    await put_config(client, OTHER_MAC, {"deviceName": "moved off the model"})
    assert (await (await client.get(MODEL)).get_json())["device_count"] == 0
    assert (await client.delete(MODEL)).status_code == 204


async def test_a_schema_change_refuses_nothing_and_lists_the_devices_that_no_longer_conform(
    client: Client,
) -> None:
    await esp32_model(client)
    first = esp32_device()
    second = {**esp32_device(), "deviceName": "Porch node", "firmwareVersion": "1.0.0"}
    for mac, content in ((MAC, first), (OTHER_MAC, second)):
        assert (await put_config(client, mac, content)).status_code == 200
    etags = {
        mac: (await client.get(f"/api/configs/{mac}")).headers["ETag"] for mac in (MAC, OTHER_MAC)
    }
    assert await (await client.get(f"{MODEL}/violations")).get_json() == {
        "code": MODEL_CODE, "checked": 2, "devices": [], "count": 0,
    }  # fmt: skip
    stricter = esp32_schema()
    stricter["properties"]["firmwareVersion"] = {"type": "string", "pattern": "^[2-9]\\."}
    stricter["properties"]["mqtt"]["properties"]["port"]["maximum"] = 1883
    assert (
        await put_model(client, MODEL_CODE, {"name": "v2", "configSchema": stricter})
    ).status_code == 200
    report = await (await client.get(f"{MODEL}/violations")).get_json()
    assert (report["code"], report["checked"], report["count"]) == (MODEL_CODE, 2, 2)
    found = {
        d["mac_address"]: [(v["path"], v["keyword"]) for v in d["violations"]]
        for d in report["devices"]
    }
    assert found == {
        MAC: [("/mqtt/port", "maximum")],
        OTHER_MAC: [("/firmwareVersion", "pattern"), ("/mqtt/port", "maximum")],
    }
    # By MAC, with their names.
    assert [(d["mac_address"], d["device_name"]) for d in report["devices"]] == [
        (OTHER_MAC, "Porch node"),
        (MAC, first["deviceName"]),
    ]
    assert not any(d["truncated"] for d in report["devices"])
    for mac, etag in etags.items():  # never rewritten
        assert (await client.get(f"/api/configs/{mac}")).headers["ETag"] == etag
    # The next write of such a device meets the new schema.
    body = await error_of(await put_config(client, MAC, first), 422, "SCHEMA_VIOLATION")
    assert body["details"]["violations"][0]["path"] == "/mqtt/port"
    await error_of(await client.get("/api/models/nobody/violations"), 404, "RECORD_NOT_FOUND")


async def test_a_model_changed_by_another_replica_is_met_at_once(
    make_settings: Callable[..., Settings], client: Client
) -> None:
    await esp32_model(client)
    assert (await put_config(client, MAC, esp32_device())).status_code == 200  # schema cached
    other = create_app(make_settings())  # another replica on the same store
    async with other.test_app():
        stricter = esp32_schema()
        stricter["properties"]["logLevel"] = {"enum": ["error"]}
        changed = await put_model(
            other.test_client(), MODEL_CODE, {"name": "v2", "configSchema": stricter}
        )
        assert changed.status_code == 200
    body = await error_of(await put_config(client, MAC, esp32_device()), 422, "SCHEMA_VIOLATION")
    assert [v["path"] for v in body["details"]["violations"]] == ["/logLevel"]


async def test_a_model_relaxed_by_another_replica_is_met_at_once(
    make_settings: Callable[..., Settings], client: Client
) -> None:
    """A save is validated first against the model version this replica read last: a refusal
    must still be decided on the version in the store now."""
    await esp32_model(client)
    assert (await put_config(client, MAC, esp32_device())).status_code == 200  # version read
    broken = {**esp32_device(), "logLevel": 7}
    await error_of(await put_config(client, MAC, broken), 422, "SCHEMA_VIOLATION")
    other = create_app(make_settings())  # another replica on the same store
    async with other.test_app():
        relaxed = {"name": "v2", "configSchema": None}
        assert (await put_model(other.test_client(), MODEL_CODE, relaxed)).status_code == 200
    assert (await put_config(client, MAC, broken)).status_code == 200


async def test_a_save_is_decided_against_the_model_version_it_was_validated_against(
    store: ConfigStore, client: Client
) -> None:
    etag = (await esp32_model(client)).strip('"')
    pinned = Precondition(model=(MODEL_CODE, "0" * 32))
    with pytest.raises(ModelChanged):
        await store.backend.save(MAC, esp32_device(), pinned, WriteMeta())
    saved = await store.backend.save(
        MAC, esp32_device(), Precondition(model=(MODEL_CODE, etag)), WriteMeta()
    )
    assert saved.stored.etag
    await client.delete(f"/api/configs/{MAC}")
    assert (await client.delete(MODEL)).status_code == 204
    with pytest.raises(UnknownModel):
        await store.backend.save(
            OTHER_MAC, esp32_device(), Precondition(model=(MODEL_CODE, etag)), WriteMeta()
        )
    await error_of(await client.get(f"/api/configs/{OTHER_MAC}"), 404, "RECORD_NOT_FOUND")


async def test_a_model_changed_while_a_write_is_validated_is_met_by_that_write(
    store: ConfigStore, client: Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    await esp32_model(client)
    stricter = esp32_schema()
    stricter["properties"]["logLevel"] = {"enum": ["error"]}
    validate = store.conformance.conform
    calls = 0

    async def then_the_model_changes(content: dict[str, Any], **options: Any) -> Any:
        nonlocal calls
        calls += 1
        found = await validate(content, **options)
        if calls == 1:  # after this write's validation, before its save is decided
            await store.save_model(MODEL_CODE, "v2", stricter)
        return found

    monkeypatch.setattr(store.conformance, "conform", then_the_model_changes)
    body = await error_of(await put_config(client, MAC, esp32_device()), 422, "SCHEMA_VIOLATION")
    assert [v["path"] for v in body["details"]["violations"]] == ["/logLevel"]
    assert calls == 2
    await error_of(await client.get(f"/api/configs/{MAC}"), 404, "RECORD_NOT_FOUND")


async def test_a_model_deleted_while_a_device_names_it_in_a_race_never_leaves_it_orphaned(
    client: Client,
) -> None:
    for _ in range(5):
        await put_model(client, "racy", {"name": "n", "configSchema": {"type": "object"}})
        saved, deleted = await asyncio.gather(
            put_config(client, MAC, {"deviceModel": "racy"}), client.delete("/api/models/racy")
        )
        model = await client.get("/api/models/racy")
        if saved.status_code == 200:
            assert (deleted.status_code, model.status_code) == (409, 200)
        else:
            assert (saved.status_code, deleted.status_code, model.status_code) == (422, 204, 404)
        await client.delete(f"/api/configs/{MAC}")
        await client.delete("/api/models/racy")


async def test_a_restore_is_never_refused_by_validation_but_says_it_does_not_conform(
    client: Client,
) -> None:
    await put_model(client, "relay", {"name": "Relay", "configSchema": None})
    await put_config(client, MAC, {"deviceModel": "relay", "channels": "four"})
    await put_config(client, MAC, {"deviceModel": "relay", "channels": 4})
    versions = (await (await client.get(f"/api/configs/{MAC}/history")).get_json())["versions"]
    oldest = f"/api/configs/{MAC}/history/{versions[-1]['version']}/restore"
    schema = {"properties": {"channels": {"type": "integer"}, "deviceModel": {"type": "string"}}}
    await put_model(client, "relay", {"name": "Relay", "configSchema": schema})
    restored = await client.post(oldest)
    assert restored.status_code == 200
    assert restored.headers["Schema-Violations"] == "1"
    assert (await restored.get_json())["content"]["channels"] == "four"
    latest = f"/api/configs/{MAC}/history/{versions[0]['version']}/restore"
    assert "Schema-Violations" not in (await client.post(latest)).headers
    await put_config(client, MAC, {"deviceName": "off the model"})
    await client.delete("/api/models/relay")
    gone = await client.post(latest)
    assert (gone.status_code, gone.headers["Schema-Violations"]) == (200, "unknown-model")


async def test_models_survive_a_restart(settings: Settings) -> None:
    first = create_app(settings)
    async with first.test_app():
        etag = await esp32_model(first.test_client())
    second = create_app(settings)
    async with second.test_app():
        client = second.test_client()
        read = await client.get(MODEL)
        assert (read.status_code, read.headers["ETag"]) == (200, etag)
        body = await error_of(await put_config(client, MAC, esp32_invalid_device()), 422,
                              "SCHEMA_VIOLATION")  # fmt: skip
        assert len(body["details"]["violations"]) == len(INVALID_VIOLATIONS)


async def test_model_writes_are_written_events_and_refused_while_stopping(
    app: Quart, store: ConfigStore, client: Client
) -> None:
    heard: list[Any] = []
    store.write_listeners.append(heard.append)
    await esp32_model(client)
    await client.delete(MODEL)
    assert [(w.action, w.mac, w.status, w.is_model, w.changed_store) for w in heard] == [
        ("save_model", MODEL_CODE, 200, True, False),
        ("delete_model", MODEL_CODE, 204, True, False),
    ]
    store.refuse_writes()
    response = await put_model(client, "m", {"name": "n", "configSchema": None})
    await error_of(response, 503, "SHUTTING_DOWN")


# -- the directory store's files -------------------------------------------------------------


async def test_the_directory_keeps_a_model_in_models_code_json(
    client: Client, configs_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    etag = await esp32_model(client)
    path = configs_dir / ".models" / f"{MODEL_CODE}.json"
    data = path.read_bytes()
    assert json.loads(data) == {"name": "ESP32-DevKitC node", "configSchema": esp32_schema()}
    assert etag == f'"{etag_of(data)}"'  # the ETag of the bytes, as for documents
    assert stat.S_IMODE(path.stat().st_mode) == 0o644
    assert [p.name for p in (configs_dir / ".models").iterdir()] == [f"{MODEL_CODE}.json"]
    await put_config(client, MAC, esp32_device())
    with caplog.at_level(logging.WARNING):
        listing = await (await client.get("/api/configs")).get_json()
    assert listing["count"] == 1
    assert ".models" not in caplog.text  # the store's own entry, not an odd one
    await client.delete(f"/api/configs/{MAC}")
    assert (await client.delete(MODEL)).status_code == 204
    assert not path.exists()


async def test_a_model_file_edited_by_hand_is_read_as_it_is_now(
    client: Client, configs_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    await esp32_model(client)
    path = configs_dir / ".models" / f"{MODEL_CODE}.json"
    stricter = esp32_schema()
    stricter["properties"]["logLevel"] = {"enum": ["error"]}
    path.write_text(json.dumps({"name": "by hand", "configSchema": stricter}))
    body = await error_of(await put_config(client, MAC, esp32_device()), 422, "SCHEMA_VIOLATION")
    assert [v["path"] for v in body["details"]["violations"]] == ["/logLevel"]
    path.write_text("{not json")
    await error_of(await client.get(MODEL), 422, "RECORD_UNREADABLE")
    await error_of(await put_config(client, MAC, esp32_device()), 422, "RECORD_UNREADABLE")
    with caplog.at_level(logging.WARNING):
        for _ in range(2):
            listing = await (await client.get("/api/models")).get_json()
            assert listing == {"models": [], "count": 0}
    assert caplog.text.count(f"skipping '{MODEL_CODE}.json'") == 1  # once, not per request
    path.write_text(json.dumps({"name": "n", "configSchema": {"pattern": "(["}}))
    await error_of(await put_config(client, MAC, esp32_device()), 422, "RECORD_UNREADABLE")
    replaced = await put_model(client, MODEL_CODE, {"name": "n", "configSchema": None})
    assert replaced.status_code == 200  # a PUT replaces what is there, as for documents
    assert (await put_config(client, MAC, esp32_device())).status_code == 200


def test_temp_files_of_interrupted_model_writes_are_removed_at_start(
    configs_dir: Path, settings: Settings
) -> None:
    models = configs_dir / ".models"
    models.mkdir()
    temp = models / f".{MODEL_CODE}.json.{socket.gethostname()}-999999999-0a1b2c3d.tmp"
    temp.write_text("{}")
    kept = models / "notes.txt"
    kept.write_text("not ours")

    async def start() -> None:
        app = create_app(settings)
        async with app.test_app():
            pass

    asyncio.run(start())
    assert not temp.exists()
    assert kept.exists()


def test_jsonschema_rs_is_imported_only_once_a_model_is_checked(tmp_path: Path) -> None:
    """Its 3 MiB are not paid by a service that has no device model (the benchmark's memory
    target: peak RSS under 3x the documents at N = 20000)."""
    script = (
        "import sys\n"
        "from quart_iot.app import create_app\n"
        "from quart_iot.settings import Settings\n"
        "from quart_iot.validation import check_schema\n"
        f"create_app(Settings(esp32_configs_dir={str(tmp_path)!r}, _env_file=None))\n"
        "print('jsonschema_rs' in sys.modules)\n"
        "check_schema({'type': 'object'})\n"
        "print('jsonschema_rs' in sys.modules)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True, timeout=60
    )
    assert result.stdout.split() == ["False", "True"]

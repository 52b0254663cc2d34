"""Bulk changes through HTTP, on both stores (issue 21): `POST /api/configs/changes` writes each
selected device conditionally, validated against its model, through the one write path; the
change is a unit in history (`changeId` on each version it wrote, its record, the recent
ones) and is undone by a revert that leaves later edits alone."""

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from quart import Quart

from quart_iot.app import create_app
from quart_iot.bulk import new_change_id, start_journal
from quart_iot.documents import dump_document, etag_of
from quart_iot.errors import StorageUnavailable
from quart_iot.settings import Settings
from quart_iot.store import ConfigStore, DirectoryBackend, Written, bulkchanges
from quart_iot.store.postgres import changes as postgres_changes
from tests.conftest import MAC, Client
from tests.oidc_provider import AUDIENCE, Provider, running_provider

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
    """`count` relay boards (and their model, with its schema or none); each one's ETag."""
    body = {"name": "Relay board", "configSchema": RELAY_SCHEMA if model else None}
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


async def versions(client: Client, mac: str) -> list[dict[str, Any]]:
    response = await client.get(f"/api/configs/{mac}/history")
    listed: list[dict[str, Any]] = (await response.get_json())["versions"]
    return listed


async def test_200_devices_with_a_concurrent_writer_conflicts_are_left_alone(
    client: Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Devices another writer wrote after the change read them are `conflict`, and keep that
    writer's document; the others are changed. Some of those writes land between the change's
    reading and its writing (for certain), others while it writes (as they happen to)."""
    await fleet(client, 200)
    meddled_early = [mac_of(n) for n in range(0, 200, 10)]  # after the plan, before a write
    meddled_during = [mac_of(n) for n in range(5, 200, 10)]  # while the change writes
    planning = bulkchanges.plan

    async def plan_then_meddle(*args: Any) -> Any:
        planned = await planning(*args)
        await asyncio.gather(*(put(client, mac, edited(mac)) for mac in meddled_early))
        return planned

    monkeypatch.setattr(bulkchanges, "plan", plan_then_meddle)
    answer, _ = await asyncio.gather(
        change(client, filter=RELAYS, patch=NEW_BROKER),
        asyncio.gather(*(put(client, mac, edited(mac)) for mac in meddled_during)),
    )
    found = statuses(answer)
    assert len(found) == 200
    assert all(found[mac] == "conflict" for mac in meddled_early)
    for device in answer["devices"]:
        mac, status = device["mac_address"], device["status"]
        content = await document(client, mac)
        if mac in meddled_early or mac in meddled_during:
            assert content["deviceName"] == f"edited {mac}"  # never overwritten
        assert status in ("changed", "conflict")
        assert content["mqtt"]["host"] == ("broker.lan" if status == "changed" else "old.lan")
        assert device["etag"] == etag_of(dump_document(content))
    record = await (await client.get(f"/api/configs/changes/{answer['changeId']}")).get_json()
    assert statuses(record) == found
    assert record["counts"]["conflict"] >= len(meddled_early)


def edited(mac: str) -> dict[str, Any]:
    return {
        "deviceModel": "relay_board",
        "deviceName": f"edited {mac}",
        "mqtt": {"host": "old.lan"},
    }


async def test_a_dry_run_writes_nothing_and_shows_each_diff(client: Client) -> None:
    etags = await fleet(client, 3)
    await put(client, mac_of(1), {**relay(1), "mqtt": {"host": "broker.lan", "port": 1883}})
    patch = {"mqtt": {"host": "broker.lan", "port": None}, "enableOTA": True}
    answer = await change(client, filter=RELAYS, patch=patch, dryRun=True)
    assert answer["changeId"] is None
    assert answer["dryRun"] is True
    first, second, _ = answer["devices"]
    assert first["status"] == "changed"
    assert first["diff"] == [
        {"op": "replace", "path": "/mqtt/host", "value": "broker.lan"},
        {"op": "add", "path": "/enableOTA", "value": True},
    ]
    assert second["diff"] == [
        {"op": "remove", "path": "/mqtt/port"},
        {"op": "add", "path": "/enableOTA", "value": True},
    ]
    would = {**relay(0), "mqtt": {"host": "broker.lan"}, "enableOTA": True}
    assert first["etag"] == etag_of(dump_document(would))  # the one a change would write
    assert await document(client, mac_of(0)) == relay(0)  # nothing written
    assert (await client.get(f"/api/configs/{mac_of(2)}")).headers[
        "ETag"
    ] == f'"{etags[mac_of(2)]}"'
    assert len(await versions(client, mac_of(0))) == 1
    listed = await (await client.get("/api/configs/changes")).get_json()
    assert listed["changes"] == []  # a dry run is not kept


async def test_devices_whose_result_breaks_their_model_are_invalid_and_left_alone(
    client: Client,
) -> None:
    await fleet(client, 2)  # relay boards: mqtt/port an integer up to 65535
    body = {"name": "Plain", "configSchema": None}
    assert (await client.put("/api/models/plain", json=body)).status_code in (200, 201)
    plain = {"deviceModel": "plain", "mqtt": {"host": "old.lan"}}
    await put(client, "bb-00-00-00-00-01", plain)
    patch = {"mqtt": {"port": 70000}}
    for dry in (True, False):
        answer = await change(client, filter="exists(mqtt)", patch=patch, dryRun=dry)
        found = statuses(answer)
        assert found == {
            "aa-00-00-00-00-00": "invalid",
            "aa-00-00-00-00-01": "invalid",
            "bb-00-00-00-00-01": "changed",
        }
        invalid = answer["devices"][0]
        assert invalid["violations"][0]["path"] == "/mqtt/port"
        assert invalid["violations"][0]["keyword"] == "maximum"
    assert await document(client, mac_of(0)) == relay(0)
    assert (await document(client, "bb-00-00-00-00-01"))["mqtt"]["port"] == 70000
    record = await (await client.get(f"/api/configs/changes/{answer['changeId']}")).get_json()
    assert record["counts"] == {"invalid": 2, "changed": 1}
    assert record["devices"][0]["violations"][0]["path"] == "/mqtt/port"


async def test_a_revert_puts_back_what_the_change_wrote_and_leaves_later_edits(
    client: Client,
) -> None:
    await fleet(client, 10)
    originals = {mac_of(n): await client.get(f"/api/configs/{mac_of(n)}.json") for n in range(10)}
    before = {mac: await r.get_data() for mac, r in originals.items()}
    done = await change(client, filter=RELAYS, patch=NEW_BROKER, comment="move")
    edited_later = [mac_of(2), mac_of(7)]
    for mac in edited_later:
        await put(client, mac, {**(await document(client, mac)), "enableOTA": False})
    response = await client.post(
        f"/api/configs/changes/{done['changeId']}/revert", json={"comment": "undo"}
    )
    assert response.status_code == 200, await response.get_data()
    undone = await response.get_json()
    assert undone["changeId"] != done["changeId"]
    assert statuses(undone) == {
        mac_of(n): "conflict" if mac_of(n) in edited_later else "changed" for n in range(10)
    }
    for n in range(10):
        mac = mac_of(n)
        now = await (await client.get(f"/api/configs/{mac}.json")).get_data()
        if mac in edited_later:
            assert json.loads(now)["enableOTA"] is False  # the later edit is kept
        else:
            assert now == before[mac]  # byte for byte the version before the change
            assert (await versions(client, mac))[0]["changeId"] == undone["changeId"]
    record = await (await client.get(f"/api/configs/changes/{undone['changeId']}")).get_json()
    assert record["revertOf"] == done["changeId"]
    assert record["patch"] is None
    assert record["comment"] == "undo"
    assert record["filter"] == RELAYS
    # The revert is a change like another: reverting it changes the devices again.
    again = await client.post(f"/api/configs/changes/{undone['changeId']}/revert")
    assert set(statuses(await again.get_json()).values()) == {"changed"}
    assert (await document(client, mac_of(0)))["mqtt"]["host"] == "broker.lan"


async def test_recent_changes_newest_first_a_page_at_a_time(client: Client) -> None:
    await fleet(client, 2, model=False)
    ids = []
    for host in ("a.lan", "b.lan", "c.lan"):
        ids.append(
            (await change(client, filter=RELAYS, patch={"mqtt": {"host": host}}))["changeId"]
        )
    first = await (await client.get("/api/configs/changes?limit=2")).get_json()
    assert [c["changeId"] for c in first["changes"]] == ids[:0:-1]
    assert first["changes"][0]["counts"] == {"changed": 2}
    assert "devices" not in first["changes"][0]
    second = await (
        await client.get(f"/api/configs/changes?limit=2&before={first['next']}")
    ).get_json()
    assert [c["changeId"] for c in second["changes"]] == ids[:1]
    assert second["next"] is None
    for wrong in ("/api/configs/changes/nope", "/api/configs/changes?before=x"):
        response = await client.get(wrong)
        assert response.status_code == 400
    missing = await client.get("/api/configs/changes/1767225600000000000-0a1b2c3d")
    assert missing.status_code == 404
    assert (await missing.get_json())["code"] == "RECORD_NOT_FOUND"
    refused = await client.post("/api/configs/changes/1767225600000000000-0a1b2c3d/revert")
    assert refused.status_code == 404


async def test_too_many_devices_is_422_and_nothing_is_written(
    serving: Callable[..., Awaitable[Quart]],
) -> None:
    client = (await serving(max_bulk_devices=3)).test_client()
    await fleet(client, 4, model=False)
    body = await change(client, 422, filter=RELAYS, patch=NEW_BROKER)
    assert body["code"] == "TOO_MANY_DEVICES"
    assert body["details"] == {"count": 4, "limit": 3}
    for n in range(4):
        assert (await document(client, mac_of(n)))["mqtt"]["host"] == "old.lan"
    assert (await (await client.get("/api/configs/changes")).get_json())["count"] == 0
    assert len(await versions(client, mac_of(0))) == 1
    dry = await change(client, 422, filter=RELAYS, patch=NEW_BROKER, dryRun=True)
    assert dry["code"] == "TOO_MANY_DEVICES"
    fine = await change(client, filter='eq(mac_address,"aa-00-00-00-00-00")', patch=NEW_BROKER)
    assert statuses(fine) == {mac_of(0): "changed"}


async def test_malformed_changes_are_400(client: Client) -> None:
    for body in (
        {"filter": "eq(a", "patch": {}},
        {"filter": "exists(a)", "patch": [1]},
        {"filter": "exists(a)", "patch": {}, "dry_run": True},
    ):
        response = await client.post("/api/configs/changes", json=body)
        assert response.status_code == 400, body
    bad = await client.post("/api/configs/changes", json={"filter": "eq(a", "patch": {}})
    assert (await bad.get_json())["code"] == "INVALID_FILTER"


async def test_every_device_written_is_told_as_a_put_is(app: Quart, client: Client) -> None:
    """The write listeners (the audit line, MQTT, waiting clients and the other workers'
    wake-ups) hear each device a change writes, with its ETags, as they hear a PUT."""
    etags = await fleet(client, 3, model=False)
    heard: list[Written] = []
    ConfigStore.of(app).write_listeners.append(heard.append)
    waiting = client.get(
        f"/api/configs/{mac_of(1)}.json",
        headers={"If-None-Match": f'"{etags[mac_of(1)]}"', "Prefer": "wait=10"},
    )
    woken = asyncio.ensure_future(waiting)
    await asyncio.sleep(0.1)
    answer = await change(client, filter=RELAYS, patch=NEW_BROKER)
    response = await asyncio.wait_for(woken, 10)
    assert response.status_code == 200
    assert json.loads(await response.get_data())["mqtt"]["host"] == "broker.lan"
    told = sorted(heard, key=lambda w: w.mac)
    assert [(w.action, w.mac, w.status, w.applied) for w in told] == [
        ("bulk_change", mac_of(n), 200, True) for n in range(3)
    ]
    assert [w.etag_before for w in told] == [etags[mac_of(n)] for n in range(3)]
    assert [w.etag_after for w in told] == [d["etag"] for d in answer["devices"]]
    assert all(w.saved_document and w.changed_store for w in told)


async def test_openapi_documents_the_change_routes(client: Client) -> None:
    document_ = await (await client.get("/api/docs/openapi.json")).get_json()
    paths = document_["paths"]
    post = paths["/api/configs/changes"]["post"]
    assert {"200", "400", "422", "503"} <= set(post["responses"])
    body = post["requestBody"]["content"]["application/json"]["schema"]
    assert {"filter", "patch", "dryRun", "comment"} <= set(json.dumps(body).split('"'))
    assert {"200", "400"} <= set(paths["/api/configs/changes"]["get"]["responses"])
    assert {"200", "400", "404"} <= set(
        paths["/api/configs/changes/{change_id}"]["get"]["responses"]
    )
    revert = paths["/api/configs/changes/{change_id}/revert"]["post"]
    assert {"200", "404", "409", "503"} <= set(revert["responses"])
    schemas = document_["components"]["schemas"]
    assert set(schemas["DeviceChange"]["properties"]["status"]["enum"]) >= {
        "changed",
        "unchanged",
        "conflict",
        "invalid",
    }
    assert "changeId" in schemas["HistoryVersion"]["properties"]


# -- access control --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def provider() -> Iterator[Provider]:
    with running_provider() as provider:
        yield provider


async def test_changes_need_the_writer_role_and_reading_them_the_reader_role(
    make_settings: Callable[..., Settings], provider: Provider, caplog: pytest.LogCaptureFixture
) -> None:
    settings = make_settings(
        oidc_issuer=provider.issuer, oidc_audience=AUDIENCE, oidc_jwks_min_refresh=5
    )
    names = ("reader", "writer", "device-a")
    tokens = dict(
        zip(
            names,
            await asyncio.gather(*(asyncio.to_thread(provider.token, n) for n in names)),
            strict=True,
        )
    )
    app = create_app(settings)
    async with app.test_app():
        client = app.test_client()

        def bearer(name: str) -> dict[str, str]:
            return {"Authorization": f"Bearer {tokens[name]}"}

        await ConfigStore.of(app).save_model("relay_board", "Relay board", None)
        await ConfigStore.of(app).save(MAC, relay(0))
        body = {"filter": RELAYS, "patch": NEW_BROKER}
        for name, status in (("reader", 403), ("device-a", 403)):
            refused = await client.post("/api/configs/changes", json=body, headers=bearer(name))
            assert refused.status_code == status, name
        assert (await client.post("/api/configs/changes", json=body)).status_code == 401
        with caplog.at_level(logging.INFO, logger="quart_iot.audit"):
            made = await client.post("/api/configs/changes", json=body, headers=bearer("writer"))
        assert made.status_code == 200
        change_id = (await made.get_json())["changeId"]
        lines = [r.getMessage() for r in caplog.records if r.name == "quart_iot.audit"]
        assert any(f"audit: POST {MAC} 200 allowed by" in line for line in lines), lines
        path = f"/api/configs/changes/{change_id}"
        for name, status in (("reader", 200), ("writer", 200), ("device-a", 403)):
            assert (await client.get(path, headers=bearer(name))).status_code == status, name
            assert (
                await client.get("/api/configs/changes", headers=bearer(name))
            ).status_code == status
        record = await (await client.get(path, headers=bearer("reader"))).get_json()
        assert record["subject"] is not None
        history = await (
            await client.get(f"/api/configs/{MAC}/history", headers=bearer("reader"))
        ).get_json()
        assert history["versions"][0]["subject"] == record["subject"]
        assert history["versions"][0]["changeId"] == change_id
        revert = f"{path}/revert"
        assert (await client.post(revert, headers=bearer("reader"))).status_code == 403
        assert (await client.post(revert, headers=bearer("writer"))).status_code == 200


@pytest.mark.parametrize("failure", [RuntimeError("boom"), StorageUnavailable("disk full")])
async def test_a_change_that_fails_midway_is_kept_interrupted_with_what_it_wrote(
    app: Quart, client: Client, monkeypatch: pytest.MonkeyPatch, failure: Exception
) -> None:
    """A device write failing (the storage, or a failure nobody foresaw) after some devices:
    the change is settled at once from what the store holds, and says which were written."""
    await fleet(client, 6, model=False)
    store = ConfigStore.of(app)
    writing = store.change_device
    calls = 0

    async def fails_at_the_fourth(*args: Any) -> Any:
        nonlocal calls
        calls += 1
        if calls == 4:
            raise failure
        return await writing(*args)

    monkeypatch.setattr(store, "change_device", fails_at_the_fourth)
    monkeypatch.setattr(bulkchanges, "WRITES_AT_ONCE", 1)
    answer = await change(client, filter=RELAYS, patch=NEW_BROKER)
    listed = await (await client.get("/api/configs/changes")).get_json()
    record = await (
        await client.get(f"/api/configs/changes/{listed['changes'][0]['changeId']}")
    ).get_json()
    assert record["state"] == "interrupted"
    found = statuses(record)
    for mac, status in found.items():
        host = (await document(client, mac))["mqtt"]["host"]
        assert host == ("broker.lan" if status == "changed" else "old.lan")
        assert status in ("changed", "not_applied")
    assert record["counts"] == {"changed": 5, "not_applied": 1}
    assert statuses(answer) == found


async def test_a_running_change_cannot_be_reverted_yet(app: Quart, client: Client) -> None:
    await fleet(client, 1, model=False)
    store = ConfigStore.of(app)
    plans, _ = await bulkchanges.plan(store, RELAYS, NEW_BROKER, 10)
    journal = start_journal(
        new_change_id(), plans, subject=None, comment=None, filter_text=RELAYS, patch=NEW_BROKER
    )
    await store.backend.begin_change(journal)
    try:
        path = f"/api/configs/changes/{journal.change_id}"
        assert (await (await client.get(path)).get_json())["state"] == "running"  # owned here
        refused = await client.post(f"{path}/revert")
        assert refused.status_code == 409
        assert (await refused.get_json())["code"] == "CHANGE_RUNNING"
    finally:
        await store.backend.end_change(journal.model_copy(update={"state": "interrupted"}))


async def test_malformed_reverts_and_paths_are_400(client: Client) -> None:
    await fleet(client, 1, model=False)
    change_id = (await change(client, filter=RELAYS, patch=NEW_BROKER))["changeId"]
    path = f"/api/configs/changes/{change_id}/revert"
    for body in (b"[1]", b'{"comment": 1}', b'{"why": "x"}', b"not json"):
        response = await client.post(path, data=body, headers={"Content-Type": "application/json"})
        assert response.status_code == 400, body
        assert (await response.get_json())["code"] == "VALIDATION_FAILED"
    for wrong in (f"/api/configs/changes/{change_id}/undo", "/api/configs/changes/x/revert"):
        response = await client.post(wrong)
        assert response.status_code == 400, wrong
        assert (await response.get_json())["code"] in ("INVALID_OPERATION", "INVALID_PATH")


async def test_the_directory_keeps_records_in_changes_which_the_list_does_not_report(
    client: Client, configs_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    await fleet(client, 2, model=False)
    change_id = (await change(client, filter=RELAYS, patch=NEW_BROKER))["changeId"]
    kept = sorted(path.name for path in (configs_dir / ".changes").iterdir())
    assert kept == [f"{change_id}.before.json", f"{change_id}.json"]  # no owner file left
    record = json.loads((configs_dir / ".changes" / f"{change_id}.json").read_bytes())
    assert record["state"] == "completed"
    assert all(entry["before"] is None for entry in record["devices"])  # kept apart
    befores = json.loads((configs_dir / ".changes" / f"{change_id}.before.json").read_bytes())
    assert befores[mac_of(0)] == relay(0)
    with caplog.at_level(logging.WARNING):
        (configs_dir / "stray").write_text("x")  # a change of the directory: listed again
        assert (await (await client.get("/api/configs")).get_json())["count"] == 2
    assert "'stray'" in caplog.text
    assert ".changes" not in caplog.text


async def test_the_oldest_records_go_past_the_retention(
    app: Quart, client: Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    backend = ConfigStore.of(app).backend
    if isinstance(backend, DirectoryBackend):
        monkeypatch.setattr(backend.change_files, "kept", 2)
    else:
        monkeypatch.setattr(postgres_changes, "CHANGES_KEPT", 2)
    await fleet(client, 1, model=False)
    ids = [(await change(client, filter=RELAYS, patch={"n": n}))["changeId"] for n in range(4)]
    listed = await (await client.get("/api/configs/changes")).get_json()
    assert [c["changeId"] for c in listed["changes"]] == ids[:1:-1]
    assert (await client.get(f"/api/configs/changes/{ids[0]}")).status_code == 404
    history = await versions(client, mac_of(0))
    assert [v["changeId"] for v in history] == [*ids[::-1], None]  # the marks stay


async def test_a_result_naming_an_unknown_model_is_invalid(client: Client) -> None:
    await fleet(client, 1, model=False)
    answer = await change(client, filter=RELAYS, patch={"deviceModel": "nobody"})
    assert statuses(answer) == {mac_of(0): "invalid"}
    assert answer["devices"][0]["violations"][0]["path"] == "/deviceModel"


async def test_put_patch_and_delete_on_the_changes_path_are_405(client: Client) -> None:
    for method in ("PUT", "PATCH", "DELETE"):
        response = await client.open("/api/configs/changes", method=method, json={})
        assert response.status_code == 405, method
        assert (await response.get_json())["code"] == "METHOD_NOT_ALLOWED"
        assert response.headers["Allow"] == "GET, HEAD, OPTIONS, POST"
    options = await client.options("/api/configs/changes")
    assert options.headers["Allow"] == "GET, HEAD, OPTIONS, POST"  # not the <mac_address> routes'

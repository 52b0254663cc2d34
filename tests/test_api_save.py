import asyncio
import json
import stat
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import MAC, Client, Outside


async def put(client: Client, mac: str, body: Any) -> tuple[int, dict[str, Any]]:
    response = await client.put(f"/api/configs/{mac}", json=body)
    return response.status_code, await response.get_json()


async def test_save_creates_a_config(client: Client) -> None:
    content = {"deviceName": "Kitchen", "enableOTA": True, "nested": {"b": [1, 2], "a": "é"}}
    status, body = await put(client, MAC, {"content": content})
    assert status == 200
    assert body == {
        "mac_address": MAC,
        "device_name": "Kitchen",
        "device_model": None,
        "device_entity_id": None,
        "enable_ota": True,
        "content": content,
    }
    device = await client.get(f"/api/configs/{MAC}.json")
    assert json.loads(await device.get_data()) == content
    assert "é".encode() in await device.get_data()


async def test_a_saved_file_is_utf8_and_readable_by_all(client: Client, configs_dir: Path) -> None:
    content = {"deviceName": "Kitchen", "nested": {"b": [1, 2], "a": "é"}}
    await put(client, MAC, {"content": content})
    path = configs_dir / f"{MAC}.json"
    assert json.loads(path.read_text(encoding="utf-8")) == content
    assert "é" in path.read_text(encoding="utf-8")
    assert stat.S_IMODE(path.stat().st_mode) == 0o644


async def test_save_updates_a_config(client: Client, outside: Outside) -> None:
    await outside.put(MAC, {"deviceName": "old"})
    status, body = await put(client, MAC, {"content": {"deviceName": "new"}})
    assert status == 200
    assert body["device_name"] == "new"
    assert (await (await client.get(f"/api/configs/{MAC}")).get_json())["device_name"] == "new"


async def test_save_with_uppercase_mac_stores_lowercase(client: Client) -> None:
    status, body = await put(client, MAC.upper(), {"content": {}})
    assert status == 200
    assert body["mac_address"] == MAC
    listed = await (await client.get("/api/configs")).get_json()
    assert [item["mac_address"] for item in listed["configs"]] == [MAC]


async def test_save_with_uppercase_mac_names_the_file_lowercase(
    client: Client, configs_dir: Path
) -> None:
    await put(client, MAC.upper(), {"content": {}})
    assert [p.name for p in configs_dir.iterdir() if not p.name.startswith(".")] == [f"{MAC}.json"]


async def test_save_keeps_key_order(client: Client) -> None:
    content = {"z": 1, "a": 2, "m": {"y": 1, "b": 2}}
    await put(client, MAC, {"content": content})
    stored = json.loads(await (await client.get(f"/api/configs/{MAC}.json")).get_data())
    assert list(stored) == ["z", "a", "m"]
    assert list(stored["m"]) == ["y", "b"]


async def nothing_stored(client: Client) -> bool:
    listed = await (await client.get("/api/configs")).get_json()
    return bool(listed["count"] == 0)


async def test_save_with_invalid_mac_is_400(client: Client) -> None:
    status, body = await put(client, "aa:bb:cc:dd:ee:ff", {"content": {}})
    assert status == 400
    assert body["code"] == "INVALID_OPERATION"
    assert await nothing_stored(client)


@pytest.mark.parametrize(
    ("raw", "content_type"),
    [
        (b"not json", "application/json"),
        (b'{"content": {}', "application/json"),
        (b'{"content": {}} trailing', "application/json"),
        (b"", "application/json"),
        (b"[]", "application/json"),
        (b'"content"', "application/json"),
        (b"null", "application/json"),
        (b"{}", "application/json"),
        (b'{"content": []}', "application/json"),
        (b'{"content": "x"}', "application/json"),
        (b'{"content": null}', "application/json"),
        (b'{"content": {}, "allowOverwrite": false}', "application/json"),
        (b'{"content": {}, "allow_overwrite": "false"}', "application/json"),
        (b'{"content": {}, "allow_overwrite": 0}', "application/json"),
        (b'{"content": {"a": NaN}}', "application/json"),
        (b'{"content": {"a": Infinity}}', "application/json"),
        (b'{"content": {"a": -Infinity}}', "application/json"),
        (b'{"content": {"a": 1e400}}', "application/json"),
        (b'{"content": {"a": "\xff"}}', "application/json"),
        (b'{"content": ' + b"[" * 10_000 + b"]" * 10_000 + b"}", "application/json"),
    ],
)
async def test_invalid_body_is_400(client: Client, raw: bytes, content_type: str) -> None:
    response = await client.put(
        f"/api/configs/{MAC}", data=raw, headers={"Content-Type": content_type}
    )
    assert response.status_code == 400
    assert (await response.get_json())["code"] == "VALIDATION_FAILED"
    assert await nothing_stored(client)


async def test_validation_errors_list_loc_msg_type(client: Client) -> None:
    status, body = await put(client, MAC, {"content": [], "extra": 1})
    assert status == 400
    errors = body["details"]["errors"]
    assert {tuple(e["loc"]) for e in errors} == {("content",), ("extra",)}
    assert all(set(e) == {"loc", "msg", "type"} for e in errors)


@pytest.mark.parametrize("content_type", [None, "text/plain", "application/x-www-form-urlencoded"])
async def test_non_json_content_type_is_415(client: Client, content_type: str | None) -> None:
    headers = {"Content-Type": content_type} if content_type else {}
    response = await client.put(f"/api/configs/{MAC}", data=b'{"content": {}}', headers=headers)
    assert response.status_code == 415
    assert (await response.get_json())["code"] == "UNSUPPORTED_MEDIA_TYPE"
    assert await nothing_stored(client)


async def test_allow_overwrite_false_on_existing_config_is_409(
    client: Client, outside: Outside
) -> None:
    await outside.put(MAC, {"deviceName": "keep"})
    status, body = await put(client, MAC, {"content": {"x": 1}, "allow_overwrite": False})
    assert status == 409
    assert body["code"] == "RECORD_EXISTS"
    kept = await client.get(f"/api/configs/{MAC}.json")
    assert json.loads(await kept.get_data()) == {"deviceName": "keep"}


async def test_allow_overwrite_false_creates_when_absent(client: Client) -> None:
    status, _ = await put(client, MAC, {"content": {"x": 1}, "allow_overwrite": False})
    assert status == 200


async def test_racing_creators_one_wins(client: Client) -> None:
    for round_ in range(10):
        mac = f"aa-bb-cc-dd-ee-{round_:02x}"
        results = await asyncio.gather(
            *(put(client, mac, {"content": {"w": i}, "allow_overwrite": False}) for i in range(2))
        )
        assert sorted(status for status, _ in results) == [200, 409]
        winner = next(body for status, body in results if status == 200)
        stored = await client.get(f"/api/configs/{mac}.json")
        assert json.loads(await stored.get_data()) == winner["content"]


async def test_body_over_the_limit_is_413(client: Client) -> None:
    big = {"content": {"blob": "x" * (1024 * 1024)}}
    response = await client.put(f"/api/configs/{MAC}", json=big)
    assert response.status_code == 413
    assert (await response.get_json())["code"] == "PAYLOAD_TOO_LARGE"
    assert await nothing_stored(client)


async def test_save_into_missing_directory_is_503(client: Client, configs_dir: Path) -> None:
    configs_dir.rmdir()
    status, body = await put(client, MAC, {"content": {}})
    assert status == 503
    assert body["code"] == "STORAGE_UNAVAILABLE"
    assert not configs_dir.exists()  # the service never creates its directory

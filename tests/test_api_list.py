import json
import os
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import MAC, OTHER_MAC, Client, Outside


async def list_configs(client: Client) -> dict[str, Any]:
    response = await client.get("/api/configs")
    assert response.status_code == 200
    body: dict[str, Any] = await response.get_json()
    return body


async def test_empty_directory_lists_nothing(client: Client) -> None:
    assert await list_configs(client) == {"configs": [], "count": 0}


async def test_lists_several_sorted_by_mac(client: Client, outside: Outside) -> None:
    for mac in (MAC, OTHER_MAC, "0a-0b-0c-0d-0e-0f"):
        await outside.put(mac, {"deviceName": mac})
    body = await list_configs(client)
    macs = [item["mac_address"] for item in body["configs"]]
    assert macs == [OTHER_MAC, "0a-0b-0c-0d-0e-0f", MAC]
    assert body["count"] == 3


async def test_summary_fields_come_from_the_document(client: Client, outside: Outside) -> None:
    content = {
        "deviceName": "Hall",
        "deviceModel": "esp32_relay",
        "deviceEntityId": "light.hall",
        "enableOTA": True,
        "x": 1,
    }
    await outside.put(MAC, content)
    assert (await list_configs(client))["configs"] == [
        {
            "mac_address": MAC,
            "device_name": "Hall",
            "device_model": "esp32_relay",
            "device_entity_id": "light.hall",
            "enable_ota": True,
        }
    ]
    # The SPA's fields as they were, and the new one beside device_name.
    assert b'"device_name":"Hall","device_model":"esp32_relay","device_entity_id"' in (
        await (await client.get("/api/configs")).get_data()
    )


@pytest.mark.parametrize(
    "content",
    [
        {},
        {"deviceName": 5, "deviceEntityId": ["x"], "enableOTA": "yes", "deviceModel": 1},
        {"deviceName": None, "deviceEntityId": {"a": 1}, "enableOTA": 1, "deviceModel": None},
        {"deviceModel": ["esp32"]},
    ],
)
async def test_missing_or_wrong_typed_summary_fields_are_null(
    client: Client, outside: Outside, content: dict[str, Any]
) -> None:
    await outside.put(MAC, content)
    assert (await list_configs(client))["configs"] == [
        {
            "mac_address": MAC,
            "device_name": None,
            "device_model": None,
            "device_entity_id": None,
            "enable_ota": None,
        }
    ]


async def test_odd_entries_are_skipped(client: Client, configs_dir: Path) -> None:
    (configs_dir / f"{MAC}.json").write_text(json.dumps({"deviceName": "good"}))
    (configs_dir / f"{OTHER_MAC}.json").write_text("{not json")
    (configs_dir / "01-02-03-04-05-06.json").write_text("[1, 2]")
    (configs_dir / "AA-BB-CC-DD-EE-00.json").write_text("{}")
    (configs_dir / "notes.txt").write_text("hello")
    (configs_dir / ".aa-bb-cc-dd-ee-ff.json.host-1-0123abcd.tmp").write_text("{")
    (configs_dir / "02-02-03-04-05-06.json").mkdir()
    os.symlink("/etc/hostname", configs_dir / "03-02-03-04-05-06.json")
    os.mkfifo(configs_dir / "04-02-03-04-05-06.json")
    body = await list_configs(client)
    assert [item["mac_address"] for item in body["configs"]] == [MAC]
    assert body["count"] == 1


async def test_bad_file_is_warned_once_not_per_request(
    client: Client, configs_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    (configs_dir / f"{MAC}.json").write_text("{broken")
    for _ in range(3):
        await list_configs(client)
        (configs_dir / "trigger.txt").write_text("")  # a directory change forces a rescan
    warnings = [r for r in caplog.records if MAC in r.getMessage()]
    assert len(warnings) == 1


async def test_list_sees_documents_added_and_removed_by_others(
    client: Client, outside: Outside
) -> None:
    assert (await list_configs(client))["count"] == 0
    await outside.put(MAC, {"deviceName": "new"})
    assert (await list_configs(client))["configs"][0]["device_name"] == "new"
    await outside.put(MAC, {"deviceName": "replaced"})
    assert (await list_configs(client))["configs"][0]["device_name"] == "replaced"
    await outside.remove(MAC)
    assert (await list_configs(client))["count"] == 0


async def test_list_sees_a_file_renamed_over_another(client: Client, configs_dir: Path) -> None:
    path = configs_dir / f"{MAC}.json"
    path.write_text(json.dumps({"deviceName": "new"}))
    assert (await list_configs(client))["configs"][0]["device_name"] == "new"
    replacement = configs_dir / "replacement"
    replacement.write_text(json.dumps({"deviceName": "renamed over"}))
    replacement.rename(path)
    assert (await list_configs(client))["configs"][0]["device_name"] == "renamed over"
    path.unlink()
    assert (await list_configs(client))["count"] == 0


async def test_list_answers_503_when_the_directory_is_missing(
    client: Client, configs_dir: Path
) -> None:
    configs_dir.rmdir()
    response = await client.get("/api/configs")
    assert response.status_code == 503
    assert (await response.get_json())["code"] == "STORAGE_UNAVAILABLE"

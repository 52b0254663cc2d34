import json
from pathlib import Path

import pytest

from tests.conftest import MAC, Client, write_config


async def test_get_returns_summary_and_content(client: Client, configs_dir: Path) -> None:
    content = {"deviceName": "Hall", "z": 1, "a": {"ü": "ß"}, "enableOTA": False}
    write_config(configs_dir, MAC, content)
    response = await client.get(f"/api/configs/{MAC}")
    assert response.status_code == 200
    body = await response.get_json()
    assert body == {
        "mac_address": MAC,
        "device_name": "Hall",
        "device_entity_id": None,
        "enable_ota": False,
        "content": content,
    }
    assert list(body["content"]) == ["deviceName", "z", "a", "enableOTA"]  # key order kept
    assert "ß".encode() in await response.get_data()  # non-ASCII kept as UTF-8
    assert response.headers["ETag"].startswith('"')


async def test_get_of_unknown_mac_is_404(client: Client) -> None:
    response = await client.get(f"/api/configs/{MAC}")
    assert response.status_code == 404
    body = await response.get_json()
    assert body["code"] == "RECORD_NOT_FOUND"
    assert "not found" in body["error"]


async def test_uppercase_mac_reads_the_lowercase_file(client: Client, configs_dir: Path) -> None:
    write_config(configs_dir, MAC, {"deviceName": "x"})
    response = await client.get(f"/api/configs/{MAC.upper()}")
    assert response.status_code == 200
    assert (await response.get_json())["mac_address"] == MAC


@pytest.mark.parametrize(
    "raw",
    [
        "aa:bb:cc:dd:ee:ff",
        "aabbccddeeff",
        "aa-bb-cc-dd-ee",
        "aa-bb-cc-dd-ee-fg",
        "aa-bb-cc-dd-ee-ff%0A",
        "aa-bb-cc-dd-ee-f%00",
        "..",
        "%2e%2e",
        "aa.bb.cc.dd.ee.ff",
        "aa-bb-cc-dd-ee-%EF%BC%91%EF%BC%91",  # full-width digits
        "a" * 10_000,
    ],
)
async def test_invalid_mac_is_400(client: Client, raw: str) -> None:
    response = await client.get(f"/api/configs/{raw}")
    assert response.status_code == 400
    assert (await response.get_json())["code"] == "INVALID_OPERATION"


async def test_encoded_slash_in_a_mac_is_400(client: Client) -> None:
    response = await client.get("/api/configs/..%2F..%2Fetc%2Fpasswd")
    assert response.status_code == 400
    assert (await response.get_json())["code"] == "INVALID_OPERATION"


async def test_unreadable_file_is_422(client: Client, configs_dir: Path) -> None:
    (configs_dir / f"{MAC}.json").write_text('{"a": NaN}')
    response = await client.get(f"/api/configs/{MAC}")
    assert response.status_code == 422
    assert (await response.get_json())["code"] == "RECORD_UNREADABLE"


async def test_device_endpoint_serves_stored_bytes(client: Client, configs_dir: Path) -> None:
    raw = b'{"deviceName":   "as written",\n "n": 1}'
    (configs_dir / f"{MAC}.json").write_bytes(raw)
    response = await client.get(f"/api/configs/{MAC.upper()}.json")
    assert response.status_code == 200
    assert await response.get_data() == raw
    assert response.headers["Cache-Control"] == "no-cache"
    assert response.headers["Content-Type"] == "application/json"
    assert response.headers["ETag"]


async def test_device_endpoint_answers_304_to_its_etag(client: Client, configs_dir: Path) -> None:
    write_config(configs_dir, MAC, {"v": 1})
    etag = (await client.get(f"/api/configs/{MAC}.json")).headers["ETag"]
    response = await client.get(f"/api/configs/{MAC}.json", headers={"If-None-Match": etag})
    assert response.status_code == 304
    assert await response.get_data() == b""
    assert response.headers["ETag"] == etag
    write_config(configs_dir, MAC, {"v": 2})
    response = await client.get(f"/api/configs/{MAC}.json", headers={"If-None-Match": etag})
    assert response.status_code == 200
    assert json.loads(await response.get_data()) == {"v": 2}


async def test_device_endpoint_of_unknown_mac_is_404(client: Client) -> None:
    response = await client.get(f"/api/configs/{MAC}.json")
    assert response.status_code == 404
    assert (await response.get_json())["code"] == "RECORD_NOT_FOUND"
    response = await client.get(f"/api/configs/{MAC}.json", headers={"If-None-Match": '"x"'})
    assert response.status_code == 404

import json
from pathlib import Path

import pytest

from tests.conftest import MAC, Client, Outside, write_config
from tests.harness import raw_request
from tests.server import running_server


async def test_get_returns_summary_and_content(client: Client, outside: Outside) -> None:
    content = {"deviceName": "Hall", "z": 1, "a": {"ü": "ß"}, "enableOTA": False}
    await outside.put(MAC, content)
    response = await client.get(f"/api/configs/{MAC}")
    assert response.status_code == 200
    body = await response.get_json()
    assert body == {
        "mac_address": MAC,
        "device_name": "Hall",
        "device_model": None,
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


async def test_uppercase_mac_reads_the_lowercase_document(client: Client) -> None:
    await client.put(f"/api/configs/{MAC}", json={"content": {"deviceName": "x"}})
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


async def test_device_endpoint_serves_stored_bytes(client: Client, outside: Outside) -> None:
    raw = b'{"deviceName":   "as written",\n "n": 1}'
    await outside.put(MAC, raw)
    response = await client.get(f"/api/configs/{MAC.upper()}.json")
    assert response.status_code == 200
    assert await response.get_data() == raw
    assert response.headers["Cache-Control"] == "no-cache"
    assert response.headers["Content-Type"] == "application/json"
    assert response.headers["ETag"]


async def test_device_endpoint_answers_304_to_its_etag(client: Client, outside: Outside) -> None:
    await outside.put(MAC, {"v": 1})
    etag = (await client.get(f"/api/configs/{MAC}.json")).headers["ETag"]
    response = await client.get(f"/api/configs/{MAC}.json", headers={"If-None-Match": etag})
    assert response.status_code == 304
    assert await response.get_data() == b""
    assert response.headers["ETag"] == etag
    await outside.put(MAC, {"v": 2})
    response = await client.get(f"/api/configs/{MAC}.json", headers={"If-None-Match": etag})
    assert response.status_code == 200
    assert json.loads(await response.get_data()) == {"v": 2}


async def test_device_endpoint_of_unknown_mac_is_404(client: Client) -> None:
    response = await client.get(f"/api/configs/{MAC}.json")
    assert response.status_code == 404
    assert (await response.get_json())["code"] == "RECORD_NOT_FOUND"
    response = await client.get(f"/api/configs/{MAC}.json", headers={"If-None-Match": '"x"'})
    assert response.status_code == 404


def test_the_real_servers_304_has_no_content_length_but_the_validators(tmp_path: Path) -> None:
    # About the HTTP server's 304, whatever the store: one store is enough.
    write_config(tmp_path, MAC, {"deviceName": "Hall", "v": 1})
    with running_server(tmp_path) as server:
        target = f"/api/configs/{MAC}.json".encode()
        full = raw_request(server.port, "GET", target)
        conditional = {"If-None-Match": full.headers["etag"]}
        revalidated = raw_request(
            server.port, "GET", target, content_type=None, headers=conditional
        )
    assert full.status == 200
    assert full.headers["content-length"] == str(len(full.body))
    assert revalidated.status == 304
    assert revalidated.body == b""
    # RFC 9110 8.6: a 304 may carry Content-Length only if it is the 200's length.
    assert (
        revalidated.headers.get("content-length", full.headers["content-length"])
        == (full.headers["content-length"])
    )
    assert revalidated.headers["etag"] == full.headers["etag"]
    assert revalidated.headers["cache-control"] == "no-cache"


@pytest.mark.parametrize(
    "if_match", ['"stale"', 'W/"{etag}"', '"other", "more"'], ids=["stale", "weak", "list"]
)
async def test_device_endpoint_if_match_mismatch_is_412(
    client: Client, outside: Outside, if_match: str
) -> None:
    await outside.put(MAC, {"v": 1})
    etag = (await client.get(f"/api/configs/{MAC}.json")).headers["ETag"].strip('"')
    response = await client.get(
        f"/api/configs/{MAC}.json", headers={"If-Match": if_match.format(etag=etag)}
    )
    assert response.status_code == 412
    body = await response.get_json()
    assert (body["code"], body["status"]) == ("PRECONDITION_FAILED", 412)


@pytest.mark.parametrize("if_match", ["*", '"stale", {etag}', "{etag}"])
async def test_device_endpoint_if_match_that_matches_serves_the_document(
    client: Client, outside: Outside, if_match: str
) -> None:
    await outside.put(MAC, {"v": 1})
    etag = (await client.get(f"/api/configs/{MAC}.json")).headers["ETag"]
    response = await client.get(
        f"/api/configs/{MAC}.json", headers={"If-Match": if_match.format(etag=etag)}
    )
    assert response.status_code == 200
    assert json.loads(await response.get_data()) == {"v": 1}


@pytest.mark.parametrize("if_match", ["*", '"abc"'])
async def test_device_endpoint_if_match_without_a_document_is_412(
    client: Client, if_match: str
) -> None:
    response = await client.get(f"/api/configs/{MAC}.json", headers={"If-Match": if_match})
    assert response.status_code == 412
    assert (await response.get_json())["code"] == "PRECONDITION_FAILED"


async def test_device_endpoint_if_match_wins_over_if_none_match(
    client: Client, outside: Outside
) -> None:
    await outside.put(MAC, {"v": 1})
    etag = (await client.get(f"/api/configs/{MAC}.json")).headers["ETag"]
    headers = {"If-Match": '"stale"', "If-None-Match": etag}
    response = await client.get(f"/api/configs/{MAC}.json", headers=headers)
    assert response.status_code == 412

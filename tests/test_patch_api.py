"""PATCH /api/configs/<mac> through HTTP, on every store: the RFCs' examples, conditions,
validation, and the write path a PUT goes through."""

import asyncio
import json
from collections.abc import Callable
from typing import Any

from quart import Quart

from quart_iot.app import create_app
from quart_iot.patch import JSON_PATCH, MERGE_PATCH
from quart_iot.settings import Settings
from quart_iot.store import ConfigStore, Written
from quart_iot.store.extension import PATCH_ATTEMPTS
from tests.conftest import MAC, OTHER_MAC, Client
from tests.esp32_schema import MODEL_CODE, esp32_device, esp32_schema, large_esp32_device
from tests.test_models import error_of, esp32_model, put_config
from tests.test_patch import JSON_PATCH_EXAMPLES, MERGE_EXAMPLES, op

CONFIG = f"/api/configs/{MAC}"


async def patch(
    client: Client,
    body: Any,
    mimetype: str = MERGE_PATCH,
    headers: dict[str, str] | None = None,
    mac: str = MAC,
) -> Any:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    return await client.patch(
        f"/api/configs/{mac}", data=data, headers={"Content-Type": mimetype, **(headers or {})}
    )


def mac_of(index: int) -> str:
    return f"00-00-00-00-01-{index:02x}"


async def test_every_merge_patch_example_of_rfc_7396(client: Client) -> None:
    examples = [case for case in MERGE_EXAMPLES if isinstance(case[0], dict)]
    for index, (original, body, result) in enumerate(examples):
        mac = mac_of(index)
        assert (await put_config(client, mac, original)).status_code == 200
        response = await patch(client, body, mac=mac)
        if isinstance(result, dict):
            assert response.status_code == 200, (original, body)
            assert json.dumps((await response.get_json())["content"]) == json.dumps(result)
        else:  # the result would not be a config: refused whatever the document
            await error_of(response, 400, "VALIDATION_FAILED")


async def test_every_json_patch_example_of_rfc_6902(client: Client) -> None:
    for index, (section, document, body, result) in enumerate(JSON_PATCH_EXAMPLES):
        mac = mac_of(index)
        await put_config(client, mac, document)
        response = await patch(client, body, JSON_PATCH, mac=mac)
        assert response.status_code == 200, section
        content = (await response.get_json())["content"]
        assert json.dumps(content) == json.dumps(result), section  # key order too
    # A.9, A.12, A.15: a test that fails, a path that does not exist: 409, nothing written.
    await put_config(client, MAC, {"baz": "qux", "/": 9, "~1": 10})
    etag = (await client.get(CONFIG)).headers["ETag"]
    for body, where in (
        ([op("test", "/baz", value="bar")], "/baz"),
        ([op("add", "/nothere/bat", value="qux")], "/nothere"),
        ([op("test", "/~01", value="10")], "/~01"),
        ([op("add", "/x", value=1), op("replace", "/nope", value=2)], "/nope"),
    ):
        conflict = await error_of(await patch(client, body, JSON_PATCH), 409, "PATCH_CONFLICT")
        assert conflict["details"]["path"] == where
    assert (await client.get(CONFIG)).headers["ETag"] == etag  # all or nothing
    # Well-formed, but the result would be no config (RFC 5789 2.2: 422).
    for body in ([op("replace", "", value=[1])], [op("move", "", from_="/baz")]):
        await error_of(await patch(client, body, JSON_PATCH), 422, "UNPROCESSABLE_PATCH")
    assert (await client.get(CONFIG)).headers["ETag"] == etag
    # A.13: an operation with two "op" members is malformed.
    twice = b'[{"op": "add", "path": "/baz", "value": "qux", "op": "remove"}]'
    await error_of(await patch(client, twice, JSON_PATCH), 400, "VALIDATION_FAILED")


async def test_a_patch_answers_what_a_put_answers_and_keeps_a_version(client: Client) -> None:
    await put_config(client, MAC, {"deviceName": "Hall", "enableOTA": False, "x": 1})
    patched = await patch(client, {"enableOTA": True, "x": None, "deviceModel": None})
    assert patched.status_code == 200
    body = await patched.get_json()
    assert body == {
        "mac_address": MAC,
        "device_name": "Hall",
        "device_model": None,
        "device_entity_id": None,
        "enable_ota": True,
        "content": {"deviceName": "Hall", "enableOTA": True},
    }
    got = await client.get(CONFIG)
    assert (await got.get_json(), got.headers["ETag"]) == (body, patched.headers["ETag"])
    history = await (await client.get(f"{CONFIG}/history")).get_json()
    assert [v["change"] for v in history["versions"]] == ["updated", "created"]
    unchanged = await patch(client, {"enableOTA": True})
    assert unchanged.headers["Config-Unchanged"] == "true"
    assert unchanged.headers["ETag"] == patched.headers["ETag"]


async def test_a_patch_never_creates(client: Client) -> None:
    await error_of(await patch(client, {"a": 1}), 404, "RECORD_NOT_FOUND")
    await error_of(await patch(client, [op("add", "/a", value=1)], JSON_PATCH), 404,
                   "RECORD_NOT_FOUND")  # fmt: skip
    await error_of(await patch(client, {"a": 1}, headers={"If-Match": "*"}), 412,
                   "PRECONDITION_FAILED")  # fmt: skip
    await error_of(await client.get(CONFIG), 404, "RECORD_NOT_FOUND")


async def test_a_patch_that_no_document_takes_is_refused_before_anything_is_read(
    client: Client,
) -> None:
    for body, mimetype in (
        ({"op": "add", "path": "/a", "value": 1}, JSON_PATCH),  # not an array
        ([{"op": "jump", "path": "/a"}], JSON_PATCH),
        ([{"op": "add", "path": "a", "value": 1}], JSON_PATCH),
        ([1, 2], MERGE_PATCH),  # would replace the whole document with a list
        ("text", MERGE_PATCH),
        (b"{not json", MERGE_PATCH),
        (b"", MERGE_PATCH),
    ):
        await error_of(await patch(client, body, mimetype), 400, "VALIDATION_FAILED")
    # Well-formed, and no document can take it: 422, still before the document is read.
    for body in ([{"op": "remove", "path": ""}], [op("move", "/a/b", from_="/a")]):
        await error_of(await patch(client, body, JSON_PATCH), 422, "UNPROCESSABLE_PATCH")


async def test_other_media_types_are_415_with_accept_patch(client: Client) -> None:
    await put_config(client, MAC, {"a": 1})
    for mimetype in ("application/json", "text/plain", "application/x-www-form-urlencoded"):
        response = await patch(client, {"a": 2}, mimetype)
        await error_of(response, 415, "UNSUPPORTED_MEDIA_TYPE")
        assert response.headers["Accept-Patch"] == f"{MERGE_PATCH}, {JSON_PATCH}"
    bare = await client.patch(CONFIG, data=b'{"a": 2}')
    await error_of(bare, 415, "UNSUPPORTED_MEDIA_TYPE")
    with_charset = await patch(client, {"a": 3}, f"{MERGE_PATCH}; charset=utf-8")
    assert with_charset.status_code == 200
    await error_of(await patch(client, {"a": 1}, mac="aa:bb:cc:dd:ee:ff"), 400,
                   "INVALID_OPERATION")  # fmt: skip
    for path in (f"{CONFIG}.json", "/api/configs/events", "/api/configs"):
        refused = await client.patch(path, data=b"{}", headers={"Content-Type": MERGE_PATCH})
        await error_of(refused, 405, "METHOD_NOT_ALLOWED")


async def test_if_match_is_honoured(client: Client) -> None:
    etag = (await put_config(client, MAC, {"v": 1})).headers["ETag"]
    stale = await patch(client, {"v": 2}, headers={"If-Match": '"0"'})
    await error_of(stale, 412, "PRECONDITION_FAILED")
    none_match = await patch(client, {"v": 2}, headers={"If-None-Match": "*"})
    await error_of(none_match, 412, "PRECONDITION_FAILED")
    current = await patch(client, {"v": 2}, headers={"If-Match": etag})
    assert current.status_code == 200
    again = await patch(client, {"v": 3}, headers={"If-Match": etag})  # the ETag moved on
    await error_of(again, 412, "PRECONDITION_FAILED")
    assert (await patch(client, {"v": 3}, headers={"If-Match": "*"})).status_code == 200
    assert (await (await client.get(CONFIG)).get_json())["content"] == {"v": 3}


async def test_concurrent_patches_without_if_match_lose_no_update(client: Client) -> None:
    await put_config(client, MAC, {"base": True})
    # Each PATCH that loses a race is applied again to the newer document; with at most
    # PATCH_ATTEMPTS writers of one device, each lands.
    bodies = [[op("add", f"/k{index}", value=index)] for index in range(PATCH_ATTEMPTS)]
    answers = await asyncio.gather(*(patch(client, body, JSON_PATCH) for body in bodies))
    assert [answer.status_code for answer in answers] == [200] * PATCH_ATTEMPTS
    content = (await (await client.get(CONFIG)).get_json())["content"]
    assert content == {"base": True, **{f"k{index}": index for index in range(PATCH_ATTEMPTS)}}


async def test_a_patch_result_is_validated_against_the_model_it_names(client: Client) -> None:
    await esp32_model(client)
    etag = (await put_config(client, MAC, esp32_device())).headers["ETag"]
    broken = await patch(client, [op("replace", "/mqtt/port", value="1883x")], JSON_PATCH)
    body = await error_of(broken, 422, "SCHEMA_VIOLATION")
    assert [(v["path"], v["keyword"]) for v in body["details"]["violations"]] == [
        ("/mqtt/port", "type")
    ]
    typo = await patch(client, {"mqtt": {"prot": 1883}, "logLevel": "loud"})
    body = await error_of(typo, 422, "SCHEMA_VIOLATION")
    assert [(v["path"], v["keyword"]) for v in body["details"]["violations"]] == [
        ("/logLevel", "enum"),
        ("/mqtt", "additionalProperties"),
    ]
    unknown = await patch(client, {"deviceModel": "esp8266"})
    await error_of(unknown, 422, "UNKNOWN_MODEL")
    assert (await client.get(CONFIG)).headers["ETag"] == etag  # nothing written
    fixed = await patch(client, {"mqtt": {"port": 1884}})
    assert fixed.status_code == 200
    assert (await fixed.get_json())["content"]["mqtt"]["port"] == 1884
    # Off the model: the result names none, so it is not validated.
    assert (await patch(client, {"deviceModel": None, "mqtt": {"port": "x"}})).status_code == 200


async def test_a_patch_result_meets_the_size_limit(
    settings: Settings, make_settings: Callable[..., Settings]
) -> None:
    app = create_app(make_settings(max_content_length=24_000))
    async with app.test_app():
        client = app.test_client()
        await put_model_and_device(client)
        grown = await patch(client, {"notes": "x" * 5_000})
        body = await error_of(grown, 413, "PAYLOAD_TOO_LARGE")
        assert body["details"]["limit"] == 24_000


async def put_model_and_device(client: Client) -> None:
    await client.put(f"/api/models/{MODEL_CODE}", json={"name": "n", "configSchema": None})
    assert (await put_config(client, MAC, large_esp32_device(20_000))).status_code == 200


async def test_a_patch_of_a_large_document_changes_one_field(client: Client) -> None:
    await esp32_model(client)
    document = large_esp32_device(20_000)
    assert (await put_config(client, MAC, document)).status_code == 200
    patched = await patch(client, {"reportIntervalSeconds": 120})
    assert patched.status_code == 200
    assert (await patched.get_json())["content"] == {**document, "reportIntervalSeconds": 120}
    schema = await (await client.get(f"/api/models/{MODEL_CODE}")).get_json()
    assert schema["configSchema"] == esp32_schema()
    bulky = {"blob": ["x" * 100] * 1000}  # over 64 KiB: patched in a worker thread
    await put_config(client, OTHER_MAC, bulky)
    patched = await patch(client, [op("add", "/blob/-", value="y")], JSON_PATCH, mac=OTHER_MAC)
    assert (await patched.get_json())["content"]["blob"][-2:] == ["x" * 100, "y"]


async def test_a_patch_wakes_a_waiting_device_and_is_told_as_a_patch(
    app: Quart, store: ConfigStore, client: Client
) -> None:
    heard: list[Written] = []
    store.write_listeners.append(heard.append)
    etag = (await put_config(client, OTHER_MAC, {"v": 1})).headers["ETag"]
    poll = asyncio.create_task(long_poll(client, OTHER_MAC, etag))
    await asyncio.sleep(0.2)  # the poll is held
    patched = await patch(client, {"v": 2}, mac=OTHER_MAC)
    answer = await asyncio.wait_for(poll, 10)
    assert answer.status_code == 200
    assert answer.headers["ETag"] == patched.headers["ETag"]
    assert await answer.get_json() == {"v": 2}
    assert [(w.action, w.status, w.etag_before, w.etag_after) for w in heard[1:]] == [
        ("patch", 200, etag.strip('"'), patched.headers["ETag"].strip('"'))
    ]


async def long_poll(client: Client, mac: str, etag: str) -> Any:
    """The answer that carries a new ETag. PostgreSQL: the NOTIFY of the write that made
    `etag` may reach the waiter after it began, and wake it with `etag` again (a spurious
    wake-up, told to the lead): then it polls again."""
    headers = {"If-None-Match": etag, "Prefer": "wait=20"}
    for _ in range(3):
        answer = await client.get(f"/api/configs/{mac}.json", headers=headers)
        if answer.headers["ETag"] != etag:
            return answer
    return answer

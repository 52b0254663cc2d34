"""Fleet search through HTTP, on both stores: `GET /api/configs?filter=...&fields=...` selects
what the RQL predicate selects, follows every write on every replica, and leaves the list
without them as it was, byte for byte."""

import asyncio
import json
import shutil
import threading
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from quart import Quart

from quart_iot.app import create_app
from quart_iot.rql import Filter
from quart_iot.settings import Settings
from quart_iot.store import ConfigStore, DirectoryBackend, Search
from quart_iot.store.directory.backend import _evaluations as evaluations
from quart_iot.store.directory.search import Abandoned
from quart_iot.store.search import MAX_BYTES, MAX_SEARCHES, SearchCache, Selection
from tests.conftest import MAC, OTHER_MAC, Client, Outside, write_config
from tests.rql_cases import DOCUMENTS, FILTERS

RELAYS = 'eq(deviceModel,"relay_board")'
MODELS = ("relay_board", "plug", "x")
# For what the route decides before any store is asked (parsing, the OpenAPI document).
ONE_STORE = pytest.mark.parametrize("backend", ["directory"])


async def put(client: Client, mac: str, content: dict[str, Any]) -> None:
    response = await client.put(f"/api/configs/{mac}", json={"content": content})
    assert response.status_code == 200, await response.get_data()


async def search(client: Client, **query: str) -> dict[str, Any]:
    response = await client.get("/api/configs", query_string=query)
    assert response.status_code == 200, await response.get_data()
    body: dict[str, Any] = await response.get_json()
    assert body["count"] == len(body["configs"])
    return body


async def selected(client: Client, text: str) -> list[str]:
    return [entry["mac_address"] for entry in (await search(client, filter=text))["configs"]]


async def error(client: Client, **query: str) -> dict[str, Any]:
    response = await client.get("/api/configs", query_string=query)
    assert response.status_code == 400, await response.get_data()
    body: dict[str, Any] = await response.get_json()
    assert body["status"] == 400
    return body


@pytest.fixture
async def client(app: Quart) -> Client:
    """The app's test client, with the device models the tests' PUTs name (no schema): a PUT
    naming a model nobody defined is a 422."""
    client = app.test_client()
    for code in MODELS:
        model = {"name": code, "configSchema": None}
        assert (await client.put(f"/api/models/{code}", json=model)).status_code == 200
    return client


@pytest.fixture
async def fleet(client: Client, outside: Outside) -> Client:
    """The shared documents of tests/rql_cases.py, as a store written before device models
    holds them (a `deviceModel` of any type, no model defined): stored from outside."""
    for mac, content in DOCUMENTS.items():
        await outside.put(mac, content)
    return client


# -- what a filter selects -------------------------------------------------------------------


async def test_every_shared_case_selects_through_http_what_the_predicate_selects(
    fleet: Client,
) -> None:
    wrong = {}
    for text in FILTERS:
        expected = sorted(Filter(text).select(DOCUMENTS.items()))
        found = await selected(fleet, text)
        if found != expected:
            wrong[text] = (found, expected)
    assert not wrong


async def test_an_entry_is_the_list_s_entry_and_the_answer_is_sorted_by_mac(
    fleet: Client,
) -> None:
    listing = {e["mac_address"]: e for e in (await search(fleet, unrelated="1"))["configs"]}
    answer = await search(fleet, filter='like(mac_address,"aa-*")')
    assert [e["mac_address"] for e in answer["configs"]] == sorted(
        mac for mac in DOCUMENTS if mac.startswith("aa-")
    )
    assert all(entry == listing[entry["mac_address"]] for entry in answer["configs"])


async def test_fields_add_the_values_asked_for_null_where_missing(fleet: Client) -> None:
    answer = await search(
        fleet,
        filter='in(mac_address,"aa-00-00-00-00-01","aa-00-00-00-00-04","aa-00-00-00-00-05")',
        fields="mqtt/host, mqtt,tags,mac_address,a~1b,mqtt/host,sensors/0/pin,n",
    )
    fields = {entry["mac_address"]: entry["fields"] for entry in answer["configs"]}
    assert list(fields["aa-00-00-00-00-01"]) == [
        "mqtt/host", "mqtt", "tags", "mac_address", "a~1b", "sensors/0/pin", "n"
    ]  # fmt: skip
    assert fields["aa-00-00-00-00-01"] == {
        "mqtt/host": "broker.lan",
        "mqtt": {"host": "broker.lan", "port": 1883, "tls": False},
        "tags": ["prod", "mains"],
        "mac_address": "aa-00-00-00-00-01",
        "a~1b": None,
        "sensors/0/pin": 4,
        "n": None,
    }
    assert fields["aa-00-00-00-00-04"]["mqtt"] == "broker.lan"
    assert fields["aa-00-00-00-00-04"]["mqtt/host"] is None  # a string has no keys
    assert fields["aa-00-00-00-00-04"]["a~1b"] == 1
    assert set(fields["aa-00-00-00-00-05"].values()) == {None, "aa-00-00-00-00-05"}


async def test_fields_alone_list_every_device_with_its_values(
    fleet: Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("quart_iot.store.postgres.search.BATCH", 7)  # rows read in batches
    answer = await search(fleet, fields="version")
    assert answer["count"] == len(DOCUMENTS)
    versions = {entry["mac_address"]: entry["fields"]["version"] for entry in answer["configs"]}
    assert versions["aa-00-00-00-00-06"] == 1e20
    assert versions["aa-00-00-00-00-04"] is True
    assert versions["aa-00-00-00-00-05"] is None


async def test_numbers_and_text_in_fields_read_as_the_document_has_them(client: Client) -> None:
    content = {"n": 12345678901234567890, "f": 0.1, "e": 1e-7, "t": 'Küche "1"\n', "z": -0.0}
    await put(client, MAC, content)
    response = await client.get("/api/configs", query_string={"fields": "n,f,e,t,z"})
    body = await response.get_data()
    assert b'"fields":{"n":12345678901234567890,"f":0.1,"e":1e-07,"t":"K\xc3\xbcche \\"1\\"\\n",' \
        b'"z":-0.0}' in body  # fmt: skip


# -- the list without a search ---------------------------------------------------------------


async def test_without_filter_and_fields_the_list_is_byte_for_byte_as_before(
    client: Client,
) -> None:
    await put(client, MAC, {"deviceName": "Küche", "enableOTA": True, "deviceModel": "x"})
    await put(client, OTHER_MAC, {"deviceEntityId": "light.hall", "deviceName": 5})
    expected = (
        b'{"configs":[{"mac_address":"00-11-22-33-44-55","device_name":null,"device_model":null,'
        b'"device_entity_id":"light.hall","enable_ota":null},'
        b'{"mac_address":"aa-bb-cc-dd-ee-ff","device_name":"K\xc3\xbcche","device_model":"x",'
        b'"device_entity_id":null,"enable_ota":true}],"count":2}'
    )
    for query in ({}, {"unrelated": "1", "limit": "x"}, {"filter": "exists(mac_address)"}):
        response = await client.get("/api/configs", query_string=query)
        assert response.status_code == 200
        assert response.content_type == "application/json"
        assert await response.get_data() == expected, query


# -- errors ----------------------------------------------------------------------------------


@ONE_STORE
async def test_a_malformed_filter_is_400_naming_the_position(client: Client) -> None:
    body = await error(client, filter="eq(deviceModel,relay_board)")
    assert body["code"] == "INVALID_FILTER"
    assert "position 15" in body["error"]
    assert body["details"] == {
        "parameter": "filter",
        "position": 15,
        "near": "relay_board)",
        "problem": 'expected a value: a "double-quoted string", a number, true, false or null',
    }
    assert (await error(client, filter=""))["details"]["position"] == 0
    assert (await error(client, filter="and(exists(a)"))["details"]["position"] == 13


@ONE_STORE
async def test_malformed_fields_are_400_invalid_fields(client: Client) -> None:
    body = await error(client, filter="exists(a)", fields="mqtt/host,,x")
    assert body["code"] == "INVALID_FIELDS"
    assert body["details"]["parameter"] == "fields"
    assert body["details"]["position"] == 10


@ONE_STORE
async def test_a_filter_given_twice_is_400_not_one_of_them(client: Client) -> None:
    response = await client.get("/api/configs?filter=exists(a)&filter=exists(b)")
    assert response.status_code == 400
    assert (await response.get_json())["code"] == "VALIDATION_FAILED"


# -- read-your-writes, on every replica ------------------------------------------------------


async def test_a_filtered_list_follows_every_write(client: Client) -> None:
    relay = {"deviceModel": "relay_board", "mqtt": {"host": "old"}}
    await put(client, MAC, relay)
    await put(client, OTHER_MAC, {"deviceModel": "plug"})
    query = {"filter": RELAYS, "fields": "mqtt/host"}
    assert [e["fields"] for e in (await search(client, **query))["configs"]] == [
        {"mqtt/host": "old"}
    ]
    await put(client, MAC, {**relay, "mqtt": {"host": "new"}})  # still selected, other values
    assert [e["fields"] for e in (await search(client, **query))["configs"]] == [
        {"mqtt/host": "new"}
    ]
    await put(client, OTHER_MAC, {"deviceModel": "relay_board"})  # selected now
    assert await selected(client, RELAYS) == [OTHER_MAC, MAC]
    await put(client, MAC, {"deviceModel": "plug"})  # no longer
    assert await selected(client, RELAYS) == [OTHER_MAC]
    assert (await client.delete(f"/api/configs/{OTHER_MAC}")).status_code == 204
    assert await selected(client, RELAYS) == []
    history = await (await client.get(f"/api/configs/{MAC}/history")).get_json()
    oldest = history["versions"][-1]["version"]
    restored = await client.post(f"/api/configs/{MAC}/history/{oldest}/restore")
    assert restored.status_code == 200
    assert [e["fields"] for e in (await search(client, **query))["configs"]] == [
        {"mqtt/host": "old"}
    ]


async def test_a_write_on_another_replica_is_seen_at_once(
    client: Client, make_settings: Callable[..., Settings]
) -> None:
    await put(client, MAC, {"deviceModel": "plug"})
    assert await selected(client, RELAYS) == []
    other = create_app(make_settings())  # the same directory, or the same database
    async with other.test_app():
        await put(other.test_client(), MAC, {"deviceModel": "relay_board"})
        assert await selected(client, RELAYS) == [MAC]
        assert (await other.test_client().delete(f"/api/configs/{MAC}")).status_code == 204
        assert await selected(client, RELAYS) == []


async def test_files_changed_by_hand_are_seen_and_odd_ones_skipped(
    client: Client, configs_dir: Path
) -> None:
    assert await selected(client, RELAYS) == []
    write_config(configs_dir, MAC, {"deviceModel": "relay_board"})
    assert await selected(client, RELAYS) == [MAC]
    replacement = configs_dir / "replacement"
    replacement.write_text(json.dumps({"deviceModel": "plug"}))
    replacement.rename(configs_dir / f"{MAC}.json")
    assert await selected(client, RELAYS) == []
    write_config(configs_dir, OTHER_MAC, {"deviceModel": "relay_board"})
    (configs_dir / "01-02-03-04-05-06.json").write_text('{"deviceModel": "relay_board"')
    (configs_dir / "02-02-03-04-05-06.json").write_text('["relay_board"]')
    (configs_dir / "03-02-03-04-05-06.json").symlink_to(configs_dir / f"{OTHER_MAC}.json")
    assert await selected(client, RELAYS) == [OTHER_MAC]
    replacement.write_text('{"deviceModel": "relay_board",')  # no longer a usable document
    replacement.rename(configs_dir / f"{OTHER_MAC}.json")
    assert await selected(client, RELAYS) == []
    write_config(configs_dir, OTHER_MAC, {"deviceModel": "relay_board"})
    assert await selected(client, RELAYS) == [OTHER_MAC]
    (configs_dir / f"{OTHER_MAC}.json").unlink()
    assert await selected(client, RELAYS) == []


async def test_a_document_holding_u0000_is_searched_as_any_other(client: Client) -> None:
    await put(client, OTHER_MAC, {"deviceModel": "plug", "deviceName": "plain"})
    assert await selected(client, 'like(deviceName,"a?b")') == []
    await put(client, MAC, {"deviceModel": "plug", "deviceName": "a\u0000b"})  # after: an update
    for text, expected in [
        ('like(deviceName,"a?b")', [MAC]),
        ('eq(deviceModel,"plug")', [OTHER_MAC, MAC]),
        ('eq(deviceName,"plain")', [OTHER_MAC]),
        ('not(eq(deviceName,"plain"))', [MAC]),
    ]:
        assert await selected(client, text) == expected, text  # before: evaluated afresh
    answer = await search(client, filter='eq(deviceModel,"plug")', fields="deviceName")
    assert [e["fields"]["deviceName"] for e in answer["configs"]] == ["plain", "a\u0000b"]


# -- the cache -------------------------------------------------------------------------------


async def test_an_answer_too_far_behind_is_evaluated_afresh_on_the_directory(
    client: Client, configs_dir: Path, store: ConfigStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert isinstance(store.backend, DirectoryBackend)
    monkeypatch.setattr(store.backend.index, "_changes", deque(maxlen=2))
    assert await selected(client, RELAYS) == []
    await put(client, MAC, {"deviceModel": "relay_board"})  # its change falls out of the record
    for index in range(3):
        await put(client, f"aa-00-00-00-00-{index:02}", {"deviceModel": "plug"})
    assert await selected(client, RELAYS) == [MAC]


@pytest.mark.parametrize("backend", ["postgres"])  # about the PostgreSQL change feed
async def test_an_answer_too_far_behind_is_evaluated_afresh_on_postgresql(
    client: Client, pg_url: str
) -> None:
    assert await selected(client, RELAYS) == []
    await put(client, MAC, {"deviceModel": "relay_board"})
    await put(client, OTHER_MAC, {"deviceModel": "plug"})
    conn = await asyncpg.connect(pg_url)
    try:  # as retention prunes the feed: its oldest changes go
        await conn.execute("DELETE FROM config_changes WHERE mac = $1", MAC)
    finally:
        await conn.close()
    assert await selected(client, RELAYS) == [MAC]


async def test_new_filters_never_grow_the_cache_past_its_bounds(
    client: Client, store: ConfigStore
) -> None:
    await put(client, MAC, {"deviceModel": "plug", "deviceName": "x" * 200})
    cache = store.backend.searches.cache  # type: ignore[attr-defined]  # both stores have one
    assert (cache.max_searches, cache.max_bytes) == (MAX_SEARCHES, MAX_BYTES)
    cache.max_searches = 5
    for number in range(12):
        assert await selected(client, f"ne(version,{number})") == [MAC]
    assert len(cache) == 5
    assert await selected(client, "ne(version,11)") == [MAC]  # the newest are kept
    cache.max_bytes = cache.size // 2  # now too much: the least recently asked go
    assert await selected(client, "ne(version,99)") == [MAC]
    assert 1 <= len(cache) <= 3
    assert cache.size <= cache.max_bytes or len(cache) == 1


async def test_the_same_new_filter_asked_at_once_is_answered_alike(fleet: Client) -> None:
    answers = await asyncio.gather(*(selected(fleet, RELAYS) for _ in range(8)))
    assert answers == [sorted(Filter(RELAYS).select(DOCUMENTS.items()))] * 8


async def test_an_evaluation_whose_request_went_away_stops(
    client: Client, directory_backend: DirectoryBackend
) -> None:
    for index in range(3):
        await put(client, f"aa-00-00-00-00-{index:02}", {"deviceModel": "plug"})
    abandoned = threading.Event()
    abandoned.set()
    searches = directory_backend.searches
    with pytest.raises(Abandoned):
        await asyncio.to_thread(
            searches.evaluate, Search(Filter(RELAYS), None), time.monotonic_ns(), abandoned
        )
    assert len(searches.cache) == 0


async def test_a_search_whose_request_goes_away_stops_its_evaluation(
    client: Client, directory_backend: DirectoryBackend
) -> None:
    await put(client, MAC, {"deviceModel": "relay_board"})
    release = threading.Event()
    busy = asyncio.ensure_future(evaluations.run(release.wait))  # the evaluations' one thread
    asking = asyncio.ensure_future(directory_backend.search_json(Search(Filter(RELAYS), None)))
    while evaluations._pending < 1:  # the search waits for that thread now
        await asyncio.sleep(0.01)
    asking.cancel()
    with pytest.raises(asyncio.CancelledError):
        await asking
    release.set()
    await busy
    await evaluations.run(lambda: None)  # once the search's evaluation has had its turn
    assert len(directory_backend.searches.cache) == 0


async def test_a_search_with_the_directory_gone_is_503(client: Client, configs_dir: Path) -> None:
    shutil.rmtree(configs_dir)  # its .models/ too
    response = await client.get("/api/configs", query_string={"filter": RELAYS})
    assert response.status_code == 503
    assert (await response.get_json())["code"] == "STORAGE_UNAVAILABLE"


# -- the OpenAPI document --------------------------------------------------------------------


@ONE_STORE
async def test_openapi_documents_the_search_parameters_and_errors(client: Client) -> None:
    document = await (await client.get("/api/docs/openapi.json")).get_json()
    operation = document["paths"]["/api/configs"]["get"]
    parameters = {p["name"]: p for p in operation["parameters"]}
    assert set(parameters) == {"filter", "fields"}
    assert all(p["in"] == "query" and not p.get("required") for p in parameters.values())
    assert "INVALID_FILTER" in parameters["filter"]["description"]
    assert "INVALID_FIELDS" in parameters["fields"]["description"]
    assert {"200", "400", "503"} <= set(operation["responses"])


# -- the cache's parts -----------------------------------------------------------------------


def answer(version: int, *macs: str) -> Selection:
    return Selection(version, {mac: json.dumps({"mac_address": mac}).encode() for mac in macs})


def test_an_answer_brought_up_to_date_changes_only_what_changed() -> None:
    first = answer(1, "b", "a")
    assert first.body == b'{"configs":[{"mac_address": "a"},{"mac_address": "b"}],"count":2}'
    same = first.updated(2, [("a", first.items["a"]), ("c", None)])
    assert (same.version, same.items, same.body) == (2, first.items, first.body)
    assert same.items is first.items  # nothing copied, nothing rendered
    moved = first.updated(3, [("a", None), ("c", b"{}")])
    assert moved.body == b'{"configs":[{"mac_address": "b"},{}],"count":2}'
    assert first.items.keys() == {"a", "b"}  # an answer already served never changes


def test_the_cache_keeps_the_newer_answer_and_the_most_recently_asked() -> None:
    cache = SearchCache(max_searches=2)
    kept = cache.keep(("x", None), answer(5, "a"))
    assert cache.keep(("x", None), answer(4, "b")) is kept  # an older answer never replaces
    cache.keep(("y", None), answer(1))
    assert cache.get(("x", None)) is kept  # now asked most recently
    cache.keep(("z", None), answer(1))
    assert [cache.get(key) is not None for key in (("x", None), ("y", None), ("z", None))] == [
        True,
        False,
        True,
    ]


def test_the_cache_holds_at_most_its_bytes_but_always_the_last_answer() -> None:
    big = answer(1, *(f"{n:04}" for n in range(100)))
    cache = SearchCache(max_bytes=big.size * 2)
    for key in ("a", "b", "c"):
        cache.keep((key, None), answer(1, *(f"{n:04}" for n in range(100))))
        assert cache.size <= cache.max_bytes
    assert len(cache) == 2
    cache.max_bytes = 10
    cache.keep(("d", None), big)
    assert (len(cache), cache.size) == (1, big.size)

import asyncio
import copy
import errno
import json
import logging
import os
import stat
import threading
import time
import tracemalloc
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from quart import Quart

from quart_iot.app import create_app
from quart_iot.patch import make_patch
from quart_iot.settings import Settings
from quart_iot.store import ConfigStore, DirectoryBackend, Precondition, WriteMeta, Written
from quart_iot.store.directory import sweeper
from quart_iot.store.directory.files import Directory
from quart_iot.store.directory.versions import Shelf
from quart_iot.store.postgres import backend as postgres_backend
from tests.conftest import MAC, OTHER_MAC, Client, Outside

HISTORY = f"/api/configs/{MAC}/history"
NEVER = "1767225600000000000-0a1b2c3d"


@pytest.fixture
async def small_app(serving: Callable[..., Awaitable[Quart]]) -> Quart:
    # Three versions, two seconds: retention shows within a test.
    return await serving(history_max_versions=3, history_max_days=2 / 86400)


@pytest.fixture
def quick_survey(monkeypatch: pytest.MonkeyPatch) -> None:
    """Both stores survey their history every 0.1 s (every minute otherwise); asked for
    before the app, which reads the interval at its start."""
    monkeypatch.setattr(postgres_backend, "SURVEY_SECONDS", 0.1)
    monkeypatch.setattr(sweeper, "HISTORY_SURVEY_INTERVAL", 0.1)


async def put(client: Client, content: dict[str, Any], mac: str = MAC) -> str:
    response = await client.put(f"/api/configs/{mac}", json={"content": content})
    assert response.status_code == 200, await response.get_data()
    return str(response.headers["ETag"]).strip('"')


async def versions(client: Client, mac: str = MAC) -> list[dict[str, Any]]:
    response = await client.get(f"/api/configs/{mac}/history")
    assert response.status_code == 200, await response.get_data()
    body = await response.get_json()
    assert body["mac_address"] == mac
    assert body["count"] == len(body["versions"])
    return list(body["versions"])


async def error_code(response: Any) -> tuple[int, str]:
    return response.status_code, (await response.get_json())["code"]


def apply_patch(document: Any, patch: list[dict[str, Any]]) -> Any:
    """RFC 6902 add/remove/replace, enough to check a diff."""
    document = copy.deepcopy(document)
    for operation in patch:
        *parents, last = [
            part.replace("~1", "/").replace("~0", "~") for part in operation["path"].split("/")[1:]
        ] or [None]
        if last is None:
            document = operation["value"]
            continue
        target = document
        for part in parents:
            target = target[int(part) if isinstance(target, list) else part]
        key = int(last) if isinstance(target, list) else last
        if operation["op"] == "remove":
            del target[key]
        else:
            target[key] = operation["value"]
    return document


async def test_versions_after_puts_and_a_delete(client: Client) -> None:
    etags = [await put(client, {"deviceName": f"n{i}", "i": i}) for i in range(3)]
    assert (await client.delete(f"/api/configs/{MAC}")).status_code == 204
    listed = await versions(client)
    assert [v["change"] for v in listed] == ["deleted", "updated", "updated", "created"]
    assert [v["etag"] for v in listed] == [etags[2], *reversed(etags)]
    assert [v["device_name"] for v in listed] == ["n2", "n2", "n1", "n0"]
    assert listed == sorted(listed, key=lambda v: v["version"], reverse=True)
    assert all(v["saved_at"].endswith("Z") and v["size"] > 0 for v in listed)
    assert all(v["subject"] is None and v["mac_address"] == MAC for v in listed)
    first = await client.get(f"{HISTORY}/{listed[-1]['version']}")
    assert first.status_code == 200
    assert (await first.get_json())["content"] == {"deviceName": "n0", "i": 0}
    assert first.headers["ETag"] == f'"{etags[0]}"'


async def test_a_deleted_device_is_listed_and_restored(client: Client) -> None:
    await put(client, {"deviceName": "keep"})
    await put(client, {"deviceName": "other"}, OTHER_MAC)
    assert (await client.delete(f"/api/configs/{MAC}")).status_code == 204
    deleted = await (await client.get("/api/configs/deleted")).get_json()
    assert deleted["count"] == 1
    (item,) = deleted["configs"]
    assert item["mac_address"] == MAC
    assert item["device_name"] == "keep"
    assert item["deleted_at"] == item["saved_at"]
    restored = await client.post(f"{HISTORY}/{item['version']}/restore")
    assert restored.status_code == 200
    assert (await restored.get_json())["content"] == {"deviceName": "keep"}
    assert (await client.get(f"/api/configs/{MAC}")).status_code == 200
    assert (await (await client.get("/api/configs/deleted")).get_json())["count"] == 0
    assert [v["change"] for v in await versions(client)] == ["created", "deleted", "created"]


async def test_diff_to_the_current_document_and_to_another_version(client: Client) -> None:
    old = {"deviceName": "a", "wifi": {"ssid": "x", "a/b~c": 1}, "list": [1, 2], "gone": True}
    new = {"deviceName": "b", "wifi": {"ssid": "x", "a/b~c": 2}, "list": [1, 2, 3], "added": 0}
    await put(client, old)
    await put(client, {"deviceName": "middle"})
    await put(client, new)
    first, middle = (await versions(client))[:-3:-1]
    patch = await (await client.get(f"{HISTORY}/{first['version']}/diff")).get_json()
    assert apply_patch(old, patch) == new
    assert {"op": "replace", "path": "/wifi/a~1b~0c", "value": 2} in patch
    assert {"op": "remove", "path": "/gone"} in patch
    to = f"{HISTORY}/{first['version']}/diff?to={middle['version']}"
    assert apply_patch(old, await (await client.get(to)).get_json()) == {"deviceName": "middle"}
    same = await client.get(f"{HISTORY}/{first['version']}/diff?to={first['version']}")
    assert await same.get_json() == []


@pytest.mark.parametrize(
    ("source", "target"),
    [
        ({"a": 1}, {"a": 1.0}),
        ({"a": True}, {"a": 1}),
        ({"a": [1, {"b": None}]}, {"a": [1, {"b": False}]}),
        ({"a": {"b": 1}}, {"a": [1]}),
        ({}, {"": {"~": "/"}}),
    ],
)
def test_patches_turn_the_source_into_the_target(source: Any, target: Any) -> None:
    patched = apply_patch(source, make_patch(source, target))
    assert json.dumps(patched) == json.dumps(target)


async def test_restore_honours_if_match(client: Client) -> None:
    old_etag = await put(client, {"deviceName": "old"})
    current = await put(client, {"deviceName": "new"})
    old = (await versions(client))[-1]["version"]
    stale = await client.post(f"{HISTORY}/{old}/restore", headers={"If-Match": f'"{old_etag}"'})
    assert await error_code(stale) == (412, "PRECONDITION_FAILED")
    assert len(await versions(client)) == 2
    fresh = await client.post(f"{HISTORY}/{old}/restore", headers={"If-Match": f'"{current}"'})
    assert fresh.status_code == 200
    assert fresh.headers["ETag"] == f'"{old_etag}"'
    assert (await versions(client))[0]["change"] == "updated"


@pytest.mark.parametrize(
    ("version", "status"),
    [
        ("..", 400),
        ("%2e%2e", 400),
        ("%2e%2e%2f%2e%2e%2fetc%2fpasswd", 400),
        ("1767225600000000000-0a1b2c3d%00", 400),
        ("1767225600000000000-0a1b2c3d.json", 400),
        ("1767225600000000000-0A1B2C3D", 400),
        ("1" * 5000, 400),
        (" 1767225600000000000-0a1b2c3d", 400),
        ("1767225600000000000-0a1b2c3d\n", 400),
        (NEVER, 404),
    ],
)
async def test_hostile_versions_are_refused(client: Client, version: str, status: int) -> None:
    await put(client, {"deviceName": "a"})
    for suffix in ("", "/diff"):
        response = await client.get(f"{HISTORY}/{version}{suffix}")
        assert response.status_code == status, await response.get_data()
    restore = await client.post(f"{HISTORY}/{version}/restore")
    assert restore.status_code in (status, 405)
    diff_to = await client.get(f"{HISTORY}/{(await versions(client))[0]['version']}/diff?to=..")
    assert await error_code(diff_to) == (400, "INVALID_OPERATION")


async def test_history_of_a_mac_that_never_had_a_document_is_404(client: Client) -> None:
    assert await error_code(await client.get(HISTORY)) == (404, "RECORD_NOT_FOUND")
    assert await error_code(await client.get(f"{HISTORY}/{NEVER}")) == (404, "RECORD_NOT_FOUND")
    bad = await client.get("/api/configs/aa-bb/history")
    assert await error_code(bad) == (400, "INVALID_OPERATION")


async def test_a_document_edited_outside_is_kept_when_a_put_replaces_it(
    client: Client, outside: Outside
) -> None:
    await outside.put(MAC, {"deviceName": "from before history"})
    assert await versions(client) == []
    await put(client, {"deviceName": "ours"})
    await outside.put(MAC, {"deviceName": "edited outside"})
    await put(client, {"deviceName": "ours again"})
    names = [v["device_name"] for v in await versions(client)]
    assert names == ["ours again", "edited outside", "ours", "from before history"]


async def test_the_list_is_unchanged_and_the_history_area_is_not_an_odd_entry(
    client: Client, configs_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    await put(client, {"deviceName": "a"})
    await put(client, {"deviceName": "b"})
    assert (configs_dir / ".history").is_dir()
    with caplog.at_level(logging.WARNING):
        listing = await (await client.get("/api/configs")).get_json()
    assert listing == {
        "configs": [
            {
                "mac_address": MAC,
                "device_name": "b",
                "device_model": None,
                "device_entity_id": None,
                "enable_ota": None,
            }
        ],
        "count": 1,
    }
    assert "history" not in caplog.text


async def test_retention_by_count(serving: Callable[..., Awaitable[Quart]]) -> None:
    # Not small_app: with its 2-second age limit, a machine slow enough to take 2 s over this
    # test also prunes by age, and more than 3 versions go (seen once in CI).
    client = (await serving(history_max_versions=3)).test_client()
    for i in range(6):
        await put(client, {"i": i})
    await _until(lambda kept: len(kept) == 3, client)
    assert (await versions(client))[0]["etag"] == await _etag(client)
    metrics = await (await client.get("/metrics")).get_data(as_text=True)
    assert "iot_config_history_pruned_total 3" in metrics


async def test_retention_by_age_keeps_the_newest_version_of_a_live_device(
    small_app: Quart,
) -> None:
    client = small_app.test_client()
    for i in range(2):
        await put(client, {"i": i})
    await asyncio.sleep(2.2)
    await _until(lambda kept: len(kept) == 1, client)
    assert (await versions(client))[0]["etag"] == await _etag(client)


async def test_retention_by_age_ends_the_history_of_a_deleted_device(small_app: Quart) -> None:
    client = small_app.test_client()
    await put(client, {"i": 0})
    assert (await client.delete(f"/api/configs/{MAC}")).status_code == 204
    assert len(await versions(client)) == 2
    for _ in range(100):
        if (await client.get(HISTORY)).status_code == 404:
            break
        await asyncio.sleep(0.1)
    assert await error_code(await client.get(HISTORY)) == (404, "RECORD_NOT_FOUND")
    assert (await (await client.get("/api/configs/deleted")).get_json())["count"] == 0


async def test_history_off_keeps_nothing(serving: Callable[..., Awaitable[Quart]]) -> None:
    client = (await serving(history_max_versions=0)).test_client()
    await put(client, {"i": 0})
    await put(client, {"i": 1})
    assert await versions(client) == []
    assert (await client.get(HISTORY)).status_code == 200  # a device with no version kept


async def test_history_off_makes_no_history_area(configs_dir: Path) -> None:
    app = create_app(
        Settings(esp32_configs_dir=configs_dir, history_max_versions=0, _env_file=None)
    )
    async with app.test_app():
        await put(app.test_client(), {"i": 0})
    assert not (configs_dir / ".history").exists()


async def test_history_metrics(quick_survey: None, client: Client) -> None:
    await put(client, {"deviceName": "a"})
    await put(client, {"deviceName": "b"})
    assert (await client.delete(f"/api/configs/{MAC}")).status_code == 204  # "b" again
    size = len(b'{"deviceName":"a"}\n')
    expected = ["iot_config_history_versions 3", f"iot_config_history_bytes {2 * size}"]
    for _ in range(50):  # the next survey (the directory's first sweep, after a second)
        metrics = await (await client.get("/metrics")).get_data(as_text=True)
        if all(line in metrics.splitlines() for line in expected):
            return
        await asyncio.sleep(0.1)
    raise AssertionError(metrics)


async def _etag(client: Client) -> str:
    return str((await client.get(f"/api/configs/{MAC}")).headers["ETag"]).strip('"')


async def _until(done: Any, client: Client) -> None:
    for _ in range(100):
        if done(await versions(client)):
            return
        await asyncio.sleep(0.1)
    raise AssertionError(await versions(client))


@pytest.mark.parametrize("method", ["PUT", "DELETE", "POST", "PATCH"])
@pytest.mark.parametrize("path", ["/api/configs/deleted", "/api/configs/events"])
async def test_the_deleted_list_and_the_event_stream_are_read_only(
    client: Client, method: str, path: str
) -> None:
    response = await client.open(path, method=method, json={"content": {}})
    assert await error_code(response) == (405, "METHOD_NOT_ALLOWED")
    assert response.headers["Allow"] == "GET, HEAD, OPTIONS"
    options = await client.options(path)
    assert options.headers["Allow"] == "GET, HEAD, OPTIONS"


async def test_the_history_list_sees_a_change_after_it_was_cached(
    client: Client, configs_dir: Path
) -> None:
    await put(client, {"deviceName": "a"})
    await put(client, {"deviceName": "b"})
    await asyncio.sleep(2.1)  # past the timestamp tick: the listing is cached from now on
    assert [v["device_name"] for v in await versions(client)] == ["b", "a"]
    assert [v["device_name"] for v in await versions(client)] == ["b", "a"]
    current = configs_dir / f"{MAC}.json"
    with current.open("r+b") as file:  # in place: the newest version is this very file
        file.write(b'{"deviceName":"c"}\n')
    assert [v["device_name"] for v in await versions(client)] == ["c", "a"]
    await put(client, {"deviceName": "d"})
    assert [v["device_name"] for v in await versions(client)] == ["d", "c", "a"]


async def test_a_failed_directory_fsync_never_drops_a_document_unkept(
    client: Client, configs_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    await put(client, {"v": "old"})
    real_fsync = os.fsync

    def failing_dir_fsync(fd: int) -> None:
        if stat.S_ISDIR(os.fstat(fd).st_mode):
            raise OSError(errno.EIO, "Input/output error")
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", failing_dir_fsync)
    saved = await client.put(f"/api/configs/{MAC}", json={"content": {"v": "new"}})
    assert await error_code(saved) == (503, "WRITE_NOT_CONFIRMED")  # visible, not confirmed
    deleted = await client.delete(f"/api/configs/{MAC}")
    # Its deleted version could not be made durable: nothing was removed.
    assert await error_code(deleted) == (503, "STORAGE_UNAVAILABLE")
    monkeypatch.undo()
    assert (await (await client.get(f"/api/configs/{MAC}")).get_json())["content"] == {"v": "new"}
    assert [v["change"] for v in await versions(client)][:2] == ["updated", "created"]


# -- who made each version (with access control on, tests/test_auth.py shows it end to end) --


def store_of(app: Quart) -> ConfigStore:
    return ConfigStore.of(app)


def by(subject: str) -> WriteMeta:
    return WriteMeta(subject)


def shelf_names(configs_dir: Path, mac: str = MAC) -> list[str]:
    shelf = configs_dir / ".history" / mac
    return sorted(os.listdir(shelf)) if shelf.exists() else []


@pytest.mark.parametrize(
    ("subject", "kept"),
    [
        ("alice", "alice"),
        ("../../etc/passwd", "../../etc/passwd"),  # a link's target: text, never followed
        ('nul\x00 new\nline ünïcødé 🎉 "q" \\', 'nul\x00 new\nline ünïcødé 🎉 "q" \\'),
        ("🎉" * 300, "🎉" * 255),  # OpenID Connect's limit for `sub`: 255 characters
        ("lone \ud800 surrogate", "lone ? surrogate"),  # valid JSON, not valid UTF-8
    ],
)
async def test_a_subject_is_kept_exactly(
    app: Quart, client: Client, subject: str, kept: str
) -> None:
    await store_of(app).save(MAC, {"v": 1}, meta=by(subject))
    await store_of(app).delete(MAC, meta=by("bob"))
    assert [(v["change"], v["subject"]) for v in await versions(client)] == [
        ("deleted", "bob"),
        ("created", kept),
    ]
    deleted = await (await client.get("/api/configs/deleted")).get_json()
    assert [item["subject"] for item in deleted["configs"]] == ["bob"]


async def test_a_subject_link_the_service_did_not_make_reads_as_null(
    app: Quart, client: Client, configs_dir: Path
) -> None:
    for i in range(4):
        await store_of(app).save(MAC, {"v": i}, meta=by("alice"))
    shelf = configs_dir / ".history" / MAC
    planted = sorted(shelf.glob("*.subject"), reverse=True)  # not listed yet: nothing cached
    assert len(planted) == 4
    for link in planted:
        link.unlink()
    planted[0].write_text('"mallory"')  # a regular file
    planted[1].mkdir()
    planted[2].symlink_to("not json")
    planted[3].symlink_to("[1]")  # JSON, but not a string
    assert [v["subject"] for v in await versions(client)] == [None] * 4


async def test_a_version_is_kept_when_its_subject_cannot_be(
    app: Quart,
    client: Client,
    configs_dir: Path,  # about the directory's links
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    def no_links(*args: Any, **kwargs: Any) -> None:
        raise OSError(errno.EPERM, "Operation not permitted")

    monkeypatch.setattr(os, "symlink", no_links)
    await store_of(app).save(MAC, {"v": 1}, meta=by("alice"))
    assert [(v["change"], v["subject"]) for v in await versions(client)] == [("created", None)]
    assert "subject of a version of" in caplog.text


async def test_retention_takes_the_subjects_with_their_versions(
    small_app: Quart, configs_dir: Path
) -> None:
    client = small_app.test_client()
    store = store_of(small_app)
    shelf = configs_dir / ".history" / MAC
    orphan, planted = shelf / f"{NEVER}.subject", shelf / f"{NEVER[:-1]}f.subject"
    for i in range(6):
        await store.save(MAC, {"i": i}, meta=by(f"writer{i}"))
        if i == 0:
            orphan.symlink_to('"ghost"')  # as a crash between a subject and its version leaves
            planted.mkdir()  # not the service's: left alone, and no sweep fails on it
    await _until(lambda kept: len(kept) == 3, client)
    kept = await versions(client)
    assert [v["subject"] for v in kept] == ["writer5", "writer4", "writer3"]
    subjects = [name for name in shelf_names(configs_dir) if name.endswith(".subject")]
    assert subjects == sorted([planted.name] + [f"{v['version']}.subject" for v in kept])
    metrics = await (await client.get("/metrics")).get_data(as_text=True)
    assert "iot_config_history_pruned_total 3" in metrics  # the prune ended well
    planted.rmdir()
    await store.delete(MAC, meta=by("remover"))
    for _ in range(100):  # past its days, the deleted device's history goes, shelf and all
        if not (configs_dir / ".history" / MAC).exists():
            break
        await asyncio.sleep(0.1)
    assert not (configs_dir / ".history" / MAC).exists()


def test_listing_many_histories_keeps_the_caches_within_their_budget(
    configs_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A reader walking every device's history (a backup script, a hostile client) must not
    # make the process keep every version it saw: 60 devices x 50 versions here.
    import quart_iot.store.directory.catalogue

    budget = 64 * 1024  # for each of the two caches: the versions' items, the listings
    monkeypatch.setattr(quart_iot.store.directory.catalogue, "CACHE_BYTES", budget, raising=False)
    monkeypatch.setattr(os, "fsync", lambda fd: None)  # about memory, not durability
    store = DirectoryBackend(configs_dir, history_max_versions=50)
    macs = [f"aa-bb-cc-dd-{i >> 8:02x}-{i & 255:02x}" for i in range(60)]
    for mac in macs:
        for v in range(50):
            content = {"deviceName": f"device {mac}", "v": v}
            store.writer.save(mac, content, Precondition(), time.monotonic() + 5)
    listed = {mac: store.catalogue.listing(mac) for mac in macs[:2]}  # warm, then measured
    tracemalloc.start()
    try:
        before = tracemalloc.take_snapshot()
        size = sum(len(store.catalogue.listing(mac)) for mac in macs)
        kept = tracemalloc.take_snapshot().compare_to(before, "filename")
    finally:
        tracemalloc.stop()
    assert size > 8 * budget  # far more was listed than the caches may keep
    assert sum(stat.size_diff for stat in kept) < 3 * budget
    assert store.catalogue.listing(macs[0]) == listed[macs[0]]  # still right after eviction


# -- a `deleted` version exists only if the delete happened (issue 17 item 19) -----------------


def held_names(configs_dir: Path) -> list[str]:
    return [name for name in shelf_names(configs_dir) if name.endswith(".deleting")]


async def test_a_delete_whose_unlink_fails_keeps_no_deleted_version(
    client: Client, configs_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    await put(client, {"v": 1})

    def refused(self: Directory, name: str) -> int:
        raise PermissionError(errno.EACCES, "Permission denied")

    monkeypatch.setattr(Directory, "unlink", refused)
    assert await error_code(await client.delete(f"/api/configs/{MAC}")) == (
        503,
        "STORAGE_UNAVAILABLE",
    )
    monkeypatch.undo()
    assert [v["change"] for v in await versions(client)] == ["created"]
    assert (await client.get(f"/api/configs/{MAC}")).status_code == 200
    assert held_names(configs_dir) == []


async def test_a_delete_left_half_done_is_undone_by_the_next_write(
    client: Client, configs_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # As a crash between the hold and the unlink leaves it: the held document stays.
    await put(client, {"v": 1})

    def refused(*args: Any) -> None:
        raise PermissionError(errno.EACCES, "Permission denied")

    monkeypatch.setattr(Directory, "unlink", refused)
    monkeypatch.setattr(Shelf, "drop", refused)
    assert (await client.delete(f"/api/configs/{MAC}")).status_code == 503
    monkeypatch.undo()
    assert len(held_names(configs_dir)) == 1
    assert [v["change"] for v in await versions(client)] == ["created"]  # never listed
    await put(client, {"v": 2})
    assert [v["change"] for v in await versions(client)] == ["updated", "created"]
    assert held_names(configs_dir) == []


async def test_a_deleted_version_not_named_at_once_is_named_by_the_next_write(
    client: Client, configs_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    await put(client, {"deviceName": "gone"})

    def refused(*args: Any) -> None:
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(Shelf, "release", refused)
    assert (await client.delete(f"/api/configs/{MAC}")).status_code == 204
    monkeypatch.undo()
    assert len(held_names(configs_dir)) == 1
    await put(client, {"deviceName": "back"})
    listed = await versions(client)
    assert [(v["change"], v["device_name"]) for v in listed] == [
        ("created", "back"),
        ("deleted", "gone"),
        ("created", "gone"),
    ]
    assert held_names(configs_dir) == []


# -- a save of the bytes already stored keeps no version (issue 17 item 19) -------------------


@pytest.fixture
async def three_versions(make_settings: Callable[..., Settings]) -> AsyncIterator[Quart]:
    app = create_app(make_settings(history_max_versions=3))
    async with app.test_app():
        yield app


async def test_identical_puts_keep_no_version_and_push_none_out(three_versions: Quart) -> None:
    client = three_versions.test_client()
    heard: list[Written] = []
    ConfigStore.of(three_versions).write_listeners.append(heard.append)
    etags = [await put(client, {"deviceName": name}) for name in "abc"]
    for _ in range(100):
        again = await client.put(f"/api/configs/{MAC}", json={"content": {"deviceName": "c"}})
        assert again.status_code == 200
        assert again.headers["ETag"] == f'"{etags[-1]}"'
        assert again.headers["Config-Unchanged"] == "true"
        assert (await again.get_json())["content"] == {"deviceName": "c"}
    await asyncio.sleep(1.2)  # two sweeps: retention had its chance
    assert [v["etag"] for v in await versions(client)] == etags[::-1]
    assert [(w.unchanged, w.version is None) for w in heard] == [(False, False)] * 3 + [
        (True, True)
    ] * 100
    assert all(w.applied and w.etag_before == w.etag_after for w in heard[3:])


async def test_a_changed_put_and_a_restore_of_the_current_version(client: Client) -> None:
    first = await client.put(f"/api/configs/{MAC}", json={"content": {"v": 1}})
    assert "Config-Unchanged" not in first.headers
    current = (await versions(client))[0]["version"]
    restored = await client.post(f"{HISTORY}/{current}/restore")
    assert restored.status_code == 200
    assert restored.headers["Config-Unchanged"] == "true"
    assert len(await versions(client)) == 1


# -- history pages (issue 17 item 19) -----------------------------------------------------------


async def page(client: Client, query: str) -> dict[str, Any]:
    response = await client.get(f"{HISTORY}?{query}")
    assert response.status_code == 200, await response.get_data()
    body: dict[str, Any] = await response.get_json()
    assert body["count"] == len(body["versions"])
    return body


async def test_the_history_comes_in_pages_newest_first(client: Client) -> None:
    etags = [await put(client, {"i": i}) for i in range(7)]
    pages, query = [], "limit=3"
    while True:
        body = await page(client, query)
        pages.append([v["etag"] for v in body["versions"]])
        if body["next"] is None:
            break
        assert body["next"] == body["versions"][-1]["version"]
        query = f"limit=3&before={body['next']}"
    assert pages == [etags[6:3:-1], etags[3:0:-1], etags[:1]]
    whole = await page(client, "")  # 50 by default: here, all of them
    assert ([v["etag"] for v in whole["versions"]], whole["next"]) == (etags[::-1], None)
    last = whole["versions"][-1]["version"]
    assert (await page(client, f"before={last}"))["versions"] == []


async def test_a_cursor_is_a_position_even_once_its_version_is_gone(client: Client) -> None:
    await put(client, {"i": 0})
    await put(client, {"i": 1})
    between = f"{int(time.time_ns()):019d}-00000000"  # no such version: between the two...
    await put(client, {"i": 2})
    body = await page(client, f"before={between}")  # ...the page holds those older than it
    assert body["versions"] == (await versions(client))[1:]


@pytest.mark.parametrize(
    ("query", "code"),
    [
        ("limit=0", "VALIDATION_FAILED"),
        ("limit=1001", "VALIDATION_FAILED"),
        ("limit=x", "VALIDATION_FAILED"),
        ("limits=3", "VALIDATION_FAILED"),
        ("before=..", "VALIDATION_FAILED"),
        ("before=", "VALIDATION_FAILED"),
        ("before=1767225600000000000-0A1B2C3D", "VALIDATION_FAILED"),
    ],
)
async def test_a_bad_page_is_400(client: Client, query: str, code: str) -> None:
    await put(client, {"i": 0})
    assert await error_code(await client.get(f"{HISTORY}?{query}")) == (400, code)


async def test_saves_and_deletes_never_list_the_devices_history(
    client: Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Their cost must not grow with the versions kept (bench/history_depth.py measures it).
    for i in range(3):
        await put(client, {"i": i})
    listed: list[object] = []
    real_listdir = os.listdir

    def listdir(path: Any = ".") -> list[str]:
        if threading.current_thread().name.startswith("quart_iot-batches"):  # not the sweep
            listed.append(path)
        return real_listdir(path)

    monkeypatch.setattr(os, "listdir", listdir)
    for i in range(3):
        await put(client, {"i": 10 + i})
        assert (await client.delete(f"/api/configs/{MAC}")).status_code == 204
    monkeypatch.undo()
    assert listed == []
    changes = [v["change"] for v in await versions(client)]
    assert changes == ["deleted", "created"] * 2 + ["deleted"] + ["updated"] * 3 + ["created"]


async def test_version_ids_keep_their_order_when_a_clock_goes_back(
    client: Client, configs_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ids = []
    for i in range(3):
        if i == 2:
            (configs_dir / ".history" / MAC / ".newest").unlink()  # a shelf from before marks
        if i:
            monkeypatch.setattr(time, "time_ns", lambda: 10**18)  # a replica's clock in 2001
        await put(client, {"i": i})
        monkeypatch.undo()
        ids.append((await versions(client))[0]["version"])
    assert ids == sorted(ids)
    assert [int(id_[:19]) for id_ in ids[1:]] == [int(id_[:19]) + 1 for id_ in ids[:-1]]

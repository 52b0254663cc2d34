"""The Backend contract: what every store implementation does, tested through the interface
alone. `make_backend` is parametrised over the stores (the directory joins at the merge)."""

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
from werkzeug.datastructures import ETags

from quart_iot.documents import dump_document, etag_of
from quart_iot.errors import (
    ConfigExists,
    ConfigNotFound,
    DocumentTooLarge,
    PreconditionFailed,
    VersionNotFound,
)
from quart_iot.store.backend import Backend, Change, WriteMeta
from quart_iot.store.postgres import PostgresBackend
from quart_iot.store.records import Precondition
from tests.conftest import MAC, OTHER_MAC

NONE = Precondition()
META = WriteMeta()
THIRD_MAC = "00-00-00-00-00-01"


class Recorder:
    """A ChangeSink that keeps what it hears."""

    def __init__(self) -> None:
        self.changes: list[Change] = []
        self.missed_count = 0
        self._heard = asyncio.Event()

    def change_seen(self, change: Change) -> None:
        self.changes.append(change)
        self._heard.set()

    def changes_missed(self) -> None:
        self.missed_count += 1
        self._heard.set()

    async def until(self, done: Callable[[], bool], seconds: float = 15) -> None:
        async with asyncio.timeout(seconds):
            while not done():
                self._heard.clear()
                await self._heard.wait()

    async def heard(self, mac: str, etag: str | None) -> Change:
        await self.until(lambda: any(c.mac == mac and c.etag == etag for c in self.changes))
        return next(c for c in self.changes if c.mac == mac and c.etag == etag)


MakeBackend = Callable[..., Awaitable[tuple[Backend, Recorder]]]


# Each kind of store: how to make a backend, and the fixture that gives where it keeps its
# documents (the directory joins here: DirectoryBackend, "configs_dir").
FACTORIES: dict[str, Callable[..., Backend]] = {"postgres": PostgresBackend}
LOCATIONS = {"postgres": "pg_url"}


@pytest.fixture(params=sorted(FACTORIES))
def store_location(request: pytest.FixtureRequest) -> tuple[str, Any]:
    """The kind of store, and where the backends of a test keep their documents."""
    return request.param, request.getfixturevalue(LOCATIONS[request.param])


@pytest.fixture
async def make_backend(store_location: tuple[str, Any]) -> AsyncIterator[MakeBackend]:
    """Starts backends on one store (replicas of one another), stopped after the test."""
    started: list[Backend] = []
    kind, location = store_location

    async def make(**options: Any) -> tuple[Backend, Recorder]:
        backend = FACTORIES[kind](location, **options)
        sink = Recorder()
        await backend.start(sink)
        started.append(backend)
        return backend, sink

    yield make
    for backend in started:
        await backend.stop()


@pytest.fixture
async def backend(make_backend: MakeBackend) -> Backend:
    made, _ = await make_backend()
    return made


def if_match(*etags: str) -> Precondition:
    if etags == ("*",):
        return Precondition(if_match=ETags(star_tag=True))
    return Precondition(if_match=ETags(list(etags)))


def versions(body: bytes) -> list[dict[str, Any]]:
    page: list[dict[str, Any]] = json.loads(body)["versions"]
    return page


async def test_a_save_stores_the_bytes_the_directory_writes(backend: Backend) -> None:
    content = {"deviceName": "Küche", "enableOTA": True, "n": [1, 2.5, None]}
    saved = await backend.save(MAC, content, NONE, META)
    stored = await backend.get(MAC)
    assert stored.raw == dump_document(content)
    assert stored.etag == etag_of(stored.raw) == saved.stored.etag
    assert stored.content == content
    assert saved.etag_before is None
    assert not saved.unchanged
    assert await backend.current_etag(MAC) == stored.etag


async def test_the_list_is_sorted_and_shows_every_write(backend: Backend) -> None:
    assert json.loads(await backend.list_json()) == {"configs": [], "count": 0}
    await backend.save(MAC, {"deviceName": "b"}, NONE, META)
    await backend.save(OTHER_MAC, {"deviceName": "a"}, NONE, META)
    listed = json.loads(await backend.list_json())
    assert [item["mac_address"] for item in listed["configs"]] == [OTHER_MAC, MAC]
    assert listed["count"] == 2 == await backend.count()
    await backend.save(MAC, {"deviceName": "c"}, NONE, META)  # after the list was built
    assert json.loads(await backend.list_json())["configs"][1]["device_name"] == "c"
    await backend.delete(OTHER_MAC, NONE, META)
    assert await backend.count() == 1


async def test_missing_documents_are_not_found(backend: Backend) -> None:
    with pytest.raises(ConfigNotFound):
        await backend.get(MAC)
    with pytest.raises(ConfigNotFound):
        await backend.current_etag(MAC)
    with pytest.raises(ConfigNotFound):
        await backend.delete(MAC, NONE, META)
    with pytest.raises(ConfigNotFound):
        await backend.versions_json(MAC, 10, None)


@pytest.mark.parametrize(
    ("precondition", "error"),
    [
        (if_match("other"), PreconditionFailed),
        (Precondition(if_none_match=ETags(star_tag=True)), PreconditionFailed),
        (Precondition(overwrite=False), ConfigExists),
        ("current", None),
        (if_match("*"), None),
    ],
)
async def test_conditions_on_an_existing_document(
    backend: Backend, precondition: Precondition | str, error: type[Exception] | None
) -> None:
    first = await backend.save(MAC, {"v": 1}, NONE, META)
    if precondition == "current":
        precondition = if_match(first.stored.etag)
    assert isinstance(precondition, Precondition)
    if error is None:
        saved = await backend.save(MAC, {"v": 2}, precondition, META)
        assert saved.etag_before == first.stored.etag
        return
    with pytest.raises(error):
        await backend.save(MAC, {"v": 2}, precondition, META)
    assert (await backend.get(MAC)).content == {"v": 1}


async def test_if_none_match_with_the_current_etag_fails(backend: Backend) -> None:
    first = await backend.save(MAC, {"v": 1}, NONE, META)
    weak = Precondition(if_none_match=ETags(weak_etags=[first.stored.etag]))
    with pytest.raises(PreconditionFailed):
        await backend.save(MAC, {"v": 2}, weak, META)


@pytest.mark.parametrize("header", [if_match("*"), if_match("abc")])
async def test_if_match_on_a_missing_document_fails(backend: Backend, header: Precondition) -> None:
    with pytest.raises(PreconditionFailed):
        await backend.save(MAC, {"v": 1}, header, META)
    with pytest.raises(ConfigNotFound):
        await backend.get(MAC)


async def test_create_only_creates(backend: Backend) -> None:
    saved = await backend.save(MAC, {"v": 1}, Precondition(overwrite=False), META)
    assert saved.etag_before is None
    assert (await backend.get(MAC)).content == {"v": 1}


async def test_delete_with_a_stale_if_match_changes_nothing(backend: Backend) -> None:
    await backend.save(MAC, {"v": 1}, NONE, META)
    with pytest.raises(PreconditionFailed):
        await backend.delete(MAC, if_match("stale"), META)
    assert (await backend.get(MAC)).content == {"v": 1}


async def test_the_same_bytes_again_keep_no_new_version(backend: Backend) -> None:
    first = await backend.save(MAC, {"v": 1}, NONE, META)
    again = await backend.save(MAC, {"v": 1}, NONE, META)
    assert again.unchanged
    assert again.version is None
    assert again.etag_before == again.stored.etag == first.stored.etag
    assert [v["version"] for v in versions(await backend.versions_json(MAC, 50, None))] == [
        first.version
    ]


async def test_a_too_large_document_is_refused(make_backend: MakeBackend) -> None:
    backend, _ = await make_backend(max_document_bytes=1024)
    with pytest.raises(DocumentTooLarge):
        await backend.save(MAC, {"blob": "x" * 2000}, NONE, META)


async def test_history_lists_versions_newest_first_with_subjects(backend: Backend) -> None:
    first = await backend.save(MAC, {"v": 1}, NONE, WriteMeta(subject="sub:alice"))
    second = await backend.save(MAC, {"v": 2}, NONE, WriteMeta(subject="x" * 300))
    deleted = await backend.delete(MAC, NONE, WriteMeta(subject="sub:bob"))
    listed = versions(await backend.versions_json(MAC, 50, None))
    assert [v["version"] for v in listed] == [deleted.version, second.version, first.version]
    assert [v["change"] for v in listed] == ["deleted", "updated", "created"]
    assert [v["subject"] for v in listed] == ["sub:bob", "x" * 255, "sub:alice"]
    assert listed[0]["etag"] == second.stored.etag  # what was deleted
    assert listed[2]["size"] == len(first.stored.raw)
    assert listed[2]["saved_at"].endswith("Z")
    assert deleted.etag_before == second.stored.etag
    old = await backend.version(MAC, str(first.version))
    assert old.raw == first.stored.raw
    assert old.etag == first.stored.etag


async def test_history_pages_follow_the_cursor(backend: Backend) -> None:
    made = [(await backend.save(MAC, {"v": n}, NONE, META)).version for n in range(5)]
    page = json.loads(await backend.versions_json(MAC, 2, None))
    assert [v["version"] for v in page["versions"]] == made[:2:-1]
    assert page["count"] == 2
    seen = [v["version"] for v in page["versions"]]
    while page["next"] is not None:
        page = json.loads(await backend.versions_json(MAC, 2, page["next"]))
        seen += [v["version"] for v in page["versions"]]
    assert seen == made[::-1]


async def test_an_unknown_version_is_not_found(backend: Backend) -> None:
    await backend.save(MAC, {"v": 1}, NONE, META)
    with pytest.raises(VersionNotFound):
        await backend.version(MAC, "1000000000000000000-00000000")


async def test_deleted_devices_keep_their_history(backend: Backend) -> None:
    await backend.save(MAC, {"deviceName": "gone"}, NONE, META)
    await backend.save(OTHER_MAC, {"deviceName": "here"}, NONE, META)
    deleted = await backend.delete(MAC, NONE, WriteMeta(subject="sub:bob"))
    found = await backend.deleted()
    assert [(d["mac_address"], d["version"], d["subject"]) for d in found] == [
        (MAC, deleted.version, "sub:bob")
    ]
    assert found[0]["deleted_at"] == found[0]["saved_at"]
    assert found[0]["device_name"] == "gone"
    restored = await backend.save(MAC, (await backend.version(MAC, str(deleted.version))).content,
                                  NONE, META)  # fmt: skip
    assert versions(await backend.versions_json(MAC, 1, None))[0]["change"] == "created"
    assert restored.stored.content == {"deviceName": "gone"}
    assert await backend.deleted() == []


async def eventually(check: Callable[[], Awaitable[bool]], seconds: float = 15) -> None:
    """Retention may run with the write, or in the background soon after."""
    async with asyncio.timeout(seconds):
        while not await check():
            await asyncio.sleep(0.05)


async def test_retention_keeps_the_newest_versions(make_backend: MakeBackend) -> None:
    backend, _ = await make_backend(history_max_versions=3)
    made = [(await backend.save(MAC, {"v": n}, NONE, META)).version for n in range(6)]

    async def kept_newest() -> bool:
        kept = [v["version"] for v in versions(await backend.versions_json(MAC, 50, None))]
        return kept == made[:2:-1]

    await eventually(kept_newest)


async def test_retention_by_age_keeps_the_newest_of_a_live_device(
    make_backend: MakeBackend,
) -> None:
    backend, _ = await make_backend(history_max_days=0.1 / 86_400)  # 100 ms
    await backend.save(MAC, {"v": 1}, NONE, META)
    await asyncio.sleep(0.3)
    newest = await backend.save(MAC, {"v": 2}, NONE, META)

    async def kept_newest() -> bool:
        kept = [v["version"] for v in versions(await backend.versions_json(MAC, 50, None))]
        return kept == [newest.version]

    await eventually(kept_newest)


async def test_history_off_keeps_no_version(make_backend: MakeBackend) -> None:
    backend, _ = await make_backend(history_max_versions=0)
    saved = await backend.save(MAC, {"v": 1}, NONE, META)
    assert saved.version is None
    assert versions(await backend.versions_json(MAC, 50, None)) == []
    assert (await backend.delete(MAC, NONE, META)).version is None


async def test_every_change_reaches_the_sink_in_order(make_backend: MakeBackend) -> None:
    backend, sink = await make_backend()
    first = await backend.save(MAC, {"v": 1}, NONE, META)
    await backend.save(OTHER_MAC, {"v": 1}, NONE, META)
    await backend.delete(MAC, NONE, META)
    gone = await sink.heard(MAC, None)
    assert [(c.mac, c.etag) for c in sink.changes] == [
        (MAC, first.stored.etag),
        (OTHER_MAC, etag_of(dump_document({"v": 1}))),
        (MAC, None),
    ]
    assert sink.changes[-1] == gone
    later = await backend.changes_after(sink.changes[0].id)
    assert later is None or later == sink.changes[1:]  # None: it cannot tell (a reset)
    assert await backend.changes_after(gone.id) in (None, [])


async def test_an_unchanged_save_is_no_change(make_backend: MakeBackend) -> None:
    backend, sink = await make_backend()
    await backend.save(MAC, {"v": 1}, NONE, META)
    await backend.save(MAC, {"v": 1}, NONE, META)
    await backend.save(OTHER_MAC, {"v": 1}, NONE, META)
    await sink.heard(OTHER_MAC, etag_of(dump_document({"v": 1})))
    assert [c.mac for c in sink.changes] == [MAC, OTHER_MAC]


@pytest.mark.parametrize("change_id", ["", "0", "nonsense", "x-1", "-1", "1" * 5000])
async def test_changes_after_an_unknown_id_cannot_tell(backend: Backend, change_id: str) -> None:
    await backend.save(MAC, {"v": 1}, NONE, META)
    assert await backend.changes_after(change_id) is None


async def test_health_is_read_write(backend: Backend) -> None:
    assert await backend.health() == ("read-write", None)

"""One decision of "this is a write" (issue 17, items 3 and 11): every write goes through the
store's write path, which refuses it once the stop began, runs it to its end whatever the
client does, and tells the write listeners (the audit, MQTT, the other workers) how it ended."""

import asyncio
import contextlib
import logging
import os
import threading
from collections import defaultdict
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from quart import Quart

from quart_iot.app import create_app
from quart_iot.settings import Settings
from quart_iot.shutdown import GracefulStop
from quart_iot.store import ConfigStore, WriteMeta, Written
from tests.conftest import MAC, OTHER_MAC, Client
from tests.oidc_provider import AUDIENCE, Provider, running_provider

READS = {"GET", "HEAD", "OPTIONS"}


def told(store: ConfigStore) -> list[Written]:
    heard: list[Written] = []
    store.write_listeners.append(heard.append)
    return heard


async def put(client: Client, content: dict[str, Any], mac: str = MAC, **kw: Any) -> str:
    response = await client.put(f"/api/configs/{mac}", json={"content": content}, **kw)
    assert response.status_code == 200, await response.get_data()
    return str(response.headers["ETag"]).strip('"')


async def history(client: Client, mac: str = MAC) -> list[dict[str, Any]]:
    response = await client.get(f"/api/configs/{mac}/history?limit=1000")
    assert response.status_code == 200, await response.get_data()
    return list((await response.get_json())["versions"])


async def begin_the_stop(app: Quart) -> "asyncio.Task[float]":
    stop = app.extensions["graceful_stop"]
    assert isinstance(stop, GracefulStop)
    draining = asyncio.create_task(stop.drain())
    while not stop.stopping:
        await asyncio.sleep(0)
    return draining


async def test_each_write_is_told_once_with_what_it_did(store: ConfigStore, client: Client) -> None:
    heard = told(store)
    first = await store.save(MAC, {"v": 1}, meta=WriteMeta("alice"))
    second = await store.save(MAC, {"v": 2}, meta=WriteMeta("bob"))
    restored = await store.restore(MAC, str(first.version), meta=WriteMeta("carol"))
    deleted = await store.delete(MAC, meta=WriteMeta("dave"))
    stale = await client.put(
        f"/api/configs/{MAC}", json={"content": {}}, headers={"If-Match": '"stale"'}
    )
    assert stale.status_code == 412
    assert [(w.action, w.subject, w.status, w.code, w.applied) for w in heard] == [
        ("save", "alice", 200, None, True),
        ("save", "bob", 200, None, True),
        ("restore", "carol", 200, None, True),
        ("delete", "dave", 204, None, True),
        ("save", None, 412, "PRECONDITION_FAILED", False),
    ]
    etags = [first.stored.etag, second.stored.etag, restored.stored.etag]
    assert [(w.etag_before, w.etag_after) for w in heard[:4]] == [
        (None, etags[0]),
        (etags[0], etags[1]),
        (etags[1], etags[2]),
        (etags[2], None),
    ]
    assert [w.version for w in heard[:4]] == [
        first.version,
        second.version,
        restored.version,
        deleted.version,
    ]
    assert all(w.version for w in heard[:4])
    assert all(w.mac == MAC for w in heard)


async def test_a_listener_that_fails_costs_the_others_nothing(
    store: ConfigStore, caplog: pytest.LogCaptureFixture
) -> None:
    def broken(_: Written) -> None:
        raise RuntimeError("a listener's bug")

    store.write_listeners.append(broken)
    heard = told(store)
    await store.save(MAC, {"v": 1})
    assert [w.action for w in heard] == ["save"]
    assert "a write listener failed" in caplog.text


async def test_a_restore_during_the_stop_is_503_shutting_down(app: Quart, client: Client) -> None:
    await put(client, {"deviceName": "old"})
    current = await put(client, {"deviceName": "new"})
    old = (await history(client))[-1]["version"]
    draining = await begin_the_stop(app)
    response = await client.post(f"/api/configs/{MAC}/history/{old}/restore")
    assert response.status_code == 503
    assert (await response.get_json())["code"] == "SHUTTING_DOWN"
    assert response.headers["Retry-After"] == "1"
    assert await draining >= 0
    now = await client.get(f"/api/configs/{MAC}")
    assert now.headers["ETag"] == f'"{current}"'


# A valid body for each write route (what else a route checks comes before the store).
MERGE = {"data": b"{}", "headers": {"Content-Type": "application/merge-patch+json"}}
WRITE_BODIES: dict[tuple[str, str], dict[str, Any]] = defaultdict(
    lambda: {"json": {"content": {}}},
    {
        ("/api/configs/<mac_address>", "PATCH"): MERGE,
        ("/api/models/<code>", "PUT"): {"json": {"name": "n", "configSchema": None}},
        ("/api/configs/changes", "POST"): {"json": {"filter": "exists(a)", "patch": {"a": 1}}},
        ("/api/configs/changes/<change_id>/revert", "POST"): {},
    },
)


async def test_no_write_route_skips_the_stop_s_gate(app: Quart, client: Client) -> None:
    """Every route under /api/configs and /api/models that is not a read is a store write: a
    new write route that did not go through the store's write path would be let through here."""
    await put(client, {"deviceName": "a"})
    await client.put("/api/models/m", json={"name": "m", "configSchema": None})
    version = (await history(client))[0]["version"]
    values = {"mac_address": MAC, "version": version, "code": "m", "change_id": version}
    heard = told(ConfigStore.of(app))
    await begin_the_stop(app)
    checked = []
    for rule in app.url_map.iter_rules():
        for method in sorted((rule.methods or set()) - READS):
            if not rule.rule.startswith(("/api/configs", "/api/models")):
                continue
            path = rule.rule.replace("<", "{").replace(">", "}").format(**values)
            response = await client.open(path, method=method, **WRITE_BODIES[rule.rule, method])
            assert response.status_code == 503, (method, rule.rule, await response.get_data())
            assert (await response.get_json())["code"] == "SHUTTING_DOWN", (method, rule.rule)
            checked.append((method, rule.rule))
    assert len(checked) >= 6  # PUT, PATCH, DELETE, restore; a model's PUT and DELETE
    assert [(w.status, w.code, w.applied) for w in heard] == [(503, "SHUTTING_DOWN", False)] * len(
        checked
    )


# -- a client that hangs up (issue 17 item 3: 60 PUTs: 52 versions, 39 audit lines) ----------


@pytest.fixture(scope="module")
def provider() -> Iterator[Provider]:
    with running_provider() as provider:
        yield provider


@pytest.fixture
async def audited_app(provider: Provider, tmp_path: Path) -> AsyncIterator[Quart]:
    directory = tmp_path / "configs"
    directory.mkdir()
    settings = Settings(
        esp32_configs_dir=directory,
        oidc_issuer=provider.issuer,
        oidc_audience=AUDIENCE,
        oidc_jwks_min_refresh=5,  # the floor
        history_max_versions=1000,
        _env_file=None,
    )
    app = create_app(settings)
    async with app.test_app():
        yield app


class TempFsyncGate:
    """Holds the fsync of a write's temp file (its first) until released; says when held."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.held = threading.Event()
        self.released = threading.Event()
        real: Callable[[int], None] = os.fsync

        def gated(fd: int) -> None:
            if os.readlink(f"/proc/self/fd/{fd}").endswith(".tmp"):
                self.held.set()
                self.released.wait(10)
            real(fd)

        monkeypatch.setattr(os, "fsync", gated)

    def arm(self) -> None:
        self.held.clear()
        self.released.clear()


async def hang_up_during_the_write(
    client: Client, gate: TempFsyncGate, token: str, seq: int
) -> None:
    """A PUT whose client disconnects while its write is under way (its temp file fsync)."""
    gate.arm()
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
    async with client.request(f"/api/configs/{MAC}", method="PUT", headers=headers) as connection:
        await connection.send(b'{"content": {"seq": %d}}' % seq)
        await connection.send_complete()
        assert await asyncio.to_thread(gate.held.wait, 10)
        await connection.disconnect()  # what hypercorn tells the app when the client hangs up
        gate.released.set()
    with contextlib.suppress(Exception):
        await connection.as_response()


async def test_sixty_puts_that_hang_up_all_leave_their_version_and_audit_line(
    audited_app: Quart,
    provider: Provider,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    client = audited_app.test_client()
    token = provider.token("writer")
    gate = TempFsyncGate(monkeypatch)
    with caplog.at_level(logging.INFO, logger="quart_iot.audit"):
        for seq in range(60):
            await hang_up_during_the_write(client, gate, token, seq)
        gate.released.set()
        for _ in range(200):  # the writes end on their own, after their clients left
            if len(await _versions(client, token)) == 60:
                break
            await asyncio.sleep(0.05)
    assert len(await _versions(client, token)) == 60
    lines = [r.getMessage() for r in caplog.records if r.name == "quart_iot.audit"]
    assert len([line for line in lines if f"audit: PUT {MAC} 200 allowed by" in line]) == 60
    assert all("sub:writer" in line for line in lines)
    assert len({line.rsplit("after ", 1)[1] for line in lines}) == 60  # each its own ETag


async def _versions(client: Client, token: str) -> list[dict[str, Any]]:
    response = await client.get(
        f"/api/configs/{MAC}/history?limit=1000", headers={"Authorization": f"Bearer {token}"}
    )
    if response.status_code == 404:
        return []
    return list((await response.get_json())["versions"])


async def test_a_write_with_access_control_off_writes_no_audit_line(
    client: Client, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO, logger="quart_iot.audit"):
        await put(client, {"v": 1}, OTHER_MAC)
    assert not [r for r in caplog.records if r.name == "quart_iot.audit"]

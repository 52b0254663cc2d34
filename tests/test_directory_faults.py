"""Directory faults: missing, not a directory, unreadable, read-only, full; then recovery."""

import errno
import json
import os
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import Client, write_config
from tests.harness import (
    ERROR_KEYS,
    Unprivileged,
    give_to,
    private_parent,
    temp_files,
    unprivileged,
)
from tests.server import TLS, Server
from tests.tools import tool

MAC = "0f-00-00-00-00-01"
KEPT = {"deviceName": "kept"}
NEW = {"deviceName": "new", "padding": "x" * 50_000}


@contextmanager
def serving(run_as: Unprivileged, directory: Path) -> Iterator[httpx.Client]:
    """A real server on `directory` (holding the KEPT config), and a client for it."""
    directory.mkdir()
    (directory / f"{MAC}.json").write_text(json.dumps(KEPT))
    give_to(run_as.owner, directory, directory / f"{MAC}.json")
    server = Server(directory, wrapper=run_as.wrapper)
    server.start()
    try:
        with httpx.Client(base_url=server.url, timeout=10, verify=TLS) as client:
            yield client
    finally:
        server.stop()
        server.log.unlink(missing_ok=True)


def _assert_error(response: httpx.Response, status: int, code: str) -> str:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == ERROR_KEYS
    assert body["status"] == response.status_code
    assert body["code"] == code
    message: str = body["error"]
    return message


def assert_unavailable(client: httpx.Client) -> None:
    """Health 503, and every config route 503 STORAGE_UNAVAILABLE: never an empty list or 404."""
    health = client.get("/api/health")
    assert health.status_code == 503
    assert health.json()["status"] == "unhealthy"
    assert health.json()["reason"]
    for method, path in [
        ("GET", "/api/configs"),
        ("GET", f"/api/configs/{MAC}"),
        ("GET", f"/api/configs/{MAC}.json"),
        ("DELETE", f"/api/configs/{MAC}"),
    ]:
        _assert_error(client.request(method, path), 503, "STORAGE_UNAVAILABLE")
    put = client.put(f"/api/configs/{MAC}", json={"content": NEW})
    _assert_error(put, 503, "STORAGE_UNAVAILABLE")
    assert client.get("/api/health/live").status_code == 200


def assert_recovered(client: httpx.Client, directory: Path) -> None:
    """Back to normal with no restart: the old config intact, then a write that works."""
    health = client.get("/api/health")
    assert health.status_code == 200
    assert health.json()["storage"] == "read-write"
    assert client.get(f"/api/configs/{MAC}").json()["content"] == KEPT
    assert [c["mac_address"] for c in client.get("/api/configs").json()["configs"]] == [MAC]
    assert client.put(f"/api/configs/{MAC}", json={"content": NEW}).status_code == 200
    assert client.get(f"/api/configs/{MAC}").json()["content"] == NEW
    assert temp_files(directory) == []


def test_directory_renamed_away_and_back() -> None:
    with private_parent(None) as parent:
        directory = parent / "configs"
        with serving(Unprivileged(), directory) as client:
            directory.rename(parent / "moved")
            assert_unavailable(client)
            assert not directory.exists()  # the service never creates its directory
            (parent / "moved").rename(directory)
            assert_recovered(client, directory)


def test_directory_replaced_by_a_file_and_back() -> None:
    with private_parent(None) as parent:
        directory = parent / "configs"
        with serving(Unprivileged(), directory) as client:
            directory.rename(parent / "moved")
            directory.write_text("not a directory")
            assert_unavailable(client)
            assert directory.read_text() == "not a directory"
            directory.unlink()
            (parent / "moved").rename(directory)
            assert_recovered(client, directory)


def test_directory_unreadable_then_readable() -> None:
    run_as = unprivileged()
    with private_parent(run_as.owner) as parent:
        directory = parent / "configs"
        with serving(run_as, directory) as client:
            directory.chmod(0)
            assert_unavailable(client)
            directory.chmod(0o755)
            assert_recovered(client, directory)


def test_read_only_directory_serves_reads_and_refuses_writes() -> None:
    run_as = unprivileged()
    with private_parent(run_as.owner) as parent:
        directory = parent / "configs"
        with serving(run_as, directory) as client:
            before = (directory / f"{MAC}.json").read_bytes()
            directory.chmod(0o555)
            health = client.get("/api/health")
            assert health.status_code == 200
            assert health.json()["status"] == "healthy"
            assert health.json()["storage"] == "read-only"
            assert client.get(f"/api/configs/{MAC}").json()["content"] == KEPT
            assert client.get("/api/configs").json()["count"] == 1
            put = client.put(f"/api/configs/{MAC}", json={"content": NEW})
            assert "not writable" in _assert_error(put, 503, "STORAGE_UNAVAILABLE")
            _assert_error(client.delete(f"/api/configs/{MAC}"), 503, "STORAGE_UNAVAILABLE")
            assert (directory / f"{MAC}.json").read_bytes() == before
            assert temp_files(directory) == []
            directory.chmod(0o755)
            assert_recovered(client, directory)


@contextmanager
def small_tmpfs(mountpoint: Path) -> Iterator[None]:
    """A 256 KiB tmpfs at `mountpoint`, or a skip where mounting is not allowed."""
    mountpoint.mkdir()
    mount = [tool("mount", "Debian package mount"), "-t", "tmpfs", "-o", "size=256k,mode=0755"]
    if os.geteuid() != 0 or subprocess.run([*mount, "tmpfs", str(mountpoint)]).returncode:
        pytest.skip("a real full disk needs a tmpfs mount (root); the injected ENOSPC test stands")
    try:
        yield
    finally:
        subprocess.run(["umount", "-l", str(mountpoint)], check=True)


def _fill(path: Path) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o644)
    try:
        while True:
            os.write(fd, b"\0" * 4096)
    except OSError as error:
        if error.errno != errno.ENOSPC:
            raise
    finally:
        os.close(fd)


def test_full_disk_keeps_the_old_file_and_recovers() -> None:
    with private_parent(None) as parent, small_tmpfs(parent / "disk"):
        directory = parent / "disk" / "configs"
        with serving(Unprivileged(), directory) as client:
            before = (directory / f"{MAC}.json").read_bytes()
            _fill(parent / "disk" / "filler")
            put = client.put(f"/api/configs/{MAC}", json={"content": NEW})
            assert "full" in _assert_error(put, 503, "STORAGE_UNAVAILABLE")
            assert (directory / f"{MAC}.json").read_bytes() == before
            assert temp_files(directory) == []
            # Reads still work, so readiness stays up: devices can fetch their configs.
            assert client.get("/api/health").status_code == 200
            assert client.get(f"/api/configs/{MAC}").json()["content"] == KEPT
            (parent / "disk" / "filler").unlink()
            assert_recovered(client, directory)


INJECTED = [
    ("write", errno.ENOSPC, "full"),
    ("write", errno.EDQUOT, "full"),
    ("fsync", errno.EIO, "cannot be used"),
    ("rename", errno.EIO, "cannot be used"),
    ("rename", errno.EROFS, "not writable"),
]


@pytest.mark.parametrize(("call", "code", "says"), INJECTED)
async def test_injected_write_failure_keeps_the_old_file_and_recovers(
    client: Client,
    configs_dir: Path,
    monkeypatch: pytest.MonkeyPatch,
    call: str,
    code: int,
    says: str,
) -> None:
    path = write_config(configs_dir, MAC, KEPT)
    before = path.read_bytes()

    def failing(*args: Any, **kwargs: Any) -> Any:
        raise OSError(code, os.strerror(code))

    monkeypatch.setattr(os, call, failing)
    put = await client.put(f"/api/configs/{MAC}", json={"content": NEW})
    monkeypatch.undo()
    assert put.status_code == 503
    body = await put.get_json()
    assert body["code"] == "STORAGE_UNAVAILABLE"
    assert says in body["error"]
    assert path.read_bytes() == before
    assert temp_files(configs_dir) == []
    assert (await client.put(f"/api/configs/{MAC}", json={"content": NEW})).status_code == 200
    assert json.loads(path.read_bytes()) == NEW

"""Helpers for the reliability tests: raw HTTP, directory snapshots, an unprivileged user."""

import contextlib
import functools
import json
import os
import shutil
import socket
import stat
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.tools import tool

ERROR_KEYS = {"error", "code", "details", "correlationId", "status"}


@dataclass(frozen=True)
class RawResponse:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


def raw_request(
    port: int,
    method: str,
    target: bytes,
    body: bytes = b"",
    content_type: str | None = "application/json",
    timeout: float = 10.0,
    host: bytes = b"127.0.0.1",
    headers: dict[str, str] | None = None,
) -> RawResponse:
    """One HTTP/1.1 request written byte for byte, so the path reaches the server as sent."""
    head = method.encode() + b" " + target + b" HTTP/1.1\r\nHost: " + host + b"\r\n"
    head += "".join(f"{name}: {value}\r\n" for name, value in (headers or {}).items()).encode()
    if content_type is not None:
        head += f"Content-Type: {content_type}\r\n".encode()
    head += f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode()
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        # The server may answer (413) and close before it has read a huge body.
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            sock.sendall(head + body)
        return _parse_response(_read_all(sock))


def raw_bytes(port: int, data: bytes, timeout: float = 10.0) -> RawResponse:
    """Bytes that need not be HTTP at all, and the server's answer."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            sock.sendall(data)
        return _parse_response(_read_all(sock))


def read_response(sock: socket.socket) -> RawResponse:
    """Read until the server closes the connection, and parse what it sent."""
    return _parse_response(_read_all(sock))


def _read_all(sock: socket.socket) -> bytes:
    chunks = []
    while True:
        try:
            chunk = sock.recv(65536)
        except ConnectionResetError:
            break
        if not chunk:
            break
        chunks.append(chunk)
    return b"".join(chunks)


def _parse_response(data: bytes) -> RawResponse:
    head, _, body = data.partition(b"\r\n\r\n")
    status_line, *lines = head.decode("latin-1").split("\r\n")
    headers = {}
    for line in lines:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    if headers.get("transfer-encoding") == "chunked":
        body = _dechunk(body)
    return RawResponse(int(status_line.split()[1]), headers, body)


def _dechunk(data: bytes) -> bytes:
    out = b""
    while data:
        size_line, _, data = data.partition(b"\r\n")
        size = int(size_line.split(b";")[0], 16)
        if size == 0:
            break
        out, data = out + data[:size], data[size + 2 :]
    return out


def assert_error_body(response: RawResponse, status: int, code: str) -> dict[str, Any]:
    """The contract's JSON error body, with this status and code."""
    assert response.status == status, (response.status, response.body[:300])
    assert response.headers.get("content-type", "").startswith("application/json")
    body: dict[str, Any] = response.json()
    assert set(body) == ERROR_KEYS
    assert body["code"] == code, body
    assert body["status"] == status
    assert isinstance(body["error"], str)
    assert body["error"]
    assert body["correlationId"] == response.headers["x-request-id"]
    return body


Snapshot = dict[str, tuple[int, bytes]]


def snapshot(directory: Path) -> Snapshot:
    """Every entry under `directory`: its mode and its bytes (or link target)."""
    result: Snapshot = {}
    for root, dirs, files in os.walk(directory):
        for name in dirs + files:
            path = Path(root, name)
            st = path.lstat()
            if stat.S_ISLNK(st.st_mode):
                content = os.readlink(path).encode()
            elif stat.S_ISREG(st.st_mode):
                content = path.read_bytes()
            else:
                content = b""
            result[str(path.relative_to(directory))] = (st.st_mode, content)
    return result


def temp_files(directory: Path) -> list[str]:
    """Names a write leaves behind if it is interrupted (or forgets to clean up)."""
    return sorted(p.name for p in directory.iterdir() if p.name.endswith(".tmp"))


def json_files(directory: Path) -> list[Path]:
    return sorted(p for p in directory.iterdir() if p.name.endswith(".json"))


ROOT = os.geteuid() == 0
# Root ignores permission bits. A server that must meet them runs as `nobody`, or, where
# `nobody` cannot reach the interpreter (a venv under /root, say), as root without the two
# capabilities that bypass them. Both through setpriv (util-linux, on every Debian).
_AS_NOBODY = ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups"]
_WITHOUT_DAC_CAPS = [
    "setpriv",
    "--bounding-set=-dac_override,-dac_read_search",
    "--inh-caps=-dac_override,-dac_read_search",
]


@dataclass(frozen=True)
class Unprivileged:
    """How to start a server that permission bits apply to, and who must own its files."""

    wrapper: tuple[str, ...] = ()
    owner: str | None = None  # chown its directory to this user; None: ours is fine


@functools.cache
def _unprivileged() -> Unprivileged | None:
    if not ROOT:
        return Unprivileged()
    for wrapper, owner in ((_AS_NOBODY, "nobody"), (_WITHOUT_DAC_CAPS, None)):
        if _enforces_permissions(wrapper):
            return Unprivileged(tuple(wrapper), owner)
    return None


def _enforces_permissions(wrapper: list[str]) -> bool:
    """Whether a server started through `wrapper` runs and is refused a mode-000 file."""
    with tempfile.NamedTemporaryFile() as closed:
        os.chmod(closed.name, 0)
        probe = (
            f"import quart_iot.app\ntry: open({closed.name!r})\nexcept OSError: exit(0)\nexit(1)"
        )
        try:
            result = subprocess.run(
                [*wrapper, sys.executable, "-c", probe], cwd="/", capture_output=True, timeout=60
            )
        except OSError:
            return False
    return result.returncode == 0


def can_enforce_permissions() -> bool:
    """Whether a server can run where permission bits count."""
    return _unprivileged() is not None


def unprivileged() -> Unprivileged:
    """How to run a server that permission bits apply to; skips the test when impossible."""
    found = _unprivileged()
    if found is None:
        tool("setpriv", "Debian package util-linux")  # in CI, a missing setpriv fails
        pytest.skip(
            "permission faults need the server to run unprivileged: running as root, and "
            "neither `setpriv --reuid=nobody` nor setpriv without CAP_DAC_OVERRIDE works here"
        )
    return found


@contextlib.contextmanager
def private_parent(user: str | None) -> Iterator[Path]:
    """A fresh directory that `user` owns (pytest's tmp_path is closed to other users)."""
    path = Path(tempfile.mkdtemp(prefix="quart-iot-test-"))
    give_to(user, path)
    try:
        yield path
    finally:
        for root, dirs, _ in os.walk(path):
            for name in dirs:
                Path(root, name).chmod(0o755)  # what a test made unreadable, made removable
        shutil.rmtree(path)


def give_to(user: str | None, *paths: Path) -> None:
    """chown paths to `user` (when the server runs as another user)."""
    if user is None:
        return
    for path in paths:
        shutil.chown(path, user)

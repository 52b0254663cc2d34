"""Helpers for the reliability tests: raw HTTP, directory snapshots, an unprivileged user."""

import contextlib
import json
import os
import shutil
import socket
import stat
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from quart_iot.store import LOCK_NAME

ERROR_KEYS = {"error", "code", "details", "correlationId"}


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
) -> RawResponse:
    """One HTTP/1.1 request written byte for byte, so the path reaches the server as sent."""
    head = method.encode() + b" " + target + b" HTTP/1.1\r\nHost: 127.0.0.1\r\n"
    if content_type is not None:
        head += f"Content-Type: {content_type}\r\n".encode()
    head += f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode()
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        # The server may answer (413) and close before it has read a huge body.
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            sock.sendall(head + body)
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


def config_names(directory: Path) -> set[str]:
    return {p.name for p in directory.iterdir() if p.name != LOCK_NAME}


def unprivileged_user() -> str | None:
    """Whom to run the server as so permission bits count: None when we already are not root."""
    if os.geteuid() != 0:
        return None
    for name in ("quart-iot-test", "nobody"):
        if _can_run_server_as(name):
            return name
    pytest.skip(
        "permission faults need an unprivileged user: running as root, and neither "
        "'quart-iot-test' nor 'nobody' can import quart_iot from this checkout"
    )


def _can_run_server_as(name: str) -> bool:
    if shutil.which("id") is None or subprocess.run(["id", name], capture_output=True).returncode:
        return False
    probe = subprocess.run(
        [sys.executable, "-c", "import quart_iot.app"],
        user=name,
        extra_groups=[],
        cwd="/",
        capture_output=True,
        timeout=60,
        env={**os.environ, "COVERAGE_PROCESS_START": ""},
    )
    return probe.returncode == 0


def give_to(user: str | None, *paths: Path) -> None:
    """chown paths to `user` (when the server runs as another user)."""
    if user is None:
        return
    for path in paths:
        shutil.chown(path, user)

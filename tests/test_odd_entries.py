"""Odd entries in the configs directory: the list skips them, GET answers 422, nothing hangs."""

import json
import os
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from tests.harness import (
    Unprivileged,
    can_enforce_permissions,
    give_to,
    private_parent,
    unprivileged,
)
from tests.server import TLS, Server

SECRET = "SECRET-FROM-OUTSIDE"

VALID = {
    "0d-00-00-00-00-01": {
        "deviceName": "Porch",
        "deviceEntityId": "light.porch",
        "enableOTA": True,
    },
    "0d-00-00-00-00-02": {"deviceName": 5, "deviceEntityId": ["x"], "enableOTA": "yes"},
    "0d-00-00-00-00-03": {"deviceName": "K\u00fcche \u2713"},
}
SUMMARIES = {
    "0d-00-00-00-00-01": ("Porch", "light.porch", True),
    "0d-00-00-00-00-02": (None, None, None),  # wrong types: null, and the list still answers
    "0d-00-00-00-00-03": ("K\u00fcche \u2713", None, None),
}


def _bytes(data: bytes) -> Callable[[Path], None]:
    def make(path: Path) -> None:
        path.write_bytes(data)

    return make


def _unreadable(path: Path) -> None:
    path.write_text(json.dumps({"deviceName": "hidden"}))
    path.chmod(0)


def _link_to(target: str) -> Callable[[Path], None]:
    return lambda path: path.symlink_to(target)


# <mac>.json entries that are not usable configs: GET answers 422 RECORD_UNREADABLE.
UNUSABLE: dict[str, Callable[[Path], None]] = {
    "corrupt JSON": _bytes(b'{"deviceName": '),
    "empty file": _bytes(b""),
    "invalid UTF-8": _bytes(b'{"deviceName": "\xff\xfe"}'),
    "JSON array": _bytes(b'[{"deviceName": "a"}]'),
    "JSON string": _bytes(b'"deviceName"'),
    "JSON null": _bytes(b"null"),
    "NaN": _bytes(b'{"deviceName": "n", "value": NaN}'),
    "lone surrogate": _bytes(b'{"deviceName": "\\ud800"}'),
    "nested 100 deep": _bytes(b'{"a": ' + b"[" * 100 + b"]" * 100 + b"}"),
    "directory named <mac>.json": lambda path: path.mkdir(),
    "symlink leading outside": _link_to("../outside/secret.json"),
    "symlink to a valid config": _link_to("0d-00-00-00-00-01.json"),
    "dangling symlink": _link_to("nowhere.json"),
    "symlink loop": lambda path: path.symlink_to(path.name),
    "FIFO": lambda path: os.mkfifo(path),
    "unreadable file": _unreadable,
}
UNUSABLE_MACS = {case: f"0e-00-00-00-00-{n:02x}" for n, case in enumerate(UNUSABLE)}

# Names the list skips that no MAC can reach.
IGNORED = ["notes.txt", "aa-bb-cc-dd-ee.json", "0D-00-00-00-00-99.json", "subdir", "x.json.bak"]


def _populate(directory: Path) -> None:
    outside = directory.parent / "outside"
    outside.mkdir()
    (outside / "secret.json").write_text(json.dumps({"deviceName": SECRET}))
    for mac, content in VALID.items():
        (directory / f"{mac}.json").write_text(json.dumps(content, ensure_ascii=False))
    for case, make in UNUSABLE.items():
        if case != "unreadable file" or can_enforce_permissions():
            make(directory / f"{UNUSABLE_MACS[case]}.json")
    for name in IGNORED:
        path = directory / name
        path.mkdir() if name == "subdir" else path.write_text(json.dumps({"deviceName": SECRET}))


@pytest.fixture(scope="module")
def server() -> Iterator[Server]:
    # Unprivileged where possible, so that the unreadable file really is unreadable.
    run_as = unprivileged() if can_enforce_permissions() else Unprivileged()
    with private_parent(run_as.owner) as parent:
        directory = parent / "configs"
        directory.mkdir()
        _populate(directory)
        give_to(run_as.owner, parent / "outside", directory)
        server = Server(directory, wrapper=run_as.wrapper)
        server.start()
        try:
            yield server
        finally:
            server.stop()
            server.log.unlink(missing_ok=True)


def _get(server: Server, path: str) -> httpx.Response:
    # The bound is the point: a FIFO or a slow link must never make a request hang.
    return httpx.get(f"{server.url}{path}", timeout=1.0, verify=TLS)


def test_list_holds_exactly_the_valid_configs(server: Server) -> None:
    for _ in range(3):
        response = _get(server, "/api/configs")
        assert response.status_code == 200
        body = response.json()
        summaries = {
            c["mac_address"]: (c["device_name"], c["device_entity_id"], c["enable_ota"])
            for c in body["configs"]
        }
        assert summaries == SUMMARIES
        assert body["count"] == len(VALID)
        assert SECRET not in response.text


@pytest.mark.parametrize("case", UNUSABLE, ids=UNUSABLE)
@pytest.mark.parametrize("endpoint", ["/api/configs/{}", "/api/configs/{}.json"])
def test_get_of_an_unusable_entry_is_record_unreadable(
    server: Server, case: str, endpoint: str
) -> None:
    if case == "unreadable file" and not can_enforce_permissions():
        unprivileged()  # skips, saying why
    for _ in range(2):
        response = _get(server, endpoint.format(UNUSABLE_MACS[case]))
        assert response.status_code == 422
        body = response.json()
        assert body["code"] == "RECORD_UNREADABLE"
        assert SECRET not in response.text
        assert str(server.directory) not in response.text


@pytest.mark.parametrize("mac", ["0d-00-00-00-00-99", "0D-00-00-00-00-99"])
def test_uppercase_file_name_is_not_served(server: Server, mac: str) -> None:
    response = _get(server, f"/api/configs/{mac}")
    assert response.status_code == 404
    assert response.json()["code"] == "RECORD_NOT_FOUND"


def test_valid_configs_still_served_and_health_stays_healthy(server: Server) -> None:
    for mac, content in VALID.items():
        response = _get(server, f"/api/configs/{mac}")
        assert response.status_code == 200
        assert response.json()["content"] == content
    health = _get(server, "/api/health")
    assert health.status_code == 200
    assert health.json()["status"] == "healthy"


def test_one_warning_per_bad_entry_not_per_request(server: Server) -> None:
    for _ in range(2):
        _get(server, "/api/configs")
        for mac in UNUSABLE_MACS.values():
            _get(server, f"/api/configs/{mac}")
    warnings = [line for line in server.stderr().splitlines() if " WARNING " in line]
    names = [f"{mac}.json" for mac in UNUSABLE_MACS.values()] + IGNORED
    if not can_enforce_permissions():
        names.remove(f"{UNUSABLE_MACS['unreadable file']}.json")
    counts = {name: sum(repr(name) in line for line in warnings) for name in names}
    assert counts == dict.fromkeys(names, 1)

"""History against the real server: two processes on one directory, SIGKILL amid writers,
hostile version strings on the wire."""

import contextlib
import random
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from quart_iot.documents import dump_document, etag_of, parse_document
from tests.conftest import MAC
from tests.faults import FsyncGate
from tests.harness import assert_error_body, raw_request, snapshot, temp_files
from tests.server import TLS, Server, running_server

KEEP_ALL = {"HISTORY_MAX_VERSIONS": "10000"}


def history(server: Server, mac: str) -> list[dict[str, Any]]:
    response = httpx.get(f"{server.url}/api/configs/{mac}/history", timeout=10, verify=TLS)
    assert response.status_code == 200, response.text
    return list(response.json()["versions"])


def kept_contents(directory: Path, mac: str) -> list[bytes]:
    """Every version file of a device, each of which must be a whole document, and the
    document a delete held when the kill came (the next sweep makes it its version)."""
    shelf = directory / ".history" / mac
    files = sorted(p for p in shelf.iterdir() if p.name.endswith((".json", ".deleting")))
    contents = [path.read_bytes() for path in files]
    for data in contents:
        parse_document(data)
    return contents


def test_two_processes_writing_one_mac_keep_one_consistent_history(configs_dir: Path) -> None:
    with running_server(configs_dir, **KEEP_ALL) as a, running_server(configs_dir, **KEEP_ALL) as b:
        sent: list[bytes] = []

        def write(server: Server, name: str) -> None:
            with httpx.Client(base_url=server.url, timeout=10, verify=TLS) as client:
                for seq in range(15):
                    content = {"deviceName": name, "seq": seq}
                    sent.append(dump_document(content))
                    response = client.put(f"/api/configs/{MAC}", json={"content": content})
                    assert response.status_code == 200

        threads = [threading.Thread(target=write, args=(s, n)) for s, n in ((a, "a"), (b, "b"))]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        listed = history(a, MAC)
        assert listed == history(b, MAC)
    assert len(listed) == 30
    assert [v["change"] for v in listed] == ["updated"] * 29 + ["created"]
    assert {v["etag"] for v in listed} == {etag_of(data) for data in sent}
    assert len({v["version"] for v in listed}) == 30
    assert listed[0]["etag"] == etag_of((configs_dir / f"{MAC}.json").read_bytes())
    for name in ("a", "b"):  # each process's writes in the order it made them
        seqs = [v["etag"] for v in reversed(listed) if v["device_name"] == name]
        assert seqs == [etag_of(dump_document({"deviceName": name, "seq": s})) for s in range(15)]


class Writer(threading.Thread):
    """PUTs (and now and then DELETEs) its own MACs until the server dies under it."""

    def __init__(self, url: str, index: int) -> None:
        super().__init__()
        self.url = url
        self.macs = [f"0d-00-00-00-{index:02x}-{n:02x}" for n in range(2)]
        self.rng = random.Random(index)
        self.acked: list[tuple[str, bytes | None]] = []  # (mac, document or None: deleted)

    def run(self) -> None:
        with httpx.Client(base_url=self.url, timeout=10, verify=TLS) as client:
            for seq in range(100_000):
                mac = self.macs[seq % 2]
                try:
                    self._one(client, mac, seq)
                except httpx.TransportError:
                    return  # the kill

    def _one(self, client: httpx.Client, mac: str, seq: int) -> None:
        if seq % 7 == 6:
            if client.delete(f"/api/configs/{mac}").status_code == 204:
                self.acked.append((mac, None))
            return
        content = {"deviceName": mac, "seq": seq, "pad": self.rng.randbytes(4000).hex()}
        if client.put(f"/api/configs/{mac}", json={"content": content}).status_code == 200:
            self.acked.append((mac, dump_document(content)))


@pytest.fixture
def killed_server(configs_dir: Path) -> Iterator[Server]:
    server = Server(configs_dir, KEEP_ALL)
    try:
        yield server
    finally:
        if server.process is not None:
            server.stop()
        server.log.unlink(missing_ok=True)


def test_sigkill_amid_writers_never_loses_a_document_or_its_predecessor(
    killed_server: Server, configs_dir: Path
) -> None:
    server = killed_server
    for _ in range(3):
        server.start()
        writers = [Writer(server.url, i) for i in range(3)]
        for writer in writers:
            writer.start()
        threading.Event().wait(0.8)
        server.kill()
        for writer in writers:
            writer.join()
        assert any(writer.acked for writer in writers)
        for writer in writers:
            for mac in writer.macs:
                acked = [doc for m, doc in writer.acked if m == mac and doc is not None]
                current = configs_dir / f"{mac}.json"
                kept = set(kept_contents(configs_dir, mac)) if acked else set()
                if current.exists():
                    kept.add(current.read_bytes())
                # Every acknowledged version is there: the last one and each it replaced.
                assert set(acked) <= kept
    server.start()
    assert temp_files(configs_dir) == []
    assert temp_files(configs_dir / ".history") == []


HOSTILE = [
    (b"..", 400),
    (b"%2e%2e", 400),
    (b"..%2f..%2f..%2fetc%2fpasswd", 400),
    (b"../../../etc/passwd", 400),
    (b"1767225600000000000-0a1b2c3d%00", 400),
    (b"1767225600000000000-0a1b2c3d%2f..", 400),
    (b"%2fetc%2fpasswd", 400),
    (b"x" * 8000, 400),
    (b"1767225600000000000-0a1b2c3d", 404),
]


def test_hostile_versions_on_the_wire_touch_nothing(configs_dir: Path) -> None:
    with running_server(configs_dir) as server:
        assert httpx.put(
            f"{server.url}/api/configs/{MAC}", json={"content": {}}, verify=TLS
        ).is_success
        before = snapshot(configs_dir)
        for version, status in HOSTILE:
            base = f"/api/configs/{MAC}/history/".encode() + version
            for method, suffix in (("GET", b""), ("GET", b"/diff"), ("POST", b"/restore")):
                response = raw_request(server.port, method, base + suffix)
                code = "INVALID_OPERATION" if status == 400 else "RECORD_NOT_FOUND"
                assert_error_body(response, status, code)
        assert snapshot(configs_dir) == before


def test_a_delete_killed_before_its_unlink_leaves_no_deleted_version(
    configs_dir: Path, tmp_path: Path
) -> None:
    """SIGKILL while the delete's held document is being made durable (its first fsync): the
    document stays, and no `deleted` version is ever listed. This shows the order and the
    recovery (atomicity), not durability: the kernel keeps its page cache through a kill."""
    gate = FsyncGate(tmp_path / "gate", armed=False)
    server = Server(configs_dir, {**KEEP_ALL, **gate.env})
    server.start()
    try:
        assert httpx.put(
            f"{server.url}/api/configs/{MAC}", json={"content": {"v": 1}}, verify=TLS
        ).is_success
        gate.arm()
        deleting = threading.Thread(target=delete_quietly, args=(server,))
        deleting.start()
        gate.wait_held()
        server.kill()
        deleting.join(30)
    finally:
        server.log.unlink(missing_ok=True)
    assert (configs_dir / f"{MAC}.json").exists()  # the delete did not happen
    with running_server(configs_dir, **KEEP_ALL) as again:
        assert [v["change"] for v in history(again, MAC)] == ["created"]
        assert httpx.get(f"{again.url}/api/configs/{MAC}", verify=TLS).status_code == 200
        shelf = configs_dir / ".history" / MAC
        deadline = time.monotonic() + 10  # the first sweep after the start settles it
        while any(p.name.endswith(".deleting") for p in shelf.iterdir()):
            assert time.monotonic() < deadline, sorted(shelf.iterdir())
            time.sleep(0.05)
        assert [v["change"] for v in history(again, MAC)] == ["created"]
        assert httpx.delete(f"{again.url}/api/configs/{MAC}", verify=TLS).status_code == 204
        assert [v["change"] for v in history(again, MAC)] == ["deleted", "created"]


def delete_quietly(server: Server) -> None:
    with contextlib.suppress(httpx.TransportError):  # the kill
        httpx.delete(f"{server.url}/api/configs/{MAC}", timeout=30, verify=TLS)

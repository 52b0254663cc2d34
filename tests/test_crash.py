"""Crash safety: SIGKILL the real server amid big concurrent writes; every document stays whole.

This proves atomicity (old or new document, never a partial one; no temp file survives a
restart), not durability: SIGKILL ends the process but not the kernel, whose page cache
keeps every write, fsynced or not. The file still holding the last acknowledged document
after the kill shows the service acknowledges only installed writes; that it would survive a
power cut is shown only by the fsync order (tests/test_durability.py) and the storage below.
"""

import json
import random
import socket
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from quart_iot.documents import parse_document
from tests.harness import json_files, temp_files
from tests.server import TLS, Server

ROUNDS = 6
WRITERS = 4
MACS_PER_WRITER = 2
SEED = 20261128

Document = dict[str, Any]


@dataclass
class Writer:
    """One client writing its own MACs in turn until the server dies under it."""

    index: int
    url: str
    rng: random.Random
    acked: dict[str, Document] = field(default_factory=dict)
    unacked: dict[str, list[Document]] = field(default_factory=dict)  # sent since the last 200
    unexpected: list[int] = field(default_factory=list)
    acknowledged: int = 0

    @property
    def macs(self) -> list[str]:
        return [f"0c-00-00-00-{self.index:02x}-{n:02x}" for n in range(MACS_PER_WRITER)]

    def document(self, mac: str, seq: int) -> Document:
        size = self.rng.randint(10_000, 200_000)
        return {
            "deviceName": f"{mac} #{seq}",
            "seq": seq,
            "padding": self.rng.randbytes(size // 2).hex(),
        }

    def run(self) -> None:
        with httpx.Client(base_url=self.url, timeout=10, verify=TLS) as client:
            for seq in range(100_000):
                mac = self.macs[seq % MACS_PER_WRITER]
                document = self.document(mac, seq)
                self.unacked.setdefault(mac, []).append(document)
                try:
                    response = client.put(f"/api/configs/{mac}", json={"content": document})
                except httpx.TransportError:
                    return  # the kill
                if response.status_code != 200:
                    self.unexpected.append(response.status_code)
                    return
                self.acked[mac] = document
                self.unacked[mac] = []
                self.acknowledged += 1


def _acceptable(writers: list[Writer], before: dict[str, Document]) -> dict[str, list[Document]]:
    """Per MAC: the last acknowledged document (or what was there), or one sent after it."""
    accepted: dict[str, list[Document]] = {}
    for writer in writers:
        for mac in writer.macs:
            last = writer.acked.get(mac, before.get(mac))
            accepted[mac] = ([last] if last is not None else []) + writer.unacked.get(mac, [])
    return accepted


def _disk_state(directory: Path) -> dict[str, Document]:
    """Every `<mac>.json`, each of which must be strict JSON holding an object."""
    return {path.name[:-5]: parse_document(path.read_bytes()) for path in json_files(directory)}


def _crash_round(
    directory: Path, rng: random.Random, before: dict[str, Document]
) -> tuple[int, int]:
    """Write, kill, check the disk, restart, check again: (writes acknowledged, temps left)."""
    server = Server(directory)
    server.start()
    writers = [Writer(i, server.url, random.Random(rng.random())) for i in range(WRITERS)]
    threads = [threading.Thread(target=w.run) for w in writers]
    for thread in threads:
        thread.start()
    time.sleep(rng.uniform(0.3, 1.5))
    server.kill()
    for thread in threads:
        thread.join(timeout=30)
        assert not thread.is_alive()
    server.log.unlink(missing_ok=True)
    assert [w.unexpected for w in writers] == [[]] * WRITERS
    left_by_kill = len(temp_files(directory))
    _plant_torn_temp(directory, server)
    _check_disk(directory, _acceptable(writers, before))
    _check_restart(directory)
    return sum(w.acknowledged for w in writers), left_by_kill


def _plant_torn_temp(directory: Path, killed: Server) -> None:
    """What a kill amid a write leaves (the kill leaves one only sometimes): a partial temp."""
    assert killed.process is not None
    name = f".0c-00-00-00-00-00.json.{socket.gethostname()}-{killed.process.pid}-0badc0de.tmp"
    (directory / name).write_bytes(b'{"deviceName": "torn')


def _check_disk(directory: Path, accepted: dict[str, list[Document]]) -> None:
    disk = _disk_state(directory)
    assert set(disk) == {mac for mac, documents in accepted.items() if documents}
    for mac, document in disk.items():
        assert document in accepted[mac], f"{mac}: not a document that was written"
        last_acked = accepted[mac][0]
        # An acknowledged write was installed (through the page cache: not proof of fsync).
        assert document["seq"] >= last_acked["seq"], f"{mac}: an acknowledged write is missing"


def _check_restart(directory: Path) -> None:
    """After a restart: no temp files, and the API agrees with the disk byte for byte."""
    server = Server(directory)
    server.start()
    try:
        assert temp_files(directory) == []
        with httpx.Client(base_url=server.url, timeout=10, verify=TLS) as client:
            listed = client.get("/api/configs").json()
            disk = _disk_state(directory)
            assert [c["mac_address"] for c in listed["configs"]] == sorted(disk)
            for mac, document in disk.items():
                assert client.get(f"/api/configs/{mac}").json()["content"] == document
                raw = client.get(f"/api/configs/{mac}.json").content
                assert raw == (directory / f"{mac}.json").read_bytes()
    finally:
        server.stop()
        server.log.unlink(missing_ok=True)


def test_sigkill_amid_concurrent_writes_leaves_whole_documents_no_older_than_acknowledged(
    tmp_path: Path,
) -> None:
    directory = tmp_path / "configs"
    directory.mkdir()
    rng = random.Random(SEED)
    rounds = [_crash_round(directory, rng, _disk_state(directory)) for _ in range(ROUNDS)]
    print(f"\ncrash rounds (writes acknowledged, temp files the kill left): {rounds}")
    assert len(_disk_state(directory)) == WRITERS * MACS_PER_WRITER


def test_crash_documents_are_10_to_200_kb() -> None:
    writer = Writer(0, "http://unused", random.Random(1))
    document = writer.document(writer.macs[0], 7)
    assert 10_000 <= len(json.dumps(document)) <= 201_000

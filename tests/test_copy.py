"""`python -m quart_iot copy`: a directory as the Flask version leaves it into PostgreSQL and
back, bytes, ETags and history kept; idempotent; odd files listed and skipped."""

import asyncio
import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from quart_iot.copy import main
from quart_iot.documents import etag_of
from quart_iot.store import DirectoryBackend
from quart_iot.store.backend import Backend, WriteMeta
from quart_iot.store.postgres import PostgresBackend
from quart_iot.store.records import Precondition
from tests.conftest import MAC, OTHER_MAC
from tests.pg import Cluster
from tests.test_backend_contract import Recorder

THIRD = "aa-bb-cc-dd-ee-03"
# What the Flask version wrote: json.dump(content, file, indent=2), ASCII escapes included.
FLASK_DOCUMENTS = {
    MAC: {"deviceName": "Küche", "enableOTA": True, "pins": [1, 2]},
    OTHER_MAC: {"deviceName": "Porch", "deviceEntityId": "light.porch"},
    THIRD: {},
}
ODD = {
    ".aa-bb-cc-dd-ee-04.json.host-123-0a1b2c3d.tmp": "a temp file of an interrupted write",
    "AA-BB-CC-DD-EE-05.json": "not named <mac>.json",
    "notes.txt": "not named <mac>.json",
    "aa-bb-cc-dd-ee-06.json": "not a JSON object",  # bad JSON
    "aa-bb-cc-dd-ee-07.json": "not a JSON object",  # a list
    "aa-bb-cc-dd-ee-08.json": "a directory",
}


def flask_directory(path: Path) -> dict[str, bytes]:
    """A configs directory as the Flask version leaves it; the documents' bytes by MAC."""
    path.mkdir()
    written = {}
    for mac, content in FLASK_DOCUMENTS.items():
        data = json.dumps(content, indent=2).encode()
        (path / f"{mac}.json").write_bytes(data)
        written[mac] = data
    (path / ".aa-bb-cc-dd-ee-04.json.host-123-0a1b2c3d.tmp").write_text("{")
    (path / "AA-BB-CC-DD-EE-05.json").write_text("{}")
    (path / "notes.txt").write_text("hello")
    (path / "aa-bb-cc-dd-ee-06.json").write_text('{"deviceName": ')
    (path / "aa-bb-cc-dd-ee-07.json").write_text("[1, 2]")
    (path / "aa-bb-cc-dd-ee-08.json").mkdir()
    return written


def copy(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, list[str]]:
    code = main(list(args))
    captured = capsys.readouterr()
    return code, (captured.out + captured.err).strip().splitlines()


def in_database(url: str, work: Callable[[PostgresBackend], Any]) -> Any:
    """What `work` finds through a backend on the database (its own event loop)."""

    async def run() -> Any:
        backend = PostgresBackend(url)
        await backend.start(Recorder())
        try:
            return await work(backend)
        finally:
            await backend.stop()

    return asyncio.run(run())


def documents(url: str) -> dict[str, tuple[bytes, str]]:
    async def read(backend: PostgresBackend) -> dict[str, tuple[bytes, str]]:
        listed = json.loads(await backend.list_json())["configs"]
        found = {}
        for item in listed:
            stored = await backend.get(item["mac_address"])
            found[stored.mac] = (stored.raw, stored.etag)
        return found

    result: dict[str, tuple[bytes, str]] = in_database(url, read)
    return result


def history(url: str, mac: str) -> list[tuple[str, str, str, str | None]]:
    async def read(backend: PostgresBackend) -> bytes:
        return await backend.versions_json(mac, 100, None)

    page = json.loads(in_database(url, read))
    return [(v["version"], v["change"], v["etag"], v["subject"]) for v in page["versions"]]


def test_a_flask_directory_into_postgresql_keeps_bytes_and_etags(
    tmp_path: Path, pg_empty_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    pg_url = pg_empty_url  # copy makes the tables
    written = flask_directory(tmp_path / "flask")
    code, lines = copy(capsys, "--from", str(tmp_path / "flask"), "--to", pg_url)
    assert code == 0
    assert sorted(lines[:-1]) == sorted(f"skipped {name}: {why}" for name, why in ODD.items())
    assert lines[-1] == (
        "copied 3 documents; nothing unchanged; skipped 6 (a directory: 1, "
        "a temp file of an interrupted write: 1, not a JSON object: 2, not named <mac>.json: 2)"
    )
    stored = documents(pg_url)
    assert stored == {mac: (data, etag_of(data)) for mac, data in written.items()}

    code, lines = copy(capsys, "--from", str(tmp_path / "flask"), "--to", pg_url)
    assert code == 0
    assert lines[-1].startswith("nothing to copy: 3 documents unchanged; skipped 6 (")
    assert documents(pg_url) == stored


def test_postgresql_into_a_directory_and_back_keeps_the_history(
    tmp_path: Path, pg_databases: Callable[..., str], capsys: pytest.CaptureFixture[str]
) -> None:
    first, second = pg_databases(), pg_databases()

    async def write(backend: PostgresBackend) -> None:
        await backend.save(MAC, {"v": 1}, Precondition(), WriteMeta(subject="sub:alice"))
        await backend.save(MAC, {"v": 2, "name": "Küche"}, Precondition(), WriteMeta())
        await backend.save(OTHER_MAC, {"gone": True}, Precondition(), WriteMeta())
        await backend.delete(OTHER_MAC, Precondition(), WriteMeta(subject="sub:bob"))

    in_database(first, write)
    backup = tmp_path / "backup"
    code, lines = copy(capsys, "--from", first, "--to", str(backup), "--history")
    assert (code, lines) == (0, ["copied 1 document and 4 versions; nothing unchanged"])
    assert (backup / f"{MAC}.json").read_bytes() == documents(first)[MAC][0]
    assert len(os.listdir(backup / ".history" / OTHER_MAC)) == 3  # two versions, one subject

    code, lines = copy(capsys, "--from", str(backup), "--to", second, "--history")
    assert (code, lines) == (0, ["copied 1 document and 4 versions; nothing unchanged"])
    assert documents(second) == documents(first)
    for mac in (MAC, OTHER_MAC):
        assert history(second, mac) == history(first, mac)

    for source, target in ((first, str(backup)), (str(backup), second)):
        code, lines = copy(capsys, "--from", source, "--to", target, "--history")
        assert lines == ["nothing to copy: 1 document and 4 versions unchanged"]


def test_a_document_copied_in_is_kept_by_the_next_save(
    tmp_path: Path, pg_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    written = flask_directory(tmp_path / "flask")
    copy(capsys, "--from", str(tmp_path / "flask"), "--to", pg_url)
    assert history(pg_url, MAC) == []  # as a directory document from before history

    async def save(backend: PostgresBackend) -> None:
        await backend.save(MAC, {"v": 2}, Precondition(), WriteMeta())

    in_database(pg_url, save)
    kept = history(pg_url, MAC)
    assert [(change, etag) for _, change, etag, _ in kept][1] == ("created", etag_of(written[MAC]))
    assert kept[0][1] == "updated"


def test_a_dry_run_copies_nothing(
    tmp_path: Path, pg_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    flask_directory(tmp_path / "flask")
    code, lines = copy(capsys, "--from", str(tmp_path / "flask"), "--to", pg_url, "--dry-run")
    assert code == 0
    assert lines[-1].startswith("would copy 3 documents; nothing unchanged; skipped 6")
    code, lines = copy(capsys, "--from", str(tmp_path / "flask"), "--to", str(tmp_path / "new"),
                       "--dry-run")  # fmt: skip
    assert not (tmp_path / "new").exists()
    code, lines = copy(capsys, "--from", str(tmp_path / "flask"), "--to", pg_url)
    assert lines[-1].startswith("copied 3 documents")


@pytest.mark.parametrize(
    ("source", "target", "expected"),
    [
        ("missing", "postgresql://u:hunter2@h/db", "--from: missing is not a directory"),
        ("dir", "postgresql://u:hunter2@h:99999/db", "--to: must be postgresql://"),
        ("dir", "mysql://u:hunter2@h/db", "--to: must be postgresql://"),
        ("dir", "dir", "--from and --to are the same store"),
        ("dir", "file", "--to: file is not a directory"),
    ],
)
def test_a_bad_store_is_one_line_without_the_password(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    source: str,
    target: str,
    expected: str,
) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "dir").mkdir()
    (tmp_path / "file").write_text("")
    code, lines = copy(capsys, "--from", source, "--to", target)
    assert code == 2
    assert len(lines) == 1
    assert lines[0].startswith(f"quart_iot copy: {expected}")
    assert "hunter2" not in lines[0]


def test_a_database_that_is_down_is_one_line(
    tmp_path: Path, pg_cluster: Cluster, capsys: pytest.CaptureFixture[str]
) -> None:
    url = f"postgresql://postgres:hunter2@127.0.0.1:{pg_cluster.port + 1}/none"
    code, lines = copy(capsys, "--from", url, "--to", str(tmp_path / "backup"))
    assert (code, lines) == (1, ["quart_iot copy: the database is unavailable"])


def test_a_database_without_the_store_is_no_source(
    tmp_path: Path, pg_empty_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code, lines = copy(capsys, "--from", pg_empty_url, "--to", str(tmp_path / "backup"))
    assert code == 2
    assert lines == [
        "quart_iot copy: --from: the database holds no quart_iot store (no config_schema)"
    ]


def test_the_copy_command_of_python_m_quart_iot(tmp_path: Path, pg_url: str) -> None:
    flask_directory(tmp_path / "flask")
    result = subprocess.run(
        [sys.executable, "-m", "quart_iot", "copy", "--from", str(tmp_path / "flask"),
         "--to", str(tmp_path / "copy")],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1].startswith("copied 3 documents")
    assert sorted(os.listdir(tmp_path / "copy")) == sorted(f"{mac}.json" for mac in FLASK_DOCUMENTS)


async def test_a_copy_into_a_database_in_use_runs_beside_its_writes(
    tmp_path: Path, pg_url: str
) -> None:
    source = tmp_path / "many"
    source.mkdir()
    macs = [f"00-00-00-00-00-{n:02x}" for n in range(120)]
    for mac in macs:
        (source / f"{mac}.json").write_text(json.dumps({"from": "copy"}, indent=2))
    live = PostgresBackend(pg_url)
    await live.start(Recorder())
    writes = 0
    try:
        copying = asyncio.create_task(
            asyncio.to_thread(main, ["--from", str(source), "--to", pg_url])
        )
        while not copying.done():  # the same devices, written by the service meanwhile
            for mac in reversed(macs[::7]):
                await live.save(mac, {"from": "service", "n": writes}, Precondition(), WriteMeta())
                writes += 1
        assert await copying == 0
        listed = json.loads(await live.list_json())
    finally:
        await live.stop()
    assert listed["count"] == len(macs)
    assert writes > 0


def test_a_target_directory_that_cannot_be_written_is_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    flask_directory(tmp_path / "flask")
    (tmp_path / "target").mkdir()
    (tmp_path / "target" / f"{MAC}.json").mkdir()  # where a document would go
    code, lines = copy(capsys, "--from", str(tmp_path / "flask"), "--to", str(tmp_path / "target"))
    assert code == 1
    assert lines[-1] == f"quart_iot copy: {tmp_path / 'target'}: Is a directory"


def test_a_directory_the_directory_store_wrote_copies_its_history_exactly(
    tmp_path: Path, pg_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """The directory store's own layout (.history/: versions linked, `deleted` ones, subjects,
    its marks): what it serves is what PostgreSQL serves after the copy, and back."""
    source, back = tmp_path / "source", tmp_path / "back"
    source.mkdir()

    async def write(backend: Backend) -> None:
        alice, bob = WriteMeta(subject="sub:alice"), WriteMeta(subject="nul\x00 ünï")
        await backend.save(MAC, {"v": 1}, Precondition(), alice)
        await backend.save(MAC, {"v": 1}, Precondition(), bob)  # unchanged: no version
        await backend.save(MAC, {"v": 2}, Precondition(), bob)
        await backend.save(OTHER_MAC, {"gone": True}, Precondition(), alice)
        await backend.delete(OTHER_MAC, Precondition(), bob)  # its `deleted` version
        await backend.delete(MAC, Precondition(), alice)
        await backend.save(MAC, {"v": 3}, Precondition(), WriteMeta())  # back again

    asyncio.run(on_directory(source, write))
    served = asyncio.run(on_directory(source, everything))
    code, lines = copy(capsys, "--from", str(source), "--to", pg_url, "--history")
    assert (code, lines[-1]) == (0, "copied 1 document and 6 versions; nothing unchanged")
    assert in_database(pg_url, everything) == served
    code, lines = copy(capsys, "--from", pg_url, "--to", str(back), "--history")
    assert (code, lines[-1]) == (0, "copied 1 document and 6 versions; nothing unchanged")
    assert asyncio.run(on_directory(back, everything)) == served


async def on_directory(path: Path, work: Callable[[Backend], Any]) -> Any:
    backend = DirectoryBackend(path)
    await backend.start(Recorder())
    try:
        return await work(backend)
    finally:
        await backend.stop()


async def everything(backend: Backend) -> dict[str, Any]:
    """What a client can read of both devices: the list, each history, the deleted list."""
    pages = {mac: json.loads(await backend.versions_json(mac, 100, None)) for mac in
             (MAC, OTHER_MAC)}  # fmt: skip
    return {
        "list": json.loads(await backend.list_json()),
        "history": pages,
        "deleted": await backend.deleted(),
        "document": (await backend.get(MAC)).raw,
    }

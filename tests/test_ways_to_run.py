"""One way to run it (issue 18): every way the docs offer to start the service gives the same
guarantees. The ways are read from the docs (a command in a code span or block that starts
the service), so a new one cannot be added untested: an unknown one fails here until it is
added to WAYS, and each is started for real and checked for all six guarantees.

1. HTTP/1.1 only, and the contract's JSON body for a request that is not HTTP/1.1;
2. SEND_TIMEOUT: a client that takes none of its answer is cut;
3. the drain at SIGTERM: new writes refused (503 SHUTTING_DOWN) while those in flight finish;
4. the open-file limit raised to the hard one;
5. WORKERS: that many processes serving one socket, bound once;
6. the worker threads ended at exit: a write still running at SHUTDOWN_TIMEOUT ends before
   the process does, and the process then exits 0.
"""

import contextlib
import json
import os
import re
import resource
import signal
import socket
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import httpx

from quart_iot.settings import Settings
from tests.conftest import MAC, OTHER_MAC
from tests.faults import FsyncGate
from tests.harness import assert_error_body, raw_bytes, raw_request, read_response, temp_files
from tests.server import (
    ESTABLISHED,
    LISTEN,
    TLS,
    alive,
    descendants,
    free_port,
    open_file_limits,
    socket_inodes,
    tcp_sockets,
    wait_until,
)
from tests.test_slow_clients import ask_for_it, larger_than_the_kernel_holds
from tests.test_workers import put_request

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
# Each way the docs may offer, and the command that starts it (from the repository's root).
WAYS = {
    "python -m quart_iot": [sys.executable, "-m", "quart_iot"],
    "pdmw run start": ["./pdmw", "run", "start"],
    "pdmw run dev": ["./pdmw", "run", "dev"],
}
# A command that starts the service: ours, or any ASGI server given the app.
STARTS = re.compile(
    r"python3? -m quart_iot(?![\w.-]| +[a-z-])"  # not a subcommand (`copy`, say)
    r"|\bpdmw? run (?:start|dev)\b"
    r"|\b(?:hypercorn|uvicorn|gunicorn|granian|daphne)\b[^`\n]*quart_iot[^`\n]*"
    r"|\bquart\b[^`\n]* run\b"
)
CODE = re.compile(r"```[^\n]*\n(.*?)```|`([^`\n]+)`", re.DOTALL)
WORKERS = 2
SHUTDOWN_TIMEOUT = 5  # the late write below must arrive within it: room for a loaded machine


def way_of(command: str) -> str:
    """The WAYS key of a command the docs give (the command itself if it is none of them)."""
    command = command.removeprefix("./")
    if re.fullmatch(r"python3? -m quart_iot", command):
        return "python -m quart_iot"
    return re.sub(r"^pdm run ", "pdmw run ", command)


def ways_in_docs() -> dict[str, set[str]]:
    """Each way to start the service that the docs give, and the files that give it."""
    found: dict[str, set[str]] = {}
    for doc in DOCS:
        for block, span in CODE.findall(doc.read_text(encoding="utf-8")):
            for command in STARTS.findall(block or span):
                found.setdefault(way_of(command), set()).add(doc.name)
    return found


@dataclass
class Started:
    """One way, started with WORKERS=2 in a directory of its own."""

    way: str
    process: "subprocess.Popen[bytes]"
    port: int
    directory: Path
    gate: FsyncGate
    log: Path

    def stderr(self) -> str:
        return self.log.read_text(errors="replace")

    def workers(self) -> list[int]:
        """The processes that serve: those holding a listening socket of the port."""
        listening = tcp_sockets(LISTEN, self.port)
        pids = descendants(self.process.pid)
        return [pid for pid in pids if alive(pid) and listening & socket_inodes(pid)]


def environment(directory: Path, port: int, gate: FsyncGate) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k.lower() not in Settings.model_fields}
    size = larger_than_the_kernel_holds(directory)
    return {
        **env,
        **gate.env,
        "ESP32_CONFIGS_DIR": str(directory),
        "HOST": "127.0.0.1",
        "PORT": str(port),
        "WORKERS": str(WORKERS),
        "SEND_TIMEOUT": "1",
        "SHUTDOWN_TIMEOUT": str(SHUTDOWN_TIMEOUT),
        "MAX_CONTENT_LENGTH": str(2 * size),
        "LOG_LEVEL": "INFO",
    }


@contextlib.contextmanager
def started(way: str, scratch: Path) -> Iterator[Started]:
    directory = scratch / "configs"
    directory.mkdir()
    gate = FsyncGate(scratch / "gate")
    port = free_port()
    log = scratch / "server.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            WAYS[way],
            cwd=ROOT,
            env=environment(directory, port, gate),
            start_new_session=True,
            stdout=subprocess.DEVNULL,
            stderr=out,
        )
    server = Started(way, process, port, directory, gate, log)
    try:
        serving = lambda: server.stderr().count("Running on http") == WORKERS  # noqa: E731
        wait_until(serving, f"{way}: {WORKERS} workers serve", timeout=90)
        yield server
    finally:
        gate.release()
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()


def check_workers_and_limits(server: Started) -> None:
    """5 and 4: WORKERS processes on one socket bound once; their open-file limit raised."""
    sockets = tcp_sockets(LISTEN, server.port)
    assert len(sockets) == 1, f"{server.way}: {len(sockets)} listening sockets, not one"
    workers = server.workers()
    assert len(workers) == WORKERS, f"{server.way}: serving processes {workers}"
    for pid in workers:
        soft, hard = open_file_limits(pid)
        assert soft == hard, f"{server.way}: worker {pid} keeps a soft limit of {soft} ({hard})"


def check_http1(server: Started) -> None:
    """1: a request that is not HTTP/1.1 gets the JSON body; h2c is never switched to."""
    malformed = raw_bytes(server.port, b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nno colon\r\n\r\n")
    assert_error_body(malformed, 400, "MALFORMED_REQUEST")
    upgrade = raw_bytes(
        server.port,
        b"GET /api/health/live HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        b"Connection: Upgrade, HTTP2-Settings, close\r\nUpgrade: h2c\r\n"
        b"HTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n\r\n",
    )
    assert upgrade.status == 200, f"{server.way}: h2c upgrade answered {upgrade.status}"


def check_send_timeout(server: Started) -> None:
    """2: a client that reads none of a large answer is cut after SEND_TIMEOUT (1 s)."""
    with ask_for_it(server.port) as sock:
        client = sock.getsockname()[1]
        dropped = lambda: not tcp_sockets(ESTABLISHED, server.port, client)  # noqa: E731
        wait_until(dropped, f"{server.way}: SEND_TIMEOUT cuts a client that stopped reading")


def stopping(server: Started) -> bool:
    try:
        url = f"http://127.0.0.1:{server.port}/api/health"
        return httpx.get(url, timeout=10, verify=TLS).status_code == 503
    except httpx.TransportError:
        return False


def check_stop(server: Started) -> None:
    """3 and 6: SIGTERM drains (a new write is refused, the one in flight runs on); a write
    that outlives SHUTDOWN_TIMEOUT ends before the process, which then exits 0."""
    with socket.create_connection(("127.0.0.1", server.port), timeout=60) as held:
        held.sendall(put_request(MAC))
        server.gate.wait_held()
        server.process.send_signal(signal.SIGTERM)
        wait_until(lambda: stopping(server), f"{server.way}: readiness turns 503 at SIGTERM")
        body = b'{"content": {}}'
        late = raw_request(server.port, "PUT", f"/api/configs/{OTHER_MAC}".encode(), body)
        assert_error_body(late, 503, "SHUTTING_DOWN")
        outlived = read_response(held)  # answered at SHUTDOWN_TIMEOUT, the write still held
    assert_error_body(outlived, 503, "SHUTTING_DOWN")
    assert server.process.poll() is None, f"{server.way}: exited before its write ended"
    server.gate.release()
    assert server.process.wait(60) == 0, f"{server.way}: {server.stderr()[-3000:]}"
    assert json.loads((server.directory / f"{MAC}.json").read_bytes()) == {"v": "held"}
    assert temp_files(server.directory) == []
    assert not (server.directory / f"{OTHER_MAC}.json").exists()


def check_way(way: str) -> None:
    with (
        tempfile.TemporaryDirectory(prefix="quart_iot-way-") as scratch,
        started(way, Path(scratch)) as server,
    ):
        check_workers_and_limits(server)
        check_http1(server)
        check_send_timeout(server)
        check_stop(server)
        log = server.stderr()
        assert "Traceback" not in log, f"{way}: {log[-3000:]}"
        assert " ERROR " not in log, f"{way}: {log[-3000:]}"


@contextlib.contextmanager
def lower_soft_open_file_limit() -> Iterator[None]:
    """Start the servers with a soft limit under the hard one, so that raising it shows."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(soft, 1024, hard // 2), hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def test_the_docs_offer_only_ways_this_test_starts() -> None:
    found = ways_in_docs()
    unknown = {way: sorted(files) for way, files in found.items() if way not in WAYS}
    assert not unknown, (
        f"the docs offer a way to run the service that this test does not start: {unknown}; "
        "add it to WAYS (it must give the six guarantees) or stop offering it"
    )
    assert "python -m quart_iot" in found


def test_every_way_the_docs_offer_gives_the_six_guarantees() -> None:
    ways = sorted(ways_in_docs().keys() & WAYS.keys())
    with lower_soft_open_file_limit(), ThreadPoolExecutor(len(ways)) as pool:
        outcomes = {way: pool.submit(check_way, way) for way in ways}
    failures = {way: repr(done.exception()) for way, done in outcomes.items() if done.exception()}
    assert not failures, failures

"""WORKERS: one socket, bound once by the parent; workers that end with it; a stop that signals
each worker once and waits for every one (issue 17, items 14 and 15)."""

import contextlib
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx

from quart_iot.store.extension import WRITE_END_SECONDS
from tests.conftest import MAC
from tests.faults import FsyncGate
from tests.harness import read_response
from tests.server import (
    ESTABLISHED,
    LISTEN,
    TLS,
    Server,
    alive,
    children,
    socket_inodes,
    tcp_sockets,
    wait_until,
)


@contextmanager
def serving(directory: Path, **env: str) -> Iterator[Server]:
    """A started server whose every worker serves (LOG_LEVEL=INFO: hypercorn says so)."""
    server = Server(directory, {"LOG_LEVEL": "INFO", **env})
    try:
        server.start()
        workers = int(env.get("WORKERS", "1"))
        serving = lambda: server.stderr().count("Running on http") == workers  # noqa: E731
        wait_until(serving, f"{workers} worker(s) serve")
        yield server
    finally:
        server.stop()
        server.log.unlink(missing_ok=True)


def parent_pid(server: Server) -> int:
    assert server.process is not None
    return server.process.pid


def test_a_second_server_on_the_port_of_workers_fails_in_one_line(
    configs_dir: Path, tmp_path: Path
) -> None:
    other = tmp_path / "other"
    other.mkdir()
    with serving(configs_dir, WORKERS="2") as server:
        seconds = [
            subprocess.Popen(
                [sys.executable, "-m", "quart_iot"],
                env={**server.env, "ESP32_CONFIGS_DIR": str(other), "WORKERS": count},
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
                text=True,
            )
            for count in ("2", "1")
        ]
        for second in seconds:
            try:
                _, stderr = second.communicate(timeout=30)  # one that serves is a failure
            finally:
                second.kill()
            assert second.returncode == 1
            assert stderr == (
                f"quart_iot: cannot listen on 127.0.0.1:{server.port}: Address already in use\n"
            )
        [listening] = tcp_sockets(LISTEN, server.port)  # the parent's, bound once
        workers = children(parent_pid(server))
        assert len(workers) == 2
        assert all(listening in socket_inodes(worker) for worker in workers)
        assert listening not in socket_inodes(parent_pid(server))  # handed over, closed


def test_workers_end_with_their_parent(configs_dir: Path) -> None:
    with serving(configs_dir, WORKERS="2") as server:
        workers = children(parent_pid(server))
        os.kill(parent_pid(server), signal.SIGKILL)
        wait_until(lambda: not any(map(alive, workers)), "the workers end with their parent")
        assert tcp_sockets(LISTEN, server.port) == set()


def connection_to(server: Server, worker: int) -> socket.socket:
    """A keep-alive connection that `worker` accepted (and answered once)."""
    for _ in range(200):
        sock = socket.create_connection(("127.0.0.1", server.port), timeout=10)
        sock.sendall(b"GET /api/health/live HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        answer = b""
        while not answer.endswith(b'{"status":"alive"}\n'):
            answer += sock.recv(65536)
        assert answer.startswith(b"HTTP/1.1 200")
        held = tcp_sockets(ESTABLISHED, server.port, sock.getsockname()[1])
        if held & socket_inodes(worker):
            return sock
        sock.close()
    raise AssertionError(f"worker {worker} accepted none of 200 connections")


def put_request(mac: str) -> bytes:
    body = b'{"content": {"v": "held"}}'
    return (
        f"PUT /api/configs/{mac} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json"
        f"\r\nContent-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    ).encode() + body


def shutting_down(server: Server) -> bool:
    try:
        return httpx.get(f"{server.url}/api/health", timeout=10, verify=TLS).status_code == 503
    except httpx.TransportError:  # accepted by the worker that was killed
        return False


def test_when_a_worker_dies_the_parent_waits_for_the_others_to_drain(
    configs_dir: Path, tmp_path: Path
) -> None:
    gate = FsyncGate(tmp_path / "gate")
    with serving(configs_dir, WORKERS="2", SHUTDOWN_TIMEOUT="30", **gate.env) as server:
        first, second = children(parent_pid(server))
        with connection_to(server, second) as held:
            held.sendall(put_request(MAC))
            gate.wait_held()
            os.kill(first, signal.SIGKILL)
            wait_until(lambda: shutting_down(server), "the parent stops the other worker")
            assert server.process is not None
            assert server.process.poll() is None  # waiting for the write in the other
            assert alive(second)
            gate.release()
            held.settimeout(30)
            assert read_response(held).status == 200
        assert server.process.wait(30) == 1  # a worker died: the orchestrator restarts it all
        assert not alive(second)
        log = server.stderr()
    assert f"worker {first} ended (status -9): stopping the others" in log
    assert "Traceback" not in log


def epoll_count(pid: int) -> int:
    count = 0
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        with contextlib.suppress(FileNotFoundError):  # closed meanwhile
            count += os.readlink(fd) == "anon_inode:[eventpoll]"
    return count


def test_a_stop_signal_after_the_event_loop_closed_is_ignored(
    configs_dir: Path, tmp_path: Path
) -> None:
    # A terminal's Ctrl-C reaches every process of the group and the parent passes the stop
    # on: a second signal that came once the loop had closed killed the worker (exit -15)
    # while it waited for a write to end.
    gate = FsyncGate(tmp_path / "gate")
    with serving(configs_dir, SHUTDOWN_TIMEOUT="0.5", **gate.env) as server:
        pid = parent_pid(server)
        with socket.create_connection(("127.0.0.1", server.port), timeout=30) as held:
            held.sendall(put_request(MAC))
            gate.wait_held()
            os.kill(pid, signal.SIGTERM)
            assert read_response(held).status == 503  # the write outlived SHUTDOWN_TIMEOUT
        # The store awaits the held write up to WRITE_END_SECONDS (for its audit line) before
        # the loop closes.
        closes = WRITE_END_SECONDS + 30
        wait_until(lambda: epoll_count(pid) == 0, "the event loop closes", closes)
        os.kill(pid, signal.SIGTERM)
        os.kill(pid, signal.SIGINT)
        gate.release()
        assert server.process is not None
        assert server.process.wait(30) == 0
        assert "have ended" in server.stderr()
    assert (configs_dir / f"{MAC}.json").exists()

"""Slow clients: a body trickled in is cut after BODY_TIMEOUT with the JSON 408; a client that
stops reading its answer is cut after SEND_TIMEOUT."""

import contextlib
import json
import re
import socket
import time
from pathlib import Path

from tests.conftest import MAC
from tests.harness import assert_error_body, raw_request, read_response
from tests.server import (
    ESTABLISHED,
    Server,
    running_server,
    send_queue,
    tcp_sockets,
    wait_until,
)

BODY = b'{"content": {"deviceName": "' + b"x" * 80 + b'"}}'
STEP = 0.05  # seconds between two bytes: the whole body takes about 5 s


def trickle(port: int, body: bytes) -> socket.socket:
    """A PUT whose body comes one byte at a time; stops sending once the server answers."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=STEP)
    head = (
        f"PUT /api/configs/{MAC} HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
        "Connection: close\r\n\r\n"
    )
    sock.sendall(head.encode())
    for index in range(len(body)):
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            sock.sendall(body[index : index + 1])
        with contextlib.suppress(TimeoutError):
            if sock.recv(1, socket.MSG_PEEK):
                break  # the server answered before the body was complete
    sock.settimeout(10)
    return sock


def test_a_trickled_body_is_cut_with_the_json_408_and_nothing_is_written(
    configs_dir: Path,
) -> None:
    with running_server(configs_dir, BODY_TIMEOUT="0.5") as server:
        with trickle(server.port, BODY) as sock:
            response = read_response(sock)  # and the server closed the connection
        assert_error_body(response, 408, "REQUEST_TIMEOUT")
        assert not (configs_dir / f"{MAC}.json").exists()


def test_a_slow_body_that_arrives_within_the_timeout_is_saved(configs_dir: Path) -> None:
    body = b'{"content": {}}'
    with running_server(configs_dir, BODY_TIMEOUT="30") as server, trickle(server.port, body) as s:
        response = read_response(s)
    assert response.status == 200
    assert (configs_dir / f"{MAC}.json").exists()


def big_document(configs_dir: Path) -> int:
    """A 900 KB document, far more than the socket buffers hold with a small receive window."""
    data = json.dumps({"deviceName": "big", "pad": ["y" * 1000] * 900}).encode()
    (configs_dir / f"{MAC}.json").write_bytes(data)
    return len(data)


def ask_for_it(port: int) -> socket.socket:
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # a window that fills at once
    sock.connect(("127.0.0.1", port))
    sock.sendall(f"GET /api/configs/{MAC}.json HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode())
    return sock


def read_until_closed(sock: socket.socket, pause: float = 0.0) -> tuple[int, bool]:
    """(bytes received, whether the server cut the connection) once it ends or goes quiet."""
    received = 0
    sock.settimeout(5)
    while True:
        try:
            chunk = sock.recv(65536)
        except ConnectionResetError:
            return received, True
        except TimeoutError:
            return received, False
        if not chunk:
            return received, True
        received += len(chunk)
        time.sleep(pause)


def test_a_client_that_reads_slowly_but_steadily_gets_it_all(configs_dir: Path) -> None:
    size = big_document(configs_dir)
    with running_server(configs_dir, SEND_TIMEOUT="1") as server, ask_for_it(server.port) as s:
        received, _ = read_until_closed(s, pause=0.01)  # never a second without progress
    assert received > size


def larger_than_the_kernel_holds(configs_dir: Path) -> int:
    """A document larger than a socket's largest send buffer (net.ipv4.tcp_wmem): its answer
    to a client that reads nothing cannot leave the process whole."""
    most = int(Path("/proc/sys/net/ipv4/tcp_wmem").read_text().split()[2])
    data = json.dumps({"deviceName": "big", "pad": ["y" * 1000] * (most // 1000 + 1000)}).encode()
    (configs_dir / f"{MAC}.json").write_bytes(data)
    return len(data)


def stalled(server: Server) -> socket.socket:
    """A client that asks for the document and reads nothing, once the server is stuck in the
    middle of the answer (the kernel's send queue full)."""
    sock = ask_for_it(server.port)
    client = sock.getsockname()[1]
    wait_until(lambda: send_queue(server.port, client) > 0, "the answer fills the send queue")
    return sock


def dropped_by_the_server(port: int, sock: socket.socket) -> bool:
    """Whether the server no longer holds its end of `sock`'s connection."""
    return not tcp_sockets(ESTABLISHED, port, sock.getsockname()[1])


def test_a_client_that_stops_reading_is_cut_after_send_timeout(configs_dir: Path) -> None:
    # A client that asks and never reads would hold its connection, and the answer not yet
    # sent, for ever: the kernel aborts the connection once it made no progress for
    # SEND_TIMEOUT seconds (TCP_USER_TIMEOUT, inherited from the listening socket). The cut
    # is one INFO line (it was an ERROR traceback: hypercorn handles ConnectionError only).
    size = larger_than_the_kernel_holds(configs_dir)
    env = {"SEND_TIMEOUT": "1", "LOG_LEVEL": "INFO", "MAX_CONTENT_LENGTH": str(2 * size)}
    with running_server(configs_dir, **env) as server:
        with stalled(server) as sock:
            wait_until(lambda: dropped_by_the_server(server.port, sock), "the cut")
            received, cut = read_until_closed(sock)
        assert cut
        assert received < size
        healthy = raw_request(server.port, "GET", b"/api/health/live", b"", None)
        assert healthy.status == 200
        wait_until(lambda: "cut: it took none" in server.stderr(), "the cut is logged")
        log = server.stderr()
    assert log.count("took none of its answer for SEND_TIMEOUT") == 1
    assert re.search(r" INFO \[\w+\] quart_iot.http1: connection from 127.0.0.1:\d+ cut", log)
    assert "Traceback" not in log
    assert " ERROR " not in log


def test_a_client_that_stopped_reading_does_not_hold_the_stop(configs_dir: Path) -> None:
    # SEND_TIMEOUT an hour away: the stop is bounded by SHUTDOWN_TIMEOUT alone (the process
    # used to wait until SEND_TIMEOUT cut the connection, then logged an ERROR traceback).
    size = larger_than_the_kernel_holds(configs_dir)
    env = {"SEND_TIMEOUT": "3600", "SHUTDOWN_TIMEOUT": "1", "LOG_LEVEL": "INFO"}
    server = Server(configs_dir, {**env, "MAX_CONTENT_LENGTH": str(2 * size)})
    server.start()
    with stalled(server) as sock:
        assert server.stop(timeout=30) == 0
        received, cut = read_until_closed(sock)
    log = server.stderr()
    server.log.unlink()
    assert cut
    assert received < size
    assert log.count("connection(s) whose client took none of its answer") == 1
    assert " WARNING [-] quart_iot.http1: stopping: 1 connection(s)" in log
    assert "Traceback" not in log
    assert " ERROR " not in log

"""Slow clients: a body trickled in is cut after BODY_TIMEOUT with the JSON 408."""

import contextlib
import socket
from pathlib import Path

from tests.conftest import MAC
from tests.harness import assert_error_body, read_response
from tests.server import running_server

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

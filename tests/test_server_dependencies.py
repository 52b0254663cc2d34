"""The reaches of the server's modules into their dependencies' internals, checked here so that
an upgrade that moves one fails loudly, naming it, instead of quietly losing what it gives.

- quart_iot/http1.py replaces hypercorn's HTTP/1.1 protocol and connection classes (by module
  name) and overrides some of their private methods; its ListeningSocket relies on how asyncio
  serves a socket. The behaviour they give is tested end to end too (test_hostile_input.py,
  test_http_details.py, test_slow_clients.py, test_workers.py).
- quart_iot/metrics.py removes a sample through aioprometheus's internal MetricDict.
"""

import asyncio.base_events
import asyncio.selector_events
import inspect
import socket

import hypercorn.asyncio.run
import hypercorn.protocol
import pytest
from aioprometheus.collectors import Gauge, Registry
from aioprometheus.metricdict import MetricDict
from aioprometheus.renderer import render
from hypercorn.asyncio.tcp_server import TCPServer
from hypercorn.protocol.h11 import H11Protocol

from quart_iot import http1
from quart_iot.metrics import drop_sample


def test_hypercorn_looks_its_classes_up_by_module_name_at_each_connection() -> None:
    # http1.patch_hypercorn() replaces these two names.
    assert "H11Protocol(" in inspect.getsource(hypercorn.protocol.ProtocolWrapper.__init__)
    assert "TCPServer(" in inspect.getsource(hypercorn.asyncio.run.worker_serve)
    assert hypercorn.protocol.H11Protocol in (H11Protocol, http1.ServerH11Protocol)  # type: ignore[attr-defined]
    assert hypercorn.asyncio.run.TCPServer in (TCPServer, http1.ServerTCPServer)  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("owner", "name", "parameters"),
    [
        (H11Protocol, "_check_protocol", ["self", "event"]),
        (H11Protocol, "_send_h11_event", ["self", "event"]),
        (H11Protocol, "_send_error_response", ["self", "status_code"]),
        (
            TCPServer,
            "__init__",
            ["self", "app", "loop", "config", "context", "state", "reader", "writer"],
        ),
        (TCPServer, "protocol_send", ["self", "event"]),
        (TCPServer, "_close", ["self"]),
    ],
)
def test_the_hypercorn_methods_overridden_are_still_there(
    owner: type, name: str, parameters: list[str]
) -> None:
    assert list(inspect.signature(getattr(owner, name)).parameters) == parameters


def test_hypercorn_still_needs_what_http1_adds() -> None:
    protocol = inspect.getsource(H11Protocol)
    assert "raise H2CProtocolRequiredError" in protocol  # the switch to HTTP/2 it refuses
    assert '(b"content-length", b"0")' in protocol  # its empty error bodies
    connection = inspect.getsource(TCPServer)
    assert "self.writer = writer" in connection  # what abort_unsent aborts
    assert "except (ConnectionError, RuntimeError):" in connection  # no ETIMEDOUT there
    run = inspect.getsource(hypercorn.asyncio.run.worker_serve)
    assert "asyncio.wait_for(gathered_server_tasks, config.graceful_timeout)" in run


def test_asyncio_listens_again_and_accepts_backlog_connections_per_wake_up() -> None:
    # http1.ListeningSocket keeps the parent's queue from the first, and makes the second one
    # connection per wake-up (bpo-27906).
    serving = inspect.getsource(getattr(asyncio.base_events.Server, "_start_serving"))  # noqa: B009
    assert "sock.listen(self._backlog)" in serving
    loop = asyncio.selector_events.BaseSelectorEventLoop
    accepting = inspect.getsource(getattr(loop, "_accept_connection"))  # noqa: B009
    assert "for _ in range(backlog)" in accepting


def test_a_listening_socket_keeps_its_queue_when_asyncio_listens_again() -> None:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(16)
    with http1.ListeningSocket(fileno=sock.detach()) as served:
        served.listen(1)  # what asyncio does with backlog=1: a queue of 1 would refuse most
        clients = [socket.create_connection(served.getsockname(), timeout=5) for _ in range(8)]
        accepted = [served.accept()[0] for _ in clients]  # all 8 queued, none refused
        for connection in [*clients, *accepted]:
            connection.close()


def test_aioprometheus_keeps_samples_in_a_metric_dict() -> None:
    registry = Registry()
    gauge = Gauge("iot_example", "An example.", registry=registry)
    gauge.set({}, 1)
    gauge.set({"kind": "other"}, 2)
    assert isinstance(gauge.values, MetricDict)
    drop_sample(gauge, {})
    text = render(registry, [])[0].decode()
    assert "\niot_example 1\n" not in text
    assert 'iot_example{kind="other"} 2' in text
    drop_sample(gauge, {})  # already gone: nothing happens

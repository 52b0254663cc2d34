"""`python -m quart_iot`: the one way to run the service.

It binds its socket once, before anything else (a port in use is one line and exit 1), then
serves it in this process, or with WORKERS >= 2 hands it to that many worker processes
(`quart_iot/workers.py`). A process that serves speaks the server's HTTP/1.1
(`quart_iot/http1.py`), and stops once, gracefully, at the first SIGTERM or SIGINT: writes
drained, waiters answered, answers not sent by the end of SHUTDOWN_TIMEOUT aborted, worker
threads ended once their calls are done.
"""

import asyncio
import logging
import os
import resource
import secrets
import signal
import socket
import sys
from types import FrameType

from hypercorn.asyncio import serve
from quart import Quart

from quart_iot import http1
from quart_iot.app import create_app
from quart_iot.correlation import HEADER
from quart_iot.logs import configure_logging
from quart_iot.settings import Settings, SettingsError, load_settings
from quart_iot.shutdown import GracefulStop
from quart_iot.store import ConfigStore, stop_worker_threads
from quart_iot.waiting import PEERS_ENV
from quart_iot.workers import STOP_SIGNALS, ParentGone, Workers, inherited_sockets

log = logging.getLogger("quart_iot")

BACKLOG = 4096  # thousands of long polls reconnect at once after a restart
# One connection accepted per wake-up, as nginx's default (`multi_accept off`): workers that
# share the socket share a burst (the first awake took all 32 of wrk's), and a busy worker
# takes fewer. Measured in bench/workers.py.
ACCEPTS_PER_WAKEUP = 1


def address(settings: Settings) -> str:
    """HOST:PORT, with an IPv6 address in brackets."""
    host = f"[{settings.host}]" if ":" in settings.host else settings.host
    return f"{host}:{settings.port}"


def hypercorn_config(settings: Settings) -> http1.ServerConfig:
    config = http1.ServerConfig()
    config.send_timeout = settings.send_timeout
    config.bind = [address(settings)]
    config.graceful_timeout = settings.shutdown_timeout
    # Hypercorn's lines go through our handler (one format, one stream) instead of its own.
    config.accesslog = logging.getLogger("hypercorn.access")
    config.errorlog = logging.getLogger("hypercorn.error")
    config.access_log_format = f'%(h)s "%(r)s" %(s)s %(b)s %(D)sus [%({{{HEADER}}}o)s]'
    return config


def listen(settings: Settings) -> list[socket.socket]:
    """The listening sockets, bound and listening (OSError when the address cannot be had)."""
    sockets = hypercorn_config(settings).create_sockets().insecure_sockets
    for sock in sockets:
        sock.listen(BACKLOG)
    return sockets


class StopSignals:
    """SIGTERM and SIGINT start the stop, once: later ones are ignored, also after the loop
    has closed (a terminal's Ctrl-C reaches every process of the group, and the parent passes
    the stop on; a second signal used to kill a worker that was ending its threads). The
    handler is Python's, installed for the life of the process, not the loop's: the kernel
    gives a process's signal to its main thread first, interrupting its wait for events, so
    the handler runs at once and wakes the loop."""

    def __init__(self) -> None:
        self.received: int | None = None
        self._wake: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        for signum in STOP_SIGNALS:
            signal.signal(signum, self._on_signal)

    def _on_signal(self, signum: int, _: FrameType | None) -> None:
        if self.received is None:
            self.received = signum
            if self._loop is not None and self._wake is not None:
                self._loop.call_soon_threadsafe(self._wake.set)

    async def wait(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._wake = asyncio.Event()
        if self.received is None:
            await self._wake.wait()


async def serve_until_stopped(app: Quart, config: http1.ServerConfig, signals: StopSignals) -> None:
    """Serve until the stop signal, then drain the writes before hypercorn stops."""

    async def stop_when_signalled() -> None:
        await signals.wait()
        left = await GracefulStop.of(app).drain()
        # Then hypercorn closes its sockets and waits this long for the requests still in
        # flight (reads, and the answers being sent): the stop as a whole keeps to the timeout.
        config.graceful_timeout = max(left, GracefulStop.ANSWER_SECONDS)
        asyncio.get_running_loop().call_later(config.graceful_timeout, http1.abort_unsent, config)

    http1.quiet_cancelled_connections(asyncio.get_running_loop())
    await serve(app, config, shutdown_trigger=stop_when_signalled)


def serve_sockets(settings: Settings, fds: list[int]) -> int:
    """Serve the listening sockets `fds` in this process until the stop signal."""
    signals = StopSignals()
    http1.patch_hypercorn()
    app = create_app(settings)
    config = hypercorn_config(settings)
    config.bind = [f"fd://{fd}" for fd in fds]
    config.backlog = ACCEPTS_PER_WAKEUP  # the queue stays BACKLOG (http1.ListeningSocket)
    try:
        asyncio.run(serve_until_stopped(app, config, signals))
    except Exception:
        if ConfigStore.of(app).start_refused is None:
            raise
        return 1  # the store said why, in one line
    stop_worker_threads()  # a write that outlived SHUTDOWN_TIMEOUT ends first: it is atomic
    if GracefulStop.of(app).gave_up:
        log.warning("stopping: the write(s) still running at SHUTDOWN_TIMEOUT have ended")
    return 0


def raise_open_file_limit() -> None:
    """Soft limit to the hard one: each waiting client holds a socket."""
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def run_workers(settings: Settings, sockets: list[socket.socket]) -> int:
    """Start WORKERS copies of this command on the parent's sockets; wait for every one."""
    configure_logging(settings.log_level)
    workers = Workers([sock.fileno() for sock in sockets])
    peers = secrets.token_hex(8)  # names the workers' abstract sockets: nothing on disk
    for index in range(settings.workers):
        # One SECRET_KEY for all (a random one when unset): a stream ticket that one
        # worker issued is accepted by the others (quart_iot/oidc/tickets.py).
        env = {
            **os.environ,
            PEERS_ENV: f"{peers}:{index}:{settings.workers}",
            "SECRET_KEY": settings.secret_key,
        }
        workers.start(env)
    for sock in sockets:
        sock.close()  # the workers hold the port now: it closes with the last of them
    return workers.wait()


def main() -> int:
    if sys.argv[1:2] == ["copy"]:  # python -m quart_iot copy --from SRC --to DST
        from quart_iot.copy import main as copy_main

        return copy_main(sys.argv[2:])
    try:
        settings = load_settings()
    except SettingsError as error:
        print(f"quart_iot: {error}", file=sys.stderr)
        return 2
    raise_open_file_limit()
    try:
        fds = inherited_sockets()
    except ParentGone:
        print("quart_iot: the parent process ended before this worker started", file=sys.stderr)
        return 1
    if fds is not None:
        return serve_sockets(settings, fds)
    try:
        sockets = listen(settings)
    except OSError as error:
        reason = error.strerror or str(error)
        print(f"quart_iot: cannot listen on {address(settings)}: {reason}", file=sys.stderr)
        return 1
    if settings.workers > 1:
        return run_workers(settings, sockets)
    return serve_sockets(settings, [sock.detach() for sock in sockets])


if __name__ == "__main__":
    sys.exit(main())

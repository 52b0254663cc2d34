"""`python -m quart_iot`: serve with hypercorn, WORKERS processes, graceful stop on SIGTERM."""

import asyncio
import logging
import os
import resource
import secrets
import signal
import socket
import subprocess
import sys
from typing import cast

from hypercorn.asyncio import serve
from hypercorn.config import Config, Sockets
from quart import Quart

from quart_iot import http1
from quart_iot.app import create_app
from quart_iot.correlation import HEADER
from quart_iot.settings import Settings, SettingsError, load_settings
from quart_iot.shutdown import GracefulStop
from quart_iot.store import ConfigStore, stop_worker_threads
from quart_iot.waiting import PEERS_ENV

log = logging.getLogger("quart_iot")


class ServerConfig(Config):
    """hypercorn's Config, whose listening sockets give up on a client that stops taking its
    answer: with unsent data and no progress for `send_timeout` seconds (a window left at zero,
    or no acknowledgement at all), the kernel aborts the connection (TCP_USER_TIMEOUT, which
    each accepted socket inherits; Linux). nginx's `send_timeout` does the same in user space.
    Without it a client that asks and never reads held its connection, and what was not yet
    sent of the answer, for ever."""

    send_timeout: float | None = None

    def create_sockets(self) -> Sockets:
        sockets = super().create_sockets()
        option = getattr(socket, "TCP_USER_TIMEOUT", None)
        if self.send_timeout is not None and option is not None:
            for sock in sockets.insecure_sockets:
                if sock.family in (socket.AF_INET, socket.AF_INET6):
                    sock.setsockopt(socket.IPPROTO_TCP, option, int(self.send_timeout * 1000))
        return sockets


def hypercorn_config(settings: Settings) -> Config:
    config = ServerConfig()
    config.send_timeout = settings.send_timeout
    host = f"[{settings.host}]" if ":" in settings.host else settings.host
    config.bind = [f"{host}:{settings.port}"]
    config.graceful_timeout = settings.shutdown_timeout
    config.backlog = 4096  # thousands of long polls reconnect at once after a restart
    # Hypercorn's lines go through our handler (one format, one stream) instead of its own.
    config.accesslog = logging.getLogger("hypercorn.access")
    config.errorlog = logging.getLogger("hypercorn.error")
    config.access_log_format = f'%(h)s "%(r)s" %(s)s %(b)s %(D)sus [%({{{HEADER}}}o)s]'
    return config


def graceful_stop(app: Quart) -> GracefulStop:
    return cast(GracefulStop, app.extensions["graceful_stop"])


async def serve_until_stopped(app: Quart, config: Config) -> None:
    """Serve until SIGTERM/SIGINT, then drain the writes before hypercorn stops."""
    signalled = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, signalled.set)

    async def stop_when_signalled() -> None:
        await signalled.wait()
        left = await graceful_stop(app).drain()
        # Then hypercorn closes its sockets and waits this long for the requests still in
        # flight (reads, and the answers being sent): the stop as a whole keeps to the timeout.
        config.graceful_timeout = max(left, GracefulStop.ANSWER_SECONDS)

    await serve(app, config, shutdown_trigger=stop_when_signalled)


def raise_open_file_limit() -> None:
    """Soft limit to the hard one: each waiting client holds a socket."""
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def own_socket(config: Config, workers: int) -> None:
    """A worker of WORKERS binds its own socket on the shared port with SO_REUSEPORT (hypercorn
    sets it for more than one worker), and the kernel spreads new connections across them: one
    socket shared by all let the first worker to wake accept a whole burst (wrk's 32
    connections all went to one worker)."""
    config.workers = workers
    sockets = config.create_sockets().insecure_sockets
    config.workers = 1  # serve() runs this one process
    config.bind = [f"fd://{sock.detach()}" for sock in sockets]


def run_workers(settings: Settings) -> int:
    """Start WORKERS copies of this command on the same port, pass SIGTERM on."""
    peers = secrets.token_hex(8)  # names the workers' abstract sockets: nothing on disk
    workers = []
    for index in range(settings.workers):
        # One SECRET_KEY for all (a random one when unset): a stream ticket that one
        # worker issued is accepted by the others (quart_iot/oidc/tickets.py).
        env = {
            **os.environ,
            PEERS_ENV: f"{peers}:{index}:{settings.workers}",
            "SECRET_KEY": settings.secret_key,
        }
        workers.append(subprocess.Popen([sys.executable, "-m", "quart_iot"], env=env))
    return supervise(workers)


def supervise(workers: list["subprocess.Popen[bytes]"]) -> int:
    """Wait for the workers; a signal, or one worker's end, stops them all."""

    def stop(signum: int = signal.SIGTERM, _: object = None) -> None:
        for worker in workers:
            if worker.poll() is None:
                worker.send_signal(signal.SIGTERM)

    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, stop)
    # Until the first worker ends (without reaping it: Popen reads its exit status).
    os.waitid(os.P_ALL, 0, os.WEXITED | os.WNOWAIT)
    stop()
    return 1 if any(worker.wait() for worker in workers) else 0


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
    if settings.workers > 1 and PEERS_ENV not in os.environ:
        return run_workers(settings)
    http1.install()  # HTTP/1.1 only; hypercorn's own 400/431/501 in the contract's JSON body
    app = create_app(settings)
    config = hypercorn_config(settings)
    if settings.workers > 1:
        own_socket(config, settings.workers)
    try:
        asyncio.run(serve_until_stopped(app, config))
    except Exception:
        if ConfigStore.of(app).start_refused is None:
            raise
        return 1  # the store said why, in one line
    stop_worker_threads()  # a write that outlived SHUTDOWN_TIMEOUT ends first: it is atomic
    if graceful_stop(app).gave_up:
        log.warning("stopping: the write(s) still running at SHUTDOWN_TIMEOUT have ended")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""`python -m quart_iot`: serve with hypercorn, one worker, graceful stop on SIGTERM."""

import asyncio
import logging
import signal
import sys
from typing import cast

from hypercorn.asyncio import serve
from hypercorn.config import Config
from quart import Quart

from quart_iot.app import create_app
from quart_iot.correlation import HEADER
from quart_iot.settings import Settings, SettingsError, load_settings
from quart_iot.shutdown import GracefulStop
from quart_iot.store import stop_worker_threads

log = logging.getLogger("quart_iot")


def hypercorn_config(settings: Settings) -> Config:
    config = Config()
    host = f"[{settings.host}]" if ":" in settings.host else settings.host
    config.bind = [f"{host}:{settings.port}"]
    config.graceful_timeout = settings.shutdown_timeout
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


def main() -> int:
    try:
        settings = load_settings()
    except SettingsError as error:
        print(f"quart_iot: {error}", file=sys.stderr)
        return 2
    app = create_app(settings)
    asyncio.run(serve_until_stopped(app, hypercorn_config(settings)))
    stop_worker_threads()  # a write that outlived SHUTDOWN_TIMEOUT ends first: it is atomic
    if graceful_stop(app).gave_up:
        log.warning("stopping: the write(s) still running at SHUTDOWN_TIMEOUT have ended")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""`python -m quart_iot`: serve with hypercorn, one worker, graceful stop on SIGTERM."""

import asyncio
import logging
import sys

from hypercorn.asyncio import serve
from hypercorn.config import Config

from quart_iot.app import create_app
from quart_iot.correlation import HEADER
from quart_iot.settings import Settings, SettingsError, load_settings


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


def main() -> int:
    try:
        settings = load_settings()
    except SettingsError as error:
        print(f"quart_iot: {error}", file=sys.stderr)
        return 2
    # With no shutdown trigger, hypercorn handles SIGINT/SIGTERM: stop accepting, let
    # requests in flight finish (up to graceful_timeout), run the after-serving hooks.
    asyncio.run(serve(create_app(settings), hypercorn_config(settings)))
    return 0


if __name__ == "__main__":
    sys.exit(main())

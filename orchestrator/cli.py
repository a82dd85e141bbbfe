"""`python -m orchestrator`: parse flags, start the server, print where everything is."""

from __future__ import annotations

import logging
import sys

from aiohttp import web

from .access import AccessLog
from .app import create_app
from .settings import parse_settings


def main(argv: list[str] | None = None) -> None:
    settings = parse_settings(argv)
    logging.basicConfig(
        level=settings.log_level,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    app = create_app(settings)
    print(f"livehuman: serving on http://{settings.host}:{settings.port}", flush=True)
    web.run_app(app, host=settings.host, port=settings.port, print=None,
                access_log_class=AccessLog)

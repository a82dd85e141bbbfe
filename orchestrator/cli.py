"""`python -m orchestrator`: parse flags, start the server, print where everything is."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys

import cv2
from aiohttp import web

from .app import create_app
from .drain import drain
from .http.access import AccessLog
from .http.server import AppRunner
from .services import SERVICES_KEY
from .settings import Settings, parse_settings, redact_stream_key
from .tts import ENGINES as TTS_ENGINES
from .tts import UNSUPPORTED_TTS, check_tts_server
from .workers import WorkerRole, serve_workers


async def serve(settings: Settings, role: WorkerRole | None = None) -> None:
    """Serve until SIGINT (stop at once) or SIGTERM (drain first: orchestrator/drain.py; a
    second SIGTERM stops at once), then stop the sessions, the services and Triton. `role`: as
    a worker of a --workers parent, on the sockets it inherited (workers.py)."""
    # OpenCV splits one call (a colour conversion, a blend of 512x512) over every core by
    # default: here many sessions already run in parallel, and the split costs more CPU than it
    # saves (measured: RGB->I420 of a 512x512 frame 0.75 ms CPU on two threads, 0.30 on one).
    cv2.setNumThreads(1)
    # The access log leaves out query strings: they may hold the token (?token=).
    worker_ports = role.private_ports if role is not None else ()
    runner = AppRunner(create_app(settings, worker_ports=worker_ports),
                       access_log_class=AccessLog)
    await runner.setup()
    try:
        if role is None:
            await web.TCPSite(runner, settings.host, settings.port).start()
            print(f"livehuman: serving on http://{settings.host}:{settings.port}", flush=True)
        else:
            for sock in role.sockets():
                await web.SockSite(runner, sock).start()
            print(f"livehuman: worker {role.index} of {role.count} (pid {os.getpid()}) serving",
                  flush=True)
        for line in output_lines(settings):
            print(f"livehuman: {line}", flush=True)
        stop = asyncio.Event()
        draining: list[asyncio.Task] = []

        async def drain_then_stop() -> None:
            try:
                await drain(runner.app[SERVICES_KEY], settings.drain_timeout_s)
            finally:
                stop.set()

        def on_sigterm() -> None:
            if draining:
                stop.set()
            else:
                draining.append(asyncio.create_task(drain_then_stop(), name="drain"))

        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGINT, stop.set)
        loop.add_signal_handler(signal.SIGTERM, on_sigterm)
        await stop.wait()
        for task in draining:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
    finally:
        await runner.cleanup()


def output_lines(settings: Settings) -> list[str]:
    """Where the outputs other than /offer are (docs/OUTPUTS.md), stream keys hidden."""
    lines = []
    if settings.server_session:
        lines.append("the server session is sessionid 0 (POST /human {\"sessionid\": 0, ...})")
    lines += [f"pushing it to {redact_stream_key(url)}" for url in settings.push_urls]
    if "whep" in settings.transports:
        lines.append(f"WHEP: POST http://{settings.host}:{settings.port}/whep (?sessionid=0: "
                     "view the server session)")
    if "webrtc" not in settings.transports:
        lines.append("WebRTC sessions (/offer) are off (--transport)")
    return lines


def main(argv: list[str] | None = None) -> None:
    """Serve in this process (--workers 1, or as a worker of a parent), or as the parent of
    --workers N processes (orchestrator/workers.py), exiting with its code."""
    argv = sys.argv[1:] if argv is None else argv
    # LiveTalking's engines we lack are choices too: check_tts_server says why they are refused.
    settings = parse_settings(argv, choices={"tts": [*TTS_ENGINES, *UNSUPPORTED_TTS]})
    check_tts_server(settings)
    role = WorkerRole.from_environment()
    who = f"worker {role.index} " if role is not None else ""
    logging.basicConfig(
        level=settings.log_level,
        format=f"%(asctime)s %(levelname)s {who}%(name)s: %(message)s",
        stream=sys.stderr,
    )
    if role is not None:
        asyncio.run(serve(role.settings(settings), role))
    elif settings.workers > 1:
        sys.exit(asyncio.run(serve_workers(settings, argv)))
    else:
        asyncio.run(serve(settings))

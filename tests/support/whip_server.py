"""A small WHIP server (RFC 9725) on loopback, built with aiortc, that records what it receives:
the test's stand-in for SRS or mediamtx.

Run as its own process (`WhipServer` starts it), so that a test can make it disappear the way a
media server does (SIGKILL: no DTLS close, no answer to ICE consent checks) and start it again
on the same port.

- `POST /whip/<stream>`: `Content-Type: application/sdp`, `Authorization: Bearer <token>` (401
  otherwise), an offer that sends → `201 Created`, the answer (every candidate in it), `Location:
  /whip/resource/<id>`. Its receiver decodes what arrives (aiortc's H.264/VP8 and Opus decoders).
- `DELETE /whip/resource/<id>` → 200 (404 for an unknown one): the session ends.
- `GET /stats` → JSON: every POST (status, whether the token was right), every DELETE, and per
  resource: its stream, state, video codec, decoded video frames (count, sizes, mean level of the
  last one, first/last arrival in `time.time()` seconds), audio frames and their RMS with arrival
  times.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import secrets
import signal
import subprocess
import sys
import time
from pathlib import Path

import aiohttp
import numpy as np


class WhipServer:
    """The server as a child process on 127.0.0.1:`port` (a free one unless given), the same
    port across `stop`/`kill` and `start`."""

    def __init__(self, token: str, log_path: Path, port: int | None = None) -> None:
        from orchestrator_process import free_port

        self.token = token
        self.port = port or free_port()
        self.log_path = log_path
        self.process: subprocess.Popen | None = None

    def url(self, stream: str = "live") -> str:
        return f"http://127.0.0.1:{self.port}/whip/{stream}"

    def start(self) -> None:
        """Start it and wait until it listens (RuntimeError with its log otherwise)."""
        env = {**os.environ, "PYTHONUNBUFFERED": "1",
               "PYTHONPATH": os.pathsep.join(filter(None, [str(Path(__file__).parents[2]),
                                                           os.environ.get("PYTHONPATH")]))}
        log = open(self.log_path, "a")
        self.process = subprocess.Popen(
            [sys.executable, __file__, "--port", str(self.port), "--token", self.token],
            stdout=subprocess.PIPE, stderr=log, env=env, text=True)
        log.close()
        line = self.process.stdout.readline()  # "ready", or EOF when it failed
        if line.strip() != "ready":
            self.kill()
            raise RuntimeError(f"the WHIP server did not start: {self.log()[-2000:]}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def stop(self) -> None:
        """A clean stop (SIGTERM): its sessions close as a media server's do on shutdown."""
        self._end(signal.SIGTERM)

    def kill(self) -> None:
        """Gone at once (SIGKILL): nothing is closed, nothing answers any more."""
        self._end(signal.SIGKILL)

    def _end(self, how: int) -> None:
        process, self.process = self.process, None
        if process is None:
            return
        if process.poll() is None:
            process.send_signal(how)
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        process.stdout.close()

    async def stats(self) -> dict:
        async with aiohttp.ClientSession() as http:
            async with http.get(f"http://127.0.0.1:{self.port}/stats") as resp:
                return await resp.json()


# --- the server process ------------------------------------------------------------------------
def serve(port: int, token: str) -> None:
    from aiohttp import web
    from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription
    from aiortc.mediastreams import MediaStreamError

    from orchestrator.media.ice import restrict_host_candidates

    restrict_host_candidates(("127.0.0.1",))
    peers: dict[str, RTCPeerConnection] = {}
    stats: dict = {"posts": [], "deletes": [], "resources": {}}
    tasks: set[asyncio.Task] = set()

    async def consume(track, record: dict) -> None:
        while True:
            try:
                frame = await track.recv()
            except MediaStreamError:
                return
            now = time.time()
            if track.kind == "video":
                image = frame.to_ndarray(format="rgb24")
                record["video_frames"] += 1
                size = [frame.width, frame.height]
                if size not in record["video_sizes"]:
                    record["video_sizes"].append(size)
                record["video_mean"] = float(image.mean())
                record["first_video_at"] = record["first_video_at"] or now
                record["last_video_at"] = now
            else:
                pcm = frame.to_ndarray().astype(np.float32) / 32768.0
                record["audio_frames"] += 1
                record["audio"].append([now, float(np.sqrt(np.mean(pcm**2)))])

    async def post(request: web.Request) -> web.Response:
        authorized = request.headers.get("Authorization") == f"Bearer {token}"
        stats["posts"].append({"stream": request.match_info["stream"], "authorized": authorized,
                               "content_type": request.content_type})
        if not authorized:
            stats["posts"][-1]["status"] = 401
            return web.Response(status=401, text="bad or missing bearer token")
        if request.content_type != "application/sdp":
            stats["posts"][-1]["status"] = 415
            return web.Response(status=415, text="application/sdp only")
        offer = await request.text()
        pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        resource = secrets.token_hex(8)
        record = stats["resources"][resource] = {
            "stream": request.match_info["stream"], "state": "new", "video_codec": None,
            "video_frames": 0, "video_sizes": [], "video_mean": None, "first_video_at": None,
            "last_video_at": None, "audio_frames": 0, "audio": [], "deleted": False}

        @pc.on("track")
        def on_track(track) -> None:
            task = asyncio.create_task(consume(track, record))
            tasks.add(task)
            task.add_done_callback(tasks.discard)

        @pc.on("connectionstatechange")
        def on_state() -> None:
            record["state"] = pc.connectionState

        await pc.setRemoteDescription(RTCSessionDescription(sdp=offer, type="offer"))
        await pc.setLocalDescription(await pc.createAnswer())
        answer = pc.localDescription.sdp
        for line in answer.splitlines():
            if line.startswith("a=rtpmap:") and record["video_codec"] is None and \
                    any(c in line for c in ("H264", "VP8")):
                record["video_codec"] = line.split()[1].split("/")[0]
        peers[resource] = pc
        stats["posts"][-1]["status"] = 201
        return web.Response(status=201, text=answer, content_type="application/sdp",
                            headers={"Location": f"/whip/resource/{resource}"})

    async def delete(request: web.Request) -> web.Response:
        resource = request.match_info["resource"]
        stats["deletes"].append({"resource": resource,
                                 "authorized": request.headers.get("Authorization")
                                 == f"Bearer {token}"})
        pc = peers.pop(resource, None)
        if pc is None:
            return web.Response(status=404, text="no such resource")
        stats["resources"][resource]["deleted"] = True
        await pc.close()
        return web.Response(status=200)

    async def get_stats(request: web.Request) -> web.Response:
        return web.json_response(stats)

    async def main() -> None:
        app = web.Application()
        app.router.add_post("/whip/{stream}", post)
        app.router.add_delete("/whip/resource/{resource}", delete)
        app.router.add_get("/stats", get_stats)
        runner = web.AppRunner(app)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", port).start()
        stop = asyncio.Event()
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
        print("ready", flush=True)
        await stop.wait()
        await asyncio.gather(*(pc.close() for pc in peers.values()))
        await runner.cleanup()

    asyncio.run(main())


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--token", required=True)
    args = parser.parse_args()
    serve(args.port, args.token)
    print(json.dumps({"event": "stopped"}), file=sys.stderr)

"""A real RTMP server for tests: Debian's nginx with libnginx-mod-rtmp (`make test` installs
both), run as the test's own process on a free loopback port with its config, pid and logs in a
temp dir (no root, no system service), and PyAV to read a stream back."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

import av
import numpy as np
import pytest
from orchestrator_process import free_port

RTMP_MODULE = Path("/usr/lib/nginx/modules/ngx_rtmp_module.so")  # libnginx-mod-rtmp
NGINX = shutil.which("nginx", path=os.environ.get("PATH", "") + ":/usr/sbin:/sbin")
START_TIMEOUT_S = 10.0
READ_OPEN_TIMEOUT_S = 10.0

requires_nginx_rtmp = pytest.mark.skipif(
    NGINX is None or not RTMP_MODULE.exists(),
    reason="nginx with libnginx-mod-rtmp is not installed (make test installs it)")

# wait_key/wait_video: a player joining gets the stream from a keyframe, video first, as the
# live platforms serve it.
CONFIG = """\
load_module {module};
daemon off;
master_process off;
pid {dir}/nginx.pid;
error_log {dir}/error.log info;
events {{ worker_connections 64; }}
rtmp {{
    access_log {dir}/access.log;
    server {{
        listen 127.0.0.1:{port};
        application live {{
            live on;
            record off;
            wait_key on;
            wait_video on;
        }}
    }}
}}
"""


class NginxRtmp:
    """nginx-rtmp on 127.0.0.1:`port`, application `live`; start/stop/pause as a test needs."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.port = free_port()
        self.config = directory / "nginx.conf"
        self.config.write_text(CONFIG.format(module=RTMP_MODULE, dir=directory, port=self.port))
        self.process: subprocess.Popen | None = None

    def url(self, name: str) -> str:
        return f"rtmp://127.0.0.1:{self.port}/live/{name}"

    def start(self) -> None:
        assert self.process is None
        log = open(self.directory / "stderr.log", "ab")
        self.process = subprocess.Popen(
            [NGINX, "-p", str(self.directory), "-c", str(self.config),
             "-e", str(self.directory / "error.log")], stdout=log, stderr=log)
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            assert self.process.poll() is None, self.log()
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.5).close()
                return
            except OSError:
                time.sleep(0.05)
        raise TimeoutError(f"nginx did not listen on {self.port}: {self.log()}")

    def stop(self) -> None:
        """SIGTERM: nginx's fast shutdown closes every connection at once."""
        process, self.process = self.process, None
        if process is not None:
            process.terminate()
            process.wait(timeout=10)

    def pause(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGCONT)

    def log(self) -> str:
        path = self.directory / "error.log"
        return path.read_text()[-3000:] if path.exists() else ""


@dataclass
class StreamRead:
    """What a player got from an RTMP stream: decoded frame sizes and audio loudness."""

    video_sizes: list[tuple[int, int]] = field(default_factory=list)
    audio_rms: list[float] = field(default_factory=list)  # per decoded audio frame
    audio_seconds: float = 0.0
    audio_rate_hz: int = 0

    @property
    def loudest(self) -> float:
        return max(self.audio_rms, default=0.0)


def read_stream(url: str, seconds: float, min_video_frames: int = 1) -> StreamRead:
    """Play `url` as a viewer would (PyAV, blocking: call it in a thread) for `seconds` of
    audio, and at least `min_video_frames` video frames."""
    got = StreamRead()
    with av.open(url, timeout=READ_OPEN_TIMEOUT_S) as container:
        for frame in container.decode(*container.streams):
            if isinstance(frame, av.VideoFrame):
                got.video_sizes.append((frame.width, frame.height))
            else:
                pcm = frame.to_ndarray().astype(np.float32)
                got.audio_rms.append(float(np.sqrt(np.mean(pcm**2))))
                got.audio_seconds += frame.samples / frame.sample_rate
                got.audio_rate_hz = frame.sample_rate
            if got.audio_seconds >= seconds and len(got.video_sizes) >= min_video_frames:
                break
    return got

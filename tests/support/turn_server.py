"""A real TURN server for tests: Debian's coturn (`turnserver`; `make test` installs it), run as
the test's own process on a free loopback port with one static long-term-credential user, its
database, pid and log in a temp dir (no root, no system service). Loopback peers are allowed
(`--allow-loopback-peers`: test only), so relayed media can reach a server on 127.0.0.1."""

from __future__ import annotations

import re
import shutil
import socket
import subprocess
import time
from pathlib import Path

import pytest
from orchestrator_process import free_port

TURNSERVER = shutil.which("turnserver")
START_TIMEOUT_S = 10.0
USERNAME, PASSWORD, REALM = "livehuman", "relay-secret", "livehuman.test"

requires_coturn = pytest.mark.skipif(
    TURNSERVER is None, reason="coturn (turnserver) is not installed (make test installs it)")


class Coturn:
    """turnserver on 127.0.0.1:`port` (UDP and TCP), relaying on 127.0.0.1."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.port = free_port()
        self.log_path = directory / "turnserver.log"
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        """Its TURN URL (RFC 7065), UDP."""
        return f"turn:127.0.0.1:{self.port}"

    def start(self) -> None:
        command = [
            TURNSERVER, "-n",  # no config file: everything is here
            "--listening-ip=127.0.0.1", "--relay-ip=127.0.0.1", f"--listening-port={self.port}",
            "--lt-cred-mech", f"--user={USERNAME}:{PASSWORD}", f"--realm={REALM}",
            "--fingerprint", "--allow-loopback-peers", "--no-cli", "--no-tls", "--no-dtls",
            f"--userdb={self.directory / 'turndb'}", f"--pidfile={self.directory / 'turn.pid'}",
            f"--log-file={self.log_path}", "--simple-log", "--no-stdout-log", "--verbose",
        ]
        self.process = subprocess.Popen(command, stdout=subprocess.DEVNULL,
                                        stderr=subprocess.STDOUT)
        deadline = time.monotonic() + START_TIMEOUT_S
        while not self._listening():
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"turnserver did not start: {self.log()[-2000:]}")
            time.sleep(0.1)

    def _listening(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                return True
        except OSError:
            return False

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def allocations(self) -> int:
        """Relay allocations it granted so far (its log's successful ALLOCATEs)."""
        return len(re.findall(r"ALLOCATE processed, success", self.log()))

    def relayed_bytes(self) -> int:
        """Bytes relayed from peers to clients in the allocations that have ended (coturn logs
        each one's usage when it is deallocated: `rb=` received bytes, `sb=` sent bytes)."""
        return sum(int(rb) + int(sb) for rb, sb in
                   re.findall(r"usage: .*?rb=(\d+), .*?sb=(\d+)", self.log()))

    def stop(self) -> None:
        process, self.process = self.process, None
        if process is not None and process.poll() is None:
            process.terminate()
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()

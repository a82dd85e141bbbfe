"""The embedded tritonserver's process on Linux: it dies with the orchestrator, and what it
leaves when killed (python backend stubs, their shared memory) is cleaned up after it."""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import signal
from pathlib import Path

log = logging.getLogger(__name__)

PR_SET_PDEATHSIG = 1
# The python backend's per-stub shared memory, named on the stub's command line.
STUB_SHM_PREFIX = "triton_python_backend_shm_region_"
SHM_DIR = Path("/dev/shm")


def die_with_parent(parent_pid: int):
    """preexec_fn: the server gets SIGTERM when the orchestrator dies, even by SIGKILL.

    prctl is looked up here, before the fork: the child only calls it (no dlopen/dlsym between
    fork and exec, which could deadlock on a lock another thread held at fork time). The signal
    follows the thread that forked: start the server from the thread that runs the event loop
    for the life of the process (the usual case).
    """
    prctl = ctypes.CDLL(None, use_errno=True).prctl
    prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong]
    prctl.restype = ctypes.c_int

    def preexec() -> None:
        if prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0) != 0:
            os._exit(126)
        if os.getppid() != parent_pid:  # the parent died before prctl took effect
            os._exit(0)

    return preexec


def _process_group(pgid: int) -> list[int]:
    """The live processes of a process group (from /proc; zombies excluded)."""
    members = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid and fields[0] not in ("Z", "X"):
            members.append(int(entry.name))
    return members


def reap_leftovers(pgid: int) -> None:
    """After the server (pid = `pgid`) exited: kill the python backend stubs it left in its
    group and remove their shared memory files, which only the dead server would have removed.
    Nothing is left after a clean exit; after SIGKILL (or a crash) every model's stub is."""
    for pid in _process_group(pgid):
        try:
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        for arg in argv:
            name = arg.decode(errors="replace")
            if name.startswith(STUB_SHM_PREFIX) and "/" not in name:
                with contextlib.suppress(OSError):
                    (SHM_DIR / name).unlink()
        log.info("killed pid=%s left behind by tritonserver pid=%s", pid, pgid)

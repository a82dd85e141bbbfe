"""This run's recordings: a unique file per recording, which of them are finished, and the
contract's `data/record.mp4` (a copy of the latest finished one).

The index lives in memory on purpose: files a previous run left in `data/record/` are never
served as a new session's (session ids are drawn anew each run). Paths given to clients are relative to the
data directory.
"""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
import shutil
from collections import Counter
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from ..errors import ApiError

log = logging.getLogger(__name__)

RECORD_DIR_NAME = "record"
LATEST_NAME = "record.mp4"  # the original contract's single path
SUFFIX_HEX_CHARS = 8  # random part of a file name: two recordings in one microsecond differ


@dataclass(frozen=True)
class RecordingFile:
    sessionid: int
    path: Path  # absolute: where the recorder writes
    relative: str  # what clients see: "record/<name>.mp4"


class Recordings:
    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self._finished: dict[int, RecordingFile] = {}  # sessionid → latest finished
        self._unfinished: Counter[int] = Counter()  # sessionid → recordings not finalised yet
        self._latest_lock = asyncio.Lock()  # one writer of record.mp4 at a time

    def begin(self, sessionid: int) -> RecordingFile:
        """A new file name (sessionid, UTC time, random suffix): never one that exists."""
        stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S.%fZ")
        name = f"{sessionid}-{stamp}-{secrets.token_hex(SUFFIX_HEX_CHARS // 2)}.mp4"
        self._unfinished[sessionid] += 1
        return RecordingFile(sessionid, self.data_dir / RECORD_DIR_NAME / name,
                             f"{RECORD_DIR_NAME}/{name}")

    async def end(self, recording: RecordingFile, saved: bool) -> None:
        """The recorder is done with `recording` (`saved`: the file is finalised, else lost).
        A saved one becomes its session's download and replaces record.mp4 atomically."""
        self._unfinished[recording.sessionid] -= 1
        if self._unfinished[recording.sessionid] <= 0:
            del self._unfinished[recording.sessionid]
        if not saved:
            return
        self._finished[recording.sessionid] = recording
        async with self._latest_lock:
            await asyncio.get_running_loop().run_in_executor(None, self._publish, recording.path)

    def file_for(self, sessionid: int) -> Path:
        """The session's latest finished recording of this run; 409 while its first one is still
        being recorded, 404 when it has none."""
        recording = self._finished.get(sessionid)
        if recording is not None:
            return recording.path
        if self._unfinished.get(sessionid):
            raise ApiError(409, f"the recording of sessionid {sessionid} is not finished yet "
                           "(type 'end_record' first)")
        raise ApiError.not_found(f"no recording for sessionid {sessionid}")

    def _publish(self, path: Path) -> None:
        """Copy to a temporary file beside record.mp4, then rename over it: a reader sees the
        old file or the new one, whole, never a mix."""
        latest = self.data_dir / LATEST_NAME
        partial = latest.with_name(f".{LATEST_NAME}.{secrets.token_hex(4)}.tmp")
        try:
            shutil.copyfile(path, partial)
            os.replace(partial, latest)
        except OSError:
            log.exception("could not update %s", LATEST_NAME)
            partial.unlink(missing_ok=True)

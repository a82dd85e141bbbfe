"""Decoded custom clips, shared by every session of the server.

A clip is decoded once per file version and frame size: the key is its resolved path with the
modification time (ns) and size of its file, or of every image of its folder, the same for its
audio file, and the frame size it is fitted to. Frames live in a memory-mapped nameless file
under the data directory (clips.decode_clip), so N sessions showing a 60 s clip cost one copy of
page cache, not N copies of heap (a 60 s 512x512 clip is 1.2 GB). Concurrent /offers naming a
clip wait on one decode. Least recently used clips beyond CLIP_CACHE_MAX_BYTES are dropped from
the cache; sessions still showing them keep their mapping until they close.
"""

from __future__ import annotations

import asyncio
import logging
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

from ..errors import ApiError
from .clips import (
    FIELD,
    IMAGE_SUFFIXES,
    Clip,
    ClipMedia,
    ClipSource,
    check_config_frames,
    clip_frames,
    decode_clip,
)

log = logging.getLogger(__name__)

CLIP_CACHE_DIR = Path("cache") / "clips"  # under the data directory
CLIP_CACHE_MAX_BYTES = 8 * 1024**3  # decoded frames kept for later sessions (disk-backed)

FileStamp = tuple[str, int, int]  # (name, mtime ns, size in bytes)


@dataclass(frozen=True)
class ClipKey:
    frames: Path
    frames_stamp: tuple[FileStamp, ...]
    audio: Path | None
    audio_stamp: tuple[FileStamp, ...]
    width: int
    height: int


def clip_key(source: ClipSource, width: int, height: int) -> ClipKey:
    """The key of a clip's current files (blocking: stat calls); 400 when they went away."""
    try:
        return ClipKey(source.frames, _stamp(source.frames), source.audio,
                       _stamp(source.audio) if source.audio else (), width, height)
    except OSError as exc:
        raise ApiError.bad_request(f"field '{FIELD}': audiotype {source.audiotype}: "
                                   f"cannot read {Path(exc.filename or '').name}") from None


def _stamp(path: Path) -> tuple[FileStamp, ...]:
    if path.is_dir():  # editing an image does not change the folder's own mtime
        files = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    else:
        files = [path]
    stamps = []
    for file in files:
        stat = file.stat()
        stamps.append((file.name, stat.st_mtime_ns, stat.st_size))
    return tuple(stamps)


class ClipCache:
    def __init__(self, directory: Path, max_bytes: int = CLIP_CACHE_MAX_BYTES) -> None:
        self.directory = directory
        self.max_bytes = max_bytes
        self.decodes = 0  # clips decoded so far (each key once while it stays cached)
        self._clips: OrderedDict[ClipKey, ClipMedia] = OrderedDict()  # least recent first
        self._decoding: dict[ClipKey, asyncio.Task[ClipMedia]] = {}

    async def load(self, sources: list[ClipSource], width: int, height: int) -> dict[int, Clip]:
        """The clips of one config by audiotype, fitted to width x height; the limits of
        clips.py are checked for the config's distinct clips before any is decoded (400)."""
        loop = asyncio.get_running_loop()
        keys = [await loop.run_in_executor(None, clip_key, source, width, height)
                for source in sources]
        distinct = dict(zip(keys, sources))  # a clip named twice is one clip
        frames = []
        for key, source in distinct.items():
            cached = self._clips.get(key)
            frames.append(len(cached.frames) if cached is not None
                          else await loop.run_in_executor(None, clip_frames, source))
        check_config_frames(frames)
        media = {key: await self._media(key, source) for key, source in distinct.items()}
        return {source.audiotype: Clip(source.audiotype, media[key].frames, media[key].audio)
                for key, source in zip(keys, sources)}

    async def _media(self, key: ClipKey, source: ClipSource) -> ClipMedia:
        cached = self._clips.get(key)
        if cached is not None:
            self._clips.move_to_end(key)
            return cached
        task = self._decoding.get(key)
        if task is None:
            task = asyncio.create_task(self._decode(key, source), name=f"clip-{key.frames.name}")
            task.add_done_callback(_retrieve_exception)  # a waiter may have gone away
            self._decoding[key] = task
        # shielded: an /offer that is cancelled (its client left) does not stop the others' decode
        return await asyncio.shield(task)

    async def _decode(self, key: ClipKey, source: ClipSource) -> ClipMedia:
        try:
            media = await asyncio.get_running_loop().run_in_executor(
                None, decode_clip, source, key.width, key.height, self.directory)
        finally:
            del self._decoding[key]
        self.decodes += 1
        self._clips[key] = media
        self._evict()
        log.info("clip decoded path=%s frames=%s size=%sx%s bytes=%s", key.frames.name,
                 len(media.frames), key.width, key.height, media.frames.nbytes)
        return media

    def _evict(self) -> None:
        total = sum(m.frames.nbytes for m in self._clips.values())
        while total > self.max_bytes and len(self._clips) > 1:
            _, media = self._clips.popitem(last=False)
            total -= media.frames.nbytes


def _retrieve_exception(task: asyncio.Task) -> None:
    if not task.cancelled():
        task.exception()

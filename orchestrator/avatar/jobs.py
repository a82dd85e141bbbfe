"""Avatar builds asked for over HTTP: a small registry of jobs, built one at a time (by default)
in a worker thread, so the event loop keeps streaming while a build runs.

Threads, not processes: the build's heavy parts (Haar detection, warps, JPEG encoding, video
decoding) are OpenCV/FFmpeg calls that release the GIL; measured, the event loop stays
responsive (tests/avatar/test_avatar_video.py). Each job owns its uploaded file and deletes it when it
ends, whatever the outcome.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import secrets
import shutil
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path

import cv2

from avatars.package import build_from_image, read_image
from avatars.video import MAX_SECONDS, build_from_video, probe_video

from ..errors import ApiError
from .store import AvatarStore

log = logging.getLogger(__name__)

MAX_CONCURRENT_BUILDS = 1  # a build keeps a core busy; streaming sessions need the others
MAX_PENDING_JOBS = 8  # queued or running: each holds an upload on disk
KEEP_FINISHED_JOBS = 100  # for GET /avatars/{job}; older finished jobs are forgotten
MAX_UPLOAD_BYTES = 200 * 1024 * 1024
IMAGE_LOOP_SECONDS = 4.0
JOB_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")


class JobState(str, Enum):
    QUEUED = "queued"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"


class BuildCancelled(Exception):
    pass


@dataclass(eq=False)
class AvatarJob:
    id: str
    avatar_id: str
    kind: str  # "image" or "video"
    source: str  # recorded in the manifest
    state: JobState = JobState.QUEUED
    # Written by the worker thread and read by the loop: single attribute stores, atomic.
    progress: float = 0.0
    error: str | None = None
    created: float = field(default_factory=time.time)
    ended: float | None = None
    cancelled: bool = False
    model: str = ""  # as LiveTalking's avatar-task API named it (recorded, not used)

    @property
    def pending(self) -> bool:
        return self.state in (JobState.QUEUED, JobState.RUNNING)

    def describe(self) -> dict:
        return {"job": self.id, "avatar": self.avatar_id, "kind": self.kind,
                "state": self.state.value, "progress": round(self.progress, 3),
                "error": self.error, "created": round(self.created, 3)}


class AvatarJobs:
    def __init__(self, store: AvatarStore, upload_dir: Path, *,
                 max_concurrent: int = MAX_CONCURRENT_BUILDS,
                 max_upload_bytes: int = MAX_UPLOAD_BYTES,
                 image_seconds: float = IMAGE_LOOP_SECONDS,
                 max_video_seconds: float = MAX_SECONDS) -> None:
        self.store = store
        self.upload_dir = Path(upload_dir)
        self.max_upload_bytes = max_upload_bytes
        self.image_seconds = image_seconds
        self.max_video_seconds = max_video_seconds
        self._jobs: dict[str, AvatarJob] = {}  # in creation order
        self._tasks: set[asyncio.Task] = set()
        self._slots = asyncio.Semaphore(max_concurrent)
        self._executor = ThreadPoolExecutor(max_concurrent, thread_name_prefix="avatar-build")
        # The folder is this registry's alone: what is in it was left by a server that died.
        shutil.rmtree(self.upload_dir, ignore_errors=True)

    def new_upload(self) -> Path:
        """An empty file to receive an upload; hand it to `submit`, or delete it."""
        self.upload_dir.mkdir(parents=True, exist_ok=True)
        handle, name = tempfile.mkstemp(suffix=".upload", dir=self.upload_dir)
        os.close(handle)
        return Path(name)

    def source_kind(self, path: Path) -> str:
        """"image" or "video", by what the file decodes as (extensions lie); ValueError if
        neither. A video too long to build is refused here already."""
        if cv2.imread(str(path), cv2.IMREAD_COLOR) is not None:
            return "image"
        try:
            probe_video(path, self.max_video_seconds)
        except ValueError as exc:
            raise ValueError(f"neither an image nor a video that can be used ({exc})") from None
        return "video"

    def admit(self, avatar_id: str, field_name: str = "id") -> None:
        """400 for an id the store would refuse, 409 when it exists or is being built, 503 when
        too many builds are waiting."""
        try:
            exists = self.store.exists(avatar_id)
        except ValueError as exc:
            raise ApiError.bad_request(f"field '{field_name}': {exc}") from None
        if exists:
            raise ApiError(409, f"field '{field_name}': avatar '{avatar_id}' already exists")
        for job in self.pending():
            if job.avatar_id == avatar_id:
                raise ApiError(409, f"field '{field_name}': avatar '{avatar_id}' is being built "
                               f"by job {job.id}")
        if len(self.pending()) >= MAX_PENDING_JOBS:
            raise ApiError(503, f"{MAX_PENDING_JOBS} avatar builds are waiting: try again later")

    def submit(self, avatar_id: str, upload: Path, kind: str, source: str, *,
               job_id: str | None = None, model: str = "") -> AvatarJob:
        """Queue a build; the job owns `upload` from here on (deleted when the job ends).
        `job_id` (checked by `check_job_id`) replaces the random id."""
        self.admit(avatar_id)
        if job_id is not None:
            self.check_job_id(job_id)
        job = AvatarJob(job_id or secrets.token_hex(8), avatar_id, kind, source, model=model)
        self._jobs[job.id] = job
        task = asyncio.create_task(self._run(job, upload), name=f"avatar-job-{job.id}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        log.info("avatar job %s: queued %s build of '%s'", job.id, kind, avatar_id)
        return job

    def get(self, job_id: str) -> AvatarJob:
        if job_id not in self._jobs:
            raise ApiError.not_found(f"unknown avatar job '{job_id}'")
        return self._jobs[job_id]

    def pending(self) -> list[AvatarJob]:
        return [job for job in self._jobs.values() if job.pending]

    def all(self) -> list[AvatarJob]:
        """Every job still remembered, oldest first."""
        return list(self._jobs.values())

    def check_job_id(self, job_id: str, field_name: str = "task_id") -> None:
        """400 for an id that is not a plain name, 409 for one in use."""
        if not JOB_ID.fullmatch(job_id):
            raise ApiError.bad_request(f"field '{field_name}' must be 1-64 letters, digits, '_' "
                                       "or '-'")
        if job_id in self._jobs:
            raise ApiError(409, f"field '{field_name}': job '{job_id}' exists")

    def cancel(self, job_id: str) -> AvatarJob:
        """Forget a queued job: it never builds (its upload is deleted when its turn comes).
        409 once it runs or has ended: a build is not stopped halfway."""
        job = self.get(job_id)
        if job.state is not JobState.QUEUED:
            raise ApiError(409, f"job '{job_id}' is {job.state.value}: only a queued job can be "
                           "deleted")
        job.cancelled = True
        del self._jobs[job_id]
        log.info("avatar job %s: deleted while queued", job_id)
        return job

    async def close(self) -> None:
        """Stop: queued jobs never start, a running build stops at its next frame."""
        for job in self._jobs.values():
            job.cancelled = True
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._executor.shutdown(wait=False)

    async def _run(self, job: AvatarJob, upload: Path) -> None:
        started = time.monotonic()
        try:
            async with self._slots:
                job.state = JobState.RUNNING
                await asyncio.get_running_loop().run_in_executor(
                    self._executor, self._build, job, upload)
            job.progress, job.state = 1.0, JobState.DONE
            log.info("avatar job %s: built '%s' in %.1f s", job.id, job.avatar_id,
                     time.monotonic() - started)
        except (ValueError, BuildCancelled) as exc:  # FaceError is a ValueError: bad input
            job.error, job.state = str(exc), JobState.FAILED
            log.info("avatar job %s: failed: %s", job.id, exc)
        except Exception:
            job.error, job.state = "internal error while building (see the server log)", JobState.FAILED
            log.exception("avatar job %s: internal error", job.id)
        finally:
            job.ended = time.time()
            upload.unlink(missing_ok=True)
            self._forget_finished()

    def _build(self, job: AvatarJob, upload: Path) -> None:
        """In the worker thread."""
        def progress(done: int, total: int) -> None:
            if job.cancelled:
                raise BuildCancelled("cancelled (deleted, or the server is shutting down)")
            job.progress = done / total

        progress(0, 1)  # a job cancelled while queued never starts
        out_dir = self.store.directory
        if job.kind == "image":
            build_from_image(read_image(upload), job.avatar_id, out_dir, self.image_seconds,
                             job.source, progress)
        else:
            build_from_video(upload, job.avatar_id, out_dir, progress, self.max_video_seconds,
                             job.source)

    def _forget_finished(self) -> None:
        finished = [job_id for job_id, job in self._jobs.items() if not job.pending]
        for job_id in finished[: max(0, len(finished) - KEEP_FINISHED_JOBS)]:
            del self._jobs[job_id]

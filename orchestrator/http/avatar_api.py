"""HTTP API for building avatars: upload a photo or a video, follow the build, list avatars.

POST /avatars (multipart: `id`, `file`) answers 202 with the job id at once; the build runs in
the background (orchestrator/avatar/jobs.py). A file that is neither an image nor a decodable
video (or a video over the length limit) is refused at upload with 400; a file that decodes but
does not show one usable face makes the job end `failed` with the builder's message.
"""

from __future__ import annotations

import asyncio
from dataclasses import asdict
from pathlib import Path

from aiohttp import BodyPartReader, web

from ..avatar.jobs import AvatarJobs
from ..errors import ApiError
from .access import MULTIPART_CONTENT_TYPE, takes
from .request_context import ok
from .validation import FormReader

MAX_FIELD_BYTES = 1024
UPLOAD_CHUNK_BYTES = 1 << 20

# Where the app keeps the job registry (set by create_app).
AVATAR_JOBS_KEY = web.AppKey("avatar_jobs", AvatarJobs)

routes = web.RouteTableDef()


@routes.post("/avatars")
@takes(MULTIPART_CONTENT_TYPE)
async def create_avatar(request: web.Request) -> web.Response:
    jobs = request.app[AVATAR_JOBS_KEY]
    if not request.content_type.startswith("multipart/"):
        raise ApiError.bad_request("POST /avatars takes multipart/form-data with 'id' and 'file'")
    avatar_id: str | None = None
    upload: Path | None = None
    filename = ""
    try:
        reader = FormReader(request, jobs.max_upload_bytes)
        async for part in reader.parts():
            if part.name == "file":
                if upload is not None:
                    raise ApiError.bad_request("field 'file' is given twice")
                # Only recorded in the manifest: control characters and the like dropped.
                filename = "".join(c for c in (part.filename or "")[:200] if c.isprintable())
                upload = jobs.new_upload()
                await save_limited(reader, part, upload, jobs.max_upload_bytes)
            elif part.name == "id":
                avatar_id = await reader.text(part, MAX_FIELD_BYTES)
                jobs.admit(avatar_id)  # before a large file that follows is read
            else:
                await reader.skip(part)  # unknown: ignored (the body's limit bounds it)
        if avatar_id is None:
            raise ApiError.bad_request("missing field 'id'")
        if upload is None:
            raise ApiError.bad_request("missing field 'file'")
        try:
            kind = await asyncio.get_running_loop().run_in_executor(None, jobs.source_kind, upload)
        except ValueError as exc:
            raise ApiError.bad_request(f"field 'file' is {exc}") from None
        job = jobs.submit(avatar_id, upload, kind, f"upload: {filename[:200]}")
        upload = None  # the job owns it now
    finally:
        if upload is not None:
            upload.unlink(missing_ok=True)
    response = ok(job.describe())
    response.set_status(202)
    response.headers["Location"] = f"/avatars/{job.id}"
    return response


@routes.get("/avatars")
async def list_avatars(request: web.Request) -> web.Response:
    jobs = request.app[AVATAR_JOBS_KEY]
    avatars = await asyncio.get_running_loop().run_in_executor(None, jobs.store.catalog)
    return ok({"avatars": [asdict(info) for info in avatars],
               "jobs": [job.describe() for job in jobs.pending()]})


@routes.get("/avatars/{job}")
async def avatar_job(request: web.Request) -> web.Response:
    return ok(request.app[AVATAR_JOBS_KEY].get(request.match_info["job"]).describe())


async def save_limited(reader: FormReader, part: BodyPartReader, path: Path, limit: int) -> None:
    """Stream a part to disk (uploads may be far larger than the app's body limit); 413 past
    `limit`. Writes go to a thread: a slow disk must not stall the streams."""
    loop = asyncio.get_running_loop()
    with path.open("wb") as out:
        async for chunk in reader.chunks(part, limit, UPLOAD_CHUNK_BYTES):
            await loop.run_in_executor(None, out.write, chunk)

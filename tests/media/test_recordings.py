"""Recordings over real sessions: one file per recording, finalised atomically, served only
when finished and only from this run; data/record.mp4 always one whole MP4."""

from __future__ import annotations

import asyncio
import hashlib
import threading
from dataclasses import replace
from pathlib import Path

import aiohttp
import av
import pytest
from server_fixtures import running_server, server_settings

from orchestrator.client import AvatarClient
from orchestrator.errors import ApiError
from orchestrator.media.recordings import Recordings

RECORD_SECONDS = 0.8
CONCURRENT_RECORDINGS = 4
# Earlier tests' sessions may still hold slots (released on consent failure): room for all.
MAX_SESSIONS = 8
# Files a previous run left behind, under the names a run with sequential ids would have used.
STALE_NAMES = ("1.mp4", "2.mp4", "3.mp4", "4.mp4", "5.mp4")


@pytest.fixture(scope="module")
async def record_server(triton, tmp_path_factory):
    """A server whose data directory holds a previous run's recordings before it starts."""
    data_dir = tmp_path_factory.mktemp("data")
    (data_dir / "record").mkdir()
    for name in STALE_NAMES:
        (data_dir / "record" / name).write_bytes(b"previous run " + name.encode())
    # avatars stay those of the project (Settings' default avatar_dir)
    settings = replace(server_settings(triton, data_dir=data_dir), max_sessions=MAX_SESSIONS)
    async with running_server(settings) as server:
        yield server


async def download(base_url: str, sessionid: int) -> tuple[int, bytes]:
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{base_url}/record/{sessionid}") as resp:
            return resp.status, await resp.read()


def check_mp4(path: Path, min_seconds: float) -> None:
    """A whole MP4: H.264 + AAC, every video packet decodes, at least this long.

    Not every 40 ms tick need be there: a player that falls behind on a loaded machine skips
    late ticks (the media clock keeps time), so the file has gaps in its timestamps then; a CI
    run with 4 sessions recording on 2 busy cores kept 13 frames of 0.8 s. Half is the floor."""
    with av.open(str(path)) as container:
        assert {s.type: s.codec_context.name for s in container.streams} == {"video": "h264",
                                                                              "audio": "aac"}
        assert container.duration / 1e6 >= min_seconds
        packets = [p for p in container.demux(video=0) if p.size]
    with av.open(str(path)) as container:
        frames = sum(1 for _ in container.decode(video=0))
    assert frames == len(packets), "a video packet did not decode"
    assert frames >= min_seconds * 25 / 2


async def record_once(client: AvatarClient, seconds: float = RECORD_SECONDS) -> dict:
    status, answer = await client.post("/record", type="start_record")
    assert status == 200, answer
    await asyncio.sleep(seconds)
    status, answer = await client.post("/record", type="end_record")
    assert status == 200, answer
    return answer["data"]


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


async def test_a_previous_runs_file_is_never_served(record_server):
    base_url, services = record_server
    client = AvatarClient(base_url, keep_video=False)
    try:
        await client.connect()
        # Ids are random now (an old run's 1, 2, 3... do not come again), yet an id may recur:
        # a previous run's files under this very id, in the old naming and in today's.
        sessionid = client.sessionid
        stale = (f"{sessionid}.mp4", f"{sessionid}-20200101T000000.000000Z-0badf00d.mp4")
        for name in stale:
            (services.settings.data_dir / "record" / name).write_bytes(b"previous run")
        status, body = await download(base_url, sessionid)
        assert status == 404, body
        for name in (*STALE_NAMES, *stale):  # and nothing of the old run was touched
            assert (services.settings.data_dir / "record" / name).read_bytes().startswith(b"previous")
    finally:
        await client.close()


async def test_download_while_recording_is_409_then_the_finished_file(record_server):
    base_url, services = record_server
    data_dir = services.settings.data_dir
    client = AvatarClient(base_url, keep_video=False)
    try:
        await client.connect()
        await client.wait_for_video(10)
        status, answer = await client.post("/record", type="start_record")
        assert status == 200, answer
        await asyncio.sleep(RECORD_SECONDS)
        status, body = await download(base_url, client.sessionid)
        assert status == 409, body
        status, answer = await client.post("/record", type="end_record")
        assert status == 200, answer
        relative = answer["data"]["path"]
        assert relative.startswith("record/") and relative.endswith(".mp4"), relative
        assert not Path(relative).is_absolute() and str(data_dir) not in str(answer)
        assert answer["data"]["url"] == f"/record/{client.sessionid}"
        check_mp4(data_dir / relative, RECORD_SECONDS - 0.2)
        status, body = await download(base_url, client.sessionid)
        assert status == 200 and body == (data_dir / relative).read_bytes()
    finally:
        await client.close()


async def test_a_second_recording_leaves_the_first_intact(record_server):
    base_url, services = record_server
    data_dir = services.settings.data_dir
    client = AvatarClient(base_url, keep_video=False)
    try:
        await client.connect()
        await client.wait_for_video(10)
        first = await record_once(client)
        first_digest = sha(data_dir / first["path"])
        status, answer = await client.post("/record", type="start_record")
        assert status == 200, answer
        await asyncio.sleep(RECORD_SECONDS)
        # while the second runs, the finished first one is what a download gets
        status, body = await download(base_url, client.sessionid)
        assert status == 200 and hashlib.sha256(body).hexdigest() == first_digest
        status, answer = await client.post("/record", type="end_record")
        assert status == 200, answer
        second = answer["data"]
        assert second["path"] != first["path"]
        assert sha(data_dir / first["path"]) == first_digest, "the first recording is untouched"
        check_mp4(data_dir / first["path"], RECORD_SECONDS - 0.2)
        check_mp4(data_dir / second["path"], RECORD_SECONDS - 0.2)
        status, body = await download(base_url, client.sessionid)
        assert status == 200 and body == (data_dir / second["path"]).read_bytes()
    finally:
        await client.close()


async def test_concurrent_end_record_leaves_one_whole_latest_file(record_server):
    base_url, services = record_server
    data_dir = services.settings.data_dir
    clients = [AvatarClient(base_url, keep_video=False) for _ in range(CONCURRENT_RECORDINGS)]
    try:
        for client in clients:
            await client.connect()
        await asyncio.gather(*(client.wait_for_video(20) for client in clients))
        for _ in range(3):
            for client in clients:
                status, answer = await client.post("/record", type="start_record")
                assert status == 200, answer
            await asyncio.sleep(RECORD_SECONDS)
            answers = await asyncio.gather(*(client.post("/record", type="end_record")
                                             for client in clients))
            assert all(status == 200 for status, _ in answers), answers
            paths = [data_dir / answer["data"]["path"] for _, answer in answers]
            assert len(set(paths)) == len(paths)
            latest = (data_dir / "record.mp4").read_bytes()
            assert latest in [path.read_bytes() for path in paths], "one recording, whole"
            check_mp4(data_dir / "record.mp4", RECORD_SECONDS - 0.2)
    finally:
        await asyncio.gather(*(client.close() for client in clients))


# --- the index on its own -------------------------------------------------------------------

async def test_record_mp4_is_replaced_whole_while_read(tmp_path):
    """8 recordings of different sizes finish at once while a reader keeps reading
    record.mp4: every read is exactly one of them."""
    recordings = Recordings(tmp_path)
    files = [recordings.begin(k) for k in range(8)]
    contents = []
    for k, file in enumerate(files):
        file.path.parent.mkdir(exist_ok=True)
        content = bytes([k]) * (200_000 * (k + 1))
        file.path.write_bytes(content)
        contents.append(content)
    reads: list[bytes] = []
    stop = threading.Event()

    def reader() -> None:
        while not stop.is_set():
            try:
                reads.append((tmp_path / "record.mp4").read_bytes())
            except FileNotFoundError:
                pass  # not published yet

    thread = threading.Thread(target=reader)
    thread.start()
    try:
        await asyncio.gather(*(recordings.end(file, saved=True) for file in files))
    finally:
        stop.set()
        thread.join()
    reads.append((tmp_path / "record.mp4").read_bytes())
    assert all(read in contents for read in reads), {len(r) for r in reads}
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


async def test_index_answers_409_while_unfinished_then_the_latest(tmp_path):
    recordings = Recordings(tmp_path)
    with pytest.raises(ApiError) as error:
        recordings.file_for(1)
    assert error.value.status == 404
    first = recordings.begin(1)
    with pytest.raises(ApiError) as error:
        recordings.file_for(1)
    assert error.value.status == 409 and "end_record" in error.value.msg
    await recordings.end(first, saved=False)  # a failed recording: nothing to serve
    with pytest.raises(ApiError) as error:
        recordings.file_for(1)
    assert error.value.status == 404
    second, third = recordings.begin(1), recordings.begin(1)
    assert second.path != third.path and second.relative.startswith("record/1-")
    for file in (second, third):
        file.path.parent.mkdir(exist_ok=True)
        file.path.write_bytes(file.relative.encode())
    await recordings.end(second, saved=True)
    assert recordings.file_for(1) == second.path, "finished: served while the next one records"
    await recordings.end(third, saved=True)
    assert recordings.file_for(1) == third.path

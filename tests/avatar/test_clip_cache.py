"""Clips are decoded once per file version and frame size, shared by every session that names
them, limited before anything is decoded, and cost no memory per additional session."""

from __future__ import annotations

import asyncio
import json
import os
from dataclasses import replace

import cv2
import numpy as np
import pytest
from server_fixtures import refused_offer, running_server, server_settings
from test_clips import write_clip_video

from orchestrator.avatar.clip_cache import ClipCache
from orchestrator.avatar.clips import ClipSource
from orchestrator.client import AvatarClient
from orchestrator.errors import ApiError

MAX_SESSIONS = 8  # earlier sessions may still hold slots until consent fails
BIG_CLIP_FRAMES = 100  # 100 x 512x512 RGB = 79 MB once decoded
LOADS = 4


@pytest.fixture(scope="module")
async def cache_server(triton, tmp_path_factory):
    data_dir = tmp_path_factory.mktemp("data")
    (data_dir / "clips").mkdir()
    settings = replace(server_settings(triton, data_dir=data_dir), max_sessions=MAX_SESSIONS)
    async with running_server(settings) as server:
        yield server


def decodes(services) -> int:
    return services.clip_cache.decodes


def rss_bytes() -> int:
    """Resident memory of this process (the server runs in it), from the kernel."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


def config(*entries) -> list[dict]:
    return [{"audiotype": k, **entry} for k, entry in enumerate(entries, 1)]


async def test_a_clip_named_twice_and_loaded_twice_is_decoded_once(cache_server):
    base_url, services = cache_server
    data_dir = services.settings.data_dir
    write_clip_video(data_dir / "clips" / "twice.mp4")
    before = decodes(services)
    entries = config({"video": "clips/twice.mp4"}, {"video": "clips/twice.mp4"})
    first = await services.session_factory.clips(entries, 64, 48)
    second = await services.session_factory.clips(entries, 64, 48)
    assert decodes(services) == before + 1
    assert first[1].frames is first[2].frames is second[1].frames, "one decoded copy, shared"
    assert first[1].audio is second[2].audio
    assert first[1].frames.shape == (10, 48, 64, 3) and not first[1].frames.flags.writeable
    other_size = await services.session_factory.clips(entries, 32, 32)  # fitted to another frame size: its own
    assert other_size[1].frames.shape == (10, 32, 32, 3) and decodes(services) == before + 2


async def test_a_changed_file_is_decoded_again(cache_server):
    base_url, services = cache_server
    data_dir = services.settings.data_dir
    video = data_dir / "clips" / "changing.mp4"
    write_clip_video(video)
    folder = data_dir / "clips" / "changing"
    folder.mkdir()
    for k in range(3):
        cv2.imwrite(str(folder / f"{k}.png"), np.full((8, 8, 3), 40 * k, np.uint8))
    entries = config({"video": "clips/changing.mp4"}, {"imgpath": "clips/changing"})
    before = decodes(services)
    first = await services.session_factory.clips(entries, 64, 48)
    assert decodes(services) == before + 2
    stat = video.stat()
    os.utime(video, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))
    second = await services.session_factory.clips(entries, 64, 48)
    assert decodes(services) == before + 3 and second[1].frames is not first[1].frames
    assert second[2].frames is first[2].frames, "the folder did not change"
    cv2.imwrite(str(folder / "1.png"), np.full((8, 8, 3), 250, np.uint8))  # one image replaced
    third = await services.session_factory.clips(entries, 64, 48)
    assert decodes(services) == before + 4 and third[2].frames is not first[2].frames
    assert third[2].frames[1][:, 8:56].mean() > 240  # the new image (letterboxed to 64x48)


async def test_concurrent_offers_decode_a_clip_once(cache_server):
    base_url, services = cache_server
    write_clip_video(services.settings.data_dir / "clips" / "shared.mp4", frames=30, size=(320, 240))
    custom_config = json.dumps(config({"video": "clips/shared.mp4"}, {"video": "clips/shared.mp4"}))
    before = decodes(services)
    clients = [AvatarClient(base_url, keep_video=False) for _ in range(3)]
    try:
        await asyncio.gather(*(client.connect(custom_config=custom_config) for client in clients))
        assert decodes(services) == before + 1
        sessions = [services.registry.get(client.sessionid) for client in clients]
        assert len({id(session.stage.clips[1].frames) for session in sessions}) == 1
    finally:
        await asyncio.gather(*(client.close() for client in clients))


async def test_limits_answer_400_before_anything_is_decoded(cache_server):
    base_url, services = cache_server
    data_dir = services.settings.data_dir
    for k in range(3):  # 3 x 50 s: each within the per-clip limit, together over the config's
        write_clip_video(data_dir / "clips" / f"long{k}.mp4", frames=50 * 25, size=(16, 16))
    folder = data_dir / "clips" / "many"
    folder.mkdir()
    for k in range(60 * 25 + 1):  # one image more than 60 s at 25 fps
        cv2.imwrite(str(folder / f"{k:05d}.png"), np.zeros((2, 2, 3), np.uint8))
    before = decodes(services)
    cases = [
        (config(*({"video": f"clips/long{k}.mp4"} for k in range(3))), "120 s"),
        (config({"video": "clips/long0.mp4"}, {"imgpath": "clips/many"}), "60 s"),
        (config(*({"video": "clips/long0.mp4"} for _ in range(33))), "at most 32"),
    ]
    for entries, limit in cases:
        with pytest.raises(ApiError) as error:
            await services.session_factory.clips(entries, 16, 16)
        assert error.value.status == 400 and limit in error.value.msg, error.value.msg
        assert "custom_config" in error.value.msg
    assert decodes(services) == before, "nothing decoded for a refused config"
    # the same clip named many times counts once: well within the limits
    same = await services.session_factory.clips(config(*({"video": "clips/long0.mp4"} for _ in range(5))), 16, 16)
    assert decodes(services) == before + 1 and len(same) == 5
    assert "120 s" in await refused_offer(base_url, custom_config=json.dumps(cases[0][0]))


async def test_memory_does_not_grow_with_each_session_using_a_clip(cache_server):
    base_url, services = cache_server
    write_clip_video(services.settings.data_dir / "clips" / "big.mp4", frames=BIG_CLIP_FRAMES,
                     size=(512, 512))
    entries = config({"video": "clips/big.mp4"})
    held = [await services.session_factory.clips(entries, 512, 512)]
    clip_bytes = held[0][1].frames.nbytes
    assert clip_bytes >= BIG_CLIP_FRAMES * 512 * 512 * 3
    checksum = int(held[0][1].frames.sum(dtype=np.uint64))  # every page read once
    start = rss_bytes()
    for _ in range(LOADS - 1):  # as further sessions would, each playing the whole clip
        held.append(await services.session_factory.clips(entries, 512, 512))
        assert int(held[-1][1].frames.sum(dtype=np.uint64)) == checksum
    grown = rss_bytes() - start
    assert grown < clip_bytes / 2, f"RSS grew {grown / 1e6:.0f} MB for {LOADS - 1} more loads " \
                                   f"of a {clip_bytes / 1e6:.0f} MB clip"


async def test_least_recently_used_clips_leave_a_full_cache_and_stay_readable(tmp_path):
    for name in ("a", "b"):
        write_clip_video(tmp_path / f"{name}.mp4")
    one_clip = 10 * 48 * 64 * 3
    cache = ClipCache(tmp_path / "cache", max_bytes=one_clip)  # room for one clip
    a = await cache.load([ClipSource(1, tmp_path / "a.mp4", None)], 64, 48)
    b = await cache.load([ClipSource(1, tmp_path / "b.mp4", None)], 64, 48)
    assert cache.decodes == 2
    assert int(a[1].frames.sum()) > 0, "a session still showing an evicted clip keeps its frames"
    again = await cache.load([ClipSource(1, tmp_path / "b.mp4", None)], 64, 48)
    assert again[1].frames is b[1].frames and cache.decodes == 2
    await cache.load([ClipSource(1, tmp_path / "a.mp4", None)], 64, 48)
    assert cache.decodes == 3, "a was evicted, so decoded again"
    assert list((tmp_path / "cache").iterdir()) == [], "frames live in nameless files"

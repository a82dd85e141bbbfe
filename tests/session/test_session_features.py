"""Issue-3 endpoints against a live session: SSE, /humanaudio, /record, several sessions at once."""

from __future__ import annotations

import asyncio
import io
import json
import signal
import sys
import time

import aiohttp
import av
import numpy as np
from server_fixtures import livehuman  # noqa: F401  (fixture)

from orchestrator.client import (
    AvatarClient,
    fps,
    lagged_correlations,
    mean_window,
    mouth_motion,
    mouth_window,
)

SPEECH_RMS = 0.01


def spoken_wav_bytes(codec: str = "pcm_s16le", fmt: str = "wav", seconds: float = 1.5) -> bytes:
    """A vowel-like buzz with a syllable envelope, encoded with PyAV."""
    rate = 16000
    t = np.arange(int(rate * seconds)) / rate
    envelope = np.clip(np.sin(2 * np.pi * 2.5 * t), 0, None)
    voice = sum(np.sin(2 * np.pi * f * t) / k for k, f in enumerate((150, 300, 700, 1100), 1))
    signal = (0.4 * envelope * voice / 2.1).astype(np.float32)
    buf = io.BytesIO()
    with av.open(buf, "w", format=fmt) as container:
        stream = container.add_stream(codec, rate=rate if codec != "mp3" else 16000)
        stream.layout = "mono"
        frame = av.AudioFrame.from_ndarray(signal.reshape(1, -1), format="fltp", layout="mono")
        frame.sample_rate = rate
        resampler = av.AudioResampler(format=stream.codec_context.format.name, layout="mono",
                                      rate=stream.codec_context.sample_rate)
        for converted in resampler.resample(frame):
            for packet in stream.encode(converted):
                container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)
    return buf.getvalue()


async def post_audio(base_url: str, sessionid, data: bytes, filename: str, **extra):
    form = aiohttp.FormData()
    form.add_field("sessionid", str(sessionid))
    for key, value in extra.items():
        form.add_field(key, value)
    form.add_field("file", data, filename=filename, content_type="application/octet-stream")
    async with aiohttp.ClientSession() as http:
        async with http.post(f"{base_url}/humanaudio", data=form) as resp:
            return resp.status, await resp.json()


async def read_sse(base_url: str, sessionid: int, events: list, stop: asyncio.Event) -> None:
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{base_url}/sse", params={"sessionid": str(sessionid)}) as resp:
            assert resp.status == 200
            assert resp.headers["Content-Type"].startswith("text/event-stream")
            async for line in resp.content:
                if line.startswith(b"data: "):
                    events.append(json.loads(line[6:]))
                if stop.is_set():
                    return


async def test_sse_start_end_and_humanaudio(livehuman):  # noqa: F811
    base_url, _ = livehuman
    client = AvatarClient(base_url, keep_video=False)
    events: list[dict] = []
    stop = asyncio.Event()
    try:
        await client.connect()
        await client.wait_for_video(5)
        reader = asyncio.create_task(read_sse(base_url, client.sessionid, events, stop))
        await asyncio.sleep(0.2)
        await client.post("/human", type="echo", text="Server sent events.")
        for _ in range(200):
            if any(e["event"] == "end" for e in events):
                break
            await asyncio.sleep(0.05)
        kinds = [e["event"] for e in events]
        assert kinds.index("start") < kinds.index("end")
        assert events[kinds.index("start")]["text"] == "Server sent events."

        for codec, fmt, name in [("pcm_s16le", "wav", "a.wav"), ("mp3", "mp3", "a.mp3")]:
            sent = time.monotonic()
            status, answer = await post_audio(base_url, client.sessionid,
                                              spoken_wav_bytes(codec, fmt), name)
            assert status == 200, answer
            assert abs(answer["data"]["seconds"] - 1.5) < 0.15
            await client.wait_for_speech(sent, SPEECH_RMS)
            await client.post("/interrupt_talk")

        status, answer = await post_audio(base_url, client.sessionid, b"not audio" * 50, "x.wav")
        assert status == 400 and "file" in answer["msg"]
        status, answer = await post_audio(base_url, 999999, spoken_wav_bytes(), "a.wav")
        assert status == 404
        status, answer = await post_audio(base_url, client.sessionid, spoken_wav_bytes(), "a.wav",
                                          interrupt="maybe")
        assert status == 400 and "interrupt" in answer["msg"]
        stop.set()
        await client.post("/human", type="echo", text="bye")
        await asyncio.wait_for(reader, 10)
    finally:
        stop.set()
        await client.close()


async def test_record_holds_what_was_streamed(livehuman):  # noqa: F811
    base_url, services = livehuman
    client = AvatarClient(base_url, keep_video=False)
    try:
        await client.connect()
        await client.wait_for_video(5)
        status, answer = await client.post("/record", type="end_record")
        assert status == 409
        status, answer = await client.post("/record", type="start_record")
        assert status == 200
        status, answer = await client.post("/record", type="start_record")
        assert status == 409
        started = time.monotonic()
        await asyncio.sleep(0.6)  # idle frames first: the closed-mouth reference
        await client.post("/human", type="echo", text="This is being recorded, word by word, "
                          "so that the mouth can be compared with the voice.")
        await client.wait_for_speech(started, SPEECH_RMS)
        while (await client.post("/is_speaking"))[1]["data"]:
            await asyncio.sleep(0.05)
        await asyncio.sleep(0.3)
        status, answer = await client.post("/record", type="end_record")
        interval = time.monotonic() - started
        assert status == 200, answer
        assert answer["data"]["path"].startswith("record/")  # relative to the data directory
        path = services.settings.data_dir / answer["data"]["path"]
        assert (services.settings.data_dir / "record.mp4").read_bytes() == path.read_bytes()
        with av.open(str(path)) as container:
            streams = {s.type: s.codec_context.name for s in container.streams}
            assert streams == {"video": "h264", "audio": "aac"}
            assert abs(container.duration / 1e6 - interval) < 0.2 + 0.1
            audio = np.concatenate([f.to_ndarray().ravel() for f in container.decode(audio=0)])
            container.seek(0)
            video = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
        loud = np.sqrt(np.convolve(audio**2, np.ones(4800) / 4800, mode="valid")).max()
        assert loud > 0.02, "the spoken utterance is in the recording"
        # A/V sync where nothing else interferes: in the file, the mouth follows the voice
        # with no lag (one frame is 40 ms).
        region = mouth_window(services.avatars.load("default"))
        motion = mouth_motion(video, region, mean_window(video[:10], region))
        per_frame = audio[: audio.size // 1920 * 1920].reshape(-1, 1920)  # 40 ms at 48 kHz
        loudness = 20 * np.log10(np.sqrt((per_frame**2).mean(axis=1)) + 1e-3)
        correlations = lagged_correlations(motion, loudness, 5, min(len(motion), len(loudness)) - 5,
                                           range(-3, 4))
        best = max(correlations, key=correlations.get)
        assert best == 0 and correlations[0] > 0.6, correlations
        async with aiohttp.ClientSession() as http:
            async with http.get(f"{base_url}/record/{client.sessionid}") as resp:
                assert resp.status == 200 and len(await resp.read()) == path.stat().st_size
            async with http.get(f"{base_url}/record/424242") as resp:
                assert resp.status == 404
    finally:
        await client.close()


async def test_recording_finalized_when_session_ends(livehuman):  # noqa: F811
    base_url, services = livehuman
    client = AvatarClient(base_url, keep_video=False)
    await client.connect()
    await client.wait_for_video(5)
    await client.post("/record", type="start_record")
    await asyncio.sleep(1.0)
    sessionid = client.sessionid
    await client.close()
    for _ in range(100):
        if not any(s.sessionid == sessionid for s in services.registry.all()):
            break
        await asyncio.sleep(0.05)
    path = services.recordings.file_for(sessionid)
    with av.open(str(path)) as container:
        assert container.duration / 1e6 > 0.8


async def test_a_recording_on_a_starved_event_loop_has_no_holes(livehuman):  # noqa: F811
    """Issue 22: with the player skipping ticks (its loop held up: a busy machine), the MP4 kept
    them as timestamp gaps and, played back to back, its audio ran ahead of the video. Skipped
    ticks are filled: every frame follows the one before, audio lasts as long as video, and both
    as long as the recording did (within a frame)."""
    base_url, services = livehuman
    client = AvatarClient(base_url, keep_video=False)
    frame_s = 1 / 25
    try:
        await client.connect()
        await client.wait_for_video(5)
        before_start = time.monotonic()
        status, _ = await client.post("/record", type="start_record")
        after_start = time.monotonic()
        assert status == 200
        await asyncio.sleep(0.5)
        time.sleep(0.6)  # the event loop held up: the player skips ~15 ticks
        started = time.monotonic()
        await client.post("/human", type="echo", text="A recording on a busy machine, with "
                          "the loop held up while it speaks.")
        await client.wait_for_speech(started, SPEECH_RMS)
        time.sleep(0.6)  # and again, while it speaks
        while (await client.post("/is_speaking"))[1]["data"]:
            await asyncio.sleep(0.05)
        before_end = time.monotonic()
        status, answer = await client.post("/record", type="end_record")
        after_end = time.monotonic()
        assert status == 200, answer
        path = services.settings.data_dir / answer["data"]["path"]
        with av.open(str(path)) as container:
            video = [float(f.pts * f.time_base) for f in container.decode(video=0)]
            container.seek(0)
            audio = [(float(f.pts * f.time_base), f.samples / f.sample_rate)
                     for f in container.decode(audio=0)]
    finally:
        await client.close()
    steps = np.diff(video)
    assert np.allclose(steps, frame_s, atol=0.002), \
        f"timestamp gaps in the video: {sorted(set(np.round(steps, 3)))[-3:]}"
    audio_gaps = [round(b[0] - (a[0] + a[1]), 3) for a, b in zip(audio, audio[1:])
                  if b[0] - (a[0] + a[1]) > 0.002]
    assert not audio_gaps, f"timestamp gaps in the audio: {audio_gaps[:5]}"
    video_s = len(video) * frame_s
    audio_s = sum(seconds for _, seconds in audio)
    assert abs(audio_s - video_s) <= frame_s, (audio_s, video_s)
    # as long as the recording was on: between the inner and outer bounds of its two requests
    # (end_record returns once the file is written: late on a loaded machine)
    assert before_end - after_start - frame_s <= video_s <= after_end - before_start + frame_s, (
        before_end - after_start, video_s, after_end - before_start)


async def test_three_sessions_each_hear_only_their_own_speech(livehuman):  # noqa: F811
    base_url, services = livehuman
    clients = [AvatarClient(base_url, keep_video=False) for _ in range(3)]
    texts = ["One.", "This is the second session speaking a bit longer.",
             "Third session here, with yet another sentence that runs longer still, for sure."]
    try:
        for client in clients:
            await client.connect()
        for client in clients:
            await client.wait_for_video(5)
        sent = time.monotonic()
        for client, text in zip(clients, texts):
            await client.post("/human", type="echo", text=text)
        for client in clients:
            await client.wait_for_speech(sent, SPEECH_RMS)
        await asyncio.sleep(6.0)
        spoken = []
        for client in clients:
            r = client.received
            spoken.append(sum(1 for t, v in zip(r.audio_times, r.audio_rms)
                              if t >= sent and v > SPEECH_RMS))
            events = services.registry.get(client.sessionid).events.history
            said = [e["text"] for e in events if e["event"] == "start"]
            assert said == [texts[clients.index(client)]]
        # each heard an amount of speech that grows with its own text, not the others'
        assert spoken[0] < spoken[1] < spoken[2], spoken
    finally:
        for client in clients:
            await client.close()


async def test_a_stalled_client_does_not_slow_the_others(livehuman):  # noqa: F811
    """A peer process frozen with SIGSTOP (it reads nothing any more) while its session talks."""
    base_url, services = livehuman
    frozen = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "orchestrator.client", base_url, "--seconds", "60",
        stdout=asyncio.subprocess.PIPE)
    client = AvatarClient(base_url, keep_video=False)
    frozen_session = None
    try:
        frozen_id = json.loads(await asyncio.wait_for(frozen.stdout.readline(), 30))["sessionid"]
        frozen.send_signal(signal.SIGSTOP)
        await client.connect()
        await client.wait_for_video(5)
        long_text = " ".join(["Both sessions keep talking while one of the peers is frozen."] * 4)
        frozen_session = services.registry.get(frozen_id)
        status, _ = await client.post("/human", sessionid=frozen_id, type="echo", text=long_text)
        assert status == 200
        await client.post("/human", type="echo", text=long_text)
        t0 = time.monotonic()
        await asyncio.sleep(4.0)
        assert fps(client.received.video_times, t0 + 0.5, t0 + 4.0) >= 24.0
        assert frozen_session.frames_sent > 25 * 4, "the frozen peer's session kept its clock"
    finally:
        frozen.kill()
        await frozen.wait()
        await client.close()
        if frozen_session is not None:  # its peer is gone without a goodbye
            await frozen_session.close()


async def test_metrics_count_sessions_and_utterances_in_prometheus_format(livehuman):  # noqa: F811
    from prometheus_client.parser import text_string_to_metric_families

    base_url, services = livehuman

    async def scrape() -> dict:
        async with aiohttp.ClientSession() as http, http.get(f"{base_url}/metrics") as resp:
            assert resp.status == 200 and resp.content_type == "text/plain"
            text = await resp.text()
        return {(s.name, tuple(sorted(s.labels.items()))): s.value
                for family in text_string_to_metric_families(text) for s in family.samples}

    before = await scrape()
    started = ("livehuman_session_events_total", (("event", "start"), ("kind", "echo")))
    client = AvatarClient(base_url, keep_video=False)
    try:
        await client.connect()
        await client.wait_for_video(5)
        during = await scrape()
        assert during[("livehuman_sessions", ())] == before[("livehuman_sessions", ())] + 1
        assert during[("livehuman_triton_ready", ())] == 1
        sent = time.monotonic()
        await client.post("/human", type="echo", text="Count me.")
        await client.wait_for_speech(sent, SPEECH_RMS)
        after = await scrape()
        assert after[started] == before.get(started, 0) + 1
    finally:
        await client.close()


async def test_metrics_show_the_event_loop_lag_and_each_stage_of_a_talking_tick(livehuman):  # noqa: F811
    """Issue 20: where a talking tick's time goes, and how late the event loop runs, as
    histograms in /metrics (bench/density.py reads them)."""
    from prometheus_client.parser import text_string_to_metric_families

    from orchestrator.media.stage_timing import STAGES

    base_url, services = livehuman

    async def counts() -> dict[str, float]:
        async with aiohttp.ClientSession() as http, http.get(f"{base_url}/metrics") as resp:
            text = await resp.text()
        found = {}
        for family in text_string_to_metric_families(text):
            for s in family.samples:
                if s.name == "livehuman_event_loop_lag_seconds_count":
                    found["loop"] = s.value
                elif s.name == "livehuman_stage_seconds_count":
                    found[s.labels["stage"]] = s.value
        return found

    before = await counts()
    assert set(STAGES) <= set(before), "every stage's series from the start"
    client = AvatarClient(base_url, keep_video=False)
    try:
        await client.connect()
        await client.wait_for_video(5)
        session = services.registry.get(client.sessionid)
        sent = time.monotonic()
        await client.post("/human", type="echo", text="Where does the time go?")
        await client.wait_for_speech(sent, SPEECH_RMS)
        deadline = time.monotonic() + 15
        while session.speaking and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        await asyncio.sleep(0.5)  # idle again: shared frames
        after = await counts()
    finally:
        await client.close()
    grown = {key for key in after if after[key] > before.get(key, 0)}
    assert {"loop", *STAGES} <= grown, f"not recorded: {sorted({'loop', *STAGES} - grown)}"

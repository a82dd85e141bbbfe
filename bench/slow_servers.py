"""Slow and failing outside servers (issue 22, items 1 and 3), against a server process.

- TTS server that hangs (accepts the request, never answers): seconds from POST /human to the
  utterance's `error` event, and whether the next queued utterance is then spoken;
- TTS server that trickles (headers, then 2 bytes every --trickle-every seconds): the same;
- LLM at 1 token/s with no punctuation until its end: the longest stretch, from the question to
  the answer's `end`, with neither speech audio at the client nor an SSE event.

Fake servers on 127.0.0.1 (tests/support/: the OpenAI speech and chat protocols). `--repo DIR`
runs another checkout's server (the one before a change); `--cap S` stops waiting for an event
after S seconds (reported as null).

    python bench/slow_servers.py [--repo DIR] [--cap 200] [--trickle-every 25] [--out F]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
from pathlib import Path

import aiohttp
from server_process import REPO, start_server  # bench/ is the script's directory

from orchestrator.client import AvatarClient

sys.path.insert(0, str(REPO / "tests" / "support"))
from fake_openai import FakeLLM, run_fake_openai  # noqa: E402
from fake_voice_servers import FakeVoice, run_fake_voice_server  # noqa: E402

RESULTS = Path(__file__).parent / "results"
SPEECH_RMS = 0.01
SLOW_REPLY = "Well I think the capital of the country in the north is a city called Oslo."


async def sse(base_url: str, sessionid: int, into: list[tuple[float, dict]]) -> None:
    async with aiohttp.ClientSession() as http, http.get(
            f"{base_url}/sse", params={"sessionid": str(sessionid)}) as resp:
        async for line in resp.content:
            if line.startswith(b"data: "):
                into.append((time.monotonic(), json.loads(line[6:])))


async def wait_event(events, name: str, timeout: float, **match) -> float | None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for at, event in events:
            if event["event"] == name and all(event.get(k) == v for k, v in match.items()):
                return at
        await asyncio.sleep(0.02)
    return None


async def hung_tts(fail: str, fake: FakeVoice, server, args) -> dict:
    client = AvatarClient(server.base_url, keep_video=False)
    events: list[tuple[float, dict]] = []
    try:
        await client.connect()
        reader = asyncio.create_task(sse(server.base_url, client.sessionid, events))
        await client.wait_for_video(5)
        fake.fail = fail
        asked_before = len(fake.requests)
        sent = time.monotonic()
        _, answer = await client.post("/human", type="echo", text="This sentence hangs.")
        first = answer["data"]["utterance_id"]
        while len(fake.requests) == asked_before:
            await asyncio.sleep(0.01)
        fake.fail = ""
        _, answer = await client.post("/human", type="echo", text="Then this one.")
        second = answer["data"]["utterance_id"]
        error_at = await wait_event(events, "error", args.cap, utterance_id=first)
        end_at = (await wait_event(events, "end", 30, utterance_id=second)
                  if error_at is not None else None)
        messages = [e.get("msg") for _, e in events if e["event"] == "error"]
        reader.cancel()
        return {"server": fail, "seconds_to_error": error_at and round(error_at - sent, 2),
                "error": messages[:1], "next_utterance_spoken": end_at is not None,
                "cap_s": args.cap}
    finally:
        await client.close()


async def slow_llm(server, args) -> dict:
    client = AvatarClient(server.base_url, keep_video=False)
    events: list[tuple[float, dict]] = []
    try:
        await client.connect(llmid="slow")
        reader = asyncio.create_task(sse(server.base_url, client.sessionid, events))
        await client.wait_for_video(5)
        asked = time.monotonic()
        await client.post("/human", type="chat", text="Which city?")
        ended = await wait_event(events, "end", args.cap) or time.monotonic()
        r = client.received
        marks = sorted([asked, ended]
                       + [t for t, rms in zip(r.audio_times, r.audio_rms)
                          if rms > SPEECH_RMS and asked <= t <= ended]
                       + [t for t, _ in events if asked <= t <= ended])
        gaps = [b - a for a, b in zip(marks, marks[1:])]
        first_audio = next((t for t, rms in zip(r.audio_times, r.audio_rms)
                            if t >= asked and rms > SPEECH_RMS), None)
        reader.cancel()
        return {"llm_tokens_per_s": 1.0,
                "longest_silence_without_event_s": round(max(gaps), 2),
                "first_audio_s": first_audio and round(first_audio - asked, 2),
                "events": [(round(t - asked, 1), e["event"]) for t, e in events
                           if t >= asked]}
    finally:
        await client.close()


async def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repo", type=Path, default=REPO)
    p.add_argument("--cap", type=float, default=200.0)
    p.add_argument("--trickle-every", type=float, default=25.0)
    p.add_argument("--out", type=Path, default=RESULTS / "slow_servers.json")
    args = p.parse_args()
    results = {"repo": str(args.repo)}
    # One server: the fake speech server is its TTS, the fake LLM its knowledge base's LLM.
    voice = FakeVoice(trickle_every_s=args.trickle_every)
    llm = FakeLLM(reply=SLOW_REPLY, token_delay_s=1.0)
    async with run_fake_voice_server("openai", voice) as tts_url, \
            run_fake_openai(llm) as llm_url:
        with tempfile.TemporaryDirectory() as knowledge:
            kb = Path(knowledge) / "slow"
            kb.mkdir()
            (kb / "profile.json").write_text(json.dumps({"base_url": llm_url, "model": "m"}))
            server = await start_server("--tts", "openai", "--tts-server", tts_url,
                                        "--knowledge-dir", knowledge, "--no-voice-input",
                                        repo=args.repo)
            try:
                for fail in ("hang", "trickle"):
                    results[f"tts_{fail}"] = await hung_tts(fail, voice, server, args)
                    print(json.dumps(results[f"tts_{fail}"]), flush=True)
                results["llm_1_token_per_s"] = await slow_llm(server, args)
                print(json.dumps(results["llm_1_token_per_s"]), flush=True)
            finally:
                server.stop()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    asyncio.run(main())

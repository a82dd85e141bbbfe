"""Voice input from the web page in a real headless Chromium: its fake microphone plays a WAV of
Piper speech, the page (microphone hands-free or push-to-talk) sends it, the server hears a turn
and answers from the FAQ; speech while the avatar talks interrupts it; push-to-talk sends
nothing until held, and pressing it cuts the avatar off."""

from __future__ import annotations

import asyncio
import wave
from pathlib import Path

import numpy as np
import pytest
import scipy.signal
from chromium import CHROMIUM, CHROMIUM_ARGS
from piper_speech import TEST_VOICE
from server_fixtures import livehuman  # noqa: F401  (fixture)
from session_events import wait_event
from test_voice_input import ANSWER_START, LONG_ECHO, QUESTION, words

from orchestrator.tts import PiperEngine, synthesize_all

WAV_RATE_HZ = 48000
# The fake microphone starts playing at getUserMedia, before the WebRTC connection is up:
# lead silence long enough for the connection (and, for barge-in, the avatar to start talking).
LEAD_SILENCE_S = 3.0
BARGE_IN_LEAD_SILENCE_S = 7.0
TAIL_SILENCE_S = 3.0


async def speech_wav(triton, text: str, path: Path, lead_s: float) -> Path:
    """`text` in the project's Piper voice as a 48 kHz mono s16 WAV, padded with silence."""
    piper = await PiperEngine.open(triton.url)
    try:
        audio = await synthesize_all(piper, text, TEST_VOICE)
        rate_hz = piper.sample_rate_hz
    finally:
        await piper.close()
    g = np.gcd(rate_hz, WAV_RATE_HZ)
    audio = scipy.signal.resample_poly(audio, WAV_RATE_HZ // g, rate_hz // g)
    padded = np.concatenate([np.zeros(int(lead_s * WAV_RATE_HZ)), audio,
                             np.zeros(int(TAIL_SILENCE_S * WAV_RATE_HZ))])
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(WAV_RATE_HZ)
        w.writeframes((np.clip(padded, -1, 1) * 32767).astype("<i2").tobytes())
    return path


def microphone_args(wav: Path) -> list[str]:
    """Chromium flags: grant getUserMedia without a prompt, and a fake microphone that plays
    `wav` once (without %noloop it would repeat the question forever)."""
    return [*CHROMIUM_ARGS, "--use-fake-ui-for-media-stream", "--use-fake-device-for-media-stream",
            f"--use-file-for-fake-audio-capture={wav}%noloop"]


async def connect_with_microphone(browser, base_url: str, errors: list[str],
                                  mode: str = "handsfree"):
    page = await browser.new_page()
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    await page.goto(base_url + "/")
    await page.select_option("#mic-mode", mode)
    await page.click("#connect")
    await page.wait_for_function("state.sessionid !== null && state.mic", timeout=20000)
    return page, await page.evaluate("state.sessionid")


@pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="chromium is not installed (make test installs it)")
async def test_page_microphone_question_gets_the_faq_answer(livehuman, triton, tmp_path):  # noqa: F811
    from playwright.async_api import async_playwright

    base_url, services = livehuman
    wav = await speech_wav(triton, QUESTION, tmp_path / "question.wav", LEAD_SILENCE_S)
    errors: list[str] = []
    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=CHROMIUM, args=microphone_args(wav))
        try:
            page, sessionid = await connect_with_microphone(browser, base_url, errors)
            transcript = await wait_event(services, sessionid, "transcript", timeout=20, final=True)
            assert {"sessions", "once"} <= set(words(transcript["text"])), transcript
            assert transcript["turn"], transcript
            start = await wait_event(services, sessionid, "start", timeout=15)
            end = await wait_event(services, sessionid, "end", timeout=30)
            assert start["kind"] == end["kind"] == "chat", (start, end)
            assert end["answer"].startswith(ANSWER_START), end
            # the page shows the turn in its log
            await page.wait_for_function(
                "[...document.querySelectorAll('#log li')].some(li => li.textContent.includes('you: ') && li.textContent.includes('sessions'))",
                timeout=5000)
            assert services.registry.get(sessionid).listener is not None
            await page.click("#disconnect")
        finally:
            await browser.close()
    assert not errors, errors


@pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="chromium is not installed (make test installs it)")
@pytest.mark.slow  # CI: barge-in by the Python client's microphone, tests/voice_input/test_voice_input.py
async def test_page_microphone_interrupts_the_avatar(livehuman, triton, tmp_path):  # noqa: F811
    from playwright.async_api import async_playwright

    base_url, services = livehuman
    wav = await speech_wav(triton, "Hello there.", tmp_path / "hello.wav", BARGE_IN_LEAD_SILENCE_S)
    errors: list[str] = []
    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=CHROMIUM, args=microphone_args(wav))
        try:
            page, sessionid = await connect_with_microphone(browser, base_url, errors)
            await page.fill("#text", LONG_ECHO)
            await page.click("#echo")
            start = await wait_event(services, sessionid, "start", timeout=15)
            assert start["text"] == LONG_ECHO, start
            history = services.registry.get(sessionid).events.history
            assert not any(e["event"] in ("end", "listening") for e in history), history
            interrupted = await wait_event(services, sessionid, "interrupted", timeout=15)
            assert interrupted["text"] == LONG_ECHO, interrupted
            assert any(e["event"] == "barge_in" for e in history)
            transcript = await wait_event(services, sessionid, "transcript", timeout=15, final=True)
            assert "hello" in words(transcript["text"]), transcript
            await page.wait_for_function(
                "[...document.querySelectorAll('#log li')].some(li => li.textContent.includes('interrupted'))",
                timeout=5000)
            await page.click("#disconnect")
        finally:
            await browser.close()
    assert not errors, errors


@pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="chromium is not installed (make test installs it)")
@pytest.mark.slow  # CI: push-to-talk by the Python client, test_voice_input.py; the page's microphone, above
async def test_push_to_talk_sends_only_while_held_and_cuts_the_avatar_off(livehuman, triton,  # noqa: F811
                                                                          tmp_path):
    from playwright.async_api import async_playwright

    base_url, services = livehuman
    # Not held: the question plays into a muted track; the server hears nothing.
    unheld = await speech_wav(triton, QUESTION, tmp_path / "unheld.wav", LEAD_SILENCE_S)
    # Held: the avatar is talking when the user presses (an interrupt at once), then speaks.
    held = await speech_wav(triton, QUESTION, tmp_path / "held.wav", BARGE_IN_LEAD_SILENCE_S)
    errors: list[str] = []
    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=CHROMIUM, args=microphone_args(unheld))
        try:
            page, sessionid = await connect_with_microphone(browser, base_url, errors, "ptt")
            assert await page.is_visible("#ptt") and await page.is_enabled("#ptt")
            await asyncio.sleep(LEAD_SILENCE_S + 5.0)  # the whole question has played, unheld
            session = services.registry.get(sessionid)
            assert session.listener is not None  # the uplink is there, only muted
            heard = [e["event"] for e in session.events.history]
            assert not {"listening", "transcript", "question"} & set(heard), heard
            await page.click("#disconnect")
        finally:
            await browser.close()
        browser = await pw.chromium.launch(executable_path=CHROMIUM, args=microphone_args(held))
        try:
            page, sessionid = await connect_with_microphone(browser, base_url, errors, "ptt")
            await page.fill("#text", LONG_ECHO)
            await page.click("#echo")
            await wait_event(services, sessionid, "start", timeout=15)
            await page.wait_for_function("state.speaking", timeout=5000)
            await page.focus("#ptt")
            await page.keyboard.down("Space")  # hold to talk
            interrupted = await wait_event(services, sessionid, "interrupted", timeout=5)
            assert interrupted["text"] == LONG_ECHO, interrupted
            history = services.registry.get(sessionid).events.history
            assert not any(e["event"] == "listening" for e in history), history  # not barge-in
            await wait_event(services, sessionid, "listening", timeout=15)
            await asyncio.sleep(3.5)  # the question is over (about 2.5 s)
            await page.keyboard.up("Space")
            transcript = await wait_event(services, sessionid, "transcript", timeout=15, final=True)
            assert {"sessions", "once"} <= set(words(transcript["text"])), transcript
            end = await wait_event(services, sessionid, "end", timeout=30)
            assert end["kind"] == "chat" and end["answer"].startswith(ANSWER_START), end
            assert await page.evaluate("state.talking") is False
            await page.click("#disconnect")
        finally:
            await browser.close()
    assert not errors, errors

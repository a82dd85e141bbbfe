"""Voice turns over WebRTC: end of the user's speech -> first answer audio at the client, barge-in
onset -> silence, and the ASR's word error rate, with the server as its own process.

    python bench/voice_turn.py [--turns 20] [--barge-ins 10] [--push-to-talk]
    python bench/voice_turn.py --babble [--babble-s 60] [--turns 10]
    python bench/voice_turn.py --echo [--echo-seconds 60] [--barge-ins 10] [--no-echo-cancellation]

The user's questions are 20 of the shipped FAQ's, synthesised by Piper (`joe`) through the
server's Triton, trimmed of leading/trailing silence and played on an aiortc microphone track
(`orchestrator.client.Microphone`, 48 kHz, 20 ms frames). Chat answers come from the FAQ (no LLM).

- turn latency: from the client's last speech sample (the end of the user's speech) to the first
  answer audio frame with speech energy at the client; it includes the VAD's end-of-speech
  silence (--vad-min-silence, default 0.35 s), Whisper on Triton, the FAQ lookup, Piper, lip-sync
  and WebRTC delivery.
- barge-in: the avatar echoes a long text; 1 s into its speech the user says "Hello there.";
  from the client's first speech sample to the first received audio frame after which the
  avatar's audio stays below -46 dBFS (rms 0.005) for 200 ms.
- WER: the `transcript` events against the questions (words lower-cased, punctuation dropped).
- `--push-to-talk`: the client releases the button when its last sample has left (POST
  /end_turn, as the web page does), so no end-of-turn silence is waited for.

- `--babble`: background talk instead (tests/support/babble.py: six Piper talkers at -35 dBFS,
  `--babble-level`), one babble for the whole run: 5 s of lead-in (its onset: the noise floor
  learns it; reported apart), `--babble-s` seconds with the avatar idle, then as long with the
  avatar talking over it (a long echo, said again whenever it ends): false turns per minute
  (final transcripts that became turns), `listening` events per minute, barge-ins and
  transcripts dropped (by reason); then `--turns` FAQ questions, each 3 s into its own 8-s
  stretch of the babble at +15 dB SNR (`--snr`): WER, questions without a turn, other turns.

- `--echo`: the avatar hears itself. The client's microphone also plays back the avatar's audio
  as the client received it, -10 dB and 150 ms later (`orchestrator.client.EchoingMicrophone`: a
  kiosk, a laptop without headphones). The avatar answers typed FAQ questions in chat mode until
  `--echo-seconds` of answers were played: self-interrupts (`barge_in`/`interrupted` events),
  false turns (final transcripts that became turns) per minute of answers, and the echoes caught
  by the transcript match (`echo: true`). Then `--barge-ins` times, over the same echo, the user
  says "Hello there." 2 s into a long echo: barge-in time (the client's first speech sample to
  the `barge_in` event at the client; and to the avatar's audio quiet, as above), barge-ins
  that came before the user spoke, and whether the user's words were transcribed as a turn.
  `--no-echo-cancellation` passes the flag to the server (the guards alone).


Writes bench/results/voice_turn.json (voice_turn_ptt.json with --push-to-talk, voice_turn_babble.json
with --babble, voice_turn_echo.json or voice_turn_echo_noaec.json with --echo).
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import json
import math
import sys
import time
from pathlib import Path

import aiohttp
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests" / "support"))
from babble import BABBLE_DBFS, BABBLE_SENTENCES, QUESTION_SNR_DB, babble, over  # noqa: E402
from intelligibility import word_error_rate  # noqa: E402
from server_process import start_server  # noqa: E402

from orchestrator.client import AvatarClient, EchoingMicrophone, Microphone  # noqa: E402
from orchestrator.settings import DEFAULT_BARGE_IN_MIN_S, Settings  # noqa: E402
from orchestrator.speech.pipeline import LEAD_SILENCE_KEPT_S  # noqa: E402
from orchestrator.tts import PiperEngine, Voice, synthesize_all  # noqa: E402

RESULTS = Path(__file__).parent / "results"
FAQ = Path(__file__).resolve().parent.parent / "orchestrator/chat/shipped_knowledge/default/faq.csv"
LONG_ECHO = ("This is a long sentence that the avatar speaks for a good while, so that the user "
             "can cut in while it talks. It goes on and on, about nothing in particular, and "
             "then it goes on some more until someone interrupts it.")
BARGE_IN_TEXT = "Hello there."
SPEECH_RMS = 0.01
QUIET_RMS = 0.005
QUIET_FRAMES = 10  # 200 ms of 20 ms audio frames


def questions(n: int) -> list[str]:
    with FAQ.open(encoding="utf-8") as f:
        rows = [r["question"] for r in csv.DictReader(f) if r["question"].isascii()]
    return rows[:n]


def trimmed(audio: np.ndarray, rate_hz: int) -> np.ndarray:
    """Without leading/trailing silence (10 ms windows below SPEECH_RMS / 2)."""
    win = rate_hz // 100
    rms = [np.sqrt(np.mean(audio[k:k + win] ** 2)) for k in range(0, audio.size - win, win)]
    loud = [k for k, r in enumerate(rms) if r > SPEECH_RMS / 2]
    return audio[loud[0] * win:(loud[-1] + 1) * win] if loud else audio


class EventLog:
    """The session's SSE events with their arrival times."""

    def __init__(self, base_url: str, sessionid: int) -> None:
        self.items: list[tuple[float, dict]] = []
        self._task = asyncio.create_task(self._read(f"{base_url}/sse?sessionid={sessionid}"))

    async def _read(self, url: str) -> None:
        timeout = aiohttp.ClientTimeout(total=None)  # the stream lasts the whole run
        async with aiohttp.ClientSession(timeout=timeout) as http, http.get(url) as resp:
            async for line in resp.content:
                if line.startswith(b"data:"):
                    self.items.append((time.monotonic(), json.loads(line[5:])))

    async def wait(self, name: str, since: int, timeout: float = 20.0, **fields) -> dict:
        """The first `name` event from index `since` on whose `fields` have those values (a
        turn's `transcript` is `final=True`: a partial may come first)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for _, item in self.items[since:]:
                if item["event"] == name and all(item.get(k) == v for k, v in fields.items()):
                    return item
            await asyncio.sleep(0.01)
        raise TimeoutError(f"no {name} event {fields}")

    def arrival(self, name: str, since: int, **fields) -> float:
        """When the first `name` event (with `fields`) from index `since` on arrived
        (monotonic s)."""
        return next(t for t, item in self.items[since:] if item["event"] == name
                    and all(item.get(k) == v for k, v in fields.items()))

    async def close(self) -> None:
        self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)


def summary_ms(values: list[float]) -> dict:
    a = np.array(values) * 1000
    return {"n": len(values), "p50_ms": round(float(np.percentile(a, 50)), 1),
            "p95_ms": round(float(np.percentile(a, 95)), 1),
            "min_ms": round(float(a.min()), 1), "max_ms": round(float(a.max()), 1)}


def quiet_from(client: AvatarClient, since: float) -> float | None:
    r = client.received
    idx = [i for i, t in enumerate(r.audio_times) if t >= since]
    for j, i in enumerate(idx):
        window = idx[j:j + QUIET_FRAMES]
        if len(window) == QUIET_FRAMES and all(r.audio_rms[k] < QUIET_RMS for k in window):
            return r.audio_times[i]
    return None


async def run(turns: int, barge_ins: int, push_to_talk: bool = False) -> dict:
    server = await start_server()
    piper = await PiperEngine.open(server.triton_url)
    mic = Microphone()
    client = AvatarClient(server.base_url, keep_video=False, microphone=mic)
    events = None
    try:
        texts = questions(turns)
        speech = {t: trimmed(await synthesize_all(piper, t, Voice.named("joe")),
                             piper.sample_rate_hz) for t in [*texts, BARGE_IN_TEXT]}
        await client.connect()
        await client.wait_for_video(10)
        events = EventLog(server.base_url, client.sessionid)
        await asyncio.sleep(1.0)
        latencies, asr_ms, wait_ms, speculative, pairs, missed = [], [], [], 0, [], []
        to_transcript, to_start, to_audio = [], [], []  # where a turn's time goes
        for text in texts:
            since = len(events.items)
            mic.play(speech[text], piper.sample_rate_hz)
            if push_to_talk:  # released as the last sample leaves
                while mic.speech_ended_at is None:
                    await asyncio.sleep(0.005)
                await client.end_turn()
            transcript = await events.wait("transcript", since, final=True)
            pairs.append((text, transcript["text"]))
            asr_ms.append(transcript["asr_ms"])
            wait_ms.append(transcript["wait_ms"])
            speculative += bool(transcript["speculative"])
            if not transcript["turn"]:
                missed.append(text)
                continue
            first = await client.wait_for_speech(mic.speech_ended_at, SPEECH_RMS, timeout=10)
            latencies.append(first - mic.speech_ended_at)
            heard_at = events.arrival("transcript", since, final=True)
            started_at = events.arrival("start", since)
            to_transcript.append(heard_at - mic.speech_ended_at)
            to_start.append(started_at - heard_at)
            to_audio.append(first - started_at)
            await asyncio.sleep(0.3)
            await client.post("/interrupt_talk")  # the next question need not wait for it
            await asyncio.sleep(0.5)
        onsets = []
        for _ in range(barge_ins):
            since = len(events.items)
            await client.post("/human", type="echo", text=LONG_ECHO)
            await events.wait("start", since)
            await client.wait_for_speech(time.monotonic(), SPEECH_RMS)
            await asyncio.sleep(1.0)
            mic.play(speech[BARGE_IN_TEXT], piper.sample_rate_hz)
            await events.wait("interrupted", since, timeout=10)
            while mic.speech_started_at is None:
                await asyncio.sleep(0.005)
            onset = mic.speech_started_at
            await asyncio.sleep(0.6)
            quiet = quiet_from(client, onset)
            if quiet is not None:
                onsets.append(quiet - onset)
            await events.wait("transcript", since, timeout=30, final=True)  # a turn
            await asyncio.sleep(0.3)
            await client.post("/interrupt_talk")
            await asyncio.sleep(0.5)
        return {
            "turn_latency": summary_ms(latencies),
            # the turn in three legs: end of speech -> `transcript` event at the client ->
            # the answer's `start` event (its first frame popped by the player) -> first audio
            "legs": {"to_transcript": summary_ms(to_transcript),
                     "transcript_to_start": summary_ms(to_start),
                     "start_to_audio": summary_ms(to_audio)},
            "asr_ms": {"p50": float(np.percentile(asr_ms, 50)),
                       "p95": float(np.percentile(asr_ms, 95))},
            # end of speech confirmed -> transcript (ASR left after the silence wait)
            "transcript_wait_ms": {"p50": float(np.percentile(wait_ms, 50)),
                                   "p95": float(np.percentile(wait_ms, 95))},
            "speculative_transcripts": speculative,
            "barge_in_to_silence": summary_ms(onsets) if onsets else None,
            "asr_wer": round(word_error_rate(pairs), 4),
            "transcripts": [{"said": s, "heard": h} for s, h in pairs],
            "no_turn": missed,
            "settings": {"vad_min_silence_s": Settings().vad_min_silence_s,
                         "vad_min_speech_s": Settings().vad_min_speech_s,
                         "barge_in_min_s": DEFAULT_BARGE_IN_MIN_S, "speculative_asr": True,
                         "tts_lead_silence_kept_s": LEAD_SILENCE_KEPT_S,
                         "uplink_prefetch_packets": 1, "asr": "whisper tiny.en int8 on Triton",
                         "answers": "shipped FAQ", "tts": "piper joe",
                         "push_to_talk": push_to_talk},
        }
    finally:
        if events is not None:
            await events.close()
        await client.close()
        await piper.close()
        server.stop()


BABBLE_QUESTION_AT_S = 3.0  # each question starts this far into its stretch of babble
BABBLE_AFTER_QUESTION_S = 5.0  # and this much babble follows it
BABBLE_LEAD_IN_S = 5.0  # babble before the idle part (the noise floor learns it): "onset"


def count(items: list[dict], name: str, **fields) -> int:
    return sum(1 for item in items if item["event"] == name
               and all(item.get(k) == v for k, v in fields.items()))


def babble_figures(items: list[dict], seconds: float) -> dict:
    """False turns, `listening` and barge-ins in `items` (events of `seconds` of babble)."""
    dropped: dict[str, int] = {}
    for item in items:
        if item["event"] == "transcript" and item.get("final") and not item.get("turn"):
            reason = item.get("dropped") or ("empty" if not item["text"] else "not_speakable")
            dropped[reason] = dropped.get(reason, 0) + 1
    turns = count(items, "transcript", final=True, turn=True)
    return {"seconds": seconds, "false_turns": turns,
            "false_turns_per_min": round(turns * 60 / seconds, 2),
            "listening_per_min": round(count(items, "listening") * 60 / seconds, 2),
            "barge_ins": count(items, "barge_in"), "interrupted": count(items, "interrupted"),
            "transcripts_dropped": dropped,
            "false_transcripts": [item["text"] for item in items
                                  if item["event"] == "transcript" and item.get("turn")]}


async def run_babble(seconds: float, questions_n: int, level_dbfs: float, snr_db: float) -> dict:
    server = await start_server()
    piper = await PiperEngine.open(server.triton_url)
    mic = Microphone()
    client = AvatarClient(server.base_url, keep_video=False, microphone=mic)
    events = None
    rate = piper.sample_rate_hz
    try:
        texts = questions(questions_n)
        said = {t: await synthesize_all(piper, t, Voice.named("joe"))
                for t in BABBLE_SENTENCES}
        speech = {t: trimmed(await synthesize_all(piper, t, Voice.named("joe")), rate)
                  for t in texts}
        # one babble for the whole run: the lead-in (the floor learns it), idle, talking, and
        # the questions, each mixed in BABBLE_QUESTION_AT_S into its stretch
        stretch_s = [BABBLE_QUESTION_AT_S + speech[t].size / rate + BABBLE_AFTER_QUESTION_S
                     for t in texts]
        total_s = BABBLE_LEAD_IN_S + 2 * seconds + sum(stretch_s) + 1.0
        noise = babble([said[t] for t in BABBLE_SENTENCES], total_s, rate, level_dbfs)
        at_s = BABBLE_LEAD_IN_S + 2 * seconds
        asked_at_s = []  # when each question starts, from the start of the microphone's audio
        for text, length in zip(texts, stretch_s):
            noise = over(noise, speech[text], rate, snr_db, at_s + BABBLE_QUESTION_AT_S)
            asked_at_s.append(at_s + BABBLE_QUESTION_AT_S)
            at_s += length
        await client.connect()
        await client.wait_for_video(10)
        events = EventLog(server.base_url, client.sessionid)
        await asyncio.sleep(1.0)

        def items(since: int, until: int | None = None) -> list[dict]:
            return [item for _, item in events.items[since:until]]

        mic.play(noise, rate)
        started = time.monotonic()
        await asyncio.sleep(BABBLE_LEAD_IN_S)
        idle_from = len(events.items)
        await asyncio.sleep(seconds)
        talking_from = len(events.items)
        talks = 0
        talking_until = started + BABBLE_LEAD_IN_S + 2 * seconds
        while time.monotonic() < talking_until:  # the avatar talks, again whenever it ends
            mark = len(events.items)
            await client.post("/human", type="echo", text=LONG_ECHO)
            talks += 1
            while time.monotonic() < talking_until and not any(
                    item["event"] in ("end", "interrupted") for item in items(mark)):
                await asyncio.sleep(0.05)
        questions_from = len(events.items)
        talking = babble_figures(items(talking_from, questions_from), seconds)
        talking["avatar_utterances"] = talks
        await client.post("/interrupt_talk")
        while not mic.idle:
            await asyncio.sleep(0.1)
        await asyncio.sleep(3.0)  # the last question's transcript and answer
        # Each question's turn is the one that arrived after it began and before the next one
        # began (by time: questions share words like "how do I", so words cannot pair them).
        finals = [(at - started, item) for at, item in events.items[questions_from:]
                  if item["event"] == "transcript" and item.get("final") and item.get("turn")]
        pairs, missed = [], []
        for k, text in enumerate(texts):
            until_s = asked_at_s[k + 1] if k + 1 < len(texts) else math.inf
            match = next((f for f in finals if asked_at_s[k] <= f[0] < until_s), None)
            if match is None:
                missed.append(text)
            else:
                finals.remove(match)
            pairs.append((text, match[1]["text"] if match else ""))
        finals = [item for _, item in finals]
        return {
            "onset": babble_figures(items(0, idle_from), BABBLE_LEAD_IN_S),
            "idle": babble_figures(items(idle_from, talking_from), seconds),
            "talking": talking,
            "questions": {"n": len(texts), "snr_db": snr_db,
                          "wer": round(word_error_rate(pairs), 4) if pairs else None,
                          "no_turn": missed, "extra_turns": [f["text"] for f in finals],
                          "transcripts": [{"said": s, "heard": h} for s, h in pairs]},
            "settings": {"babble_dbfs": level_dbfs, "talkers": 6,
                         "lead_in_s": BABBLE_LEAD_IN_S,
                         "vad_level_margin_db": Settings().vad_level_margin_db,
                         "vad_min_turn_speech_s": Settings().vad_min_turn_speech_s,
                         "barge_in_min_s": DEFAULT_BARGE_IN_MIN_S,
                         "asr": "whisper tiny.en int8 on Triton", "tts": "piper joe"},
        }
    finally:
        if events is not None:
            await events.close()
        await client.close()
        await piper.close()
        server.stop()


ECHO_GAIN_DB = -10.0
ECHO_DELAY_S = 0.150


async def run_echo(answer_seconds: float, barge_ins: int, cancel: bool = True) -> dict:
    """The avatar answering while its own voice comes back up the microphone (`--echo`)."""
    server = await start_server(*([] if cancel else ["--no-echo-cancellation"]))
    piper = await PiperEngine.open(server.triton_url)
    mic = EchoingMicrophone(ECHO_GAIN_DB, ECHO_DELAY_S)
    client = AvatarClient(server.base_url, keep_video=False, microphone=mic)
    mic.hear(client.received)
    events = None
    try:
        hello = trimmed(await synthesize_all(piper, BARGE_IN_TEXT, Voice.named("joe")),
                        piper.sample_rate_hz)
        await client.connect()  # chat: a false turn would be a question
        await client.wait_for_video(10)
        events = EventLog(server.base_url, client.sessionid)
        await asyncio.sleep(1.0)
        # 1. answers over their own echo
        played_s, asked, texts = 0.0, 0, questions(50)
        answers_from = len(events.items)
        while played_s < answer_seconds:
            since = len(events.items)
            await client.post("/human", type="chat", text=texts[asked % len(texts)])
            asked += 1
            await events.wait("start", since)
            started = events.arrival("start", since)
            try:
                await events.wait("end", since, timeout=60)
                played_s += events.arrival("end", since) - started
            except TimeoutError:  # cut off (a self-interrupt): what was played counts
                played_s += time.monotonic() - started
            await asyncio.sleep(1.5)  # an echo's transcript lands before the next question
        window = [item for _, item in events.items[answers_from:]]
        final = [e for e in window if e["event"] == "transcript" and e.get("final")]
        false_turns = [e["text"] for e in final if e["turn"]]
        echo_part = {
            "answers_played_s": round(played_s, 1), "questions": asked,
            "self_interrupts": sum(e["event"] == "interrupted" for e in window),
            "self_barge_ins": sum(e["event"] == "barge_in" for e in window),
            "false_turns": len(false_turns),
            "false_turns_per_min": round(len(false_turns) / (played_s / 60), 2) if played_s else None,
            "false_turn_texts": false_turns,
            "echo_transcripts_dropped": [e["text"] for e in final if e.get("echo")],
            "microphone_echo_s": round(mic.echoed_s, 1),
        }
        # 2. a real user over the echo
        to_event, to_quiet, early, transcribed, user_transcripts = [], [], 0, 0, []
        for _ in range(barge_ins):
            since = len(events.items)
            await client.post("/human", type="echo", text=LONG_ECHO)
            await events.wait("start", since)
            await client.wait_for_speech(time.monotonic(), SPEECH_RMS)
            await asyncio.sleep(2.0)
            said_from = len(events.items)
            early += sum(item["event"] == "barge_in" for _, item in events.items[since:said_from])
            mic.play(hello, piper.sample_rate_hz)
            while mic.speech_started_at is None:
                await asyncio.sleep(0.005)
            onset = mic.speech_started_at
            try:
                await events.wait("barge_in", said_from, timeout=10)
                to_event.append(events.arrival("barge_in", said_from) - onset)
            except TimeoutError:
                pass
            await asyncio.sleep(0.6)
            quiet = quiet_from(client, onset)
            if quiet is not None:
                to_quiet.append(quiet - onset)
            deadline = time.monotonic() + 15
            while time.monotonic() < deadline and not any(
                    item["event"] == "transcript" and item["turn"]
                    for _, item in events.items[said_from:]):
                await asyncio.sleep(0.05)
            heard = [item for _, item in events.items[said_from:]
                     if item["event"] == "transcript" and item.get("final")]
            user_transcripts.append([(t["text"], t["turn"]) for t in heard])
            transcribed += any(t["turn"] and "hello" in t["text"].lower() for t in heard)
            await asyncio.sleep(0.5)
            await client.post("/interrupt_talk")
            await asyncio.sleep(1.0)
        return {
            "echo": {"gain_db": ECHO_GAIN_DB, "delay_s": ECHO_DELAY_S,
                     "server_echo_cancellation": cancel},
            "answers_over_echo": echo_part,
            "user_over_echo": {
                "n": barge_ins, "barged_in": len(to_event),
                "barge_in_event": summary_ms(to_event) if to_event else None,
                "barge_in_to_silence": summary_ms(to_quiet) if to_quiet else None,
                "barge_ins_before_the_user_spoke": early,
                "transcribed_as_turn": transcribed,
                "final_transcripts": user_transcripts,  # (text, turn) after the user spoke
            },
        }
    finally:
        if events is not None:
            await events.close()
        await client.close()
        await piper.close()
        server.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--turns", type=int, default=20)
    parser.add_argument("--barge-ins", type=int, default=10)
    parser.add_argument("--push-to-talk", action="store_true",
                        help="end each turn with POST /end_turn when the question has been sent")
    parser.add_argument("--babble", action="store_true",
                        help="background talk: false turns, barge-ins, WER of questions over it")
    parser.add_argument("--babble-s", type=float, default=60.0,
                        help="seconds of babble idle, and again while the avatar talks")
    parser.add_argument("--babble-level", type=float, default=BABBLE_DBFS, help="dBFS")
    parser.add_argument("--snr", type=float, default=QUESTION_SNR_DB,
                        help="dB of the questions over the babble")
    parser.add_argument("--echo", action="store_true",
                        help="the microphone hears the avatar (-10 dB, 150 ms): self-interrupts, "
                        "false turns per minute, barge-in of a user over the echo")
    parser.add_argument("--echo-seconds", type=float, default=60.0,
                        help="with --echo: seconds of answers played over their own echo")
    parser.add_argument("--no-echo-cancellation", action="store_true",
                        help="with --echo: the server's canceller off (the guards alone)")
    args = parser.parse_args()
    if args.echo:
        result = asyncio.run(run_echo(args.echo_seconds, args.barge_ins,
                                      not args.no_echo_cancellation))
        name = "voice_turn_echo_noaec.json" if args.no_echo_cancellation else "voice_turn_echo.json"
        RESULTS.mkdir(exist_ok=True)
        (RESULTS / name).write_text(json.dumps(result, indent=2) + "\n")
        print(json.dumps(result, indent=2))
        return
    if args.babble:
        result = asyncio.run(run_babble(args.babble_s, args.turns, args.babble_level, args.snr))
    else:
        result = asyncio.run(run(args.turns, args.barge_ins, args.push_to_talk))
    RESULTS.mkdir(exist_ok=True)
    name = ("voice_turn_babble.json" if args.babble
            else "voice_turn_ptt.json" if args.push_to_talk else "voice_turn.json")
    (RESULTS / name).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: v for k, v in result.items() if k != "transcripts"}, indent=2))


if __name__ == "__main__":
    main()

"""The avatar's own voice in the user's microphone: echo cancelled against what the session
plays, and the guards that do not depend on the canceller.

A kiosk, a laptop without headphones, a browser whose echo cancellation is off or weak: the
microphone hears the speaker, and the avatar would hear itself (barge in on its own words, answer
them as questions). The server knows exactly what it plays, so it cancels that itself:

- `PlayedAudio` is a sink of the session's ticks (media/sinks.py): the 16 kHz audio the audio
  track sends, with its media-clock time, kept for a few seconds.
- `UplinkClock` gives each uplink frame a nominal arrival time (the earliest arrival seen for its
  sample count: jitter does not move it), so the reference for a frame is what was played at that
  time; what is left (the client's playout, the room, the uplink) is the echo path's delay,
  which the canceller finds itself.
- `EchoCanceller` is one interface, `WebRtcEchoCanceller` WebRTC's AEC3 (the `pywebrtc-audio`
  bindings: 10 ms blocks, its own delay estimator, echo delays up to about 500 ms). Measured on
  Piper speech looped back at -10 dB after 150 ms: 43 dB of echo return loss enhancement after
  the first 3 s, 0.18 s of one core for 17 s of audio (bench/echo_cancellers.py).
- `EchoGuard` runs the canceller on each uplink frame (while the avatar's sound can still come
  back; otherwise the frame passes as it is) and measures the echo path: the delay and the gain
  from the played level to the level of the (cancelled) uplink. While the avatar speaks, a frame
  is "over the echo" only when it is clearly louder (`ECHO_MARGIN_DB`) than that estimate;
  barge-in needs such frames (voice_input/turn_taking.py). In a session's first seconds of
  played sound the path is not settled (`echo_unsettled`: a late echo may not have come back
  yet), and a barge-in over the echo waits for the words.
- `said_by_avatar` tells a transcript that repeats what the avatar said in the last seconds
  (a fuzzy match on words): such a transcript is echo, not a turn.
"""

from __future__ import annotations

import collections
import difflib
import itertools
import logging
import math
import re
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable

import numpy as np

from ..media.clock import AUDIO_SAMPLE_RATE_HZ, AUDIO_SAMPLES_PER_TICK
from ..vad.base import VAD_FRAME_S, VAD_FRAME_SAMPLES

log = logging.getLogger(__name__)

INT16_FULL_SCALE = 32768.0
PLAYED_HISTORY_S = 4.0  # played audio kept for the reference (covers ECHO_MAX_DELAY_S)
# How long after a sound was played its echo may still arrive: the client's playout buffer, the
# room, the uplink. The canceller keeps running this long after the last played sound.
ECHO_MAX_DELAY_S = 2.0
# The uplink's nominal time is the earliest arrival seen over this long: a stalled or lost
# stretch of uplink moves it only until this much time has passed.
UPLINK_CLOCK_WINDOW_S = 10.0
# --- the echo estimate (per VAD frame: 32 ms) -------------------------------------------------
ECHO_HISTORY_S = 8.0  # frames the echo path is measured over
ECHO_MEASURE_EVERY_FRAMES = 16  # ~0.5 s
ECHO_MIN_ACTIVE_S = 1.0  # played sound needed before the path is measured
PLAYED_ACTIVE_RMS = 10 ** (-60 / 20)  # a played frame above -60 dBFS is sound
# The echo's gain is this percentile of the ratios (most echo frames stay under it; the user's
# speech, which moves it up, is rarely most of the avatar's time)
ECHO_GAIN_PERCENTILE = 90
# Of the frames the gain is measured on, those over this many times the median ratio of the
# frames *while the avatar sounds* are the user's voice, not echo (30 dB: an echo's loud frames
# stay well within that of its median, so its gain is not underestimated; a headset's microphone
# hears ~nothing of the avatar, and a user who replies at once is far over that). The median is
# of the frames within ECHO_SOUNDING_S of played sound (an echo's usual delay), not of the whole
# ECHO_MAX_DELAY_S after it: after an answer ends (or is cut) those are silent, echo or not, and
# would pull the median to nothing and the echo out of its own gain.
ECHO_USER_OVER_MEDIAN = 10 ** (30 / 20)
ECHO_SOUNDING_S = 0.3
ECHO_CORRELATED = 0.5  # a delay is measured from levels that correlate this well (log levels)
# ... and taken as proof that the microphone hears the avatar (its gain is measured over the
# frames the sound had that delay to come back in) when they correlate this well: an echo does
# at 0.93-0.99, one with chunks dropped by a loaded test client at 0.57-0.77 in its first
# seconds; a headset user's voice over the avatar reached 0.51 (their onset lined up with the
# answer's).
ECHO_CLEARLY_CORRELATED = 0.65
# The canceller's reference is shifted to this much before the measured delay: AEC3 finds the
# rest itself (its range is ~500 ms).
CANCELLER_DELAY_SLACK_S = 0.1
ECHO_AUDIBLE_GAIN = 10 ** (-40 / 20)  # an echo path below this gain leaves nothing to cancel
# Until the path is measured, the echo is assumed as loud as what was played (a speaker next to
# the microphone): safe, at the price of a barge-in in the first second needing a loud voice.
ASSUMED_ECHO_GAIN = 1.0
ECHO_MARGIN_DB = 6.0  # speech this much louder than the echo estimate is the user's
ECHO_MARGIN = 10 ** (ECHO_MARGIN_DB / 20)
# Speech over the echo for this many frames in a row (~0.1 s) is the user's: an utterance heard
# while the avatar spoke that never had it is the avatar's own voice coming back
CLEAR_OF_ECHO_FRAMES = 3
# The echo path is settled once the frames the echo sounds in (ECHO_SOUNDING_S of played sound)
# add up to this much. Before, an echo later than any heard so far (a busy client's playout:
# 1 s in CI's loaded runs) may still be on its way, and a gain measured before it came back is
# ~0: its first syllables would be clearly over the echo estimate. So until then a run over the
# echo is not told from the user's voice by its level (the words tell: turn_taking.py). By 2.5 s
# an echo up to 1.5 s late has come back for a second, its delay shows clearly
# (ECHO_CLEARLY_CORRELATED: the runs taken for the user's until then are the echo's), and the
# gain is taken over the frames it came back in (measured here: 0.3-1.5 s late echoes are never
# over the margin once settled; 2 s ones are).
ECHO_SETTLE_S = 2.5
# ... unless, with no echo delay clear, this much of the frames with played sound (of the last
# ECHO_HISTORY_S) were taken for the user's: a late echo whose delay does not show (a loaded
# client smears its levels), judged against a gain of ~0 and so left out of it, is most of them
# (CI: the path settled at 2.5 s on such a gain, then barged in on the echo); a user who talked
# over most of the first answer looks the same. Their words barge in until the share drops.
ECHO_SETTLE_USER_SHARE = 0.3
# --- transcripts that repeat the avatar ----------------------------------------------------------
SAID_LOOKBACK_S = 20.0  # sentences started this long before an utterance may be heard in it
ECHO_WORDS_FRACTION = 0.6  # a transcript this much made of the avatar's recent words is echo


class PlayedAudio:
    """What the session plays, as the echo reference: a tick sink (media/sinks.TickSink) the
    player hands every tick's audio, kept for PLAYED_HISTORY_S.

    `tick_time(tick)` is the player's media clock (monotonic seconds at which a tick plays)."""

    def __init__(self, tick_time: Callable[[int], float],
                 history_s: float = PLAYED_HISTORY_S) -> None:
        self._tick_time = tick_time
        self._size = int(history_s * AUDIO_SAMPLE_RATE_HZ)
        self._ring = np.zeros(self._size, np.int16)
        self._end = 0  # absolute sample index (tick * AUDIO_SAMPLES_PER_TICK) past the last one
        self._start_s: float | None = None  # monotonic time of sample 0
        self.sound_until_s = -math.inf  # monotonic time the last non-silent tick ended

    def add(self, tick: int, image: np.ndarray, pcm: np.ndarray) -> None:
        """TickSink: `pcm` int16 [AUDIO_SAMPLES_PER_TICK] is what tick `tick` plays."""
        if self._start_s is None:
            self._start_s = self._tick_time(0)
        start = tick * AUDIO_SAMPLES_PER_TICK
        if start > self._end:  # ticks skipped (the player fell behind): nothing played there
            self._write(self._end, np.zeros(min(start - self._end, self._size), np.int16))
        self._write(start, pcm)
        self._end = max(self._end, start + pcm.size)
        if pcm.any():
            self.sound_until_s = self._tick_time(tick + 1)

    def _write(self, start: int, pcm: np.ndarray) -> None:
        idx = np.arange(start, start + pcm.size) % self._size
        self._ring[idx] = pcm

    def samples(self, t_s: float, n: int) -> np.ndarray:
        """float32 [n]: what was played from monotonic time `t_s` on (zeros where nothing was
        played, or no longer kept)."""
        out = np.zeros(n, np.float32)
        if self._start_s is None:
            return out
        first = round((t_s - self._start_s) * AUDIO_SAMPLE_RATE_HZ)
        lo, hi = max(first, self._end - self._size, 0), min(first + n, self._end)
        if hi > lo:
            out[lo - first:hi - first] = (self._ring[np.arange(lo, hi) % self._size]
                                          / INT16_FULL_SCALE)
        return out


class UplinkClock:
    """The nominal arrival time of uplink samples: the earliest arrival seen (over
    UPLINK_CLOCK_WINDOW_S) for the sample count so far, so network jitter does not move it."""

    def __init__(self, rate_hz: int = AUDIO_SAMPLE_RATE_HZ) -> None:
        self.rate_hz = rate_hz
        self._samples = 0
        self._offsets: collections.deque[tuple[float, float]] = collections.deque()

    def frame(self, n: int, arrived_s: float) -> float:
        """The nominal monotonic time of the first of `n` samples that have just arrived (at
        `arrived_s`)."""
        first = self._samples
        self._samples += n
        offset = arrived_s - self._samples / self.rate_hz
        while self._offsets and self._offsets[-1][1] >= offset:  # a monotonic deque of minima
            self._offsets.pop()
        self._offsets.append((arrived_s, offset))
        while self._offsets[0][0] < arrived_s - UPLINK_CLOCK_WINDOW_S:
            self._offsets.popleft()
        return self._offsets[0][1] + first / self.rate_hz


class EchoCanceller(ABC):
    """An acoustic echo canceller: the microphone's signal and the reference (what was played at
    the same nominal time) in, the microphone's signal without the echo out. Stateful: one per
    session, fed in order."""

    block_samples: int  # `process` takes whole multiples of this

    @abstractmethod
    def process(self, near: np.ndarray, far: np.ndarray) -> np.ndarray:
        """float32 [k * block_samples] 16 kHz (full scale 1.0) each -> float32, same shape."""


class WebRtcEchoCanceller(EchoCanceller):
    """WebRTC's AEC3 (`pywebrtc_audio.EchoCanceller`: the canceller Chrome runs, with its own
    delay estimator and a high-pass filter on the microphone). ImportError when the package is
    missing."""

    block_samples = AUDIO_SAMPLE_RATE_HZ // 100  # AEC3 works on 10 ms blocks

    def __init__(self, rate_hz: int = AUDIO_SAMPLE_RATE_HZ) -> None:
        from pywebrtc_audio import EchoCanceller as Aec3

        self._aec = Aec3(sample_rate=rate_hz, num_channels=1)

    def process(self, near: np.ndarray, far: np.ndarray) -> np.ndarray:
        return self._aec.process(np.ascontiguousarray(near, np.float32),
                                 np.ascontiguousarray(far, np.float32))


def open_canceller() -> EchoCanceller | None:
    """The default canceller, or None (one log line) when its package is not installed."""
    try:
        return WebRtcEchoCanceller()
    except ImportError as exc:
        log.warning("echo cancellation off: %s (pip install pywebrtc-audio)", exc)
        return None


def _rms(x: np.ndarray) -> float:
    return float(np.sqrt(np.mean(np.square(x, dtype=np.float64)))) if x.size else 0.0


class EchoGuard:
    """One session's echo handling on its uplink: `process` each VAD frame in order, then
    `over_echo` says whether that frame is clearly louder than the echo expected in it.

    The canceller's output is what the VAD gets while an echo path is measured (an audible gain);
    before the first measurement, and without an echo, the frame as it arrived. The guard does
    not depend on the canceller: it compares the microphone's level as it arrived with the echo
    estimate of that frame, the echo path's gain times the loudest played level of the last
    ECHO_MAX_DELAY_S. (A canceller that loses the echo for a moment, when the
    client's playout jumps, lets it through at full level: the barge-in must not trust it.)

    Every 0.5 s it measures, over the last ECHO_HISTORY_S of frame levels (32 ms RMS):
    - the echo path's gain: the ECHO_GAIN_PERCENTILE of (microphone level / loudest played level
      of the last ECHO_MAX_DELAY_S) over the frames with played sound, less those of runs that
      were clearly over the echo (the user's voice) once the path is `settled`. It needs no
      exact delay, so a jittery or stalled uplink cannot fool it, but once a delay is measured
      the frames before the played sound had that long to come back are left out (a late
      echo's first silence would pull the gain to ~0); until measured, ASSUMED_ECHO_GAIN;
    - the echo's delay (the lag whose played levels best follow the microphone's: correlation
      of log levels, 0 to ECHO_MAX_DELAY_S), when it is clear (ECHO_CORRELATED): the canceller's
      reference is shifted by it, less CANCELLER_DELAY_SLACK_S, so what is left for AEC3's own
      delay estimator stays well inside its ~500 ms (a busy browser's playout, its jitter
      buffers and the uplink add up to more).

    `canceller` None: no cancellation (`--no-echo-cancellation`), the level guard still works."""

    def __init__(self, played: PlayedAudio, canceller: EchoCanceller | None,
                 frame_samples: int = VAD_FRAME_SAMPLES) -> None:
        self.played = played
        self.canceller = canceller
        self.clock = UplinkClock()
        self.frame_samples = frame_samples
        block = canceller.block_samples if canceller is not None else 0
        # Canceller blocks do not divide the VAD frame: a constant `block` samples are in flight
        # (the output is that much later), so every frame in gives one frame out.
        self._near = np.zeros(0, np.float32)
        self._far = np.zeros(0, np.float32)
        self._out = np.zeros(block, np.float32)
        self._cancelling = False
        self.bulk_delay_s = 0.0  # the canceller's reference is what was played this much earlier
        frames = int(ECHO_HISTORY_S / VAD_FRAME_S)
        self._mic_rms: collections.deque[float] = collections.deque(maxlen=frames)
        # frames of runs clearly over the echo (the user's voice): left out of the echo's gain
        self._user: collections.deque[bool] = collections.deque(maxlen=frames)
        self._over_run = 0
        self._ref_rms: collections.deque[float] = collections.deque(maxlen=frames)
        self._window = int(ECHO_MAX_DELAY_S / VAD_FRAME_S) + 1  # frames an echo may come after
        self._sounding_window = int(ECHO_SOUNDING_S / VAD_FRAME_S) + 1
        self._since_measure = 0
        self.gain = ASSUMED_ECHO_GAIN  # microphone level / the loudest played level
        self.measured = False  # the gain was measured (else ASSUMED_ECHO_GAIN)
        # ... after ECHO_SETTLE_S of the frames the echo sounds in (an echo up to ~1.5 s late
        # has come back into it), with its delay clear or few runs taken for the user's
        self.settled = False
        self.delay_frames: int | None = None  # the echo's measured delay (VAD frames)
        self.echo_lag_frames: int | None = None  # ... when clearly (ECHO_CLEARLY_CORRELATED)
        self.echo_rms = 0.0  # the echo expected in the last frame
        self.frame_rms = 0.0  # the last frame's level as it arrived
        self.played_rms = 0.0  # the loudest played frame of the last ECHO_MAX_DELAY_S
        self._since_sound = math.inf  # frames since the last one with played sound
        self._sounding_frames = 0  # frames within ECHO_SOUNDING_S of played sound, ever
        # the sounding frames the path may first settle at (measured then, not 0.5 s later)
        self._settle_frames = math.ceil(ECHO_SETTLE_S / VAD_FRAME_S)

    def process(self, frame: np.ndarray, arrived_s: float) -> np.ndarray:
        """float32 [frame_samples] as it arrived (at monotonic `arrived_s`) -> the frame to
        detect speech in and transcribe: the echo cancelled while the avatar's sound can still
        come back, else the frame as it is."""
        t = self.clock.frame(frame.size, arrived_s)
        far = self.played.samples(t, frame.size)
        echo_possible = t - ECHO_MAX_DELAY_S < self.played.sound_until_s
        out = frame
        if self.canceller is not None and (echo_possible or self._cancelling):
            shifted = far if self.bulk_delay_s == 0 else self.played.samples(
                t - self.bulk_delay_s, frame.size)
            cancelled = self._cancel(frame, shifted, flush=not echo_possible)
            self._cancelling = echo_possible
            # AEC3 also dampens and distorts a near end it has seen no echo path for: a
            # microphone that does not hear the avatar (a headset) gets its voice as it is, and
            # so does one not measured yet (the guards hold the echo off meanwhile)
            if self.measured and self.gain >= ECHO_AUDIBLE_GAIN:
                out = cancelled
        self.frame_rms = _rms(frame)
        self._mic_rms.append(self.frame_rms)
        far_rms = _rms(far)
        self._ref_rms.append(far_rms)
        self._since_sound = 0 if far_rms > PLAYED_ACTIVE_RMS else self._since_sound + 1
        settle_due = False
        if self._since_sound < self._sounding_window:
            self._sounding_frames += 1
            settle_due = self._sounding_frames == self._settle_frames
        recent = itertools.islice(self._ref_rms, max(0, len(self._ref_rms) - self._window), None)
        self.played_rms = max(recent, default=0.0)
        self.echo_rms = self.gain * self.played_rms
        self._over_run = self._over_run + 1 if self.over_echo else 0
        # Unsettled with a clear delay measured, a run over the echo is the echo that has just
        # begun to come back, not yet in the gain: it stays in the gain's frames
        user = (self._over_run >= CLEAR_OF_ECHO_FRAMES
                and (self.settled or self.echo_lag_frames is None))
        self._user.append(user)
        if user and self._over_run == CLEAR_OF_ECHO_FRAMES:  # the run's first frames too
            for k in range(2, CLEAR_OF_ECHO_FRAMES + 1):
                self._user[-k] = True
        self._since_measure += 1
        # Until the first measurement, every frame: a user who answers a short first answer at
        # once is judged against the measured path from the first frame it is due; and so is
        # the frame the path settles on.
        if (self._since_measure >= ECHO_MEASURE_EVERY_FRAMES or not self.measured
                or (settle_due and not self.settled)):
            self._since_measure = 0
            self._measure()
        return out

    def _cancel(self, frame: np.ndarray, far: np.ndarray, flush: bool) -> np.ndarray:
        assert self.canceller is not None
        block = self.canceller.block_samples
        near = np.concatenate([self._near, frame])
        ref = np.concatenate([self._far, far])
        n = near.size // block * block
        pieces = [self._out, self.canceller.process(near[:n], ref[:n])]
        self._near, self._far = near[n:], ref[n:]
        if flush:  # the echo is over: pass what is in flight on, and the frames after as they are
            pieces.append(self._near)
            self._near = self._far = np.zeros(0, np.float32)
        out = np.concatenate(pieces)
        frame_out, self._out = out[:self.frame_samples], out[self.frame_samples:]
        if flush:
            self._out = np.zeros(block, np.float32)  # ready for the next echo
        return frame_out

    def _measure(self) -> None:
        ref = np.asarray(self._ref_rms)
        loudest = self._loudest(ref)
        played = loudest > PLAYED_ACTIVE_RMS
        # (until there is this much, every frame of a session that has not spoken yet comes
        # here: nothing more is worked out for it)
        if np.count_nonzero(played) * VAD_FRAME_S < ECHO_MIN_ACTIVE_S:
            return
        mic = np.asarray(self._mic_rms)
        self._measure_delay(mic, ref)
        # The frames an echo can be in: played sound within ECHO_MAX_DELAY_S (what the echo
        # estimate holds) that has had the measured delay to come back. The frames before a late
        # echo first arrives hold none of it: counted, they pulled its gain to ~0.
        lag = self.echo_lag_frames or 0
        came_back = np.concatenate([np.zeros(lag), ref[:ref.size - lag]]) if lag else ref
        users = np.asarray(self._user)
        active = played & ~users
        if lag:
            active &= self._loudest(came_back) > PLAYED_ACTIVE_RMS
        if np.count_nonzero(active) * VAD_FRAME_S < ECHO_MIN_ACTIVE_S:
            return
        ratios = mic[active] / loudest[active]
        # The user's own speech is left out before the percentile is taken: frames far over what
        # the frames while the avatar sounds show (ECHO_USER_OVER_MEDIAN). Until the path is
        # measured the guard cannot flag them, and a user who answers a short answer at once is a
        # good part of its frames.
        sounding = self._loudest(came_back, self._sounding_window)[active] > PLAYED_ACTIVE_RMS
        gain_sounding = 0.0
        if np.any(sounding):
            echo = ratios <= ECHO_USER_OVER_MEDIAN * np.median(ratios[sounding])
            # The quiet seconds after each answer that ends or is cut hold no echo: answers cut
            # often (barge-ins) pull the percentile of all frames far under the echo's gain,
            # and the echo then passes for the user (a self-barge-in). So the gain is also
            # taken over the frames the echo sounds in, when there are enough, and the larger
            # one is kept: an echo later than the measured delay (a client's playout that
            # fell behind) still counts through the first.
            echo_sounding = echo & sounding
            if np.count_nonzero(echo_sounding) * VAD_FRAME_S >= ECHO_MIN_ACTIVE_S:
                gain_sounding = float(np.percentile(ratios[echo_sounding],
                                                    ECHO_GAIN_PERCENTILE))
            ratios = ratios[echo]
        self.gain = max(float(np.percentile(ratios, ECHO_GAIN_PERCENTILE)), gain_sounding)
        self.measured = True
        users_share = np.count_nonzero(played & users) / max(1, np.count_nonzero(played))
        self.settled = self.settled or (  # (for the session: a path does not unsettle)
            self._sounding_frames * VAD_FRAME_S >= ECHO_SETTLE_S
            and (self.echo_lag_frames is not None or users_share < ECHO_SETTLE_USER_SHARE))

    def _measure_delay(self, mic: np.ndarray, ref: np.ndarray) -> None:
        """The echo's delay, when the levels show it clearly (ECHO_CORRELATED); the canceller's
        reference follows it."""
        lag, score = self._best_lag(mic, ref)
        if lag is None or score < ECHO_CORRELATED:
            return
        self.delay_frames = lag
        if score >= ECHO_CLEARLY_CORRELATED:
            if self.echo_lag_frames is None and not self.settled:
                # The runs taken for the user's before were the echo coming back later than the
                # gain measured so far (a late echo's first syllables): not the user's.
                self._user = collections.deque([False] * len(self._user),
                                               maxlen=self._user.maxlen)
            self.echo_lag_frames = lag
        bulk = max(0.0, lag * VAD_FRAME_S - CANCELLER_DELAY_SLACK_S)
        if self.canceller is not None and abs(bulk - self.bulk_delay_s) > CANCELLER_DELAY_SLACK_S:
            log.info("echo delay %.0f ms: the canceller's reference shifted by %.0f ms",
                     lag * VAD_FRAME_S * 1000, bulk * 1000)
            self.bulk_delay_s = bulk

    def _loudest(self, ref: np.ndarray, window: int | None = None) -> np.ndarray:
        """For each frame: the loudest played frame of the `window` frames up to it (default
        ECHO_MAX_DELAY_S's)."""
        window = window or self._window
        padded = np.concatenate([np.zeros(window - 1), ref])
        return np.lib.stride_tricks.sliding_window_view(padded, window).max(axis=1)

    def _best_lag(self, mic: np.ndarray, ref: np.ndarray) -> tuple[int | None, float]:
        """The delay (frames) whose played levels best correlate with `mic`'s, and how well."""
        best, best_score = None, -math.inf
        log_mic = np.log(mic + 1e-6)
        for lag in range(0, min(self._window - 1, ref.size - 1) + 1):
            r = ref[:ref.size - lag]
            active = r > PLAYED_ACTIVE_RMS
            if np.count_nonzero(active) * VAD_FRAME_S < ECHO_MIN_ACTIVE_S / 2:
                continue
            a, b = log_mic[lag:][active], np.log(r[active])
            if a.std() == 0 or b.std() == 0:
                continue
            score = float(np.corrcoef(a, b)[0, 1])
            if score > best_score:
                best, best_score = lag, score
        return best, best_score

    @property
    def echo_unsettled(self) -> bool:
        """The last frame may hold the avatar's voice coming back later than any echo heard so
        far: sound was played in the last ECHO_MAX_DELAY_S and the path is not `settled`. Its
        level does not tell it from the user's voice (over_echo may be true of either)."""
        return not self.settled and self.played_rms > PLAYED_ACTIVE_RMS

    @property
    def over_echo(self) -> bool:
        """The last frame, as it arrived, is clearly louder (ECHO_MARGIN_DB) than the echo
        expected in it (no echo is expected when nothing was played; digital silence is over
        nothing)."""
        return self.frame_rms > ECHO_MARGIN * self.echo_rms


_WORD = re.compile(r"[^\W_]+(?:'[^\W_]+)*")


def words(text: str) -> list[str]:
    """Lower-case words of `text` (punctuation dropped)."""
    return _WORD.findall(text.lower())


def said_by_avatar(transcript: str, said: Iterable[str]) -> bool:
    """Whether `transcript` is mostly (ECHO_WORDS_FRACTION of its words, in order) words of
    `said`: the sentences the avatar played around the utterance. An empty transcript is not."""
    heard = words(transcript)
    spoken = [w for sentence in said for w in words(sentence)]
    if not heard or not spoken:
        return False
    matcher = difflib.SequenceMatcher(a=heard, b=spoken, autojunk=False)
    matched = sum(block.size for block in matcher.get_matching_blocks())
    return matched >= ECHO_WORDS_FRACTION * len(heard)

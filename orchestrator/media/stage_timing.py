"""Where a talking tick's time goes: how long each stage of the media path took, in seconds,
recorded where the work is done and handed to whoever subscribed (metrics.py: one histogram per
stage, `livehuman_stage_seconds`).

The stages run in sessions' players, speech pipelines, tracks and encoder threads that share no
object but the process, so the recorder is the process's, like the CPU time it accounts for
(each `--workers` process has its own). Recording costs a `perf_counter` pair and one call per
subscriber (a Prometheus histogram observes in about a microsecond): cheap enough for every
frame. Subscribers are held weakly (an app's Metrics going away unsubscribes it) and are
called from any thread (encoder threads, the executor's): they must be thread-safe.
"""

from __future__ import annotations

import contextlib
import threading
import time
import weakref
from collections.abc import Callable, Iterator

# The stages (the `stage` label). Wall time of what each names:
TTS_SENTENCE = "tts_sentence"  # one sentence's TTS, request to its last audio (await: latency)
FEATURES = "features"  # one piece's resampling and audio features (executor thread)
LIPSYNC_REQUEST = "lipsync_request"  # one chunk's lip-sync call (await: Triton round trip)
STAGE_SHOT = "stage_shot"  # the stage's picture of one tick: compositing, fades (event loop)
PLAYER_TICK = "player_tick"  # one whole tick of a player: shot, audio, sinks (event loop)
VIDEO_ENCODE = "video_encode"  # one frame of a session's own video encoder (executor thread)
IDLE_ENCODE = "idle_encode"  # one frame of a shared idle stream (its own thread)
AUDIO_ENCODE = "audio_encode"  # one 20 ms Opus packet (event loop)
STAGES = (TTS_SENTENCE, FEATURES, LIPSYNC_REQUEST, STAGE_SHOT, PLAYER_TICK, VIDEO_ENCODE,
          IDLE_ENCODE, AUDIO_ENCODE)

Observer = Callable[[str, float], None]  # (stage, seconds)

_lock = threading.Lock()
_observers: tuple[Callable[[], Observer | None], ...] = ()  # weak references, replaced whole


def subscribe(observer: Observer) -> None:
    """From now on `observer(stage, seconds)` is called for every stage timed, from the thread
    that timed it; held weakly (a bound method lives as long as its object)."""
    global _observers
    ref = (weakref.WeakMethod(observer) if hasattr(observer, "__self__")
           else (lambda: observer))
    with _lock:
        _observers = (*(r for r in _observers if r() is not None), ref)


def observe(stage: str, seconds: float) -> None:
    """Record that `stage` (one of STAGES) took `seconds`."""
    for ref in _observers:
        observer = ref()
        if observer is not None:
            observer(stage, seconds)


@contextlib.contextmanager
def timed(stage: str) -> Iterator[None]:
    """Record the wall time of the block as `stage` (also when it raises)."""
    started = time.perf_counter()
    try:
        yield
    finally:
        observe(stage, time.perf_counter() - started)

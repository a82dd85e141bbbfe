"""The one interface of what a session's ticks go to besides its tracks: the recorder and every
output (`outputs/`: an RTMP push, WHEP viewers).

The session's player calls `add` on the event loop once per 40 ms tick with the frame it shows
and the audio that belongs to it; `add` returns at once (a sink that needs time, such as an
encoder or a network, queues the tick for its own thread) and never raises. `close` ends the
sink when it is removed or the session ends.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import numpy as np


class TickSink(Protocol):
    def add(self, tick: int, image: np.ndarray, pcm: np.ndarray) -> None:
        """`tick`: the session's media clock tick (40 ms each); `image`: the RGB frame, uint8
        (height, width, 3), read-only (it may be shared with other sinks); `pcm`: the tick's
        audio, int16 mono at 16 kHz, 640 samples."""


@runtime_checkable
class Sink(TickSink, Protocol):
    async def close(self) -> None:
        """Stop: flush what can be flushed, release the connection; idempotent."""

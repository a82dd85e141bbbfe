"""Silero VAD on Triton (`vad_silero`): batch-first tensors, the recurrent state explicit.

Each session's stream keeps its own state and the previous frame's tail (the context Silero
prepends to every frame) and sends both with each frame, so Triton's dynamic batcher batches the
frames of all sessions into one execution (no sequence batcher). The model is exported by
`python -m export silero-vad` (SILERO_EXPORT): tensors `audio` [B, 576] and `vad_state`
[B, 2, 128] in, `speech` [B, 1] and `vad_state_out` [B, 2, 128] out, all FP32.
"""

from __future__ import annotations

import numpy as np
import tritonclient.grpc.aio as grpcclient

from ..triton.client import TritonModelClient
from ..triton.exports import ModelExport
from .base import VAD, VAD_FRAME_SAMPLES, VADStream

VAD_MODEL = "vad_silero"
SILERO_EXPORT = ModelExport(VAD_MODEL, "export", ("silero-vad",))
# Silero's trained frame at 16 kHz is the interface's frame (vad/base.py): 512 samples.
VAD_CONTEXT_SAMPLES = 64  # the previous frame's tail, prepended to each frame
VAD_STATE_SHAPE = (2, 128)
VAD_TIMEOUT_S = 5.0


class SileroVAD(VAD):
    """The engine: one Triton model client shared by every session's stream."""

    triton_models = (VAD_MODEL,)

    def __init__(self, triton_url: str, model: str = VAD_MODEL) -> None:
        self.client = TritonModelClient(triton_url, model, timeout_s=VAD_TIMEOUT_S)

    def stream(self) -> SileroStream:
        return SileroStream(self)

    async def probability(self, audio: np.ndarray, state: np.ndarray) -> tuple[float, np.ndarray]:
        """(speech probability, next state) of one frame: `audio` float32 [576] (context +
        frame), `state` float32 [2, 128]. Raises InferenceServerException."""
        inputs = []
        for name, array in (("audio", audio), ("vad_state", state)):
            array = np.ascontiguousarray(array, dtype=np.float32)[None]
            tensor = grpcclient.InferInput(name, list(array.shape), "FP32")
            tensor.set_data_from_numpy(array)
            inputs.append(tensor)
        result = await self.client.run(inputs)
        return float(result.as_numpy("speech").ravel()[0]), result.as_numpy("vad_state_out")[0]

    async def close(self) -> None:
        await self.client.close()


class SileroStream(VADStream):
    """One session's Silero state and context."""

    def __init__(self, vad: SileroVAD) -> None:
        self.vad = vad
        self._state = np.zeros(VAD_STATE_SHAPE, np.float32)
        self._context = np.zeros(VAD_CONTEXT_SAMPLES, np.float32)

    async def probability(self, frame: np.ndarray) -> float:
        if frame.shape != (VAD_FRAME_SAMPLES,):
            raise ValueError(f"a VAD frame is [{VAD_FRAME_SAMPLES}], got {list(frame.shape)}")
        prob, self._state = await self.vad.probability(
            np.concatenate([self._context, frame]), self._state)
        self._context = frame[-VAD_CONTEXT_SAMPLES:].copy()
        return prob

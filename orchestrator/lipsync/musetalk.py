"""The MuseTalk 1.5 family (`musetalk*` Triton models, exported by `python -m export
musetalk`): Whisper encoder features as its audio, the avatar's VAE latents as its face.

    served model (ensemble: UNet step + VAE decoder, export/musetalk_configs.py)
    in  latents  FP32 [B, 8, 32, 32]    the avatar frame's latents (masked lower half + whole)
    in  whisper  FP32 [B, 10*L, 384]    the frame's window of Whisper encoder hidden states
    out face_out FP32 [B, 3, 256, 256]  the 256 x 256 crop, RGB in [0, 1]

    audio model (the ensemble's `audio_model` parameter, `<name>_audio`)
    in  mel      FP32 [S, 80, 3000]     Whisper's log-mel of each 30 s of a piece of speech
    out hidden   FP32 [S, 1500, L, 384] every hidden state of the encoder, 50 a second

The audio features are MuseTalk's (its AudioProcessor.get_whisper_chunk): the speech's
log-mel in 30 s segments through the encoder, all L hidden states stacked, cut to the audio's
length (50 positions a second), padded with zeros, and frame i reads positions 2i-4 .. 2i+5
(2 video frames before it, 2 after), flattened position-major to [10 L, 384]. The encoder runs
on Triton once per analysed piece (speech/features.py analyses a growing sentence a bounded
number of times); the windows are cut here. Whisper attends over the whole 30 s, so a frame's
features may change a little as later audio of the sentence arrives: frames are handed out once
their own window is covered (as LiveTalking's streaming does), not when the sentence ends.

The face: the avatar's latents of each frame (`Avatar.model_inputs["latents"]`: from
LiveTalking's `latents.pt`, or computed by `python -m avatars build --model musetalk` with the
exported VAE encoder), never the crop itself: the VAE encoder does not run per tick.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from functools import lru_cache
from typing import ClassVar

import librosa
import numpy as np

from ..media.clock import AUDIO_SAMPLE_RATE_HZ, VIDEO_FPS
from ..triton.client import DEFAULT_TIMEOUT_S, TensorModelClient
from .base import LipSyncModel
from .mel import silent_frames

FACE_PX = 256
LATENT_SHAPE = (8, 32, 32)
LATENTS = "latents"  # the avatar input it reads (Avatar.model_inputs)
AUDIO_MODEL_PARAMETER = "audio_model"  # the ensemble's parameter naming its audio encoder
WHISPER_DIM = 384
# Whisper's features (WhisperFeatureExtractor / openai-whisper's log_mel_spectrogram).
WHISPER_FFT_SAMPLES = 400
WHISPER_HOP_SAMPLES = 160
WHISPER_MEL_BINS = 80
WHISPER_SEGMENT_SAMPLES = 30 * AUDIO_SAMPLE_RATE_HZ  # one encoder input: 30 s
WHISPER_MEL_FRAMES = WHISPER_SEGMENT_SAMPLES // WHISPER_HOP_SAMPLES  # 3000
WHISPER_POSITIONS_PER_S = 50
SAMPLES_PER_POSITION = AUDIO_SAMPLE_RATE_HZ // WHISPER_POSITIONS_PER_S  # 320
POSITIONS_PER_FRAME = WHISPER_POSITIONS_PER_S // VIDEO_FPS  # 2
CONTEXT_FRAMES_BEFORE = 2  # MuseTalk's audio_padding_length_left
CONTEXT_FRAMES_AFTER = 2  # and _right
WINDOW_POSITIONS = POSITIONS_PER_FRAME * (CONTEXT_FRAMES_BEFORE + 1 + CONTEXT_FRAMES_AFTER)
LEAD_POSITIONS = POSITIONS_PER_FRAME * CONTEXT_FRAMES_BEFORE  # 4: the window starts before
LOG_FLOOR = 1e-10
LOG_RANGE = 8.0  # log10 units kept below the segment's maximum
ENCODE_TIMEOUT_S = 60.0  # one piece through the encoder (30 s segments: seconds on a CPU)


@lru_cache(maxsize=1)
def _whisper_filters() -> np.ndarray:
    """Whisper's [80, 201] mel filterbank (Slaney scale and norm, 0-8 kHz)."""
    return librosa.filters.mel(sr=AUDIO_SAMPLE_RATE_HZ, n_fft=WHISPER_FFT_SAMPLES,
                               n_mels=WHISPER_MEL_BINS).astype(np.float32)


def whisper_log_mel(audio: np.ndarray) -> np.ndarray:
    """Mono float32 16 kHz audio (at most 30 s) -> float32 [80, 3000]: Whisper's input features
    (zero-padded to 30 s, |STFT|^2 of 400-sample Hann frames every 160, mel, log10 floored
    8 below the maximum, (x + 4) / 4). Raises ValueError for longer or multichannel audio."""
    audio = np.asarray(audio, np.float32)
    if audio.ndim != 1 or audio.size > WHISPER_SEGMENT_SAMPLES:
        raise ValueError(f"audio must be mono and at most 30 s, got shape {list(audio.shape)}")
    padded = np.zeros(WHISPER_SEGMENT_SAMPLES, np.float32)
    padded[: audio.size] = audio
    stft = librosa.stft(padded, n_fft=WHISPER_FFT_SAMPLES, hop_length=WHISPER_HOP_SAMPLES,
                        window="hann", center=True, pad_mode="reflect")
    power = np.abs(stft[:, :-1]) ** 2
    log = np.log10(np.maximum(_whisper_filters() @ power, LOG_FLOOR))
    log = np.maximum(log, log.max() - LOG_RANGE)
    return ((log + 4.0) / 4.0).astype(np.float32)


def frame_windows(hidden: np.ndarray, frame_count: int, first: int = 0) -> np.ndarray:
    """hidden float32 [P, L, 384] (the audio's positions only) -> float32 [frame_count - first,
    10 L, 384]: frame i reads positions 2i-4 .. 2i+5, zeros outside 0..P-1."""
    positions, layers, dim = hidden.shape
    count = max(frame_count - first, 0)
    out = np.zeros((count, WINDOW_POSITIONS, layers, dim), np.float32)
    for k, frame in enumerate(range(first, frame_count)):
        start = POSITIONS_PER_FRAME * frame - LEAD_POSITIONS
        lo, hi = max(start, 0), min(start + WINDOW_POSITIONS, positions)
        if lo < hi:
            out[k, lo - start : hi - start] = hidden[lo:hi]
    return out.reshape(count, WINDOW_POSITIONS * layers, dim)


def window_samples(frame: int) -> tuple[int, int]:
    """[start, stop) of the 16 kHz samples under frame `frame`'s window (may pass the ends)."""
    start = (POSITIONS_PER_FRAME * frame - LEAD_POSITIONS) * SAMPLES_PER_POSITION
    return start, start + WINDOW_POSITIONS * SAMPLES_PER_POSITION


class WhisperWindows:
    """MuseTalk's audio features (lipsync/base.AudioFeatures): one [10 L, 384] window of
    Whisper encoder hidden states per video frame.

    `windows` is called in an executor thread (speech/pipeline.py) and runs the encoder on
    Triton through `client` on the event loop `loop` (the loop's thread must not call it).
    """

    def __init__(self, client: TensorModelClient, loop: asyncio.AbstractEventLoop,
                 hidden_layers: int) -> None:
        self.client = client
        self.loop = loop
        self.hidden_layers = hidden_layers
        self.window_shape = (WINDOW_POSITIONS * hidden_layers, WHISPER_DIM)

    def covered_frames(self, samples: int) -> int:
        return max(0, (samples // SAMPLES_PER_POSITION - WINDOW_POSITIONS + LEAD_POSITIONS)
                   // POSITIONS_PER_FRAME + 1)

    def hidden_states(self, audio: np.ndarray) -> np.ndarray:
        """float32 [P, L, 384] for the audio's P = len // 320 positions (one Triton call for
        all its 30 s segments). Blocking: not on the loop's thread."""
        audio = np.asarray(audio, np.float32)
        positions = audio.size // SAMPLES_PER_POSITION
        if positions == 0:
            return np.zeros((0, self.hidden_layers, WHISPER_DIM), np.float32)
        segments = [audio[s : s + WHISPER_SEGMENT_SAMPLES]
                    for s in range(0, audio.size, WHISPER_SEGMENT_SAMPLES)]
        mel = np.stack([whisper_log_mel(s) for s in segments])
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is self.loop:
            raise RuntimeError("WhisperWindows.windows blocks: call it in an executor")
        shape = (len(segments), WHISPER_MEL_FRAMES // 2, self.hidden_layers, WHISPER_DIM)
        future = asyncio.run_coroutine_threadsafe(
            self.client.infer_tensors({"mel": mel}, "hidden", shape), self.loop)
        try:
            hidden = future.result(ENCODE_TIMEOUT_S)
        finally:
            future.cancel()  # a timeout (or this thread's end) stops the call on the loop too
        return hidden.reshape(-1, self.hidden_layers, WHISPER_DIM)[:positions]

    def windows(self, audio: np.ndarray, frame_count: int, first: int = 0) -> np.ndarray:
        return frame_windows(self.hidden_states(audio), frame_count, first)

    def silent(self, audio: np.ndarray, frame_count: int, first: int = 0) -> np.ndarray:
        return silent_frames(audio, frame_count, first, window_samples)


class MuseTalkClient(TensorModelClient):
    """The served ensemble's tensors (`latents`, `whisper` -> `face_out`), and the audio
    encoder's client beside it (closed with it)."""

    def __init__(self, url: str, model: str, timeout_s: float = DEFAULT_TIMEOUT_S,
                 shared_memory: bool = False, audio_model: str | None = None) -> None:
        super().__init__(url, model, timeout_s, shared_memory)
        self.audio = TensorModelClient(url, audio_model or f"{model}_audio",
                                       max(timeout_s, ENCODE_TIMEOUT_S), shared_memory)

    async def infer_face(self, latents: np.ndarray, whisper: np.ndarray) -> np.ndarray:
        """latents [B,8,32,32], whisper [B,10L,384] -> face_out float32 [B,3,256,256] RGB in
        [0, 1]. Raises ValueError for other shapes or differing batch sizes."""
        if latents.ndim != 4 or latents.shape[1:] != LATENT_SHAPE:
            raise ValueError(f"latents must be [B,8,32,32], got {list(latents.shape)}")
        if whisper.ndim != 3 or whisper.shape[2] != WHISPER_DIM:
            raise ValueError(f"whisper must be [B,W,{WHISPER_DIM}], got {list(whisper.shape)}")
        if latents.shape[0] != whisper.shape[0]:
            raise ValueError(f"batch sizes differ: latents {latents.shape[0]}, whisper "
                             f"{whisper.shape[0]}")
        return await self.infer_tensors({"latents": latents, "whisper": whisper}, "face_out",
                                        (len(latents), 3, FACE_PX, FACE_PX))

    async def close(self) -> None:
        await self.audio.close()
        await super().close()


@dataclass
class MuseTalkSync(LipSyncModel):
    client: MuseTalkClient

    client_type: ClassVar = MuseTalkClient
    avatar_inputs: ClassVar = (LATENTS,)

    @staticmethod
    def accepts(inputs: dict[str, list[int]]) -> bool:
        return "latents" in inputs and "whisper" in inputs

    @staticmethod
    def crop_size_of(inputs: dict[str, list[int]]) -> int | None:
        return FACE_PX

    @classmethod
    def open(cls, url: str, name: str, inputs: dict[str, list[int]], config: dict,
             shared_memory: bool = False) -> MuseTalkSync:
        """The ensemble `name`; its audio encoder is the one its config's `audio_model`
        parameter names (else `<name>_audio`)."""
        audio_model = (config.get("parameters", {}).get(AUDIO_MODEL_PARAMETER, {})
                       .get("string_value") or f"{name}_audio")
        window = inputs["whisper"][-2]
        if window <= 0 or window % WINDOW_POSITIONS:
            raise ValueError(f"lip-sync model {name!r}: whisper window {window} is not a "
                             f"multiple of {WINDOW_POSITIONS}")
        client = MuseTalkClient(url, name, shared_memory=shared_memory, audio_model=audio_model)
        model = cls(client, name, FACE_PX)
        # Per model, not per family: the features need this model's audio encoder.
        model.features = WhisperWindows(client.audio, asyncio.get_running_loop(),
                                        window // WINDOW_POSITIONS)
        return model

    async def render(self, windows: np.ndarray, crops: np.ndarray, mouth: np.ndarray,
                     latents: np.ndarray | None = None) -> np.ndarray:
        """The base's render, plus `latents` float32 [B,8,32,32] (the avatar's, per frame);
        the crops only give the output's size (256). ValueError when the avatar has none."""
        if latents is None:
            raise ValueError(f"lip-sync model {self.name!r} needs the avatar's MuseTalk latents "
                             "(python -m avatars build --model musetalk)")
        out = await self.client.infer_face(np.asarray(latents, np.float32), windows)
        return np.clip(out * 255.0 + 0.5, 0, 255).astype(np.uint8).transpose(0, 2, 3, 1)

"""The Ultralight family (LiveTalking's `ultralight` model; exported by `python -m export
ultralight`): an ensemble of HuBERT (`ultralight_audio`, shared) and the avatar's own UNet.

    in  audio  FP32 [B, 10320]         each frame's audio window, 16 kHz (below)
    in  face   FP32 [B, 6, 160, 160]   reference crop BGR, then the same crop masked, in [0, 1]
    out face_out FP32 [B, 3, 160, 160] the crop, BGR in [0, 1]

The crop (LiveTalking's): the avatar's box resized to 168 x 168 (its `face_imgs/`), the model
sees the centre [4:164, 4:164]; in the masked copy the rectangle x 5..154, y 5..149 is black
(LiveTalking's `cv2.rectangle(img, (5, 5, 150, 145), 0, -1)`). The output replaces that centre,
and the 168 crop is pasted back into the box (the compositor's feathered blend, from
PASTE_TOP_FRACTION down: the mouth sits higher in this crop than in the others).

Audio: LiveTalking computes HuBERT (50 frames a second, 1024 values each) over its stream and
gives video frame f the 16 HuBERT frames that start 8 before the frame's first audio sample
(LiveTalking's `audio_feat_length` [4, 4] video frames at 2 HuBERT frames each). Here each frame
sends its own window: those 16 HuBERT frames' audio plus 8 frames of context on each side
(AUDIO_CONTEXT_FRAMES, which the audio model computes and drops), 10320 samples from
640 f - 5120, zeros outside the audio. HuBERT then runs in Triton, batched across sessions and
avatars, and the orchestrator only slices audio. The window is normalised by the model (zero
mean, unit variance, as HuBERT's feature extractor does to LiveTalking's ~1 s chunks).
Ultralight does not return its input crop for silence: silent frames go to the model too.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from ..media.clock import AUDIO_SAMPLES_PER_TICK
from ..triton.client import TensorModelClient
from .base import LipSyncModel
from .mel import SILENCE_PEAK

FACE_PX = 160
CROP_BORDER_PX = 4
CROP_PX = FACE_PX + 2 * CROP_BORDER_PX  # LiveTalking's face_imgs size
FACE_CHANNELS = 6
OUTPUT_CHANNELS = 3
# The crop starts at the nose bridge and the mouth line lies at about 0.4 of it: the drawing is
# pasted from just below the nose (LiveTalking pastes the whole crop, unblended).
PASTE_TOP_FRACTION = 0.2
# LiveTalking's mask: cv2.rectangle with the rect (x 5, y 5, w 150, h 145), filled.
MASK_X0, MASK_Y0, MASK_WIDTH, MASK_HEIGHT = 5, 5, 150, 145

HUBERT_HOP_SAMPLES = 320  # one HuBERT frame every 20 ms at 16 kHz
HUBERT_RECEPTIVE_SAMPLES = 400
AUDIO_FEATURE_FRAMES = 16
AUDIO_CONTEXT_FRAMES = 8
WINDOW_FRAMES = AUDIO_FEATURE_FRAMES + 2 * AUDIO_CONTEXT_FRAMES
AUDIO_WINDOW_SAMPLES = (WINDOW_FRAMES - 1) * HUBERT_HOP_SAMPLES + HUBERT_RECEPTIVE_SAMPLES
# Frame f's window starts this many samples before the frame's audio (AUDIO_SAMPLES_PER_TICK f).
WINDOW_LEAD_SAMPLES = (AUDIO_FEATURE_FRAMES // 2 + AUDIO_CONTEXT_FRAMES) * HUBERT_HOP_SAMPLES
# ... and ends this many after it starts.
WINDOW_TAIL_SAMPLES = AUDIO_WINDOW_SAMPLES - WINDOW_LEAD_SAMPLES


@dataclass(frozen=True)
class AudioWindows:
    """Each video frame's raw audio window, float32 [AUDIO_WINDOW_SAMPLES]
    (lipsync/base.AudioFeatures): samples 640 f - 5120 .. 640 f + 5200 of the 16 kHz audio."""

    window_shape: tuple[int, ...] = (AUDIO_WINDOW_SAMPLES,)

    def covered_frames(self, samples: int) -> int:
        if samples < WINDOW_TAIL_SAMPLES:
            return 0
        return (samples - WINDOW_TAIL_SAMPLES) // AUDIO_SAMPLES_PER_TICK + 1

    def _padded(self, audio: np.ndarray, frame_count: int) -> np.ndarray:
        audio = np.asarray(audio, np.float32)
        if audio.ndim != 1:
            raise ValueError(f"audio must be mono 1-D samples, got shape {audio.shape}")
        if frame_count < 0:
            raise ValueError(f"frame_count must be >= 0, got {frame_count}")
        end = max(audio.size, (frame_count - 1) * AUDIO_SAMPLES_PER_TICK + WINDOW_TAIL_SAMPLES)
        padded = np.zeros(WINDOW_LEAD_SAMPLES + end, np.float32)
        padded[WINDOW_LEAD_SAMPLES:WINDOW_LEAD_SAMPLES + audio.size] = audio
        return padded

    def _views(self, audio: np.ndarray, frame_count: int, first: int) -> np.ndarray:
        views = sliding_window_view(self._padded(audio, frame_count), AUDIO_WINDOW_SAMPLES)
        return views[first * AUDIO_SAMPLES_PER_TICK:frame_count * AUDIO_SAMPLES_PER_TICK:
                     AUDIO_SAMPLES_PER_TICK]

    def windows(self, audio: np.ndarray, frame_count: int, first: int = 0) -> np.ndarray:
        if frame_count <= first:
            return np.zeros((0, AUDIO_WINDOW_SAMPLES), np.float32)
        return np.ascontiguousarray(self._views(audio, frame_count, first))

    def silent(self, audio: np.ndarray, frame_count: int, first: int = 0) -> np.ndarray:
        if frame_count <= first:
            return np.zeros(0, bool)
        return np.abs(self._views(audio, frame_count, first)).max(axis=1) < SILENCE_PEAK


ULTRALIGHT_AUDIO = AudioWindows()


def prepare(crops_rgb: np.ndarray) -> np.ndarray:
    """uint8 [B,168,168,3] RGB crops -> float32 [B,6,160,160] for `face`: the centre as BGR /
    255, then the same with LiveTalking's rectangle set to 0. ValueError for other shapes."""
    if crops_rgb.dtype != np.uint8 or crops_rgb.ndim != 4 or crops_rgb.shape[1:] != (
            CROP_PX, CROP_PX, 3):
        raise ValueError(f"crops must be uint8 [B,{CROP_PX},{CROP_PX},3] RGB, got "
                         f"{crops_rgb.dtype} {list(crops_rgb.shape)}")
    centre = crops_rgb[:, CROP_BORDER_PX:CROP_BORDER_PX + FACE_PX,
                       CROP_BORDER_PX:CROP_BORDER_PX + FACE_PX, ::-1]  # RGB -> BGR
    out = np.empty((len(crops_rgb), FACE_CHANNELS, FACE_PX, FACE_PX), np.float32)
    out[:, 0:3] = centre.transpose(0, 3, 1, 2)
    out[:, 3:6] = out[:, 0:3]
    out[:, 3:6, MASK_Y0:MASK_Y0 + MASK_HEIGHT, MASK_X0:MASK_X0 + MASK_WIDTH] = 0.0
    out *= np.float32(1.0 / 255.0)
    return out


def paste_centre(crops_rgb: np.ndarray, face_out: np.ndarray) -> np.ndarray:
    """The crops with their centre replaced by `face_out` (float32 [B,3,160,160] BGR in [0, 1]):
    uint8 [B,168,168,3] RGB."""
    if face_out.shape != (len(crops_rgb), OUTPUT_CHANNELS, FACE_PX, FACE_PX):
        raise ValueError(f"face_out must be [{len(crops_rgb)},3,{FACE_PX},{FACE_PX}], got "
                         f"{list(face_out.shape)}")
    out = crops_rgb.copy()
    rgb = face_out[:, ::-1].transpose(0, 2, 3, 1)
    out[:, CROP_BORDER_PX:CROP_BORDER_PX + FACE_PX, CROP_BORDER_PX:CROP_BORDER_PX + FACE_PX] = \
        np.clip(rgb * 255.0 + 0.5, 0, 255).astype(np.uint8)
    return out


class UltralightClient(TensorModelClient):
    """The ensemble's tensors: `audio`, `face` -> `face_out`."""

    async def infer_face(self, audio: np.ndarray, face: np.ndarray) -> np.ndarray:
        """audio [B, AUDIO_WINDOW_SAMPLES], face [B,6,160,160] (`prepare`) -> face_out float32
        [B,3,160,160] BGR. Raises ValueError for other shapes or differing batch sizes."""
        if audio.ndim != 2 or audio.shape[1] != AUDIO_WINDOW_SAMPLES:
            raise ValueError(f"audio must be [B,{AUDIO_WINDOW_SAMPLES}], got {list(audio.shape)}")
        if audio.shape[0] != face.shape[0]:
            raise ValueError(f"batch sizes differ: audio {audio.shape[0]}, face {face.shape[0]}")
        return await self.infer_tensors({"audio": audio, "face": face}, "face_out",
                                        (len(audio), OUTPUT_CHANNELS, FACE_PX, FACE_PX))


@dataclass
class UltralightSync(LipSyncModel):
    client: UltralightClient

    features: ClassVar = ULTRALIGHT_AUDIO
    client_type: ClassVar = UltralightClient
    paste_top_fraction: ClassVar = PASTE_TOP_FRACTION

    @staticmethod
    def accepts(inputs: dict[str, list[int]]) -> bool:
        audio, face = inputs.get("audio"), inputs.get("face")
        return (audio is not None and audio[-1] == AUDIO_WINDOW_SAMPLES and face is not None
                and list(face[1:]) == [FACE_CHANNELS, FACE_PX, FACE_PX])

    @staticmethod
    def crop_size_of(inputs: dict[str, list[int]]) -> int:
        """LiveTalking's 168 px crop: the model reads its centre."""
        return CROP_PX

    async def render(self, windows: np.ndarray, crops: np.ndarray,
                     mouth: np.ndarray) -> np.ndarray:
        out = await self.client.infer_face(windows, prepare(crops))
        return paste_centre(crops, out)

"""Ultralight (anliyuan/Ultralight-Digital-Human, as LiveTalking's `ultralight` model runs it) in
PyTorch, for export only: the per-avatar UNet and the HuBERT audio encoder in front of it.

The UNet is a small U-Net of MobileNetV2 inverted residual blocks over a 6-channel 160x160
input (an unmasked reference crop then the same crop with a rectangle blacked out, BGR in
[0, 1]), 160 -> 80 -> 40 -> 20 -> 10 in five stages of 32, 64, 128, 256, 512 channels. Its
`audio_model` turns one frame's audio features, 16 HuBERT frames of 1024 values seen as a
[16, 32, 32] image, into [512, 10, 10], concatenated with the bottleneck and fused to 256
channels; the decoder upsamples bilinearly (align_corners) and concatenates the encoder's
features of each size; a 1x1 conv and a sigmoid give the crop, BGR in [0, 1]. LiveTalking
builds it as `Model(6, 'hubert')` and loads one checkpoint per avatar (`ultralight.pth` in
the avatar folder: each Ultralight model is trained on one person's video). Parameter names
follow that checkpoint (`inc.inconv.0.conv.0.weight`, `down1.maxpool_conv.0.double_conv.0...`,
`audio_model.conv1...`, `fuse_conv.0...`, `up1.conv.double_conv...`, `outc.conv.weight`), so
`load_state_dict(strict=True)` takes it. The `wenet` audio front end of the original project
(its own WeNet conformer) is not LiveTalking's and is not built here.

The audio features are `last_hidden_state` of HuBERT large fine-tuned on LibriSpeech
(`facebook/hubert-large-ls960-ft`, LiveTalking's `models/hubert-large-ls960-ft/`: a Hugging
Face folder, `config.json`, `preprocessor_config.json` and the weights), 1024 values every
20 ms of 16 kHz audio, on audio normalised to zero mean and unit variance (its feature
extractor's `do_normalize`). `UltralightAudio` is what Triton serves for it: one video
frame's audio window in, that frame's [16, 32, 32] features out (module
`orchestrator/lipsync/ultralight.py` documents the window).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from .ultralight_configs import (
    AUDIO_CONTEXT_FRAMES,
    AUDIO_FEATURE_FRAMES,
    AUDIO_WINDOW_SAMPLES,
    FACE_CHANNELS,
    FACE_PX,
    FEATURE_IMAGE,
    HUBERT_HIDDEN,
)
from .wav2lip_model import CheckpointError, _mismatches, read_state_dict

CHANNELS = (32, 64, 128, 256, 512)  # the stages' widths (the published, non-mobile size)
AUDIO_IN_CHANNELS = AUDIO_FEATURE_FRAMES  # one feature image per HuBERT frame
EXPANSION = 2  # every inverted residual of the UNet expands by 2
NORMALIZE_EPSILON = 1e-7  # Wav2Vec2FeatureExtractor's zero_mean_unit_var_norm


# --- the UNet ---------------------------------------------------------------------------------
class InvertedResidual(nn.Module):
    """MobileNetV2's block: 1x1 expand, 3x3 depthwise (`stride`), 1x1 project, each with
    BatchNorm (ReLU after the first two); `residual` adds the input (same shape only)."""

    def __init__(self, cin: int, cout: int, stride: int, residual: bool,
                 expansion: int = EXPANSION) -> None:
        super().__init__()
        wide = cin * expansion
        self.residual = residual
        self.conv = nn.Sequential(
            nn.Conv2d(cin, wide, 1, 1, 0, bias=False), nn.BatchNorm2d(wide), nn.ReLU(inplace=True),
            nn.Conv2d(wide, wide, 3, stride, 1, groups=wide, bias=False), nn.BatchNorm2d(wide),
            nn.ReLU(inplace=True),
            nn.Conv2d(wide, cout, 1, 1, 0, bias=False), nn.BatchNorm2d(cout),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv(x) if self.residual else self.conv(x)


class DoubleConvDW(nn.Module):
    """Two inverted residuals: the first changes width (and strides), the second is residual."""

    def __init__(self, cin: int, cout: int, stride: int = 2) -> None:
        super().__init__()
        self.double_conv = nn.Sequential(InvertedResidual(cin, cout, stride, False),
                                          InvertedResidual(cout, cout, 1, True))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.double_conv(x)


class InConvDw(nn.Module):
    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.inconv = nn.Sequential(InvertedResidual(cin, cout, 1, False))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.inconv(x)


class Down(nn.Module):
    """Half the size: a strided DoubleConvDW (the name is the checkpoint's, no max pooling)."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.maxpool_conv = nn.Sequential(DoubleConvDW(cin, cout, stride=2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.maxpool_conv(x)


class Up(nn.Module):
    """Twice the size (bilinear, align_corners), padded to the skip's size, concatenated as
    [upsampled, skip], then a DoubleConvDW."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.up = nn.Upsample(scale_factor=2, mode="bilinear", align_corners=True)
        self.conv = DoubleConvDW(cin, cout, stride=1)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        x = self.up(x)
        dy, dx = skip.shape[2] - x.shape[2], skip.shape[3] - x.shape[3]
        if dy or dx:  # never at 160 px: every stage halves exactly
            x = F.pad(x, [dx // 2, dx - dx // 2, dy // 2, dy - dy // 2])
        return self.conv(torch.cat([x, skip], dim=1))


class OutConv(nn.Module):
    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


class AudioConvHubert(nn.Module):
    """[B, 16, 32, 32] HuBERT features -> [B, 512, 10, 10] (the bottleneck's size)."""

    def __init__(self) -> None:
        super().__init__()
        ch = CHANNELS
        self.conv1 = InvertedResidual(AUDIO_IN_CHANNELS, ch[1], 1, False)
        self.conv2 = InvertedResidual(ch[1], ch[2], 1, False)
        self.conv3 = nn.Conv2d(ch[2], ch[3], kernel_size=3, padding=1, stride=2)
        self.bn3 = nn.BatchNorm2d(ch[3])
        self.conv4 = InvertedResidual(ch[3], ch[3], 1, True)
        self.conv5 = nn.Conv2d(ch[3], ch[4], kernel_size=3, padding=3, stride=2)
        self.bn5 = nn.BatchNorm2d(ch[4])
        self.relu = nn.ReLU()
        self.conv6 = InvertedResidual(ch[4], ch[4], 1, True)
        self.conv7 = InvertedResidual(ch[4], ch[4], 1, True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv2(self.conv1(x))
        x = self.conv4(self.relu(self.bn3(self.conv3(x))))
        x = self.relu(self.bn5(self.conv5(x)))
        return self.conv7(self.conv6(x))


class UltralightUNet(nn.Module):
    """face float32 [B, 6, 160, 160] (reference BGR, masked BGR, in [0, 1]), audio float32
    [B, 16, 32, 32] -> float32 [B, 3, 160, 160] BGR in [0, 1]."""

    def __init__(self) -> None:
        super().__init__()
        ch = CHANNELS
        self.audio_model = AudioConvHubert()
        self.fuse_conv = nn.Sequential(DoubleConvDW(ch[4] * 2, ch[4], stride=1),
                                       DoubleConvDW(ch[4], ch[3], stride=1))
        self.inc = InConvDw(FACE_CHANNELS, ch[0])
        self.down1, self.down2 = Down(ch[0], ch[1]), Down(ch[1], ch[2])
        self.down3, self.down4 = Down(ch[2], ch[3]), Down(ch[3], ch[4])
        self.up1, self.up2 = Up(ch[4], ch[3] // 2), Up(ch[3], ch[2] // 2)
        self.up3, self.up4 = Up(ch[2], ch[1] // 2), Up(ch[1], ch[0])
        self.outc = OutConv(ch[0], 3)

    def forward(self, face: torch.Tensor, audio: torch.Tensor) -> torch.Tensor:
        x1 = self.inc(face)
        x2 = self.down1(x1)
        x3 = self.down2(x2)
        x4 = self.down3(x3)
        x5 = self.down4(x4)
        x5 = self.fuse_conv(torch.cat([x5, self.audio_model(audio)], dim=1))
        x = self.up4(self.up3(self.up2(self.up1(x5, x4), x3), x2), x1)
        return torch.sigmoid(self.outc(x))


def calibrate_random(model: UltralightUNet, seed: int = 0, batch: int = 4) -> UltralightUNet:
    """Realistic BatchNorm statistics for random weights (one training-mode pass over random
    inputs, as export/wav2lip_model.calibrate_random does): fresh statistics do not match what
    random convolutions produce, and the sigmoid would saturate."""
    generator = torch.Generator().manual_seed(seed)
    norms = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    for norm in norms:
        norm.reset_running_stats()
        norm.momentum = None
    model.train()
    with torch.no_grad():
        model(torch.rand(batch, FACE_CHANNELS, FACE_PX, FACE_PX, generator=generator),
              torch.randn(batch, AUDIO_IN_CHANNELS, *FEATURE_IMAGE, generator=generator))
    for norm in norms:
        norm.momentum = 0.1
    return model.eval()


def random_unet(seed: int = 0) -> UltralightUNet:
    """The UNet with random weights (no trained checkpoint can be downloaded here)."""
    torch.manual_seed(seed)
    return calibrate_random(UltralightUNet(), seed)


def read_weights(path: Path) -> dict[str, torch.Tensor]:
    """A state dict from `.pth` / `pytorch_model.bin` (torch, weights only) or `.safetensors`.
    Raises CheckpointError naming the problem."""
    path = Path(path)
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        if not path.is_file():
            raise CheckpointError(f"checkpoint {path} does not exist")
        try:
            return dict(load_file(str(path)))
        except (SafetensorError, OSError) as exc:
            raise CheckpointError(f"checkpoint {path} is not a safetensors file: {exc}") from None
    return read_state_dict(path)


def load_unet(path: Path) -> UltralightUNet:
    """The UNet with a checkpoint's weights, eval mode. CheckpointError names missing,
    unexpected and wrongly shaped keys."""
    state = read_weights(path)
    model = UltralightUNet()
    expected = model.state_dict()
    problems = _mismatches(state, expected)
    if problems:
        raise CheckpointError(f"checkpoint {Path(path).name} does not fit the Ultralight UNet "
                              f"(LiveTalking's Model(6, 'hubert')): " + "; ".join(problems))
    for key, value in expected.items():
        state.setdefault(key, value)  # absent num_batches_tracked counters
    model.load_state_dict(state, strict=True)
    return model.eval()


# --- the audio encoder ------------------------------------------------------------------------
# HuBERT large (hubert-large-ls960-ft's config.json); tests build smaller ones of the same class.
HUBERT_LARGE = dict(
    hidden_size=HUBERT_HIDDEN, num_hidden_layers=24, num_attention_heads=16,
    intermediate_size=4096, feat_extract_norm="layer", do_stable_layer_norm=True,
    conv_bias=True, num_conv_pos_embedding_groups=16, num_conv_pos_embeddings=128,
)


def hubert_config(**overrides):
    """A transformers HubertConfig: HuBERT large's, with `overrides` (reduced test sizes)."""
    from transformers import HubertConfig

    config = HubertConfig(**{**HUBERT_LARGE, **overrides})
    config._attn_implementation = "eager"  # traceable, the same arithmetic as sdpa
    return config


def random_hubert(seed: int = 0, **overrides):
    """A HubertModel of `hubert_config(**overrides)` with random weights, eval mode."""
    from transformers import HubertModel

    torch.manual_seed(seed)
    return HubertModel(hubert_config(**overrides)).eval()


def load_hubert(folder: Path) -> tuple[nn.Module, bool]:
    """(HubertModel, do_normalize) from a Hugging Face folder (LiveTalking's
    `models/hubert-large-ls960-ft/`: config.json, weights as pytorch_model.bin or
    model.safetensors, preprocessor_config.json). Never downloads. CheckpointError when the
    folder is not such a model or its hidden size is not 1024 (the UNet reads 16 x 1024)."""
    from transformers import HubertModel

    folder = Path(folder)
    if not (folder / "config.json").is_file():
        raise CheckpointError(f"{folder.name}/ has no config.json: not a Hugging Face HuBERT "
                              "folder (e.g. hubert-large-ls960-ft)")
    try:
        model = HubertModel.from_pretrained(str(folder), local_files_only=True,
                                            attn_implementation="eager")
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"{folder.name}/: {str(exc).splitlines()[0]}") from None
    if model.config.hidden_size != HUBERT_HIDDEN:
        raise CheckpointError(f"{folder.name}/: hidden size {model.config.hidden_size}, the "
                              f"Ultralight UNet reads {HUBERT_HIDDEN}")
    normalize = True
    preprocessor = folder / "preprocessor_config.json"
    if preprocessor.is_file():
        normalize = bool(json.loads(preprocessor.read_text()).get("do_normalize", True))
    return model.eval(), normalize


class UltralightAudio(nn.Module):
    """One frame's audio window -> its UNet features.

    audio float32 [B, AUDIO_WINDOW_SAMPLES] (16 kHz, full scale 1.0) -> float32 [B, 16, 32, 32]:
    normalised per window (zero mean, unit variance) when `normalize`, HuBERT's last hidden
    state [B, 32, 1024], its middle 16 frames (AUDIO_CONTEXT_FRAMES of context dropped on each
    side), each frame's 1024 values as a 32 x 32 image.
    """

    def __init__(self, hubert: nn.Module, normalize: bool = True) -> None:
        super().__init__()
        self.hubert = hubert
        self.normalize = normalize

    def forward(self, audio: torch.Tensor) -> torch.Tensor:
        if self.normalize:
            mean = audio.mean(dim=1, keepdim=True)
            var = ((audio - mean) ** 2).mean(dim=1, keepdim=True)
            audio = (audio - mean) / torch.sqrt(var + NORMALIZE_EPSILON)
        hidden = self.hubert(audio).last_hidden_state
        middle = hidden[:, AUDIO_CONTEXT_FRAMES:AUDIO_CONTEXT_FRAMES + AUDIO_FEATURE_FRAMES]
        return middle.reshape(audio.shape[0], AUDIO_FEATURE_FRAMES, *FEATURE_IMAGE)


def check_window(hubert: nn.Module) -> None:
    """HuBERT gives AUDIO_FEATURE_FRAMES + 2 * AUDIO_CONTEXT_FRAMES frames for one window
    (AssertionError otherwise: the conv strides are not HuBERT's)."""
    with torch.no_grad():
        frames = hubert(torch.zeros(1, AUDIO_WINDOW_SAMPLES)).last_hidden_state.shape[1]
    assert frames == AUDIO_FEATURE_FRAMES + 2 * AUDIO_CONTEXT_FRAMES, frames

"""Wav2Lip's generator (Prajwal et al., 2020) in PyTorch, for export only: 96 and 256 pixel faces.

The network is a U-Net: a face encoder over 6 channels (the target crop with its lower half
zeroed, then a reference crop of the same person), an audio encoder that turns the [1,80,16] mel
window into a 512-vector, and a face decoder that starts from that vector and, at every scale,
concatenates the face encoder's features of the same size (the skip connections), ending in a
sigmoid over 3 channels (BGR in [0, 1]). Every convolution is followed by BatchNorm and ReLU;
most stages add residual 3x3 blocks. Parameter names follow the published checkpoints
(`wav2lip.pth`, `wav2lip_gan.pth`): `face_encoder_blocks.<stage>.<layer>.conv_block.0.weight`,
`audio_encoder.<layer>...`, `face_decoder_blocks...`, `output_block.0...`, `output_block.1.weight`,
so `load_state_dict(strict=True)` accepts them.

Two 256-pixel layouts exist (`LAYOUTS`), told apart by a checkpoint's keys and shapes:
- `livetalking256`: the generator LiveTalking users call `wav2lip256` (its
  `avatars/wav2lip/models/wav2lip_v2.py`; `models/wav2lip.pth` in a LiveTalking install). One
  more encoder stage than the 96 model: 256 -> 128 -> 64 -> 32 -> 16 -> 8 -> 4, both 512-channel
  stages (8x8 and 4x4) with one residual block, then a 4x4 valid conv to 1x1; the decoder
  starts with a 4x4 transposed conv (1x1 -> 4x4, one residual block), then 512 channels at 8x8
  (one residual block) and 16x16 (two), then 384, 256, 128, 64 as in the 96 model. Same
  Conv/BatchNorm/ReLU blocks, same names, no attention; 80 channels reach the output block.
- `livehuman256`: this project's earlier guess at that layout (two residual blocks in both 8x8
  stages), kept so that models exported with it still load.
A checkpoint that fits no layout of its size fails with the closest layout's missing,
unexpected and wrongly shaped keys named.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
from torch import nn

from .wav2lip_configs import FACE_CHANNELS, MEL_BINS, MEL_WINDOW_FRAMES, OUTPUT_CHANNELS

BOTTLENECK_CHANNELS = 512


@dataclass(frozen=True)
class Variant:
    """Layout of one Wav2Lip generator; stages are (channels, residual blocks after the first conv)."""

    name: str
    face_px: int
    encoder_stages: tuple[tuple[int, int], ...]  # first stage keeps the size, the rest halve it
    bottleneck_kernel: int  # the last encoder map's size: a valid conv to 1x1
    decoder_stages: tuple[tuple[int, int], ...]  # after the 1x1 -> bottleneck_kernel transpose
    bottleneck_residual_blocks: int  # residual blocks after that first transposed conv


LAYOUTS: dict[str, Variant] = {
    "wav2lip96": Variant(
        name="wav2lip96", face_px=96,
        encoder_stages=((16, 0), (32, 2), (64, 3), (128, 2), (256, 2), (512, 1)),  # 96 .. 3
        bottleneck_kernel=3,
        decoder_stages=((512, 2), (384, 2), (256, 2), (128, 2), (64, 2)),  # 6 .. 96
        bottleneck_residual_blocks=1,
    ),
    "livetalking256": Variant(
        name="livetalking256", face_px=256,
        encoder_stages=((16, 0), (32, 2), (64, 3), (128, 2), (256, 2), (512, 1), (512, 1)),
        bottleneck_kernel=4,
        decoder_stages=((512, 1), (512, 2), (384, 2), (256, 2), (128, 2), (64, 2)),  # 8 .. 256
        bottleneck_residual_blocks=1,
    ),
    "livehuman256": Variant(
        name="livehuman256", face_px=256,
        encoder_stages=((16, 0), (32, 2), (64, 3), (128, 2), (256, 2), (512, 2), (512, 1)),
        bottleneck_kernel=4,
        decoder_stages=((512, 2), (512, 2), (384, 2), (256, 2), (128, 2), (64, 2)),  # 8 .. 256
        bottleneck_residual_blocks=1,
    ),
}
# The layout a face size gets when no checkpoint says otherwise (random weights, --variant).
VARIANTS: dict[int, Variant] = {96: LAYOUTS["wav2lip96"], 256: LAYOUTS["livetalking256"]}


class ConvBlock(nn.Module):
    """Conv2d + BatchNorm + ReLU, optionally adding its input before the ReLU.

    Checkpoint names: `conv_block.0` (the conv), `conv_block.1` (the norm).
    """

    def __init__(self, cin: int, cout: int, kernel: int, stride: int | tuple[int, int] = 1,
                 padding: int = 0, residual: bool = False) -> None:
        super().__init__()
        self.conv_block = nn.Sequential(nn.Conv2d(cin, cout, kernel, stride, padding),
                                        nn.BatchNorm2d(cout))
        self.act = nn.ReLU()
        self.residual = residual

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv_block(x)
        if self.residual:
            out = out + x  # not in place: the traced graph stays a plain Add
        return self.act(out)


class UpConvBlock(nn.Module):
    """ConvTranspose2d + BatchNorm + ReLU (`conv_block.0`, `conv_block.1`)."""

    def __init__(self, cin: int, cout: int, kernel: int, stride: int, padding: int,
                 output_padding: int = 0) -> None:
        super().__init__()
        self.conv_block = nn.Sequential(
            nn.ConvTranspose2d(cin, cout, kernel, stride, padding, output_padding),
            nn.BatchNorm2d(cout))
        self.act = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.conv_block(x))


def _residuals(channels: int, count: int) -> list[nn.Module]:
    return [ConvBlock(channels, channels, 3, 1, 1, residual=True) for _ in range(count)]


def _face_encoder(variant: Variant) -> nn.ModuleList:
    stages = []
    cin = FACE_CHANNELS
    for index, (cout, residual_blocks) in enumerate(variant.encoder_stages):
        first = (ConvBlock(cin, cout, 7, 1, 3) if index == 0  # wide receptive field at full size
                 else ConvBlock(cin, cout, 3, 2, 1))
        stages.append(nn.Sequential(first, *_residuals(cout, residual_blocks)))
        cin = cout
    stages.append(nn.Sequential(
        ConvBlock(cin, BOTTLENECK_CHANNELS, variant.bottleneck_kernel, 1, 0),
        ConvBlock(BOTTLENECK_CHANNELS, BOTTLENECK_CHANNELS, 1, 1, 0)))
    return nn.ModuleList(stages)


def _audio_encoder() -> nn.Sequential:
    """[1, 80, 16] -> [512, 1, 1]: strides (3,1), 3, (3,2) take 80x16 to 27x16, 9x6, 3x3."""
    return nn.Sequential(
        ConvBlock(1, 32, 3, 1, 1), *_residuals(32, 2),
        ConvBlock(32, 64, 3, (3, 1), 1), *_residuals(64, 2),
        ConvBlock(64, 128, 3, 3, 1), *_residuals(128, 2),
        ConvBlock(128, 256, 3, (3, 2), 1), *_residuals(256, 1),
        ConvBlock(256, BOTTLENECK_CHANNELS, 3, 1, 0),
        ConvBlock(BOTTLENECK_CHANNELS, BOTTLENECK_CHANNELS, 1, 1, 0),
    )


def _face_decoder(variant: Variant) -> tuple[nn.ModuleList, int]:
    """The decoder stages and the channels they hand to the output block.

    Each stage's input is the previous stage's output concatenated with the encoder features of
    the same size, deepest first.
    """
    skips = [BOTTLENECK_CHANNELS] + [c for c, _ in reversed(variant.encoder_stages)]
    stages = [nn.Sequential(ConvBlock(BOTTLENECK_CHANNELS, BOTTLENECK_CHANNELS, 1, 1, 0))]
    channels = BOTTLENECK_CHANNELS + skips[0]
    stages.append(nn.Sequential(
        UpConvBlock(channels, BOTTLENECK_CHANNELS, variant.bottleneck_kernel, 1, 0),
        *_residuals(BOTTLENECK_CHANNELS, variant.bottleneck_residual_blocks)))
    channels = BOTTLENECK_CHANNELS + skips[1]
    for (cout, residual_blocks), skip in zip(variant.decoder_stages, skips[2:]):
        stages.append(nn.Sequential(UpConvBlock(channels, cout, 3, 2, 1, output_padding=1),
                                    *_residuals(cout, residual_blocks)))
        channels = cout + skip
    return nn.ModuleList(stages), channels


class Wav2Lip(nn.Module):
    """forward(mel [B,1,80,16], face [B,6,S,S]) -> [B,3,S,S] BGR in [0, 1]."""

    def __init__(self, face_px: int = 96, layout: str | None = None) -> None:
        super().__init__()
        if face_px not in VARIANTS:
            raise ValueError(f"no Wav2Lip variant for {face_px} px faces; have {sorted(VARIANTS)}")
        if layout is not None and (layout not in LAYOUTS or LAYOUTS[layout].face_px != face_px):
            raise ValueError(f"no Wav2Lip layout {layout!r} for {face_px} px faces; have "
                             f"{layouts_for(face_px)}")
        self.variant = LAYOUTS[layout] if layout else VARIANTS[face_px]
        self.face_encoder_blocks = _face_encoder(self.variant)
        self.audio_encoder = _audio_encoder()
        self.face_decoder_blocks, channels = _face_decoder(self.variant)
        self.output_block = nn.Sequential(ConvBlock(channels, 32, 3, 1, 1),
                                          nn.Conv2d(32, OUTPUT_CHANNELS, 1, 1, 0), nn.Sigmoid())

    @property
    def face_px(self) -> int:
        return self.variant.face_px

    @property
    def layout(self) -> str:
        return self.variant.name

    def forward(self, mel: torch.Tensor, face: torch.Tensor) -> torch.Tensor:
        features = []
        x = face
        for stage in self.face_encoder_blocks:
            x = stage(x)
            features.append(x)
        x = self.audio_encoder(mel)
        for stage in self.face_decoder_blocks:
            x = torch.cat((stage(x), features.pop()), dim=1)
        return self.output_block(x)


def calibrate_random(model: Wav2Lip, seed: int = 0, batch: int = 4,
                     audio_batch: int = 64) -> Wav2Lip:
    """Give a randomly initialised model realistic BatchNorm statistics.

    Fresh BatchNorm layers (mean 0, variance 1) do not match what random convolutions produce,
    so activations drift through ~45 layers until the sigmoid saturates, which would make parity
    checks and benchmarks meaningless. Training-mode passes over random inputs set each layer's
    running statistics to what it actually sees, as training would. Layers at 1x1 see one value
    per sample: a handful of samples gives some channels a near-zero variance that blows up on
    new inputs, so the (cheap) audio encoder gets its own large batch first.
    """
    generator = torch.Generator().manual_seed(seed)
    size = model.face_px

    def mel(count: int) -> torch.Tensor:
        return torch.rand(count, 1, MEL_BINS, MEL_WINDOW_FRAMES, generator=generator) * 8 - 4

    norms = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    for norm in norms:
        norm.reset_running_stats()
        norm.momentum = None  # cumulative average: one pass sets the statistics exactly
    model.train()
    with torch.no_grad():
        model.audio_encoder(mel(audio_batch))
        model.audio_encoder.eval()  # keeps those statistics through the full pass
        model(mel(batch), torch.rand(batch, FACE_CHANNELS, size, size, generator=generator))
    for norm in norms:
        norm.momentum = 0.1
    return model.eval()


def layouts_for(face_px: int) -> list[str]:
    """The layout names for one face size, the default first."""
    names = [v.name for v in LAYOUTS.values() if v.face_px == face_px]
    return sorted(names, key=lambda name: name != VARIANTS[face_px].name)


def random_model(face_px: int, seed: int = 0, layout: str | None = None) -> Wav2Lip:
    """A Wav2Lip of the real architecture with random weights (no checkpoint can be downloaded)."""
    torch.manual_seed(seed)
    return calibrate_random(Wav2Lip(face_px, layout), seed)


def fused_for_inference(model: Wav2Lip) -> nn.Module:
    """A copy with every BatchNorm folded into the conv before it (what ORT and TensorRT do too).

    The exported graph is then only Conv, ConvTranspose, Add, Relu, Concat and Sigmoid, which
    also makes the fp16 conversion a matter of casting weights.
    """
    from torch.nn.utils.fusion import fuse_conv_bn_eval

    fused = copy.deepcopy(model).eval()
    for module in fused.modules():
        if isinstance(module, ConvBlock | UpConvBlock):
            conv, norm = module.conv_block
            module.conv_block = nn.Sequential(
                fuse_conv_bn_eval(conv, norm, transpose=isinstance(conv, nn.ConvTranspose2d)))
    return fused


# --- checkpoints ------------------------------------------------------------------------------
MAX_KEYS_LISTED = 5
DATA_PARALLEL_PREFIX = "module."
IGNORED_MISSING_SUFFIX = "num_batches_tracked"  # a training counter; inference never reads it


class CheckpointError(ValueError):
    pass


def _listed(keys: list[str]) -> str:
    more = f" and {len(keys) - MAX_KEYS_LISTED} more" if len(keys) > MAX_KEYS_LISTED else ""
    return ", ".join(keys[:MAX_KEYS_LISTED]) + more


def read_state_dict(path) -> dict[str, torch.Tensor]:
    """The generator's tensors from a checkpoint file, however it was saved.

    Accepts a bare state dict or the training scripts' `{"state_dict": ..., "optimizer": ...}`,
    with or without DataParallel's `module.` prefix. Loaded with `weights_only=True`: a checkpoint
    is data, and unpickling arbitrary objects would run code from the file.
    """
    try:
        loaded = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise CheckpointError(f"checkpoint {path} does not exist") from None
    except Exception as exc:
        raise CheckpointError(
            f"checkpoint {path} is not a PyTorch weights file ({type(exc).__name__}: "
            f"{str(exc).splitlines()[0] if str(exc) else ''})") from None
    if isinstance(loaded, dict) and isinstance(loaded.get("state_dict"), dict):
        loaded = loaded["state_dict"]
    if not isinstance(loaded, dict) or not all(
            isinstance(v, torch.Tensor) for v in loaded.values()):
        raise CheckpointError(f"checkpoint {path} holds no state dict of tensors "
                              f"(got {type(loaded).__name__})")
    return {k.removeprefix(DATA_PARALLEL_PREFIX): v for k, v in loaded.items()}


def detect_face_px(state: dict[str, torch.Tensor]) -> int | None:
    """96 or 256 from the number of face encoder stages in `state`; None if neither matches."""
    stages = {int(k.split(".")[1]) for k in state if k.startswith("face_encoder_blocks.")}
    for face_px, variant in VARIANTS.items():
        if len(stages) == len(variant.encoder_stages) + 1:
            return face_px
    return None


def _mismatches(state: dict[str, torch.Tensor], expected: dict[str, torch.Tensor]) -> list[str]:
    """What keeps `state` from loading into a model whose state dict is `expected` (empty: fits)."""
    missing = [k for k in expected if k not in state and not k.endswith(IGNORED_MISSING_SUFFIX)]
    unexpected = [k for k in state if k not in expected]
    wrong_shape = [f"{k} {list(state[k].shape)} (expected {list(v.shape)})"
                   for k, v in expected.items() if k in state and state[k].shape != v.shape]
    problems = []
    if missing:
        problems.append(f"{len(missing)} missing key(s): {_listed(missing)}")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected key(s): {_listed(unexpected)}")
    if wrong_shape:
        problems.append(f"{len(wrong_shape)} tensor(s) of the wrong shape: {_listed(wrong_shape)}")
    return problems


def _problem_count(problems: list[str]) -> int:
    return sum(int(p.split(" ", 1)[0]) for p in problems)


def detect_layout(state: dict[str, torch.Tensor], face_px: int) -> str | None:
    """The layout of `face_px` whose names and shapes `state` matches exactly, or None."""
    for name in layouts_for(face_px):
        if not _mismatches(state, Wav2Lip(face_px, name).state_dict()):
            return name
    return None


def load_checkpoint(path, face_px: int, layout: str | None = None) -> Wav2Lip:
    """A Wav2Lip for `face_px` faces with the checkpoint's weights, in eval mode.

    The layout is found from the checkpoint's keys and shapes (or forced with `layout`). Raises
    CheckpointError naming the problem: not a torch file, the other face size, missing or
    unexpected keys, tensors of the wrong shape (against the closest layout).
    """
    state = read_state_dict(path)
    found = detect_face_px(state)
    if found is not None and found != face_px:
        raise CheckpointError(f"checkpoint {path} is a {found} model, --variant {face_px} given")
    candidates = [layout] if layout else layouts_for(face_px)
    checked = []
    for name in candidates:
        model = Wav2Lip(face_px, name)
        expected = model.state_dict()
        problems = _mismatches(state, expected)
        if not problems:
            for key, value in expected.items():  # absent counters keep their fresh value
                state.setdefault(key, value)
            model.load_state_dict(state, strict=True)
            return model.eval()
        checked.append((_problem_count(problems), name, problems))
    _, name, problems = min(checked, key=lambda item: item[0])
    tried = f" (layouts tried: {', '.join(candidates)}; closest: {name})" if len(candidates) > 1 \
        else f" (layout {name})"
    raise CheckpointError(f"checkpoint {path} does not fit the Wav2Lip {face_px} generator"
                          f"{tried}: " + "; ".join(problems))

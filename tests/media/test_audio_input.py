import io

import av
import numpy as np
import pytest

from orchestrator.errors import ApiError
from orchestrator.media.audio_decoding import decode_audio


def encode(codec: str, fmt: str, rate: int = 44100, seconds: float = 1.0) -> bytes:
    buf = io.BytesIO()
    with av.open(buf, "w", format=fmt) as container:
        stream = container.add_stream(codec, rate=rate)
        stream.layout = "stereo"
        t = np.arange(int(rate * seconds)) / rate
        tone = (np.sin(2 * np.pi * 300 * t) * 0.5).astype(np.float32)
        frame = av.AudioFrame.from_ndarray(np.stack([tone, tone]), format="fltp", layout="stereo")
        frame.sample_rate = rate
        resampler = av.AudioResampler(format=stream.codec_context.format.name, layout="stereo",
                                      rate=rate)
        for converted in resampler.resample(frame):
            for packet in stream.encode(converted):
                container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)
    return buf.getvalue()


@pytest.mark.parametrize("codec, fmt", [("pcm_s16le", "wav"), ("mp3", "mp3"), ("flac", "flac")])
def test_decodes_to_16k_mono(codec, fmt):
    audio = decode_audio(encode(codec, fmt))
    assert audio.dtype == np.float32
    assert abs(audio.size / 16000 - 1.0) < 0.1
    # a 0.5-amplitude tone on both channels; the stereo downmix keeps it audible, not clipped
    assert 0.3 < np.sqrt(np.mean(audio[2000:-2000] ** 2)) < 0.6


def test_garbage_is_a_400_naming_the_field():
    with pytest.raises(ApiError) as info:
        decode_audio(b"this is not audio at all" * 100)
    assert info.value.status == 400 and "file" in info.value.msg
    # FFmpeg's words, not its errno or PyAV's '<none>' name of an in-memory file
    assert "Errno" not in info.value.msg and "<none>" not in info.value.msg, info.value.msg


def encode_channels(channels: np.ndarray, rate: int = 44100, codec: str = "pcm_s16le",
                    fmt: str = "wav") -> bytes:
    """float32 [C, N] written as a C-channel file (C = 1 or 2)."""
    layout = {1: "mono", 2: "stereo"}[channels.shape[0]]
    buf = io.BytesIO()
    with av.open(buf, "w", format=fmt) as container:
        stream = container.add_stream(codec, rate=rate)
        stream.layout = layout
        frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(channels, np.float32),
                                           format="fltp", layout=layout)
        frame.sample_rate = rate
        resampler = av.AudioResampler(format=stream.codec_context.format.name, layout=layout,
                                      rate=rate)
        for converted in resampler.resample(frame):
            for packet in stream.encode(converted):
                container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)
    return buf.getvalue()


def tone(peak: float, rate: int = 44100, seconds: float = 1.0, hz: float = 300.0) -> np.ndarray:
    t = np.arange(int(rate * seconds)) / rate
    return (peak * np.sin(2 * np.pi * hz * t)).astype(np.float32)


def inner(audio: np.ndarray) -> np.ndarray:
    return audio[1000:-1000]  # past the resampler's edges


@pytest.mark.parametrize(("left_peak", "right_sign", "expected_peak"), [
    (0.95, 1.0, 0.95),   # identical channels: the average is the channel (FFmpeg's downmix: 1.34)
    (0.95, -1.0, 0.0),   # opposite phase: they cancel
    (0.95, 0.0, 0.475),  # one silent channel: half the other
    (0.5, 1.0, 0.5),
])
def test_stereo_is_downmixed_by_averaging_channels(left_peak, right_sign, expected_peak):
    left = tone(left_peak)
    audio = decode_audio(encode_channels(np.stack([left, right_sign * left])))
    peak = np.abs(inner(audio)).max()
    assert abs(peak - expected_peak) < 0.02, peak
    assert np.mean(np.abs(audio) >= 0.999) == 0.0, "no sample at full scale: nothing clipped"


def test_a_float_wav_above_full_scale_is_normalised_not_clipped():
    loud = tone(1.6, rate=16000)  # float WAV may carry peaks above 1.0
    audio = decode_audio(encode_channels(loud[None], rate=16000, codec="pcm_f32le"))
    assert np.abs(audio).max() <= 1.0
    assert np.abs(audio).max() > 0.98, "scaled down to full scale, not quieter than needed"
    # the same waveform, scaled: a clipped sine would be flat-topped (many samples at the peak)
    scale = np.dot(audio, loud[: audio.size]) / np.dot(loud[: audio.size], loud[: audio.size])
    assert np.abs(audio - scale * loud[: audio.size]).max() < 1e-3
    assert np.mean(np.abs(audio) > 0.99) < 0.15  # a sine: 9 %; clipped at 1.0 from 1.6: 56 %


def test_quiet_audio_keeps_its_level():
    audio = decode_audio(encode_channels(tone(0.2, rate=16000)[None], rate=16000, codec="pcm_f32le"))
    assert abs(np.abs(audio).max() - 0.2) < 1e-3

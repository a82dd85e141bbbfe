import io

import av
import numpy as np
import pytest

from orchestrator.audio_input import decode_audio
from orchestrator.errors import ApiError


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

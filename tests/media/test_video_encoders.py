"""Our video encoders (orchestrator/video_encoders): what they send decodes to the picture,
keyframes come when asked, H.264 is what aiortc's offer promises, bit rate follows the target."""

from __future__ import annotations

import av
import numpy as np
import pytest

from orchestrator.avatar.store import AvatarStore
from orchestrator.media.video_encoders import ENCODERS, encoder_class, open_encoder
from orchestrator.media.video_encoders.base import BITRATE_RAISE_HOLD_FRAMES, yuv_frame
from orchestrator.settings import Settings

CODECS = ("video/VP8", "video/H264")
DECODERS = {"video/VP8": "libvpx", "video/H264": "h264"}


@pytest.fixture(scope="module")
def frames():
    return AvatarStore(Settings().avatar_dir).load("default").frames


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float32) - b.astype(np.float32)) ** 2))
    return 10 * np.log10(255.0**2 / max(mse, 1e-6))


def nal_types(data: bytes) -> list[int]:
    return [data[i + 3] & 0x1F for i in range(len(data) - 3) if data[i : i + 3] == b"\x00\x00\x01"]


def test_rgb_to_yuv_agrees_with_swscale(frames):
    ours = yuv_frame(frames[0]).to_ndarray()
    theirs = av.VideoFrame.from_ndarray(frames[0], format="rgb24").reformat(format="yuv420p")
    assert np.abs(ours.astype(np.int16) - theirs.to_ndarray()).mean() < 0.5
    odd = frames[0][:101, :99]
    assert yuv_frame(np.ascontiguousarray(odd)).format.name == "yuv420p"


@pytest.mark.parametrize("mime_type", CODECS)
def test_frames_decode_to_the_pictures_with_keyframes_when_asked(frames, mime_type):
    encoder = open_encoder(mime_type, 512, 512)
    decoder = av.CodecContext.create(DECODERS[mime_type], "r")
    keys, quality = [], []
    for k in range(60):
        encoded = encoder.encode(frames[k % len(frames)], keyframe=k == 40)
        keys.append(encoded.keyframe)
        decoded = decoder.decode(av.Packet(encoded.data))
        assert len(decoded) == 1, "one frame in, one frame out: no encoder delay"
        quality.append(psnr(decoded[0].to_ndarray(format="rgb24"), frames[k % len(frames)]))
    assert [k for k, key in enumerate(keys) if key] == [0, 40]
    assert np.median(quality) > 33 and min(quality) > 25, quality


def test_h264_is_constrained_baseline_with_headers_at_every_idr(frames):
    encoder = open_encoder("video/H264", 512, 512)
    first = encoder.encode(frames[0]).data
    sps = first[first.index(b"\x00\x00\x01\x67") + 4 :][:3]
    # profile_idc 66 (baseline) with constraint_set1 (constrained baseline), level 3.1: what
    # aiortc offers as profile-level-id 42001f / 42e01f.
    assert sps[0] == 66 and sps[1] & 0x40 and sps[2] == 31
    encoder.encode(frames[1])
    again = encoder.encode(frames[2], keyframe=True)
    assert again.keyframe and nal_types(again.data)[:2] == [7, 8] and 5 in nal_types(again.data)


@pytest.mark.parametrize("mime_type", CODECS)
def test_bit_rate_falls_at_once_rises_after_a_hold_and_stays_in_range(frames, mime_type):
    cls = encoder_class(mime_type)
    encoder = open_encoder(mime_type, 512, 512)

    def kbit(count: int, start: int) -> float:
        return sum(len(encoder.encode(frames[(start + k) % 100]).data) for k in range(count)) * 8 / 1000

    kbit(25, 0)
    assert encoder.bitrate_bps == cls.default_bitrate_bps
    generous = kbit(50, 25)
    encoder.target_bitrate_bps = cls.min_bitrate_bps
    assert encoder.encode(frames[75]).keyframe, "a new encoder"
    assert encoder.bitrate_bps == cls.min_bitrate_bps, "a fall is followed at once"
    kbit(25, 76)
    starved = kbit(50, 1)
    assert starved < 0.8 * generous, (starved, generous)
    encoder.target_bitrate_bps = 10**9
    assert encoder.target_bitrate_bps == cls.max_bitrate_bps, "clamped to the codec's range"
    kbit(BITRATE_RAISE_HOLD_FRAMES, 51)
    assert encoder.bitrate_bps == cls.min_bitrate_bps, "a rise waits"
    raised = encoder.encode(frames[0])
    assert raised.keyframe and encoder.bitrate_bps == cls.max_bitrate_bps
    encoder.target_bitrate_bps = 1
    assert encoder.target_bitrate_bps == cls.min_bitrate_bps


def test_one_encoder_per_negotiated_codec():
    assert set(ENCODERS) == {"video/vp8", "video/h264"}
    for mime_type in CODECS:
        assert open_encoder(mime_type.upper(), 64, 64).mime_type == mime_type
    with pytest.raises(ValueError, match="AV1"):
        encoder_class("video/AV1")

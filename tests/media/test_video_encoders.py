"""Our video encoders (orchestrator/video_encoders): what they send decodes to the picture,
keyframes come when asked, H.264 is what aiortc's offer promises, bit rate follows the target
(in the running encoder where the codec can, else at a keyframe the stream needs anyway)."""

from __future__ import annotations

import av
import numpy as np
import pytest

from orchestrator.avatar.store import AvatarStore
from orchestrator.media.video_encoders import ENCODERS, base, encoder_class, open_encoder
from orchestrator.media.video_encoders.base import yuv_frame
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


def encode_run(encoder, frames, count: int, start: int, decoder=None) -> tuple[float, list[float]]:
    """kbit sent for `count` frames from `start`, and (with a decoder) each frame's PSNR."""
    bits, quality = 0, []
    for k in range(count):
        picture = frames[(start + k) % len(frames)]
        encoded = encoder.encode(picture)
        bits += len(encoded.data) * 8
        if decoder is not None:
            decoded = decoder.decode(av.Packet(encoded.data))[0]
            quality.append(psnr(decoded.to_ndarray(format="rgb24"), picture))
    return bits / 1000, quality


def test_h264_follows_the_estimate_in_the_running_encoder(frames, monkeypatch):
    """A fall (and a rise back) reaches x264 between two frames: no keyframe, no new encoder, no
    dip in quality; only a rise above the rate it opened with takes a new one."""
    monkeypatch.setattr(base, "BITRATE_RAISE_HOLD_FRAMES", 25)
    cls = encoder_class("video/H264")
    encoder = open_encoder("video/H264", 512, 512)
    decoder = av.CodecContext.create(DECODERS["video/H264"], "r")
    encode_run(encoder, frames, 25, 0, decoder)
    generous, before = encode_run(encoder, frames, 50, 25, decoder)
    encoder.target_bitrate_bps = cls.min_bitrate_bps
    after = encoder.encode(frames[75])
    assert not after.keyframe and encoder.opened == 1, "the running encoder"
    assert encoder.bitrate_bps == cls.min_bitrate_bps and encoder.rate_changes_in_place == 1
    decoder.decode(av.Packet(after.data))
    encode_run(encoder, frames, 25, 76, decoder)
    starved, during = encode_run(encoder, frames, 50, 1, decoder)
    assert starved < 0.8 * generous, (starved, generous)
    assert min(during) > np.median(before) - 3, "no blocky burst"
    encoder.target_bitrate_bps = cls.default_bitrate_bps  # back up to the opened rate: at once
    assert not encoder.encode(frames[51]).keyframe
    assert encoder.bitrate_bps == cls.default_bitrate_bps and encoder.opened == 1
    encoder.target_bitrate_bps = cls.max_bitrate_bps  # above it: a rise that must last
    encode_run(encoder, frames, base.BITRATE_RAISE_HOLD_FRAMES + 5, 52)
    assert encoder.bitrate_bps == cls.default_bitrate_bps, "waits for a keyframe"
    raised = encoder.encode(frames[0], keyframe=True)
    assert raised.keyframe and encoder.bitrate_bps == cls.max_bitrate_bps and encoder.opened == 2


def test_vp8_takes_a_new_rate_at_a_keyframe_it_needs_anyway(frames, monkeypatch):
    """libvpx keeps the rate it opened with: a new encoder, opened at the next keyframe the
    stream asks for, or once the change has waited REOPEN_MAX_WAIT_FRAMES."""
    monkeypatch.setattr(base, "BITRATE_RAISE_HOLD_FRAMES", 25)
    monkeypatch.setattr(base, "REOPEN_MAX_WAIT_FRAMES", 50)
    cls = encoder_class("video/VP8")
    encoder = open_encoder("video/VP8", 512, 512)
    encode_run(encoder, frames, 25, 0)
    generous, _ = encode_run(encoder, frames, 50, 25)
    encoder.target_bitrate_bps = int(cls.default_bitrate_bps * 0.88)  # a browser's first REMB
    encode_run(encoder, frames, 40, 75)
    assert encoder.bitrate_bps == cls.default_bitrate_bps and encoder.opened == 1, "mid-stream"
    assert encoder.encode(frames[15], keyframe=True).keyframe
    assert encoder.bitrate_bps == encoder.target_bitrate_bps and encoder.opened == 2
    encoder.target_bitrate_bps = cls.min_bitrate_bps
    waited = [encoder.encode(frames[k % 100]).keyframe for k in range(base.REOPEN_MAX_WAIT_FRAMES + 1)]
    assert not any(waited[:-1]) and waited[-1], "bounded: a new encoder after the longest wait"
    assert encoder.bitrate_bps == cls.min_bitrate_bps and encoder.opened == 3
    encode_run(encoder, frames, 25, 76)
    starved, _ = encode_run(encoder, frames, 50, 1)
    assert starved < 0.8 * generous, (starved, generous)
    encoder.target_bitrate_bps = 10**9
    assert encoder.target_bitrate_bps == cls.max_bitrate_bps, "clamped to the codec's range"
    encode_run(encoder, frames, 10, 51)
    assert encoder.encode(frames[61], keyframe=True).keyframe, "forced in the running encoder"
    assert encoder.bitrate_bps == cls.min_bitrate_bps and encoder.opened == 3, "a rise lasts first"
    encode_run(encoder, frames, base.BITRATE_RAISE_HOLD_FRAMES, 62)
    assert encoder.bitrate_bps == cls.min_bitrate_bps, "then waits for a keyframe"
    raised = encoder.encode(frames[1], keyframe=True)
    assert raised.keyframe and encoder.bitrate_bps == cls.max_bitrate_bps and encoder.opened == 4
    encoder.target_bitrate_bps = 1
    assert encoder.target_bitrate_bps == cls.min_bitrate_bps


def test_one_encoder_per_negotiated_codec():
    assert set(ENCODERS) == {"video/vp8", "video/h264"}
    for mime_type in CODECS:
        assert open_encoder(mime_type.upper(), 64, 64).mime_type == mime_type
    with pytest.raises(ValueError, match="AV1"):
        encoder_class("video/AV1")

"""The audio track (orchestrator/media/audio_track.py): silence is one shared packet, sound goes
through the track's own Opus encoder, and a receiver's decoder plays both back as they were."""

from __future__ import annotations

import av
import numpy as np

from orchestrator.media.audio_track import AudioTrack, Sound, silence_packet
from orchestrator.media.clock import AUDIO_SAMPLES_PER_PACKET, AUDIO_TIME_BASE

TONE_HZ = 440.0
RATE_HZ = 16000
DECODED_RATE_HZ = 48000  # opus/48000/2, as the peer negotiated it


def tone(k: int) -> np.ndarray:
    t = (np.arange(AUDIO_SAMPLES_PER_PACKET) + k * AUDIO_SAMPLES_PER_PACKET) / RATE_HZ
    return (np.sin(2 * np.pi * TONE_HZ * t) * 8000).astype(np.int16)


async def test_silence_is_one_packet_sound_is_encoded_and_both_decode_as_sent():
    track = AudioTrack(lambda: None)
    plan = [False] * 10 + [True] * 25 + [False] * 10 + [True] * 25
    packets = []
    for k, sounding in enumerate(plan):
        pcm = tone(k) if sounding else np.zeros(AUDIO_SAMPLES_PER_PACKET, np.int16)
        track.push(Sound(pcm, k * AUDIO_SAMPLES_PER_PACKET))
        packets.append(await track.recv())
    assert [p.pts for p in packets] == [k * AUDIO_SAMPLES_PER_PACKET for k in range(len(plan))]
    assert all(p.time_base == AUDIO_TIME_BASE for p in packets)
    silent = [bytes(p) for p, sounding in zip(packets, plan) if not sounding]
    assert set(silent) == {silence_packet()} and len(silence_packet()) < 16
    assert (track.packets_silent, track.packets_encoded) == (20, 50)

    decoder = av.CodecContext.create("libopus", "r")
    decoder.format, decoder.layout, decoder.sample_rate = "s16", "stereo", DECODED_RATE_HZ
    pieces = []
    for packet in packets:
        frames = decoder.decode(av.Packet(bytes(packet)))
        assert len(frames) == 1 and frames[0].samples == 3 * AUDIO_SAMPLES_PER_PACKET
        pieces.append(frames[0].to_ndarray().reshape(-1, 2).mean(axis=1) / 32768.0)
    rms = [float(np.sqrt(np.mean(p**2))) for p in pieces]
    # Opus's 6.5 ms look-ahead and a fresh encoder's start: one piece either side settles.
    for k, sounding in enumerate(plan):
        settled = plan[max(k - 1, 0) : k + 2].count(sounding) == len(plan[max(k - 1, 0) : k + 2])
        if settled:
            assert (rms[k] > 0.12) if sounding else (rms[k] < 0.002), (k, rms[k])
    second = np.concatenate(pieces[48:68])  # well inside the second tone
    spectrum = np.abs(np.fft.rfft(second))
    peak_hz = np.argmax(spectrum) * DECODED_RATE_HZ / second.size
    assert abs(peak_hz - TONE_HZ) < 10, peak_hz

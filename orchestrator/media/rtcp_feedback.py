"""The receiver's RTCP feedback for our video encoders.

aiortc 1.16's RTCRtpSender answers a picture loss indication (PLI) or full intra request (FIR)
by flagging a keyframe for its own encoder, and a receiver estimated maximum bitrate (REMB,
draft-alvestrand-rmcat-remb) by setting its encoder's `target_bitrate`
(aiortc/rtcrtpsender.py `_handle_rtcp_packet`). Our track hands it encoded packets, so its
encoder only packetizes: both must reach the track's encoders instead. aiortc's DTLS transport
routes each RTCP packet to the sender it names (the PLI/FIR media SSRC, the REMB's SSRC list)
and calls that sender's `_handle_rtcp_packet`; we see the packet there first, then aiortc
handles it as before. aiortc negotiates no transport-wide congestion control (transport-cc) for
video, so REMB is the only bit rate estimate a browser sends it.
"""

from __future__ import annotations

import weakref
from typing import Protocol

from aiortc import RTCRtpSender
from aiortc.rtp import RTCP_PSFB_APP, RTCP_PSFB_FIR, RTCP_PSFB_PLI, RtcpPsfbPacket, unpack_remb_fci


class FeedbackTarget(Protocol):
    target_bitrate_bps: int

    def request_keyframe(self) -> None: ...


def route_feedback(sender: RTCRtpSender, target: FeedbackTarget) -> None:
    """Send `sender`'s PLI/FIR and REMB to `target` (the video track it sends) as well."""
    handle = type(sender)._handle_rtcp_packet
    # The sender keeps this function: a strong reference back to it would be a cycle.
    sender_ref = weakref.ref(sender)

    async def handle_feedback(packet) -> None:
        own = sender_ref()
        if own is None:
            return
        if isinstance(packet, RtcpPsfbPacket):
            if packet.fmt in (RTCP_PSFB_PLI, RTCP_PSFB_FIR):
                target.request_keyframe()
            elif packet.fmt == RTCP_PSFB_APP:
                try:
                    bitrate_bps, ssrcs = unpack_remb_fci(packet.fci)
                except ValueError:  # another application-layer message
                    pass
                else:
                    if own._ssrc in ssrcs:
                        target.target_bitrate_bps = bitrate_bps
        await handle(own, packet)

    sender._handle_rtcp_packet = handle_feedback

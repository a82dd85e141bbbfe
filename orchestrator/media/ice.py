"""ICE configuration: which STUN/TURN servers and which host addresses a peer connection uses.

aiortc falls back to a public Google STUN server when given no configuration, and aioice
advertises every non-loopback interface address. Both are wrong for a server that must keep its
traffic on an interface the operator chose (loopback in tests, a NAT 1:1 address in production).
"""

from __future__ import annotations

import ipaddress

import aioice.ice
from aiortc import RTCConfiguration, RTCIceServer

from ..settings import Settings

_original_get_host_addresses = aioice.ice.get_host_addresses


def rtc_configuration(settings: Settings) -> RTCConfiguration:
    servers = [RTCIceServer(urls=url) for url in settings.stun]
    servers += [
        RTCIceServer(urls=url, username=settings.turn_username, credential=settings.turn_password)
        for url in settings.turn
    ]
    return RTCConfiguration(iceServers=servers)


def restrict_host_candidates(addresses: tuple[str, ...]) -> None:
    """Advertise only `addresses` as host candidates (process-wide: aioice reads a module function).

    An empty tuple restores aioice's own choice.
    """
    if not addresses:
        aioice.ice.get_host_addresses = _original_get_host_addresses
        return
    parsed = [ipaddress.ip_address(a) for a in addresses]

    def get_host_addresses(use_ipv4: bool, use_ipv6: bool) -> list[str]:
        return [
            str(a) for a in parsed if (a.version == 4 and use_ipv4) or (a.version == 6 and use_ipv6)
        ]

    aioice.ice.get_host_addresses = get_host_addresses

"""Debian's headless Chromium as the browser tests drive it (through Playwright, which downloads
no browser here): its path and the flags WebRTC over loopback needs."""

import shutil

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless=new", "--no-sandbox", "--disable-gpu", "--no-first-run",
    "--autoplay-policy=no-user-gesture-required",
    # WebRTC over loopback: let Chromium use 127.0.0.1 candidates and show real local IPs.
    "--allow-loopback-in-peer-connection",
    "--disable-features=WebRtcHideLocalIpsWithMdns",
    # This machine's network is closed: keep Chromium from calling home.
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--disable-quic",
]

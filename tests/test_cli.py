"""`python -m orchestrator` as a user runs it: flags, embedded Triton, clean shutdown."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request

import pytest
from orchestrator_process import free_port

from orchestrator.settings import parse_settings

STARTUP_TIMEOUT_S = 180


def test_help_documents_every_flag():
    out = subprocess.run([sys.executable, "-m", "orchestrator", "--help"], capture_output=True,
                         text=True, check=True).stdout
    for flag in ["--host", "--port", "--triton-url", "--avatar-id", "--ref-file", "--ref-text",
                 "--max-session", "--stun", "--turn", "--ice-host", "--listenport", "--avatar_id",
                 "--REF_FILE", "--REF_TEXT", "--max_session"]:
        assert flag in out, flag


def test_livetalking_aliases():
    s = parse_settings(["--listenport", "9000", "--avatar_id", "a1", "--REF_FILE", "cmn",
                        "--REF_TEXT", "t", "--max_session", "3"])
    assert (s.port, s.avatar_id, s.ref_file, s.ref_text, s.max_sessions) == (9000, "a1", "cmn", "t", 3)
    with pytest.raises(SystemExit):
        parse_settings(["--max-session", "0"])


def test_livetalkings_model_flag_names_the_lipsync_model_and_no_flag_is_abbreviated():
    """LiveTalking's `--model musetalk` was read as an abbreviation of --model-repository (a
    folder named musetalk, then Triton failing to load); it names the lip-sync model, its
    `wav2lip` being our export `wav2lip256`. No other flag is taken by a prefix either."""
    default = parse_settings([])
    for given, model in (("musetalk", "musetalk"), ("ultralight", "ultralight"),
                         ("wav2lip", "wav2lip256"), ("wav2lip96", "wav2lip96")):
        s = parse_settings(["--model", given])
        assert s.lipsync_model == model and s.model_repository == default.model_repository
    with pytest.raises(SystemExit):
        parse_settings(["--model-repo", "elsewhere"])


def test_transport_flags():
    """--transport takes a comma list or repeats; rtmp needs --push-url; LiveTalking's other
    transports and mistyped URLs are refused naming what to do, the stream key never shown."""
    s = parse_settings(["--transport", "webrtc,rtmp", "--transport", "whep", "--transport", "rtmp",
                        "--push_url", "rtmp://live.example.com/app/SECRETKEY"])
    assert s.transports == ("webrtc", "rtmp", "whep") and s.server_session
    assert s.push_urls == ("rtmp://live.example.com/app/SECRETKEY",)
    assert parse_settings([]).transports == ("webrtc",) and not parse_settings([]).server_session
    assert parse_settings(["--transport", "whep"]).server_session
    # issue 25: LiveTalking's rtcpush is our whip: a WHIP push of the server session; the push
    # URLs go by scheme to the RTMP and WHIP pushes.
    s = parse_settings(["--transport", "rtcpush,rtmp", "--push_url",
                        "http://srs:1985/rtc/v1/whip/?app=live&stream=livestream",
                        "--push-url", "rtmp://live.example.com/app/SECRETKEY", "--push-token", "t"])
    assert s.transports == ("whip", "rtmp") and s.server_session and s.push_token == "t"
    s = parse_settings(["--turn", "turn:127.0.0.1:3478?transport=tcp", "--turn-username", "u",
                        "--turn-password", "p", "--stun", "stun:127.0.0.1:3478"])
    assert s.turn == ("turn:127.0.0.1:3478?transport=tcp",) and s.stun == ("stun:127.0.0.1:3478",)
    for argv, words in (
            (["--transport", "virtualcam"], "not supported"),
            (["--transport", "hls"], "give webrtc, rtmp, whip, whep"),
            (["--transport", "rtmp"], "needs --push-url"),
            (["--transport", "rtcpush"], "--transport whip needs --push-url http://"),
            (["--push-url", "rtmp://h/app/KEY"], "only used with --transport rtmp or whip"),
            (["--transport", "rtmp", "--push-url", "http://h/app/SECRETKEY"], "rtmp://host"),
            (["--transport", "rtmp", "--push-url", "rtmp://h/SECRETKEY"], "rtmp://host"),
            (["--transport", "whip", "--push-url", "rtmp://h/app/SECRETKEY"], "needs --push-url"),
            (["--transport", "whip,rtmp", "--push-url", "rtmp://h/app/SECRETKEY",
              "--push-url", "http://h/whip", "--push-url", "ftp://h/SECRETKEY"], "give rtmp://host[:port]/app/stream (or "
             "rtmps://) or http(s)://"),
            (["--transport", "rtmp", "--push-url", "rtmp://h/app/K", "--push-token", "t"],
             "--push-token is only used with --transport whip"),
            (["--turn", "turn:127.0.0.1:3478"], "--turn needs --turn-username"),
            (["--turn", "127.0.0.1:3478", "--turn-username", "u", "--turn-password", "p"],
             "give turn:HOST[:PORT]"),
            (["--stun", "turn:127.0.0.1:3478"], "give stun:HOST[:PORT]"),
            (["--max-whep-viewers", "0"], "at least 1")):
        with pytest.raises(SystemExit) as exc:
            parse_settings(argv)
        assert words in str(exc.value) and "SECRETKEY" not in str(exc.value), (argv, exc.value)


def _children(pid: int) -> list[int]:
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            return [int(p) for p in f.read().split()]
    except FileNotFoundError:
        return []


def test_server_starts_embedded_triton_and_stops_it(tmp_path):
    port = free_port()
    log = open(tmp_path / "server.log", "w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "orchestrator", "--port", str(port), "--ice-host", "127.0.0.1"],
        stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        health = None
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2) as r:
                    health = json.load(r)
                    break
            except OSError:
                time.sleep(0.5)
        assert health is not None, (tmp_path / "server.log").read_text()[-3000:]
        triton = health["data"]["triton"]
        assert triton["ready"] and triton["embedded"]
        assert all(triton["models"].values()) and set(triton["models"]) >= {"tts_espeak",
                                                                           "lipsync_default"}
        servers = _children(proc.pid)
        assert servers, "the embedded tritonserver runs as a child of the orchestrator"
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=30)
    time.sleep(1.0)
    for pid in servers:
        assert not os.path.exists(f"/proc/{pid}") or "zombie" in open(f"/proc/{pid}/status").read()
    assert "triton" in (tmp_path / "server.log").read_text().lower()

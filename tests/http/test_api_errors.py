"""Bad input gets the contract's 4xx answers naming the field, and the server keeps serving."""

from __future__ import annotations

import asyncio
import json
import logging
import re
import time
from pathlib import Path

import aiohttp
import pytest
from server_fixtures import (  # noqa: F401  (fixture)
    TEST_MAX_SESSIONS,
    livehuman,
    running_server,
    server_settings,
)
from yarl import URL

from orchestrator.client import AvatarClient
from orchestrator.http.api import sse_event
from orchestrator.rate_limited_log import DEFAULT_LINES_PER_WINDOW, RateLimitedLog

UNKNOWN_SESSION = 987654
# A well-formed offer (ICE credentials, fingerprint, rtcp-mux): it passes the SDP check, so what
# is tested is the field after it (avatar, voice, clips), which is checked once a slot is taken.
OFFER_SDP = ("v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\na=group:BUNDLE 0\r\n"
             "m=video 9 UDP/TLS/RTP/SAVPF 96\r\nc=IN IP4 0.0.0.0\r\na=rtcp-mux\r\na=mid:0\r\n"
             "a=recvonly\r\na=rtpmap:96 VP8/90000\r\na=ice-ufrag:abcd\r\n"
             "a=ice-pwd:abcdefghijklmnopqrstuvwx\r\na=fingerprint:sha-256 "
             + ":".join(["AB"] * 32) + "\r\na=setup:actpass\r\n")


async def post(base_url: str, path: str, body) -> tuple[int, dict]:
    async with aiohttp.ClientSession() as http:
        # Raw bodies are sent as JSON too: other types are refused (415) before parsing.
        kwargs = ({"data": body, "headers": {"Content-Type": "application/json"}}
                  if isinstance(body, (bytes, str)) else {"json": body})
        async with http.post(f"{base_url}{path}", **kwargs) as resp:
            return resp.status, await resp.json()


@pytest.mark.parametrize(
    "path, body, status, names",
    [
        ("/offer", b"{not json", 400, "JSON"),
        ("/offer", [1, 2], 400, "object"),
        ("/offer", {"sdp": "v=0"}, 400, "type"),
        ("/offer", {"type": "answer", "sdp": "v=0"}, 400, "type"),
        ("/offer", {"type": "offer"}, 400, "sdp"),
        ("/offer", {"type": "offer", "sdp": 5}, 400, "sdp"),
        ("/offer", {"type": "offer", "sdp": "garbage"}, 400, "sdp"),
        ("/offer", {"type": "offer", "sdp": OFFER_SDP, "avatar": "nobody"}, 404, "avatar"),
        ("/offer", {"type": "offer", "sdp": OFFER_SDP, "avatar": "../etc"}, 400, "avatar"),
        ("/offer", {"type": "offer", "sdp": OFFER_SDP, "refaudio": "xx-nonexistent"}, 404,
         "refaudio"),
        ("/offer", {"type": "offer", "sdp": "v=0\r\nm=video", "custom_config": "{oops"}, 400,
         "custom_config"),
        ("/offer", {"type": "offer", "sdp": "v=0\r\nm=video", "multiavatar_config": "[1]"}, 400,
         "multiavatar_config"),
        ("/human", {"type": "echo", "text": "hi"}, 400, "sessionid"),
        # A string holding an integer is an id (LiveTalking's pages send strings): unknown here.
        ("/human", {"sessionid": "1", "type": "echo", "text": "hi"}, 404, "sessionid"),
        ("/human", {"sessionid": "abc", "type": "echo", "text": "hi"}, 404, "sessionid"),
        ("/human", {"sessionid": 1.5, "type": "echo", "text": "hi"}, 400, "sessionid"),
        ("/human", {"sessionid": [1], "type": "echo", "text": "hi"}, 400, "sessionid"),
        ("/human", {"sessionid": True, "type": "echo", "text": "hi"}, 400, "sessionid"),
        ("/human", {"sessionid": UNKNOWN_SESSION, "type": "echo", "text": "hi"}, 404, "sessionid"),
        ("/interrupt_talk", {}, 400, "sessionid"),
        ("/interrupt_talk", {"sessionid": UNKNOWN_SESSION}, 404, "sessionid"),
        ("/is_speaking", {"sessionid": UNKNOWN_SESSION}, 404, "sessionid"),
        ("/is_speaking", b"", 400, "JSON"),
    ],
)
async def test_bad_requests(livehuman, path, body, status, names):  # noqa: F811
    base_url, _ = livehuman
    got, answer = await post(base_url, path, body)
    assert got == status, answer
    assert answer["code"] != 0
    assert names in answer["msg"]


async def test_bad_human_fields_on_a_live_session(livehuman):  # noqa: F811
    base_url, services = livehuman
    client = AvatarClient(base_url, keep_video=False)
    try:
        await client.connect()
        cases = [
            ({"type": "sing", "text": "x"}, 400, "type"),
            ({"type": "echo"}, 400, "text"),
            ({"type": "echo", "text": "   "}, 400, "text"),
            ({"type": "echo", "text": 3}, 400, "text"),
            ({"type": "echo", "text": "x" * 6000}, 413, "text"),
            ({"type": "echo", "text": "x", "interrupt": "yes"}, 400, "interrupt"),
            ({"type": "echo", "text": "x", "avatarid": "other"}, 404, "avatarid"),
            ({"type": "echo", "text": "x", "tts": "voice"}, 400, "tts"),
            ({"type": "echo", "text": "x", "tts": {"ref_file": "zz-none"}}, 404, "ref_file"),
            ({"type": "chat", "text": ""}, 400, "text"),
            ({"type": "chat", "text": "x", "tts": {"ref_file": "../x"}}, 400, "ref_file"),
        ]
        for body, status, names in cases:
            got, answer = await client.post("/human", **body)
            assert got == status, (body, answer)
            assert answer["code"] != 0 and names in answer["msg"], (body, answer)
        # the session survived all of it
        got, answer = await client.post("/human", type="echo", text="still here")
        assert got == 200 and answer["code"] == 0
    finally:
        await client.close()


async def test_body_too_large(livehuman):  # noqa: F811
    base_url, _ = livehuman
    got, answer = await post(base_url, "/human", b"{" + b" " * (2 << 20) + b"}")
    assert got == 413 and answer["code"] == 413


async def test_session_limit(livehuman):  # noqa: F811
    base_url, services = livehuman
    clients = []
    try:
        while len(services.registry) < TEST_MAX_SESSIONS:
            client = AvatarClient(base_url, keep_video=False)
            clients.append(client)
            await client.connect()
            await client.wait_for_video(1, timeout=30)  # connected: its close frees the slot at once
        extra = AvatarClient(base_url, keep_video=False)
        clients.append(extra)
        with pytest.raises(RuntimeError, match="503.*session limit"):
            await extra.connect()
    finally:
        for client in clients:
            await client.close()
    deadline = time.monotonic() + 30
    while len(services.registry) and time.monotonic() < deadline:  # later tests need the slots
        await asyncio.sleep(0.05)
    assert not len(services.registry), "closed clients' sessions were not released"


async def test_healthz(livehuman):  # noqa: F811
    base_url, _ = livehuman
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{base_url}/healthz") as resp:
            assert resp.status == 200
            health = await resp.json()
    models = health["data"]["triton"]["models"]
    assert models["tts_espeak"] is True and models["lipsync_default"] is True


# --- hostile input (issue 9, item 6): each kind that once got a 500 is a 4xx naming the field ---

DEEP = b"[" * 100_000 + b"]" * 100_000
LONG_INT = b"9" * 5000
GARBAGE_SDP_WITH_MEDIA = "v=0\r\nm=video x\r\na=rtpmap:\r\n"
MULTIPART_OK = (b'--b\r\nContent-Disposition: form-data; name="sessionid"\r\n\r\n1\r\n'
                b'--b\r\nContent-Disposition: form-data; name="file"; filename="a.wav"\r\n\r\nxx\r\n'
                b"--b--\r\n")
CLIP_FOLDER = "avatars/default/frames"  # a folder of images in the default data directory


async def send_raw(base_url: str, method: str, path: str, body: bytes = b"",
                   content_type: str = "application/json") -> tuple[int, dict]:
    async with aiohttp.ClientSession() as http:
        async with http.request(method, URL(base_url + path, encoded=True), data=body,
                                headers={"Content-Type": content_type}) as resp:
            assert resp.content_type == "application/json", await resp.text()
            return resp.status, await resp.json()


@pytest.mark.parametrize(
    "method, path, body, content_type, status, names",
    [
        ("POST", "/offer", json.dumps({"type": "offer", "sdp": GARBAGE_SDP_WITH_MEDIA}).encode(),
         "application/json", 400, "sdp"),
        ("POST", "/offer", b'{"type": "offer", "sdp": "m="}', "application/json", 400, "sdp"),
        ("POST", "/offer", b'{"type": "offer", "sdp": "m=\\r\\nm="}', "application/json", 400, "sdp"),
        ("POST", "/human", DEEP, "application/json", 400, "nested"),
        ("POST", "/offer", b'{"a":' * 100_000 + b"1" + b"}" * 100_000, "application/json", 400,
         "nested"),
        ("POST", "/human", b'{"sessionid": ' + LONG_INT + b"}", "application/json", 400, "JSON"),
        ("POST", "/set_audiotype", b'{"sessionid": 1, "audiotype": -' + LONG_INT + b"}",
         "application/json", 400, "JSON"),
        ("POST", "/interrupt_talk", b'{"sessionid": 1}', "application/json; charset=bogus-7", 400,
         "charset"),
        ("POST", "/interrupt_talk", b'{"sessionid": 1}', "application/json; charset=rot13", 400,
         "charset"),
        ("POST", "/interrupt_talk", b'{"sessionid": 99999999999999999999}', "application/json",
         400, "sessionid"),
        ("POST", "/humanaudio", MULTIPART_OK, "multipart/form-data", 400, "multipart"),
        ("POST", "/humanaudio", MULTIPART_OK, "multipart/form-data; boundary=nope", 400, "multipart"),
        ("POST", "/humanaudio", MULTIPART_OK, "multipart/form-data; boundary=" + "b" * 100, 400,
         "multipart"),
        ("POST", "/avatars", MULTIPART_OK, "multipart/form-data", 400, "multipart"),
        ("POST", "/avatars", MULTIPART_OK.replace(b"a.wav", b"\x00"),
         "multipart/form-data; boundary=b", 400, "multipart"),
        ("POST", "/humanaudio", MULTIPART_OK.replace(b"a.wav", b"a\x01b"),
         "multipart/form-data; boundary=b", 400, "multipart"),
        ("POST", "/humanaudio", MULTIPART_OK.replace(b"\r\n1\r\n", "\r\n²\r\n".encode()),
         "multipart/form-data; boundary=b", 404, "sessionid"),
        ("POST", "/humanaudio", MULTIPART_OK.replace(b"\r\n1\r\n", b"\r\n1\x00\r\n"),
         "multipart/form-data; boundary=b", 400, "sessionid"),
        # Text that holds no integer names no session (or recording): 404, never a 5xx.
        ("GET", "/record/%C2%B2", b"", "", 404, "sessionid"),
        ("GET", "/record/" + "9" * 5000, b"", "", 404, "sessionid"),
        ("GET", "/sse?sessionid=%C2%B2", b"", "", 404, "sessionid"),
        ("GET", "/sse?sessionid=%D9%A3", b"", "", 404, "sessionid"),
        ("GET", "/sse", b"", "", 400, "sessionid"),
        ("GET", "/static/" + "a" * 5000, b"", "", 404, "static"),
        ("GET", "/static/..%2f..%2fetc%2fpasswd", b"", "", 404, "static"),
        ("POST", "/offer", json.dumps({"type": "offer", "sdp": OFFER_SDP,
                                       "refaudio": "\ud800"}).encode(), "application/json", 400,
         "refaudio"),
        ("POST", "/offer", json.dumps({"type": "offer", "sdp": OFFER_SDP,
                                       "avatar": "default\n"}).encode(), "application/json", 400,
         "avatar"),
        ("POST", "/offer", json.dumps({"type": "offer", "sdp": OFFER_SDP,
                                       "multiavatar_config": '{"guide\\n": "default"}'}).encode(),
         "application/json", 400, "multiavatar_config"),
        ("POST", "/offer", json.dumps({"type": "offer", "sdp": OFFER_SDP,
                                       "custom_config": json.dumps(
                                           [{"audiotype": 2, "imgpath": "a\0b"}])}).encode(),
         "application/json", 400, "custom_config"),
        ("POST", "/offer", json.dumps({"type": "offer", "sdp": OFFER_SDP,
                                       "custom_config": json.dumps(
                                           [{"audiotype": 2, "imgpath": "x" * 5000}])}).encode(),
         "application/json", 400, "custom_config"),
        ("POST", "/offer", json.dumps({"type": "offer", "sdp": OFFER_SDP,
                                       "custom_config": json.dumps(
                                           [{"audiotype": 2, "imgpath": CLIP_FOLDER,
                                             "audiopath": "avatars"}])}).encode(),
         "application/json", 400, "audiopath"),
        ("POST", "/offer", json.dumps({"type": "offer", "sdp": OFFER_SDP,
                                       "custom_config": "[" * 100_000}).encode(),
         "application/json", 400, "custom_config"),
    ],
)
async def test_hostile_input_gets_a_4xx_naming_the_field(livehuman, method, path, body,  # noqa: F811
                                                          content_type, status, names):
    base_url, _ = livehuman
    got, answer = await send_raw(base_url, method, path, body, content_type)
    assert got == status, answer
    assert answer["code"] == status and names in answer["msg"], answer


async def test_hostile_strings_on_a_live_session_name_the_field(livehuman):  # noqa: F811
    """NUL and lone surrogates anywhere in a body are refused at the boundary, naming the field;
    the session's SSE stream and speech carry on."""
    base_url, _ = livehuman
    client = AvatarClient(base_url, keep_video=False)
    try:
        await client.connect()
        sid = client.sessionid
        cases = [
            ({"sessionid": sid, "type": "echo", "text": "a\ud800b"}, "'text'"),
            ({"sessionid": sid, "type": "echo", "text": "a\0b"}, "'text'"),
            ({"sessionid": sid, "type": "echo", "text": "hi", "tts": {"ref_file": "\udc80"}},
             "'tts.ref_file'"),
            ({"sessionid": sid, "type": "echo", "text": "hi", "avatarid": "\ud800"}, "'avatarid'"),
            ({"sessionid": sid, "type": "echo", "text": "hi", "\ud800": 1}, "key"),
        ]
        for body, names in cases:
            got, answer = await send_raw(base_url, "POST", "/human",
                                         json.dumps(body).encode())
            assert got == 400 and names in answer["msg"], (body, answer)
        got, answer = await client.post("/human", type="echo", text="still here")
        assert got == 200, answer
    finally:
        await client.close()


def test_an_sse_event_that_is_not_utf8_is_still_written():
    """A lone surrogate that reached an event (any path) must not end the SSE stream."""
    line = sse_event({"event": "start", "text": "a\ud800b", "path": Path("/x")})
    assert line.startswith(b"data: ") and line.endswith(b"\n\n")
    assert json.loads(line[6:])["text"] == "a\ud800b"


@pytest.fixture(scope="module")
async def impatient_server(triton):
    """A server that waits at most 1 s for a request body."""
    async with running_server(server_settings(triton, body_read_timeout_s=1.0)) as server:
        yield server


async def raw_exchange(base_url: str, data: bytes, timeout: float = 30.0) -> bytes:
    """Send raw bytes on one connection; everything the server answers until it closes (or,
    keeping it open, until the timeout: then the test fails on what came)."""
    host, port = URL(base_url).host, URL(base_url).port
    reader, writer = await asyncio.open_connection(host, port)
    try:
        writer.write(data)
        await writer.drain()
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout)
        length = int(re.search(rb"(?i)content-length: *(\d+)", head).group(1))
        return head + await asyncio.wait_for(reader.readexactly(length), timeout)
    finally:
        writer.close()


@pytest.mark.parametrize("path, content_type, body", [
    ("/human", "application/json", b'{"sessionid": 1, '),
    ("/humanaudio", "multipart/form-data; boundary=b",
     b'--b\r\nContent-Disposition: form-data; name="file"; filename="a.wav"\r\n\r\nRIFF'),
    ("/avatars", "multipart/form-data; boundary=b",
     b'--b\r\nContent-Disposition: form-data; name="id"\r\n\r\nx'),
])
async def test_a_body_that_stops_arriving_is_a_408(impatient_server, path, content_type, body):
    base_url, _ = impatient_server
    request = (f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: {content_type}\r\n"
               f"Content-Length: {len(body) + 1000}\r\n\r\n").encode() + body
    answer = await raw_exchange(base_url, request)
    assert answer.startswith(b"HTTP/1.1 408"), answer[:300]
    payload = json.loads(answer.split(b"\r\n\r\n", 1)[1])
    assert payload["code"] == 408 and "did not arrive" in payload["msg"], payload


@pytest.mark.parametrize("raw", [
    b"GET\x01 / HTTP/1.1\r\nHost: x\r\n\r\n",
    b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03SECRET-BYTES\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: x\r\nX-Bad\x01: SECRET-BYTES\r\n\r\n",
    b"GET /" + b"a" * 20000 + b" HTTP/1.1\r\nHost: x\r\n\r\n",
    b"POST /human HTTP/1.1\r\nHost: x\r\nContent-Length: nope-SECRET-BYTES\r\n\r\n",
])
async def test_malformed_http_gets_json_that_echoes_nothing(livehuman, raw, caplog):  # noqa: F811
    base_url, _ = livehuman
    caplog.set_level(logging.INFO)
    answer = await raw_exchange(base_url, raw)
    head, body = answer.split(b"\r\n\r\n", 1)
    assert re.match(rb"HTTP/1\.[01] 4\d\d ", head), head
    assert b"application/json" in head
    payload = json.loads(body)
    assert 400 <= payload["code"] < 500 and "malformed HTTP request" in payload["msg"], payload
    assert b"SECRET" not in body and b"aaaa" not in body and b"\\x" not in body
    assert not any(r.exc_info for r in caplog.records), "a traceback for a malformed request"


async def test_malformed_requests_are_logged_once_each_and_rate_limited(livehuman, caplog):  # noqa: F811
    base_url, _ = livehuman
    caplog.set_level(logging.INFO)
    for _ in range(DEFAULT_LINES_PER_WINDOW + 15):
        got, _ = await send_raw(base_url, "POST", "/interrupt_talk", b"[" * 5000)
        assert got == 400
        await raw_exchange(base_url, b"GET\x01 / HTTP/1.1\r\n\r\n")
    rejected = [r for r in caplog.records if r.getMessage().startswith("rejected POST")]
    malformed = [r for r in caplog.records if "malformed HTTP request from" in r.getMessage()]
    assert 0 < len(rejected) <= DEFAULT_LINES_PER_WINDOW
    assert 0 < len(malformed) <= DEFAULT_LINES_PER_WINDOW
    assert not any(r.exc_info for r in caplog.records)


def test_rate_limited_log_reports_what_it_suppressed(caplog):
    now = [0.0]
    limited = RateLimitedLog(logging.getLogger("test.rate"), lines_per_window=3, window_s=60.0,
                             clock=lambda: now[0])
    caplog.set_level(logging.INFO, logger="test.rate")
    logged = [limited.log("kind", logging.INFO, "line %d", i) for i in range(10)]
    assert logged == [True] * 3 + [False] * 7
    assert limited.log("other", logging.INFO, "another kind")  # kinds are counted apart
    now[0] = 61.0
    assert limited.log("kind", logging.INFO, "line again")
    messages = [r.getMessage() for r in caplog.records]
    assert messages == ["line 0", "line 1", "line 2", "another kind",
                        "kind: suppressed 7 similar lines in 60 s", "line again"]


async def test_the_web_client_files_are_served(livehuman):  # noqa: F811
    base_url, _ = livehuman
    async with aiohttp.ClientSession() as http:
        for name, kind in [("client.js", "javascript"), ("client.css", "css")]:
            async with http.get(f"{base_url}/static/{name}") as resp:
                assert resp.status == 200 and kind in resp.content_type, name
                assert len(await resp.read()) > 100

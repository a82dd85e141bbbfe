"""Hostile HTTP requests for any livehuman route: the fuzz test (tests/http/test_fuzz.py) and the
reliability bench (bench/reliability.py) draw from here.

`route_table(app)` lists what the app serves (so a new route is fuzzed without touching this
file); `hostile_requests(routes, seed, count, sessionids)` yields `HostileRequest`s: each kind of
input that once made the server answer 500, plus random mutations of valid bodies (wrong types,
huge/negative numbers, Unicode edge cases, truncated or garbage JSON, wrong content types,
garbage multipart, path traversal, long paths and queries, hostile CORS preflights, origins and
credentials). Seeded: the same seed gives the same requests.

A request never carries a *valid* SDP offer (no `a=fingerprint`), so fuzzing never opens a
session and never meets the session limit.
"""

from __future__ import annotations

import asyncio
import json
import random
import time
from collections.abc import Iterator
from dataclasses import dataclass
from urllib.parse import quote

import aiohttp
from aiohttp import web
from yarl import URL

# Field names of the contract (../shared/spec/API.md), tried on every JSON route.
CONTRACT_FIELDS = ("sessionid", "type", "text", "interrupt", "avatarid", "tts", "audiotype",
                   "reinit", "sdp", "avatar", "refaudio", "reftext", "llmid", "custom_config",
                   "multiavatar_config", "id", "file")
ENUM_VALUES = ("offer", "answer", "echo", "chat", "start_record", "end_record", "sing", "")
METHODS = ("GET", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "HEAD")
LONG_DIGITS = 5000  # past CPython's 4,300-digit int parsing limit
DEEP_NESTING = 100_000
UNKNOWN_SESSIONID = 987_654_321
REQUEST_TIMEOUT_S = 60.0  # generous: only a hang fails a fuzz run, not slowness
MAX_BODY_READ_BYTES = 1 << 16

# Raw JSON texts (not Python values): json.dumps cannot write most of these.
RAW_JSON_VALUES = (
    '"\\ud800"', '"a\\udfffb"', '"\\u0000"', '"x\\u0000y"', '"²"', '"٣"', '"1\\u200b"', '"\\u202e1"',
    '"' + "9" * LONG_DIGITS + '"', "9" * LONG_DIGITS, "-" + "9" * LONG_DIGITS, "1e400", "-1e400",
    "NaN", "Infinity", "-0", "0.5", "1e2", "9223372036854775808", "-9223372036854775809",
    "18446744073709551616", "true", "false", "null", "[]", "{}", "[1]", '{"a":1}', '""', '" "',
    '"../../etc/passwd"', '"/etc/passwd"', '"data/../.."', '"\\\\..\\\\..\\\\x"', '"😀"', '"。。。！"',
    '"\\u00a0"', '"\\ufeff"', '"\\ufffe"', '"\\U0010ffff"', '"' + "x" * 6000 + '"', '"\\n"', '"default\\n"',
    '"\\r\\nm=video 9"', '"[{\\"audiotype\\":2,\\"imgpath\\":\\"\\\\u0000\\"}]"',
    '"[{\\"audiotype\\":2,\\"imgpath\\":\\"avatars\\",\\"audiopath\\":\\"avatars\\"}]"',
    '"[{\\"audiotype\\":2,\\"video\\":\\"' + "a" * 5000 + '\\"}]"',
    '"{\\"main\\\\n\\":\\"default\\"}"', '"{\\"x\\":{\\"avatar\\":\\"default\\",\\"voice\\":\\"\\\\ud800\\"}}"',
    '{"ref_file":"\\ud800"}', '{"ref_file":"\\u0000"}', '{"ref_file":"' + "v" * 200 + '"}',
    '{"ref_file":1}', '{"ref_text":[]}',
)
GARBAGE_SDPS = (
    "m=",
    "v=0\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111\r\n",
    "v=0\r\no=- 1 1 IN IP4 0.0.0.0\r\ns=-\r\nt=0 0\r\nm=video 9 UDP/TLS/RTP/SAVPF 96\r\n"
    "c=IN IP4 0.0.0.0\r\na=rtpmap:96 VP8/90000\r\na=mid:0\r\na=recvonly\r\n",
    "v=0\r\nm=video x\r\na=rtpmap:\r\n",
    "v=0\r\nm=application 9 UDP/DTLS/SCTP webrtc-datachannel\r\na=sctp-port:x\r\n",
    "v=0\r\nm=audio 9 RTP/AVP 0\r\na=ice-ufrag:a\r\na=ice-pwd:b\r\na=setup:bogus\r\n",
    "v=0\r\nm=audio 9 RTP/AVP 0\r\na=group:BUNDLE 0 1 2\r\na=ssrc-group:FID\r\na=ssrc:x\r\n",
    "m=video 9 UDP/TLS/RTP/SAVPF 96\r\na=rtpmap:96 VP8/x\r\na=fmtp:96 ;;;\r\na=rtcp-fb:\r\n",
    "m=\ud800",
    "m=" + "x" * 5000,
)
CONTENT_TYPES = (
    "application/json", "application/json; charset=utf-8", "application/json; charset=bogus-7",
    "application/json; charset=utf-16", "application/json; charset=", "text/plain",
    "application/x-www-form-urlencoded", "multipart/form-data", "multipart/form-data; boundary=",
    "multipart/form-data; boundary=nope", "multipart/mixed; boundary=b", "image/png", "", "*/*",
    'application/json; charset="utf-8"; x=y', "application/sdp", "application/sdp; charset=utf-16",
    "application/trickle-ice-sdpfrag",
)
PATH_SUFFIXES = (
    "../../etc/passwd", "%2e%2e/%2e%2e/etc/passwd", "..%2f..%2fetc%2fpasswd", "%00", "a%00b",
    "a" * 5000, "%c0%ae%c0%ae/", "index.html/..", "./././", "%ff%fe", "²", "٣", "-1", "0",
    "9" * LONG_DIGITS, "%F0%9F%98%80", "x/" * 300, "%ED%A0%80", "static/../static",
)
QUERY_VALUES = ("", "²", "٣", "-1", "-0", "+1", " 1", "1 ", "0x10", "1e3", "9" * LONG_DIGITS,
                "%00", "%ED%A0%80", "a" * 10000, "1&sessionid=2", "%ff")
# The access layer's headers (orchestrator/http/access.py): origins, preflight asks, credentials.
ALLOWED_ORIGIN = "http://allowed.example"  # what the fuzzed servers allow (--cors-origin)
ORIGINS = ("null", "", "http://[", "http://[::1", "http://a]b", "*", "http://evil.example",
           "http://allowed.example", "http://allowed.example/", "HTTP://ALLOWED.EXAMPLE",
           "http://127.0.0.1", "http://127.0.0.1:1", "http://" + "a" * 5000, "file://",
           "http://é.example", "http://x, http://y", "javascript:alert(1)", "http://a:b@c")
PREFLIGHT_METHODS = (None, "", "POST", "GET", "post", "FOO", "x" * 3000, ",", "OPTIONS")
PREFLIGHT_HEADERS = (None, "", "authorization,content-type", ",,,", "x" * 5000, "a b, c", "*")
AUTHORIZATIONS = ("", "Bearer", "Bearer ", "Bearer  ", "bearer x", "Basic YTpi", "Token x",
                  "Bearer " + "t" * 5000, "Bearer é", "Bearer ÿþ", "Bearer a b", " ")
FETCH_SITES = ("same-origin", "cross-site", "none", "", "SAME-ORIGIN", "same-origin, cross-site")
TOKEN_QUERIES = ("", "x", "%00", "%ff", "%ED%A0%80", "a" * 5000, "x&token=y")


@dataclass(frozen=True)
class HostileRequest:
    method: str
    path: str  # already percent-encoded where needed; send it as is
    headers: dict[str, str]
    body: bytes
    kind: str  # what the generator meant to test, for reports


async def send(http: aiohttp.ClientSession, base_url: str, request: HostileRequest,
               timeout_s: float = REQUEST_TIMEOUT_S) -> tuple[int | str, float]:
    """(the status, or the name of the client-side error such as a connection the server closed;
    seconds until the answer). Reads at most MAX_BODY_READ_BYTES, nothing of an SSE stream."""
    started = time.monotonic()
    try:
        async with http.request(request.method, URL(base_url + request.path, encoded=True),
                                headers=request.headers, data=request.body,
                                timeout=aiohttp.ClientTimeout(total=timeout_s)) as resp:
            if resp.content_type != "text/event-stream":  # an SSE stream never ends
                await resp.content.read(MAX_BODY_READ_BYTES)
            return resp.status, time.monotonic() - started
    except (aiohttp.ClientError, ValueError, asyncio.TimeoutError) as exc:
        return type(exc).__name__, time.monotonic() - started


def route_table(app: web.Application) -> list[tuple[str, str]]:
    """(method, path template) of every route the app serves, e.g. ("GET", "/record/{sessionid}");
    a static folder appears as its prefix with "/{filename}". The CORS policy's preflight
    routes (OPTIONS on every resource) are left out: `_preflight` sends hostile preflights to
    every route's path instead, so they do not take a share of the routes' requests."""
    table = set()
    for route in app.router.routes():
        if route.method == "OPTIONS":
            continue
        info = route.resource.get_info() if route.resource is not None else {}
        if "prefix" in info:  # static
            template = info["prefix"].rstrip("/") + "/{filename}"
        else:
            template = route.resource.canonical if route.resource is not None else "/"
        table.add((route.method, template))
    return sorted(table)


def hostile_requests(routes: list[tuple[str, str]], seed: int, count: int,
                     sessionids: tuple[int, ...] = ()) -> Iterator[HostileRequest]:
    """`count` hostile requests spread over `routes`; `sessionids` are live sessions the requests
    may name (so validation behind the session lookup is reached too)."""
    rng = random.Random(seed)
    makers = (_json_mutation, _json_mutation, _json_mutation, _raw_garbage, _multipart,
              _path_mutation, _query_mutation, _wrong_method, _sdp_garbage, _preflight,
              _hostile_access)
    for i in range(count):
        method, template = routes[i % len(routes)]
        yield rng.choice(makers)(rng, method, template, sessionids)


def _sessionid(rng: random.Random, sessionids: tuple[int, ...]) -> str:
    """A raw JSON value for a sessionid: often a live one, sometimes hostile."""
    if sessionids and rng.random() < 0.6:
        return str(rng.choice(sessionids))
    return rng.choice((str(UNKNOWN_SESSIONID), *RAW_JSON_VALUES))


def _fill(template: str, rng: random.Random, sessionids: tuple[int, ...]) -> str:
    path = template
    while "{" in path:
        start, end = path.index("{"), path.index("}")
        value = str(rng.choice(sessionids)) if sessionids and rng.random() < 0.3 else "1"
        path = path[:start] + value + path[end + 1 :]
    return path


def _json_body(rng: random.Random, sessionids: tuple[int, ...]) -> str:
    """A JSON object text: contract fields with plausible values, one to three of them hostile."""
    fields = {"sessionid": _sessionid(rng, sessionids),
              "type": json.dumps(rng.choice(ENUM_VALUES)), "text": '"hello"',
              "sdp": json.dumps(rng.choice(GARBAGE_SDPS)), "audiotype": "1", "reinit": "true",
              "interrupt": "false"}
    for name in rng.sample(CONTRACT_FIELDS, rng.randint(1, 3)):
        fields[name] = rng.choice(RAW_JSON_VALUES)
    if rng.random() < 0.1:
        fields[rng.choice(RAW_JSON_VALUES).strip('"')[:40]] = "1"  # a hostile key
    return "{" + ",".join(f"{json.dumps(k)}:{v}" for k, v in fields.items()) + "}"


def _json_mutation(rng, method, template, sessionids) -> HostileRequest:
    body = _json_body(rng, sessionids)
    content_type = "application/json" if rng.random() < 0.8 else rng.choice(CONTENT_TYPES)
    return HostileRequest(method, _fill(template, rng, sessionids),
                          {"Content-Type": content_type}, body.encode("utf-8", "surrogatepass"),
                          "json mutation")


def _raw_garbage(rng, method, template, sessionids) -> HostileRequest:
    valid = _json_body(rng, sessionids).encode("utf-8", "surrogatepass")
    choices = (
        lambda: valid[: rng.randint(0, max(0, len(valid) - 1))],  # truncated
        lambda: b"[" * DEEP_NESTING + b"]" * DEEP_NESTING,
        lambda: b'{"a":' * DEEP_NESTING + b"1" + b"}" * DEEP_NESTING,
        lambda: b"[" * DEEP_NESTING,
        lambda: rng.randbytes(rng.randint(1, 2000)),
        lambda: b"\xef\xbb\xbf" + valid,  # BOM
        lambda: valid.decode("utf-8", "surrogatepass").encode("utf-16", "surrogatepass"),
        lambda: b"\xff\xfe\xfd" + valid,
        lambda: b"",
        lambda: b"null",
        lambda: b'"' + b"x" * 10000 + b'"',
        lambda: b"9" * LONG_DIGITS,
        lambda: b'{"sessionid":' + b"9" * LONG_DIGITS + b"}",
        lambda: b"\x00" * 100,
    )
    return HostileRequest(method, _fill(template, rng, sessionids),
                          {"Content-Type": rng.choice(CONTENT_TYPES)}, rng.choice(choices)(),
                          "raw garbage")


def _multipart(rng, method, template, sessionids) -> HostileRequest:
    boundary = "fuzzboundary"
    sid = str(rng.choice(sessionids)) if sessionids and rng.random() < 0.5 else rng.choice(
        ("²", "٣", "-1", "9" * LONG_DIGITS, "", "abc", str(UNKNOWN_SESSIONID), "1\x00"))
    filename = rng.choice(("a.wav", "a\x01b.wav", "a\r\nX-Injected: 1", "\x00", "../../x", "é.wav",
                           "a" * 5000, '"', "a\\b"))
    payload = rng.choice((b"RIFF\x00\x00\x00\x00WAVEfmt ", rng.randbytes(500), b"", b"\x89PNG\r\n"))
    fields = {"sessionid": sid.encode("utf-8", "surrogatepass"), "id": rng.choice(
        (b"new-avatar", b"default", b"x\n", b"\xff\xfe", b"a" * 100, b"..", b""))}
    parts = [f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n'.encode() + value
             + b"\r\n" for name, value in fields.items()]
    parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="file"; '
                 f'filename="{filename}"\r\nContent-Type: audio/wav\r\n\r\n'
                 .encode("utf-8", "surrogatepass") + payload + b"\r\n")
    body = b"".join(parts) + f"--{boundary}--\r\n".encode()
    mutation = rng.randrange(6)
    content_type = f"multipart/form-data; boundary={boundary}"
    if mutation == 1:
        content_type = "multipart/form-data"  # no boundary
    elif mutation == 2:
        content_type = "multipart/form-data; boundary=wrong"
    elif mutation == 3:
        body = body[: rng.randint(0, len(body))]  # truncated, no closing boundary
    elif mutation == 4:
        body = body.replace(b"Content-Disposition: form-data; ", b"Content-Disposition: ", 1)
    elif mutation == 5:
        content_type = f"multipart/form-data; boundary={'b' * 100}"
    return HostileRequest(method, _fill(template, rng, sessionids), {"Content-Type": content_type},
                          body, "garbage multipart")


def _path_mutation(rng, method, template, sessionids) -> HostileRequest:
    base = _fill(template, rng, sessionids)
    if "{" in template:  # replace the variable part itself
        base = template[: template.index("{")]
    else:
        base = base.rstrip("/") + "/"
    path = base + rng.choice(PATH_SUFFIXES)
    return HostileRequest(method, quote(path, safe="/%?&=-._~"), {}, b"", "hostile path")


def _query_mutation(rng, method, template, sessionids) -> HostileRequest:
    value = rng.choice(QUERY_VALUES)
    if sessionids and rng.random() < 0.2:
        value = f"{rng.choice(sessionids)}&sessionid={value}"
    path = f"{_fill(template, rng, sessionids)}?sessionid={quote(value, safe='%&=')}"
    return HostileRequest(method, path, {}, b"", "hostile query")


def _wrong_method(rng, method, template, sessionids) -> HostileRequest:
    other = rng.choice([m for m in METHODS if m != method])
    return HostileRequest(other, _fill(template, rng, sessionids),
                          {"Content-Type": "application/json"}, b"{}", "wrong method")


def _sdp_garbage(rng, method, template, sessionids) -> HostileRequest:
    sdp = rng.choice(GARBAGE_SDPS)
    if rng.random() < 0.5:  # a random line dropped or duplicated
        lines = sdp.split("\r\n")
        i = rng.randrange(len(lines))
        lines.insert(i, lines[i]) if rng.random() < 0.5 else lines.pop(i)
        sdp = "\r\n".join(lines)
    if rng.random() < 0.3:  # WHEP: the SDP is the body (http/whep_api.py)
        return HostileRequest("POST", "/whep", {"Content-Type": "application/sdp"},
                              sdp.encode("utf-8", "surrogatepass"), "garbage SDP")
    body = json.dumps({"type": "offer", "sdp": sdp}, ensure_ascii=True)
    return HostileRequest("POST", "/offer" if rng.random() < 0.7 else _fill(template, rng, sessionids),
                          {"Content-Type": "application/json"}, body.encode(), "garbage SDP")


def _preflight(rng, method, template, sessionids) -> HostileRequest:
    """A CORS preflight for the route, with hostile origin and asks; one in four is the
    well-formed preflight of an allowed page for the route's own method (among the storm it must
    still pass, and a run always sees the policy say yes, however many routes share the draws)."""
    if rng.random() < 0.25:
        headers = {"Origin": ALLOWED_ORIGIN, "Access-Control-Request-Method": method,
                   "Access-Control-Request-Headers": "authorization,content-type"}
        return HostileRequest("OPTIONS", _fill(template, rng, sessionids), headers, b"",
                              "hostile preflight")
    headers = {"Origin": rng.choice(ORIGINS)}
    asked_method = rng.choice(PREFLIGHT_METHODS)
    if asked_method is not None:
        headers["Access-Control-Request-Method"] = asked_method
    asked_headers = rng.choice(PREFLIGHT_HEADERS)
    if asked_headers is not None:
        headers["Access-Control-Request-Headers"] = asked_headers
    return HostileRequest("OPTIONS", _fill(template, rng, sessionids), headers, b"",
                          "hostile preflight")


def _hostile_access(rng, method, template, sessionids) -> HostileRequest:
    """The route's own method and a plausible body, with hostile origin, fetch site, content
    type and credentials (a header, a `token` query, or none)."""
    headers = {"Content-Type": rng.choice(CONTENT_TYPES)}
    if rng.random() < 0.7:
        headers["Origin"] = rng.choice(ORIGINS)
    if rng.random() < 0.4:
        headers["Sec-Fetch-Site"] = rng.choice(FETCH_SITES)
    if rng.random() < 0.5:
        headers["Authorization"] = rng.choice(AUTHORIZATIONS)
    path = _fill(template, rng, sessionids)
    if rng.random() < 0.3:
        path += f"{'&' if '?' in path else '?'}token={rng.choice(TOKEN_QUERIES)}"
    body = _json_body(rng, sessionids).encode("utf-8", "surrogatepass")
    return HostileRequest(method, path, headers, body, "hostile access headers")

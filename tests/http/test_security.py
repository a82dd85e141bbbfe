"""Safe on a network: the access token on every control route, unguessable session ids with a
limit on probing, the CORS policy, cross-site request checks, body limits, and nothing about the
server disclosed (absolute paths are checked on every test server's responses by
server_fixtures.disclosure_guard)."""

from __future__ import annotations

import asyncio
import json
import logging
import re
from dataclasses import replace
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from chromium import CHROMIUM, CHROMIUM_ARGS
from server_fixtures import livehuman, running_server, server_settings  # noqa: F401  (fixture)
from yarl import URL

from orchestrator.app import create_app
from orchestrator.client import AvatarClient
from orchestrator.http.validation import MAX_FORM_FIELDS
from orchestrator.session.registry import MAX_SESSION_ID, MissLimiter
from orchestrator.settings import parse_settings

TOKEN = "s3cret-test-token"
ALLOWED = "http://allowed.example"
FOREIGN = "http://evil.example"
MISS_LIMIT = 20
# Served without the token: the page (it asks for the token) and its files, health and metrics
# for operators.
OPEN_ROUTES = {("GET", "/"), ("GET", "/client/"), ("GET", "/client"), ("GET", "/static/1"),
               ("GET", "/healthz"),
               ("GET", "/metrics")}
AUTH = {"Authorization": f"Bearer {TOKEN}"}
ABSOLUTE_PATH = re.compile(r"(^|[\s'\"(=])/(home|work|tmp|usr|opt|root|var)/")


@pytest.fixture(scope="module")
async def guarded(triton):
    """(base_url, services, settings) of a server with a token and one allowed origin."""
    settings = server_settings(triton, api_token=TOKEN, cors_origins=(ALLOWED,),
                               max_session_misses=MISS_LIMIT)
    async with running_server(settings) as (base_url, services):
        yield base_url, services, settings


def control_routes(settings, services) -> list[tuple[str, str]]:
    """(method, concrete path) of every route of the app, static files and preflights aside."""
    app = create_app(settings, services)
    routes = []
    for route in app.router.routes():
        info = route.resource.get_info() if route.resource else {}
        if route.method in ("OPTIONS", "HEAD") or "prefix" in info:  # prefix: static files
            continue
        path = re.sub(r"\{[^}]+\}", "1", route.resource.canonical)
        routes.append((route.method, path))
    return routes


async def test_stranger_gets_401_on_every_control_route(guarded):
    base_url, services, settings = guarded
    routes = control_routes(settings, services)
    assert OPEN_ROUTES <= set(routes) and len(routes) > len(OPEN_ROUTES) + 8
    async with aiohttp.ClientSession() as http:
        for method, path in routes:
            for headers, query in (({}, ""), ({"Authorization": "Bearer wrong"}, ""),
                                   ({"Authorization": TOKEN}, ""), ({}, "?token=wrong")):
                async with http.request(method, f"{base_url}{path}{query}",
                                        json={"sessionid": 1}, headers=headers) as resp:
                    if (method, path) in OPEN_ROUTES:
                        assert resp.status != 401, (method, path)
                        continue
                    assert resp.status == 401, (method, path, headers, query, resp.status)
                    assert resp.headers["WWW-Authenticate"].startswith("Bearer")
                    answer = await resp.json()
                    assert answer["code"] == 401 and "token" in answer["msg"]
        # The page's own files stay readable: it must load to ask for the token.
        async with http.get(f"{base_url}/static/client.js") as resp:
            assert resp.status == 200


async def test_protect_metrics_closes_health_and_metrics_too(triton):
    settings = server_settings(triton, api_token=TOKEN, protect_metrics=True)
    async with running_server(settings) as (base_url, _), aiohttp.ClientSession() as http:
        for path in ("/healthz", "/metrics"):
            async with http.get(f"{base_url}{path}") as resp:
                assert resp.status == 401, path
            async with http.get(f"{base_url}{path}", headers=AUTH) as resp:
                assert resp.status == 200, path
        async with http.get(f"{base_url}/") as resp:
            assert resp.status == 200


async def read_events(base_url: str, sessionid: int, events: list[dict]) -> None:
    """SSE the way EventSource reads it: the token in the query, no header."""
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{base_url}/sse",
                            params={"sessionid": str(sessionid), "token": TOKEN}) as resp:
            assert resp.status == 200
            async for line in resp.content:
                if line.startswith(b"data: "):
                    events.append(json.loads(line[6:]))


async def wait_for_event(events: list[dict], kind: str, timeout_s: float = 30.0) -> dict:
    for _ in range(int(timeout_s / 0.05)):
        for event in events:
            if event["event"] == kind:
                return event
        await asyncio.sleep(0.05)
    raise AssertionError(f"no {kind!r} event in {events}")


async def test_the_normal_flow_works_with_the_token(guarded):
    base_url, services, settings = guarded
    client = AvatarClient(base_url, keep_video=False, token=TOKEN)
    events: list[dict] = []
    reader = None
    try:
        await client.connect()
        await client.wait_for_video(5, timeout=30)
        reader = asyncio.create_task(read_events(base_url, client.sessionid, events))
        status, answer = await client.post("/record", type="start_record")
        assert status == 200, answer
        status, answer = await client.post("/human", type="echo", text="Only with the token.")
        assert status == 200, answer
        await wait_for_event(events, "end")
        status, answer = await client.post("/record", type="end_record")
        assert status == 200, answer
        # Relative to the data directory, never the server's own directories.
        relative = answer["data"]["path"]
        assert re.fullmatch(rf"record/{client.sessionid}-[0-9TZ.]+-[0-9a-f]+\.mp4", relative), relative
        assert (services.settings.data_dir / relative).is_file()
        saved = await wait_for_event(events, "record_saved")
        for event in events:
            assert not ABSOLUTE_PATH.search(json.dumps(event)), event
        assert saved["path"] == relative
        async with aiohttp.ClientSession() as http:
            # A <a download> / <video> link: the token in the query.
            async with http.get(f"{base_url}{answer['data']['url']}",
                                params={"token": TOKEN}) as resp:
                assert resp.status == 200 and resp.content_type == "video/mp4"
                assert len(await resp.read()) > 1000
            async with http.get(f"{base_url}{answer['data']['url']}") as resp:
                assert resp.status == 401
    finally:
        if reader is not None:
            reader.cancel()
            await asyncio.gather(reader, return_exceptions=True)
        await client.close()


async def test_session_ids_cannot_be_found_by_counting(guarded):
    base_url, services, _ = guarded
    clients = [AvatarClient(base_url, keep_video=False, token=TOKEN) for _ in range(2)]
    try:
        for client in clients:
            await client.connect()
        ids = [client.sessionid for client in clients]
        assert all(isinstance(i, int) and 60 < i <= MAX_SESSION_ID for i in ids), ids
        assert abs(ids[0] - ids[1]) > 1, ids
        statuses = []
        async with aiohttp.ClientSession(headers=AUTH) as http:
            for sessionid in range(1, 61):
                async with http.post(f"{base_url}/is_speaking",
                                     json={"sessionid": sessionid}) as resp:
                    statuses.append(resp.status)
                    assert resp.status in (404, 429), (sessionid, await resp.json())
            assert statuses == [404] * MISS_LIMIT + [429] * (60 - MISS_LIMIT)
            # this address opened ids[0] itself: a prober behind the same NAT or proxy must not
            # lock its neighbours out of their own sessions
            async with http.post(f"{base_url}/is_speaking", json={"sessionid": ids[0]}) as resp:
                assert resp.status == 200, await resp.json()
        # a session opened from another address is out of reach while this one is locked out
        services.registry._opened_by[ids[1]] = "192.0.2.7"
        async with aiohttp.ClientSession(headers=AUTH) as http:
            async with http.post(f"{base_url}/is_speaking", json={"sessionid": ids[1]}) as resp:
                answer = await resp.json()
                assert resp.status == 429 and "--max-session-misses" in answer["msg"], answer
    finally:
        services.registry.misses = MissLimiter(MISS_LIMIT)  # the other tests' address
        for client in clients:
            await client.close()


async def test_cors_preflight_for_every_route(guarded):
    base_url, services, settings = guarded
    asks = {"Access-Control-Request-Headers": "authorization,content-type"}
    async with aiohttp.ClientSession() as http:
        for method, path in control_routes(settings, services):
            preflight = {"Access-Control-Request-Method": method, **asks}
            async with http.options(f"{base_url}{path}",
                                    headers={"Origin": ALLOWED, **preflight}) as resp:
                assert resp.status == 200, (method, path)
                assert resp.headers["Access-Control-Allow-Origin"] == ALLOWED
                allowed = resp.headers["Access-Control-Allow-Headers"].lower()
                assert "authorization" in allowed and "content-type" in allowed
            async with http.options(f"{base_url}{path}",
                                    headers={"Origin": FOREIGN, **preflight}) as resp:
                assert resp.status == 403, (method, path)
                assert "Access-Control-Allow-Origin" not in resp.headers
        async with http.get(f"{base_url}/healthz", headers={"Origin": ALLOWED}) as resp:
            assert resp.headers["Access-Control-Allow-Origin"] == ALLOWED
        async with http.get(f"{base_url}/healthz", headers={"Origin": FOREIGN}) as resp:
            assert "Access-Control-Allow-Origin" not in resp.headers


async def test_nothing_is_allowed_cross_origin_by_default(livehuman):  # noqa: F811
    base_url, _ = livehuman
    async with aiohttp.ClientSession() as http:
        async with http.options(f"{base_url}/human", headers={
                "Origin": ALLOWED, "Access-Control-Request-Method": "POST"}) as resp:
            assert resp.status == 403 and "Access-Control-Allow-Origin" not in resp.headers
        async with http.get(f"{base_url}/healthz", headers={"Origin": ALLOWED}) as resp:
            assert "Access-Control-Allow-Origin" not in resp.headers


async def test_cross_site_text_plain_is_refused_and_not_executed(livehuman):  # noqa: F811
    """A form on another site can post text/plain without a preflight: it must not speak."""
    base_url, services = livehuman
    client = AvatarClient(base_url, keep_video=False)
    try:
        await client.connect()
        queue = services.registry.get(client.sessionid).events.subscribe()
        forged = json.dumps({"sessionid": client.sessionid, "type": "echo", "text": "FORGED"})
        async with aiohttp.ClientSession() as http:
            for headers in ({"Origin": FOREIGN}, {"Origin": FOREIGN, "Sec-Fetch-Site": "cross-site"},
                            {}):
                async with http.post(f"{base_url}/human", data=forged, headers={
                        "Content-Type": "text/plain", **headers}) as resp:
                    answer = await resp.json()
                    assert resp.status == 415 and "Content-Type" in answer["msg"], answer
                    assert "text/plain" in answer["msg"]
            for upload in ("/humanaudio", "/voices", "/avatars"):
                async with http.post(f"{base_url}{upload}", data=b"x", headers={
                        "Content-Type": "text/plain"}) as resp:
                    answer = await resp.json()  # the type the upload route does take
                    assert resp.status == 415 and "multipart/form-data" in answer["msg"], answer
            # The contract's own example: fetch() from the served page sends text/plain.
            for i, headers in enumerate(({"Origin": base_url}, {"Sec-Fetch-Site": "same-origin"})):
                body = {"sessionid": client.sessionid, "type": "echo", "text": f"Same origin {i}."}
                async with http.post(f"{base_url}/human", data=json.dumps(body), headers={
                        "Content-Type": "text/plain;charset=UTF-8", **headers}) as resp:
                    assert resp.status == 200, await resp.json()
        texts = []
        while "Same origin 1." not in texts:
            event = await asyncio.wait_for(queue.get(), 30)
            texts.append(event.get("text"))
        assert "FORGED" not in texts and "Same origin 0." in texts, texts
    finally:
        await client.close()


def form(fields: int, sessionid: int = 1) -> aiohttp.FormData:
    body = aiohttp.FormData(default_to_multipart=True)
    body.add_field("sessionid", str(sessionid))
    for i in range(fields - 1):
        body.add_field(f"x{i}", "y")
    return body


async def test_multipart_checks_origin_and_limits(livehuman):  # noqa: F811
    base_url, _ = livehuman
    async with aiohttp.ClientSession() as http:
        for path in ("/humanaudio", "/avatars"):
            async with http.post(f"{base_url}{path}", data=form(2),
                                 headers={"Origin": FOREIGN}) as resp:
                answer = await resp.json()
                assert resp.status == 403 and "origin" in answer["msg"], (path, answer)
            async with http.post(f"{base_url}{path}", data=form(MAX_FORM_FIELDS + 1)) as resp:
                answer = await resp.json()
                assert resp.status == 413 and str(MAX_FORM_FIELDS) in answer["msg"], (path, answer)
        # 100,001 small fields (the reported 7.5 s of parsing): refused at the ninth.
        many = b"".join(b"--b\r\nContent-Disposition: form-data; name=\"x\"\r\n\r\ny\r\n"
                        for _ in range(100_001)) + b"--b--\r\n"
        many_headers = {"Content-Type": "multipart/form-data; boundary=b"}
        for path in ("/humanaudio", "/avatars"):
            async with http.post(f"{base_url}{path}", data=many, headers=many_headers) as resp:
                answer = await resp.json()
                assert resp.status == 413, (path, answer)
        # Same-origin forms (the page's avatar builder) pass the origin check.
        async with http.post(f"{base_url}/humanaudio", data=form(2),
                             headers={"Origin": base_url}) as resp:
            assert resp.status == 404  # got as far as the session lookup


async def test_allowed_origin_may_post_forms(guarded):
    base_url, _, _ = guarded
    async with aiohttp.ClientSession(headers=AUTH) as http:
        async with http.post(f"{base_url}/humanaudio", data=form(2),
                             headers={"Origin": ALLOWED}) as resp:
            assert resp.status == 404  # past the origin check, at the session lookup


async def test_hostile_credentials_and_origins_are_the_clients_fault(guarded):
    """A token that is not UTF-8 (header bytes reach the app as lone surrogates) and an Origin
    no URL parser takes are refused like any wrong token or foreign origin: never a 500."""
    base_url, _, _ = guarded
    url = URL(base_url)
    for token in (b"\xff\xfe", b"\xed\xa0\x80", TOKEN.encode() + b"\xff"):
        reader, writer = await asyncio.open_connection(url.host, url.port)
        try:
            writer.write(b"POST /is_speaking HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + token
                         + b"\r\nContent-Type: application/json\r\nContent-Length: 2\r\n"
                         b"Connection: close\r\n\r\n{}")
            answer = await asyncio.wait_for(reader.read(), 30)
        finally:
            writer.close()
        assert answer.startswith(b"HTTP/1.1 401"), (token, answer[:300])
        assert json.loads(answer.split(b"\r\n\r\n", 1)[1])["msg"] == "wrong access token"
    async with aiohttp.ClientSession(headers=AUTH) as http:
        for origin in ("http://[", "http://[::1", "http://a]b"):
            async with http.post(f"{base_url}/human", data=b"{}", headers={
                    "Origin": origin, "Content-Type": "text/plain"}) as resp:
                assert resp.status == 415, (origin, await resp.json())
            async with http.post(f"{base_url}/humanaudio", data=form(2),
                                 headers={"Origin": origin}) as resp:
                assert resp.status == 403, (origin, await resp.json())


async def test_server_header_names_no_framework(guarded):
    base_url, _, _ = guarded
    async with aiohttp.ClientSession() as http:
        for path in ("/", "/static/client.js", "/healthz", "/human", "/no-such-route"):
            async with http.get(f"{base_url}{path}") as resp:
                assert resp.headers["Server"] == "livehuman", (path, resp.headers["Server"])
    # Malformed HTTP is answered by the server's protocol (http_server.py), not the app.
    url = URL(base_url)
    reader, writer = await asyncio.open_connection(url.host, url.port)
    try:
        writer.write(b"GET /\x01 HTTP/1.1\r\nHost: x\r\n\r\n")
        answer = await asyncio.wait_for(reader.read(), 30)
    finally:
        writer.close()
    head = answer.split(b"\r\n\r\n", 1)[0].lower()
    assert head.split(b"\r\n")[0].endswith(b" 400 bad request"), answer[:300]
    assert b"\r\nserver: livehuman\r\n" in head + b"\r\n", answer[:300]


async def test_warning_when_reachable_without_a_token(livehuman, caplog):  # noqa: F811
    _, services = livehuman
    base = services.settings
    for host, token, warned in (("0.0.0.0", None, True), ("192.0.2.1", None, True),
                                ("0.0.0.0", TOKEN, False), ("127.0.0.1", None, False),
                                ("::1", None, False)):
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="orchestrator.http.access"):
            create_app(replace(base, host=host, api_token=token), services)
        assert bool(caplog.records) is warned, (host, token)


def test_settings_flags(monkeypatch):
    monkeypatch.delenv("LIVEHUMAN_API_TOKEN", raising=False)
    settings = parse_settings([])
    assert settings.api_token is None and settings.cors_origins == () and not settings.protect_metrics
    monkeypatch.setenv("LIVEHUMAN_API_TOKEN", "from-env")
    assert parse_settings([]).api_token == "from-env"
    settings = parse_settings(["--api-token", "t", "--cors-origin", ALLOWED, "--cors-origin", "*",
                               "--protect-metrics"])
    assert (settings.api_token, settings.cors_origins, settings.protect_metrics) == (
        "t", (ALLOWED, "*"), True)
    for bad in ("allowed.example", "http://a.example/path", "ftp://a.example"):
        with pytest.raises(SystemExit):
            parse_settings(["--cors-origin", bad])


async def test_the_path_guard_catches_a_disclosure():
    """The guard every test server carries (conftest fails a test it caught) sees a leak: a
    check that cannot fail would be no check."""
    import server_fixtures

    async def leaky(request):
        return web.json_response({"code": 400, "msg": f"cannot read {Path.cwd() / 'x.png'}"},
                                 status=400)

    app = web.Application(middlewares=[server_fixtures.disclosure_guard()])
    app.router.add_get("/leak", leaky)
    async with TestClient(TestServer(app)) as http:
        assert (await http.get("/leak")).status == 400
    caught = list(server_fixtures.DISCLOSURES)
    del server_fixtures.DISCLOSURES[:]
    assert caught and caught[0].startswith("GET /leak"), caught


@pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="chromium is not installed (make test installs it)")
async def test_page_asks_for_the_token_once(guarded):
    """The web client on a server with a token: one prompt, then offer, echo and SSE work."""
    from playwright.async_api import async_playwright

    base_url, _, _ = guarded
    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = await browser.new_page()
            prompts: list[str] = []

            async def answer(dialog) -> None:
                prompts.append(dialog.message)
                await dialog.accept(TOKEN)

            page.on("dialog", answer)
            await page.goto(base_url + "/")
            await page.click("#connect")
            await page.wait_for_function("document.getElementById('video').videoWidth > 0",
                                         timeout=30000)
            await page.fill("#text", "Token accepted.")
            await page.click("#echo")
            # 'end' arrives over SSE, which carries the token in its URL.
            await page.wait_for_function(
                "[...document.querySelectorAll('#log li')].some(li => li.textContent.includes('end: Token accepted'))",
                timeout=30000)
            assert len(prompts) == 1 and "token" in prompts[0], prompts
            assert await page.evaluate("sessionStorage.getItem('livehuman-token')") == TOKEN
            await page.click("#disconnect")
        finally:
            await browser.close()

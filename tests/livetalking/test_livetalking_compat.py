"""LiveTalking's pages against livehuman: every request shape they send, the fields they read.

Shapes learned from LiveTalking's public web/index.html, web/admin.html, web/avatar.html,
web/asr/main.js, docs/api.md, docs/admin_api.md and docs/avatar_api.md (docs/MIGRATING.md):
`sessionid` as a JSON string (`String(sessionid)`), `/set_audiotype` without `reinit`, a `tts`
object passed through, multipart `/humanaudio` with a string id, `window.open('/record/' +
sessionid)`, the admin page's `data.config`/`data.sessions`, the avatar page's FormData, and
pages served from the API's own origin. Pages test `result.code === 0` and show `result.msg`.
"""

from __future__ import annotations

import asyncio
import io
import json
import os
import shutil
import time
from pathlib import Path

import aiohttp
import av
import numpy as np
import pytest
from chromium import CHROMIUM, CHROMIUM_ARGS
from server_fixtures import running_server, server_settings
from skimage import data

from orchestrator.client import AvatarClient
from orchestrator.media.wav_file import wav_bytes

WEB_DIR = Path(__file__).parent / "livetalking_web"
CLIP_CONFIG = json.dumps([{"audiotype": 2, "imgpath": "avatars/default/frames"}])
TOKEN = "compat-test-token"
UNKNOWN_TEXT_IDS = ("abc", "12a", "-5", "", " 7", "²", "9" * 40, "0x10")


def tone_wav(seconds: float = 0.8, rate: int = 16000) -> bytes:
    t = np.arange(int(seconds * rate)) / rate
    return wav_bytes(0.3 * np.sin(2 * np.pi * 220 * t), rate)


def png_bytes() -> bytes:
    out = io.BytesIO()
    av.VideoFrame.from_ndarray(data.astronaut(), format="rgb24").to_image().save(out, "PNG")
    return out.getvalue()


@pytest.fixture(scope="module")
def web_dir(tmp_path_factory) -> Path:
    """A copy of the test page folder, with a secret beside it and a symlink out of it."""
    root = tmp_path_factory.mktemp("lt")
    pages = root / "web"
    shutil.copytree(WEB_DIR, pages)
    (root / "secret.txt").write_text("outside the web dir")
    os.symlink(root / "secret.txt", pages / "escape.txt")
    os.symlink(pages / "index.html", pages / "alias.html")  # a link inside is fine
    return pages


@pytest.fixture(scope="module")
async def lt_server(triton, web_dir):
    """(base_url, services): --web-dir with the LiveTalking-style page, a clip for audiotype 2."""
    settings = server_settings(triton, web_dir=web_dir, customvideo_config=CLIP_CONFIG,
                               max_session_misses=1000)  # the 404 test makes many
    async with running_server(settings) as server:
        yield server


async def post_json(http: aiohttp.ClientSession, url: str, body: dict) -> tuple[int, dict]:
    async with http.post(url, data=json.dumps(body),
                         headers={"Content-Type": "application/json"}) as resp:
        return resp.status, await resp.json()


def audio_form(sessionid: str) -> aiohttp.FormData:
    form = aiohttp.FormData()
    form.add_field("file", tone_wav(), filename="hello.wav", content_type="audio/wav")
    form.add_field("sessionid", sessionid)
    return form


async def wait_until(predicate, timeout_s: float, what: str) -> None:
    for _ in range(int(timeout_s / 0.1)):
        if await predicate():
            return
        await asyncio.sleep(0.1)
    raise AssertionError(what)


async def test_every_request_shape_of_the_pages_works_with_string_ids(lt_server):
    base_url, _ = lt_server
    client = AvatarClient(base_url, keep_video=False)
    try:
        answer = await client.connect()
        assert isinstance(answer["sessionid"], int)  # answers keep the integer
        await client.wait_for_video(1, timeout=30)
        sid = str(client.sessionid)
        async with aiohttp.ClientSession() as http:
            async def call(path, **body):
                status, got = await post_json(http, base_url + path, {"sessionid": sid, **body})
                assert status == 200 and got["code"] == 0 and got["msg"] == "ok", (path, got)
                return got

            await call("/record", type="start_record")
            # web/index.html sendText(): text, type, interrupt, sessionid; the docs' tts object.
            await call("/human", text="Hello there.", type="echo", interrupt=True,
                       tts={"voice": "zh-CN-YunxiaNeural", "emotion": "happy", "speed": 1.2})
            await call("/human", text="Hello again.", type="echo", interrupt=False,
                       tts={"ref_file": "en-us", "ref_text": "a transcript", "voice": "x"})

            async def speaking():
                return (await call("/is_speaking"))["data"] is True
            await wait_until(speaking, 20, "is_speaking never became true")
            await call("/interrupt_talk")
            await call("/human", text="What is livehuman?", type="chat", interrupt=True)
            await call("/set_audiotype", audiotype=2)  # no reinit: LiveTalking's default, true
            await call("/set_audiotype", audiotype=0, reinit=False)
            async with http.post(f"{base_url}/humanaudio", data=audio_form(sid)) as resp:
                got = await resp.json()
                assert resp.status == 200 and got["code"] == 0, got
            async with http.get(f"{base_url}/sse", params={"sessionid": sid}) as resp:
                assert resp.status == 200
                assert (await resp.content.readline()).startswith(b": connected")
            await asyncio.sleep(1.0)
            saved = await call("/record", type="end_record")
            assert saved["data"]["url"] == f"/record/{client.sessionid}"
            async with http.get(f"{base_url}/record/{sid}") as resp:  # window.open(...)
                body = await resp.read()
                assert resp.status == 200 and resp.content_type == "video/mp4"
                assert body[4:8] == b"ftyp" and len(body) > 1000

            # The admin page's view of it: the integer id, avatar, state, speaking, since.
            async with http.get(f"{base_url}/api/admin/sessions") as resp:
                sessions = (await resp.json())["data"]["sessions"]
            mine = [s for s in sessions if s["sessionid"] == client.sessionid]
            assert len(mine) == 1, sessions
            assert mine[0]["avatar_id"] == "default" and mine[0]["avatar"] == "default"
            assert mine[0]["state"] == "connected" and isinstance(mine[0]["speaking"], bool)
            assert mine[0]["recording"] is False and mine[0]["since"] > 1.7e9
            assert mine[0]["transport"] == "webrtc" and mine[0]["customopt"][0]["audiotype"] == 2
    finally:
        await client.close()


async def test_unknown_or_non_numeric_string_ids_are_404_unknown_sessionid(lt_server):
    base_url, _ = lt_server
    async with aiohttp.ClientSession() as http:
        for text in UNKNOWN_TEXT_IDS:
            for path, body in (("/human", {"type": "echo", "text": "hi"}), ("/is_speaking", {}),
                               ("/interrupt_talk", {}), ("/record", {"type": "start_record"}),
                               ("/set_audiotype", {"audiotype": 2})):
                status, got = await post_json(http, base_url + path, {"sessionid": text, **body})
                assert status == 404 and got["code"] != 0, (path, text, got)
                assert "unknown sessionid" in got["msg"], got
            async with http.post(f"{base_url}/humanaudio", data=audio_form(text)) as resp:
                got = await resp.json()
                assert resp.status == 404 and "unknown sessionid" in got["msg"], (text, got)
        async with http.get(f"{base_url}/sse", params={"sessionid": "abc"}) as resp:
            assert resp.status == 404
        async with http.get(f"{base_url}/record/abc") as resp:
            assert resp.status == 404 and "sessionid" in (await resp.json())["msg"]
        # Other JSON types stay a 400 naming the field.
        for value in (True, 1.5, [1], {"id": 1}):
            status, got = await post_json(http, f"{base_url}/is_speaking", {"sessionid": value})
            assert status == 400 and "sessionid" in got["msg"], (value, got)


async def test_avatar_task_api_builds_lists_and_deletes(lt_server):
    """web/avatar.html: FormData of model, avatar_id, video_file and its advanced fields."""
    base_url, _ = lt_server
    stamp = int(time.time() * 1000) % 10**9

    def form(avatar_id: str, **extra) -> aiohttp.FormData:
        f = aiohttp.FormData()
        f.add_field("model", "wav2lip")
        f.add_field("avatar_id", avatar_id)
        f.add_field("video_file", png_bytes(), filename="me.png", content_type="image/png")
        for name, value in {"img_size": "256", "bbox_shift": "0", "pads": "0 10 0 0",
                            "face_det_batch_size": "4", **extra}.items():
            f.add_field(name, value)
        return f

    async with aiohttp.ClientSession() as http:
        async def create(f):
            async with http.post(f"{base_url}/api/avatar/task", data=f) as resp:
                return resp.status, await resp.json()

        status, first = await create(form(f"lt{stamp}a"))
        assert status == 200 and first["code"] == 0, first
        task_id = first["data"]["task_id"]
        status, second = await create(form(f"lt{stamp}b", task_id=f"mine-{stamp}"))
        assert status == 200 and second["data"]["task_id"] == f"mine-{stamp}", second
        async with http.get(f"{base_url}/api/avatar/tasks") as resp:
            tasks = (await resp.json())["data"]["tasks"]
        assert [t["task_id"] for t in tasks[:2]] == [f"mine-{stamp}", task_id]  # newest first
        queued = tasks[0]
        assert queued["status"] == "pending" and queued["model_type"] == "wav2lip"
        assert set(queued) >= {"avatar_id", "progress", "error_msg", "start_time", "end_time",
                               "duration"}
        async with http.delete(f"{base_url}/api/avatar/task/mine-{stamp}") as resp:
            got = await resp.json()
            assert resp.status == 200 and got["code"] == 0 and got["data"]["msg"] == "Task deleted"

        async def done():
            async with http.get(f"{base_url}/api/avatar/task/{task_id}") as resp:
                return (await resp.json())["data"]["status"] in ("completed", "failed")
        await wait_until(done, 60, "the avatar task did not finish")
        async with http.get(f"{base_url}/api/avatar/task/{task_id}") as resp:
            task = (await resp.json())["data"]
        assert task["status"] == "completed" and task["progress"] == 100, task
        assert task["end_time"] >= task["start_time"]
        async with http.get(f"{base_url}/api/avatar/tasks") as resp:
            ids = [t["task_id"] for t in (await resp.json())["data"]["tasks"]]
        assert task_id in ids and f"mine-{stamp}" not in ids
        for path, status in ((f"/api/avatar/task/{task_id}", 409), ("/api/avatar/task/nope", 404)):
            async with http.delete(base_url + path) as resp:
                got = await resp.json()
                assert resp.status == status and got["code"] != 0 and got["msg"], got
        # The built avatar is ours now: a session can use it.
        client = AvatarClient(base_url, keep_video=False)
        try:
            await client.connect(avatar=f"lt{stamp}a")
        finally:
            await client.close()
        # What the page cannot do here: no model, an existing id, a server-side video_path.
        status, got = await create(form(f"lt{stamp}c", model="x"))
        assert status == 400 and "model" in got["msg"], got
        status, got = await create(form(f"lt{stamp}a"))
        assert status == 409 and "avatar_id" in got["msg"], got
        status, got = await post_json(http, f"{base_url}/api/avatar/task",
                                      {"model": "wav2lip", "avatar_id": "x", "video_path": "a.mp4"})
        assert status == 400 and "video_path" in got["msg"], got


async def test_web_dir_serves_pages_safely(lt_server, web_dir):
    base_url, _ = lt_server
    async with aiohttp.ClientSession() as http:
        async def get(path: str) -> tuple[int, bytes, str]:
            async with http.get(base_url + path) as resp:
                return resp.status, await resp.read(), resp.content_type

        status, body, kind = await get("/")
        assert status == 200 and b"LiveTalking-style page" in body and kind == "text/html"
        assert (await get("/index.html"))[1] == body and (await get("/alias.html"))[1] == body
        assert b"sub index" in (await get("/sub/"))[1]
        assert b"sub index" in (await get("/sub/index.html"))[1]
        status, body, _ = await get("/client/")  # our own client moved here
        assert status == 200 and b"/static/client.js" in body
        assert await get("/client") == (status, body, "text/html")  # redirected to /client/
        assert (await get("/static/client.js"))[0] == 200
        for path in ("/escape.txt", "/../secret.txt", "/%2e%2e/secret.txt", "/sub/%2e%2e/%2e%2e/secret.txt",
                     "/.hidden", "/sub/.%2e/.%2e/secret.txt", "/a" * 40, "/" + "b" * 5000,
                     "/nope.html", "/sub", "/%00", "/sub/..%2f..%2fsecret.txt"):
            async with http.get(aiohttp.client.URL(base_url + path, encoded=True)) as resp:
                got = await resp.read()
                assert resp.status == 404, (path, resp.status)
                assert b"outside the web dir" not in got and str(web_dir).encode() not in got
                assert (await resp.json())["code"] == 404
        # The API's own paths win over the folder.
        async with http.get(f"{base_url}/healthz") as resp:
            assert (await resp.json())["code"] == 0


async def test_token_guards_the_api_not_the_pages_and_config_hides_secrets(triton, web_dir):
    settings = server_settings(
        triton, web_dir=web_dir, api_token=TOKEN, turn=("turn:127.0.0.1:3478",),
        turn_username="u", turn_password="turn-secret-pw", llm_api_key="sk-llm-secret",
        llm_base_url="http://user:url-secret@127.0.0.1:9/v1", max_session_misses=3)
    async with running_server(settings) as (base_url, _), aiohttp.ClientSession() as http:
        for path in ("/", "/index.html", "/sub/", "/client/", "/static/client.js"):
            async with http.get(base_url + path) as resp:
                assert resp.status == 200, path
        for method, path in (("GET", "/api/admin/config"), ("GET", "/api/admin/sessions"),
                             ("GET", "/api/avatar/tasks"), ("GET", "/api/avatar/task/x"),
                             ("DELETE", "/api/avatar/task/x"), ("POST", "/api/avatar/task"),
                             ("GET", "/api/asr"), ("POST", "/human")):
            async with http.request(method, base_url + path) as resp:
                assert resp.status == 401, (method, path)
        async with http.ws_connect(f"{base_url}/api/asr?token={TOKEN}") as ws:  # pages' way
            await ws.send_str("{")
            assert "JSON" in (await ws.receive_json(timeout=5))["msg"]
        auth = {"Authorization": f"Bearer {TOKEN}"}
        async with http.get(f"{base_url}/api/admin/config", headers=auth) as resp:
            text = await resp.text()
            config = json.loads(text)["data"]["config"]
        for secret in (TOKEN, "turn-secret-pw", "sk-llm-secret", "url-secret"):
            assert secret not in text, secret
        assert config["api_token"] == config["turn_password"] == config["llm_api_key"] == "***"
        assert config["llm_base_url"] == "http://***@127.0.0.1:9/v1"
        assert config["avatar_id"] == "default" and config["listenport"] == settings.port
        assert config["fps"] == 25 and config["transport"] == "webrtc" and config["web_dir"]
        # Past --max-session-misses unknown ids (text ones count too): 429, still JSON.
        statuses = []
        for text_id in ("a", "b", "c", "d"):
            status, got = await post_json_auth(http, f"{base_url}/is_speaking",
                                               {"sessionid": text_id}, auth)
            statuses.append(status)
            assert got["code"] != 0 and got["msg"]
        assert statuses == [404, 404, 404, 429], statuses


async def post_json_auth(http, url, body, headers) -> tuple[int, dict]:
    async with http.post(url, json=body, headers=headers) as resp:
        return resp.status, await resp.json()


async def test_every_error_status_carries_a_nonzero_code_and_a_msg(lt_server):
    """What the pages test: `result.code === 0`, else they show `result.msg`."""
    base_url, _ = lt_server
    seen = set()
    async with aiohttp.ClientSession() as http:
        cases = [
            ("POST", "/human", b"{", "application/json", 400),
            ("POST", "/human", json.dumps({"sessionid": "1", "type": "echo", "text": "x"}).encode(),
             "application/json", 404),
            ("POST", "/healthz", b"", "application/json", 405),
            ("POST", "/human", b"x" * (2 << 20), "application/json", 413),
            ("POST", "/human", b"{}", "text/plain", 415),
            ("GET", "/api/asr", b"", "", 400),  # a WebSocket route
            ("GET", "/nope.html", b"", "", 404),
        ]
        for method, path, body, content_type, status in cases:
            headers = {"Content-Type": content_type} if content_type else {}
            async with http.request(method, base_url + path, data=body, headers=headers) as resp:
                got = await resp.json()
                assert resp.status == status, (path, resp.status, got)
                assert got["code"] != 0 and isinstance(got["msg"], str) and got["msg"], got
                seen.add(status)
        client = AvatarClient(base_url, keep_video=False)
        try:
            await client.connect()
            status, got = await client.post("/record", type="end_record")  # not recording
            assert status == 409 and got["code"] != 0 and got["msg"], got
            seen.add(status)
        finally:
            await client.close()
    assert seen == {400, 404, 405, 409, 413, 415}


def test_web_dir_flag_is_checked(tmp_path):
    from orchestrator.settings import parse_settings

    assert parse_settings(["--web-dir", str(tmp_path)]).web_dir == tmp_path.resolve()
    with pytest.raises(SystemExit):
        parse_settings(["--web-dir", str(tmp_path / "missing")])


@pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="chromium is not installed (make test installs it)")
async def test_livetalking_style_page_in_a_real_browser(lt_server, tmp_path):
    """The page in tests/livetalking_web/ served with --web-dir drives echo, chat, interrupt,
    record + download, audiotype and audio upload with string session ids."""
    from playwright.async_api import async_playwright

    base_url, _ = lt_server
    wav = tmp_path / "hello.wav"
    wav.write_bytes(tone_wav())
    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = await browser.new_page(accept_downloads=True)
            errors: list[str] = []
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            await page.goto(base_url + "/")
            await page.click("#btnStart")
            await page.wait_for_function("document.getElementById('video').videoWidth > 0",
                                         timeout=20000)

            async def action(button: str, path: str) -> dict:
                before = await page.locator("#log li").count()
                await page.click(button)
                await page.wait_for_function(f"document.querySelectorAll('#log li').length > {before}",
                                             timeout=15000)
                line = await page.locator("#log li").nth(before).text_content()
                assert line.startswith(path + ": "), line
                return json.loads(line[len(path) + 2:])

            assert (await action("#btnRecToggle", "/record"))["code"] == 0
            answer = await action("#btnSend", "/human")  # echo
            assert answer["code"] == 0 and answer["msg"] == "ok", answer
            for _ in range(100):
                if (await action("#btnSpeaking", "/is_speaking"))["data"] is True:
                    break
                await asyncio.sleep(0.1)
            else:
                raise AssertionError("never speaking")
            assert (await action("#btnInterrupt", "/interrupt_talk"))["code"] == 0
            await page.select_option("#txtType", "chat")
            await page.fill("#txtMessage", "What is livehuman?")
            assert (await action("#btnSend", "/human"))["code"] == 0
            assert (await action("#btnAudiotype", "/set_audiotype"))["code"] == 0
            await page.set_input_files("#audioFile", str(wav))
            assert (await action("#btnAudio", "/humanaudio"))["code"] == 0
            await asyncio.sleep(1.0)
            assert (await action("#btnRecToggle", "/record"))["code"] == 0  # end_record
            async with page.expect_download() as download_info:
                await page.click("#btnDownload")
            download = await download_info.value
            saved = tmp_path / "record.mp4"
            await download.save_as(saved)
            assert saved.read_bytes()[4:8] == b"ftyp" and saved.stat().st_size > 1000
            assert not errors, errors
        finally:
            await browser.close()


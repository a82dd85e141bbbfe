"""`--workers N` (orchestrator/workers.py): N orchestrator processes on one HTTP port and one
Triton, each session in one worker, every request for it reaching that worker, the host's
/metrics, admin list and /healthz over all of them; a killed worker is restarted and only its
sessions are gone; SIGTERM drains every worker and the parent exits 0.

Real processes on loopback: the parent `python -m orchestrator --workers 2`, its workers, real
aiortc clients, one Triton (the session's, through --triton-url; the embedded one, started once
by the parent, in the last test).
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import time
from pathlib import Path

import aiohttp
import numpy as np
import pytest
from orchestrator_process import SSE, health, start_orchestrator

from orchestrator.client import AvatarClient, WhepClient
from orchestrator.http.host_view import merge_admin_sessions, merge_health, merge_metrics
from orchestrator.http.instance_forward import InstanceRoutes
from orchestrator.session.ids import LOCAL_ID_BITS, instance_of
from orchestrator.settings import MAX_INSTANCE_ID, parse_settings
from orchestrator.workers import worker_instance_id

pytestmark = pytest.mark.timeout(600)

WORKERS = 2
SESSIONS = 4  # two per worker
WAIT_S = 60.0  # what must happen "soon" on a busy 2-core machine
VIDEO_FRAMES = 25  # one second of video


def server_args(*extra: str) -> list[str]:
    # --setup-timeout: a peer may take long to connect on a machine busy with other test runs.
    return ["--workers", str(WORKERS), "--tts", "espeak", "--no-voice-input",
            "--setup-timeout", "60", "--drain-timeout", "120", "--log-level", "INFO", *extra]


async def get(base_url: str, path: str) -> tuple[int, str]:
    """A GET on a fresh connection (any worker may take it)."""
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as http:
        async with http.get(f"{base_url}{path}") as resp:
            return resp.status, await resp.text()


async def wait_until(what: str, check, timeout_s: float = WAIT_S):
    """`await check()` until it returns something true; TimeoutError naming `what`."""
    deadline = time.monotonic() + timeout_s
    last = None
    while time.monotonic() < deadline:
        last = await check()
        if last:
            return last
        await asyncio.sleep(0.2)
    raise TimeoutError(f"{what}: last {last!r}")


async def workers_up(base_url: str, up: int = WORKERS) -> dict:
    async def check():
        try:
            status, answer = await health(base_url)
        except (aiohttp.ClientError, TimeoutError):
            return None
        return answer if status == 200 and answer["data"]["workers"]["up"] == up else None
    return await wait_until(f"{up} workers up", check)


async def admin_sessions(base_url: str) -> set[int]:
    status, text = await get(base_url, "/api/admin/sessions")
    assert status == 200, text
    return {s["sessionid"] for s in json.loads(text)["data"]["sessions"]}


async def sessions_gauge(base_url: str) -> float:
    status, text = await get(base_url, "/metrics")
    assert status == 200, text
    return float(re.search(r"^livehuman_sessions (\S+)$", text, re.M).group(1))


def worker_pids(log: str) -> list[int]:
    found = re.search(r"with \d+ workers \(pids \[([\d, ]+)\]\)", log)
    assert found, log
    return [int(p) for p in found.group(1).split(",")]


async def speak_to_end(client: AvatarClient, sse: SSE, text: str) -> None:
    status, answer = await client.post("/human", type="echo", text=text)
    assert status == 200, answer
    await sse.wait_for("end", timeout_s=WAIT_S, utterance_id=answer["data"]["utterance_id"])


async def test_sessions_spread_over_the_workers_and_a_killed_worker_comes_back(triton,
                                                                               tmp_path):
    server = await start_orchestrator(tmp_path / "server.log",
                                      *server_args("--triton-url", triton.url))
    clients: list[AvatarClient] = []
    streams: list[SSE] = []
    try:
        await workers_up(server.base_url)
        # Each client has its own connection: whichever worker accepts it, new sessions go to
        # the worker holding the fewest.
        for _ in range(SESSIONS):
            client = AvatarClient(server.base_url, keep_video=False)
            clients.append(client)
            await client.connect()
        by_worker = sorted(instance_of(c.sessionid) for c in clients)
        assert by_worker == [0, 0, 1, 1], by_worker
        for client in clients:
            await client.wait_for_video(VIDEO_FRAMES, timeout=WAIT_S)

        # /sse (query), /human (JSON body) of every session reach its own worker.
        streams = [SSE(server.base_url, c.sessionid) for c in clients]
        await asyncio.gather(*(speak_to_end(c, s, f"Hello from session {i}.")
                               for i, (c, s) in enumerate(zip(clients, streams))))
        # A recording is fetched by its path (/record/<id>) from its own worker.
        for client in clients[:2]:
            status, answer = await client.post("/record", type="start_record")
            assert status == 200, answer
            await client.wait_for_video(len(client.received.video_times) + 10, timeout=WAIT_S)
            status, answer = await client.post("/record", type="end_record")
            assert status == 200, answer
            async with aiohttp.ClientSession() as http:
                async with http.get(f"{server.base_url}/record/{client.sessionid}") as resp:
                    assert resp.status == 200, await resp.text()
                    assert resp.headers["Content-Type"] == "video/mp4"
                    assert len(await resp.read()) > 1000

        # /audio_stream (a WebSocket) reaches its session's worker, relayed by another one
        # when the kernel gives the connection to it (two sockets a session: both workers).
        tone = (0.3 * np.sin(2 * np.pi * 200 * np.arange(8000) / 16000) * 32767).astype("<i2")
        for client in clients:
            for _ in range(2):
                async with aiohttp.ClientSession() as http, http.ws_connect(
                        f"{server.base_url}/audio_stream",
                        params={"sessionid": str(client.sessionid)}) as ws:
                    await ws.send_json({"type": "start", "sample_rate": 16000})
                    await ws.send_bytes(tone.tobytes())
                    await ws.send_json({"type": "end"})
                    async with asyncio.timeout(WAIT_S):
                        while (message := await ws.receive_json())["type"] != "playback_finished":
                            pass
                    assert message["interrupted"] is False and message["position_s"] == 0.52

        # The host's view: every session, whichever worker answers.
        ids = {c.sessionid for c in clients}
        for _ in range(4):
            assert await admin_sessions(server.base_url) == ids
            assert await sessions_gauge(server.base_url) == SESSIONS
            status, answer = await health(server.base_url)
            assert status == 200 and answer["data"]["sessions"] == SESSIONS, answer
            assert answer["data"]["max_sessions"] == WORKERS * 8, answer

        # SIGKILL worker 1: restarted; its sessions are gone, worker 0's stream on.
        pids = worker_pids(server.log_tail(100_000))
        survivors = [c for c in clients if instance_of(c.sessionid) == 0]
        lost = [c for c in clients if instance_of(c.sessionid) == 1]
        have = [len(c.received.video_times) for c in survivors]
        os.kill(pids[1], signal.SIGKILL)
        await wait_until("worker 1's end logged", lambda: _logged(
            server.log_path, f"worker 1 (pid {pids[1]}) exited with -9: its 2 session(s) are "
            "closed"))
        await workers_up(server.base_url)
        survivor_ids = {c.sessionid for c in survivors}
        assert await admin_sessions(server.base_url) == survivor_ids
        assert await sessions_gauge(server.base_url) == len(survivors)
        frozen = [len(c.received.video_times) for c in lost]
        for client, frames in zip(survivors, have):
            await client.wait_for_video(frames + 2 * VIDEO_FRAMES, timeout=WAIT_S)
        # The dead worker's clients receive nothing more: their peer is gone.
        assert [len(c.received.video_times) for c in lost] == frozen
        status, answer = await lost[0].post("/is_speaking")
        assert status == 404 and "unknown sessionid" in answer["msg"], answer
        # An SSE stream that the dead worker carried (forwarded) ended with it; a client
        # reconnects (EventSource does) to whichever worker, which sends it on.
        survivor_streams = [SSE(server.base_url, c.sessionid) for c in survivors]
        streams += survivor_streams
        await speak_to_end(survivors[0], survivor_streams[0], "Still here after the crash.")
        # The restarted worker holds nothing: the next session goes to it.
        newcomer = AvatarClient(server.base_url, keep_video=False)
        clients.append(newcomer)
        await newcomer.connect()
        assert instance_of(newcomer.sessionid) == 1
        await newcomer.wait_for_video(VIDEO_FRAMES, timeout=WAIT_S)

        # SIGTERM: every worker drains (no new session, live ones go on), then the parent exits.
        server.process.send_signal(signal.SIGTERM)

        async def draining():
            status, answer = await health(server.base_url)
            return answer if status == 503 and answer["data"]["draining"] else None
        await wait_until("the host draining", draining)
        await speak_to_end(survivors[0], survivor_streams[0], "Still here while draining.")
        assert server.process.poll() is None, "exited while sessions were live"
        for stream in streams:
            await stream.close()
        streams = []
        for client in clients:
            await client.close()
        assert await server.wait_exit(WAIT_S) == 0, server.log_tail()
        log = server.log_tail(200_000)
        assert log.count("drained: every session ended") == WORKERS, log[-4000:]
        assert "all 2 workers stopped (exit codes [0, 0])" in log, log[-4000:]
    finally:
        for stream in streams:
            await stream.close()
        for client in clients:
            await client.close()
        server.kill()


async def _logged(path: Path, text: str) -> bool:
    return text in path.read_text(errors="replace")


async def test_embedded_triton_started_once_and_the_server_session_in_worker_0(tmp_path):
    """No --triton-url: the parent starts one tritonserver for both workers and stops it. With
    --transport whep the server session (sessionid 0) is worker 0's: WHEP viewers, /human and
    DELETE of a viewer's resource reach it whichever worker takes the request."""
    server = await start_orchestrator(tmp_path / "server.log",
                                      *server_args("--transport", "webrtc,whep"))
    viewers: list[WhepClient] = []
    try:
        answer = await workers_up(server.base_url)
        tree = _process_tree(server.process.pid)
        names = [_name(pid) for pid in tree]
        assert names.count("tritonserver") == 1, names
        assert answer["data"]["triton"]["ready"], answer
        urls = {(await health(server.base_url))[1]["data"]["triton"]["url"] for _ in range(6)}
        assert len(urls) == 1, urls  # every worker reaches the same one

        assert await admin_sessions(server.base_url) == {0}  # one server session on the host
        for _ in range(2):  # fresh connections: some land on worker 1, sent on to worker 0
            viewer = WhepClient(server.base_url, sessionid=0, keep_video=False)
            viewers.append(viewer)
            await viewer.connect()
            assert viewer.location.startswith("/whep/0."), viewer.location  # worker 0's
            await viewer.wait_for_video(VIDEO_FRAMES, timeout=WAIT_S)
        status, answer = await viewers[0].post("/human", type="echo", text="Hello viewers.")
        assert status == 200, answer
        for viewer in viewers:  # DELETE on a fresh connection each: any worker may take it
            async with aiohttp.ClientSession() as http:
                async with http.delete(f"{server.base_url}{viewer.location}") as resp:
                    assert resp.status == 200, await resp.text()

        server.process.send_signal(signal.SIGTERM)
        assert await server.wait_exit(WAIT_S) == 0, server.log_tail()
        assert all(not Path(f"/proc/{pid}").exists() or _zombie(pid) for pid in tree), \
            [(pid, _name(pid)) for pid in tree if Path(f"/proc/{pid}").exists()]
    finally:
        for viewer in viewers:
            await viewer.close()
        server.kill()


def _process_tree(pid: int) -> list[int]:
    pids, queue = [], [pid]
    while queue:
        current = queue.pop()
        pids.append(current)
        for task in Path(f"/proc/{current}/task").glob("*"):
            try:
                queue += [int(p) for p in (task / "children").read_text().split()]
            except OSError:
                pass
    return pids


def _name(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return ""


def _zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True


def test_workers_flag_and_its_rules(monkeypatch):
    assert parse_settings([]).workers == 1
    assert parse_settings(["--workers", "4"]).workers == 4
    monkeypatch.setenv("LIVEHUMAN_WORKERS", "3")
    assert parse_settings([]).workers == 3
    for bad in (["--workers", "0"], ["--workers", str(MAX_INSTANCE_ID + 2)],
                ["--workers", "4", "--instance-id", str(MAX_INSTANCE_ID // 2)]):
        with pytest.raises(SystemExit):
            parse_settings(bad)


def test_instance_ids_and_routes_of_workers_and_hosts():
    # Host instance 3 with 4 workers: ids of instances 12 … 15.
    assert [worker_instance_id(3, j, 4) for j in range(4)] == [12, 13, 14, 15]
    assert worker_instance_id(None, 1, 2) == 1
    routes = InstanceRoutes("http://orchestrator-{instance}.peers:8010", 13, 4,
                            [40001, 40002, 40003, 40004])
    assert routes.is_local(12) and routes.is_local(15) and not routes.is_local(16)
    assert routes.url_of(14) == "http://127.0.0.1:40003"
    assert routes.url_of(17) == "http://orchestrator-4.peers:8010"  # any worker of host 4
    assert InstanceRoutes("", 1, 2, [1, 2]).url_of(5) is None  # another host, no --peer-url
    single = InstanceRoutes("http://o-{instance}:8010", 2)  # --workers 1: as before
    assert not single.is_local(3) and single.url_of(3) == "http://o-3:8010"
    assert instance_of((13 << LOCAL_ID_BITS) | 5) == 13


def test_host_answers_merge_every_workers():
    from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest

    def exposition(sessions: int, ready: int, events: int) -> str:
        registry = CollectorRegistry()
        Gauge("livehuman_sessions", "open", registry=registry).set(sessions)
        Gauge("livehuman_triton_ready", "ready", registry=registry).set(ready)
        Counter("livehuman_session_events", "events", ["event"], registry=registry
                ).labels("start").inc(events)
        return generate_latest(registry).decode()

    merged = merge_metrics([exposition(2, 1, 3), exposition(5, 0, 4)]).decode()
    assert "livehuman_sessions 7.0" in merged
    assert "livehuman_triton_ready 0.0" in merged  # ready only when every worker's Triton is
    assert 'livehuman_session_events_total{event="start"} 7.0' in merged
    assert re.search(r"^# TYPE livehuman_session_events(_total)? counter$", merged, re.M), merged

    answers = [{"code": 0, "msg": "ok", "data": {"sessions": [{"sessionid": 2, "since": 5.0}]}},
               {"code": 0, "msg": "ok", "data": {"sessions": [{"sessionid": 9, "since": 1.0}]}}]
    assert [s["sessionid"] for s in merge_admin_sessions(answers)["data"]["sessions"]] == [9, 2]

    own = {"code": 0, "msg": "ok", "data": {"sessions": 1, "max_sessions": 8, "draining": False}}
    other = {"code": 503, "msg": "draining",
             "data": {"sessions": 2, "max_sessions": 8, "draining": True}}
    data = merge_health(own, [other], 3)["data"]
    assert data == {"sessions": 3, "max_sessions": 16, "draining": True,
                    "workers": {"count": 3, "up": 2}}

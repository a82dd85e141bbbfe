"""Session ids that carry their orchestrator's instance id (--instance-id), so that a request
can be routed to the session's server by its id alone (docs/DEPLOY.md, "Session affinity")."""

from __future__ import annotations

from dataclasses import replace

import pytest
from server_fixtures import running_server, server_settings

from orchestrator.client import AvatarClient
from orchestrator.session.ids import (
    LOCAL_ID_BITS,
    MAX_SESSION_ID,
    instance_of,
    new_session_id,
)
from orchestrator.settings import MAX_INSTANCE_ID, parse_settings

IDS_PER_CHECK = 2000


@pytest.mark.parametrize("instance", [0, 1, 7, MAX_INSTANCE_ID])
def test_ids_carry_the_instance_and_stay_exact_in_javascript(instance):
    ids = {new_session_id(instance) for _ in range(IDS_PER_CHECK)}
    assert len(ids) == IDS_PER_CHECK  # random, not a counter
    assert all(1 <= i <= MAX_SESSION_ID for i in ids)
    assert {instance_of(i) for i in ids} == {instance}


def test_ids_without_an_instance_use_the_whole_range():
    ids = [new_session_id(None) for _ in range(IDS_PER_CHECK)]
    assert all(1 <= i <= MAX_SESSION_ID for i in ids)
    # Random over 53 bits: the top bits vary (all in one instance's range: 1 in 2**10 per id).
    assert len({instance_of(i) for i in ids}) > 1
    assert max(ids) >= 2**LOCAL_ID_BITS


@pytest.mark.parametrize("instance", [-1, MAX_INSTANCE_ID + 1])
def test_instance_out_of_range_is_refused(instance):
    with pytest.raises(ValueError):
        new_session_id(instance)
    with pytest.raises(SystemExit):
        parse_settings(["--instance-id", str(instance)])


def test_instance_id_from_flag_or_environment(monkeypatch):
    assert parse_settings([]).instance_id is None
    assert parse_settings(["--instance-id", "5"]).instance_id == 5
    monkeypatch.setenv("LIVEHUMAN_INSTANCE_ID", "12")
    assert parse_settings([]).instance_id == 12
    assert parse_settings(["--instance-id", "3"]).instance_id == 3
    monkeypatch.setenv("LIVEHUMAN_INSTANCE_ID", "pod-3")
    with pytest.raises(SystemExit):
        parse_settings([])


def test_drain_timeout_flag():
    assert parse_settings(["--drain-timeout", "300"]).drain_timeout_s == 300.0
    with pytest.raises(SystemExit):
        parse_settings(["--drain-timeout", "-1"])


async def test_server_issues_ids_of_its_instance(triton):
    settings = replace(server_settings(triton), instance_id=37)
    async with running_server(settings) as (base_url, services):
        clients = [AvatarClient(base_url, keep_video=False) for _ in range(2)]
        try:
            for client in clients:
                await client.connect()
            assert [instance_of(c.sessionid) for c in clients] == [37, 37]
            status, answer = await clients[0].post("/is_speaking")  # found by that id
            assert status == 200, answer
            async with clients[0].http.get(f"{base_url}/healthz") as resp:
                health = await resp.json()
            assert health["data"]["instance"] == 37 and health["data"]["draining"] is False
            # Without --peer-url an id of another instance is simply unknown here.
            other = (38 << LOCAL_ID_BITS) | 1
            status, answer = await clients[0].post("/is_speaking", sessionid=other)
            assert status == 404 and "unknown sessionid" in answer["msg"], answer
        finally:
            for client in clients:
                await client.close()


async def test_drain_does_not_wait_for_the_server_session():
    """The server's own session (push transports) has no client that ends it: a drain waits for
    the clients' sessions only, not for the whole --drain-timeout."""
    from types import SimpleNamespace

    from orchestrator.session.registry import SERVER_SESSIONID, SessionRegistry

    registry = SessionRegistry(max_sessions=4)
    registry.add_server_session(SimpleNamespace(sessionid=SERVER_SESSIONID, closed=False))
    assert await registry.wait_empty(0.05)
    sessionid = registry.reserve()
    registry.add(SimpleNamespace(sessionid=sessionid, closed=False))
    registry.stop_accepting()
    assert not await registry.wait_empty(0.05)  # a client's session is live
    registry.release(sessionid)
    assert await registry.wait_empty(0.05)

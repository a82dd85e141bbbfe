"""Session ids: random integers that JavaScript keeps exact, optionally carrying the id of the
orchestrator that issued them.

Several orchestrators behind one address (docs/DEPLOY.md, "Session affinity") are each given an
instance id (`--instance-id`, 0 … MAX_INSTANCE_ID), which goes into the top INSTANCE_ID_BITS bits
of every id they issue: whatever routes a request (a proxy, or an orchestrator forwarding it)
finds the session's server from the id alone, `instance_of(sessionid)`, whether the id came in
a JSON body (`sessionid` of /human, /interrupt_talk ...), a query string (/sse) or a path. The
other LOCAL_ID_BITS bits stay random. Without an instance id, ids are random over the whole
range, as a single server has always issued them.
"""

from __future__ import annotations

import secrets

from ..settings import INSTANCE_ID_BITS, MAX_INSTANCE_ID

SESSION_ID_BITS = 53
MAX_SESSION_ID = 2**SESSION_ID_BITS - 1  # Number.MAX_SAFE_INTEGER: exact in every JSON client
LOCAL_ID_BITS = SESSION_ID_BITS - INSTANCE_ID_BITS  # 43 random bits: 8.8e12 ids per instance


def new_session_id(instance_id: int | None = None) -> int:
    """A random id in 1 … MAX_SESSION_ID; with an instance id, one whose top INSTANCE_ID_BITS
    bits hold it. ValueError for an instance id outside 0 … MAX_INSTANCE_ID."""
    if instance_id is None:
        return secrets.randbelow(MAX_SESSION_ID) + 1
    if not 0 <= instance_id <= MAX_INSTANCE_ID:
        raise ValueError(f"instance id {instance_id} is not in 0 … {MAX_INSTANCE_ID}")
    return (instance_id << LOCAL_ID_BITS) | (secrets.randbelow(2**LOCAL_ID_BITS - 1) + 1)


def instance_of(sessionid: int) -> int:
    """The instance id a server started with `--instance-id` put into `sessionid` (for an id in
    1 … MAX_SESSION_ID; meaningless for ids of a server started without one)."""
    return sessionid >> LOCAL_ID_BITS

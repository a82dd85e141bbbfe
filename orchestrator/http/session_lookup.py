"""The one place that reads a `sessionid` from a request and finds its session.

The rules, the same in a JSON body, a form field, a query parameter and a path:
- a JSON integer (not a boolean, |value| < 2**63), or a string of ASCII digits holding one
  (LiveTalking's pages send `String(sessionid)` since 2026); answers always carry the integer;
- a string that holds no such integer ('abc', '²', '-1', '', 30 digits) names no session:
  404 "unknown sessionid", counted like any other unknown id (session_registry.MissLimiter);
- missing, `null`, or another JSON type (true, 1.5, a list): 400 naming the field.
"""

from __future__ import annotations

import re
from typing import Any

from aiohttp import web

from ..errors import ApiError
from ..services import SERVICES_KEY, Services
from ..session.session import Session
from .validation import MAX_ID_DIGITS, MAX_JSON_INT, read_json_object

SESSIONID = "sessionid"
_DIGITS = re.compile(rf"[0-9]{{1,{MAX_ID_DIGITS}}}")


def parse_sessionid(value: Any, where: str = f"field '{SESSIONID}'") -> int | str:
    """The id as an integer, or the text itself when it can name no session (the lookup then
    answers 404 for it). 400 naming `where` for a missing value or one of the wrong JSON type."""
    if isinstance(value, str):
        return int(value) if _DIGITS.fullmatch(value) else value
    if value is None:
        raise ApiError.bad_request(f"missing {where}")
    if isinstance(value, bool) or not isinstance(value, int):  # true is not a session id
        raise ApiError.bad_request(f"{where} must be an integer (or a string of digits)")
    if not -MAX_JSON_INT < value < MAX_JSON_INT:
        raise ApiError.bad_request(f"{where} is out of range (|value| < 2**63)")
    return value


def find_session(services: Services, value: Any, where: str = f"field '{SESSIONID}'") -> Session:
    """The live session `value` names (any of the accepted shapes); 404/429 from the registry."""
    return services.registry.get(parse_sessionid(value, where))


async def json_session(request: web.Request) -> tuple[dict[str, Any], Session]:
    """Parse the JSON body and find the session its `sessionid` names: every JSON route that
    acts on a session starts here."""
    body = await read_json_object(request)
    return body, find_session(request.app[SERVICES_KEY], body.get(SESSIONID))


def query_session(request: web.Request) -> Session:
    """The session of a `?sessionid=` query (SSE)."""
    return find_session(request.app[SERVICES_KEY], request.query.get(SESSIONID),
                        f"query parameter '{SESSIONID}'")

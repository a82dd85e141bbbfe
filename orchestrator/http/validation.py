"""Request parsing at the boundary: every failure is a 4xx naming the field.

One place for each kind of hostile input, so a handler cannot forget it:
- bodies are read with a time limit (`BODY_READ_TIMEOUT_KEY`, 408 past it);
- a JSON body (and a JSON document inside a string field) that does not decode, is nested too
  deep, holds an integer too long to convert or names an unknown charset is a 400;
- no string anywhere in a JSON body may hold NUL or a lone surrogate (they break paths, logs
  and the UTF-8 SSE stream): 400 naming the field;
- session ids from JSON, forms, queries and paths go through one rule (session_lookup.py);
- a malformed multipart body (no or wrong boundary, truncated, stalled) is a 400 or 408; one
  with more than MAX_FORM_FIELDS parts, or larger than its route's file limit plus
  FORM_OVERHEAD_BYTES (declared or as read), a 413 (`FormReader`, the one multipart reader).

The content type a JSON route takes (415) and the `Origin` a multipart route takes (403) are
the access middlewares' (orchestrator/http/access.py): they hold for every route.
"""

from __future__ import annotations

import asyncio
import json
import re
import warnings
from collections.abc import AsyncIterator, Awaitable
from typing import Any, TypeVar

from aiohttp import BadContentDispositionHeader, BodyPartReader, web
from aiohttp.http_exceptions import HttpProcessingError

from ..errors import ApiError
from ..settings import DEFAULT_BODY_READ_TIMEOUT_S

# aiohttp warns on stderr (once per distinct header text) about a malformed Content-Disposition
# and goes on with an unnamed part; the handler then answers 400 for the missing field and the
# rejection log reports it, rate-limited. A hostile client must not write a stderr line each.
warnings.filterwarnings("ignore", category=BadContentDispositionHeader)

# Where the app keeps its body read timeout (set by create_app from Settings).
BODY_READ_TIMEOUT_KEY = web.AppKey("body_read_timeout_s", float)
MAX_ID_DIGITS = 18  # ids stay below 2**63
MAX_JSON_INT = 2**63  # |integer fields| must be below this
_SURROGATE = re.compile("[\ud800-\udfff]")
_MISSING = object()
_TYPE_NAMES = {str: "a string", int: "an integer", bool: "a boolean", dict: "an object"}
_T = TypeVar("_T")
# What aiohttp's multipart reader raises on a malformed body: no or wrong boundary, truncated,
# a part header it cannot parse (e.g. a control character in a filename).
_MALFORMED_MULTIPART = (ValueError, AssertionError, HttpProcessingError)


def body_read_timeout_s(request: web.Request) -> float:
    return request.app.get(BODY_READ_TIMEOUT_KEY, DEFAULT_BODY_READ_TIMEOUT_S)


async def within_read_timeout(request: web.Request, read: Awaitable[_T], what: str) -> _T:
    """Await one read of the request body; 408 when the client stops sending (a declared body
    larger than what is sent must not hold a handler for ever)."""
    timeout_s = body_read_timeout_s(request)
    try:
        async with asyncio.timeout(timeout_s):
            return await read
    except TimeoutError:
        raise ApiError(408, f"{what} did not arrive within {timeout_s:g} s") from None


async def read_json_object(request: web.Request) -> dict[str, Any]:
    """The JSON object of the body (413 past the app's size limit, 408 when it stalls)."""
    raw = await within_read_timeout(request, request.read(), "the request body")
    charset = request.charset or "utf-8"
    try:
        text = raw.decode(charset)
    except LookupError:
        raise ApiError.bad_request(f"unknown charset {charset[:40]!r} in Content-Type") from None
    except (UnicodeError, ValueError):
        raise ApiError.bad_request(f"malformed JSON body: not {charset[:40]!r} text") from None
    body = loads(text, "the request body")
    if not isinstance(body, dict):
        raise ApiError.bad_request("the JSON body must be an object")
    reject_bad_strings(body, "")
    return body


def loads(text: str, what: str) -> Any:
    """json.loads, with every way a text can fail to decode as a 400 naming `what`."""
    try:
        return json.loads(text)
    except RecursionError:
        raise ApiError.bad_request(f"{what} is not valid JSON: nested too deeply") from None
    except ValueError as exc:  # JSONDecodeError, and integers past 4,300 digits
        raise ApiError.bad_request(f"{what} is not valid JSON: {str(exc)[:200]}") from None


def reject_bad_strings(value: Any, prefix: str) -> None:
    """400 naming the field when a string or key anywhere in `value` holds NUL or a lone
    surrogate. Iterative: the decoder's nesting limit is deeper than a recursive walk's."""
    stack: list[tuple[str, Any]] = [(prefix, value)]
    while stack:
        where, item = stack.pop()
        if isinstance(item, str):
            _check_text(item, where or "the JSON body")
        elif isinstance(item, dict):
            for key, inner in item.items():
                _check_text(key, f"a key in '{where}'" if where else "a key of the JSON body")
                stack.append((f"{where}.{key}" if where else key, inner))
        elif isinstance(item, list):
            stack.extend((f"{where}[{i}]", inner) for i, inner in enumerate(item))


def _check_text(text: str, where: str) -> None:
    if "\0" in text:
        raise ApiError.bad_request(f"field '{where}' contains a NUL character")
    if _SURROGATE.search(text):
        raise ApiError.bad_request(f"field '{where}' contains a lone surrogate (not valid Unicode)")


def field(body: dict[str, Any], name: str, kind: type, default: Any = _MISSING) -> Any:
    """The value of `name`, checked to be of `kind`; required when no default is given."""
    value = body.get(name, _MISSING)
    if value is _MISSING or value is None:
        if default is _MISSING:
            raise ApiError.bad_request(f"missing field '{name}'")
        return default
    # bool is an int in Python, but true is not a session id.
    if (kind is int and isinstance(value, bool)) or not isinstance(value, kind):
        raise ApiError.bad_request(f"field '{name}' must be {_TYPE_NAMES.get(kind, kind.__name__)}")
    if kind is int and not -MAX_JSON_INT < value < MAX_JSON_INT:
        raise ApiError.bad_request(f"field '{name}' is out of range (|value| < 2**63)")
    return value


def choice(body: dict[str, Any], name: str, allowed: tuple[str, ...],
           default: str | None = None) -> str:
    """A string field that must be one of `allowed` (required unless `default` is given)."""
    value = field(body, name, str) if default is None else field(body, name, str, default)
    if value not in allowed:
        raise ApiError.bad_request(f"field '{name}' must be one of {', '.join(allowed)}; got {value[:80]!r}")
    return value


def json_config(body: dict[str, Any], name: str, default: str, kind: type) -> Any:
    """A field that carries a JSON document as a string (custom_config, multiavatar_config)."""
    text = field(body, name, str, default)
    if not text.strip():
        return None
    value = loads(text, f"field '{name}'")
    if not isinstance(value, kind):
        raise ApiError.bad_request(f"field '{name}' must be a JSON {'list' if kind is list else 'object'}")
    reject_bad_strings(value, name)
    return value


def _malformed_multipart(exc: Exception, where: str) -> ApiError:
    # The kind of fault only: aiohttp's messages quote the raw bytes.
    return ApiError.bad_request(f"malformed multipart/form-data in {where} ({type(exc).__name__})")


MAX_FORM_FIELDS = 8  # every multipart route takes a handful of fields
FORM_OVERHEAD_BYTES = 64 << 10  # part headers and the small fields around the file


class FormReader:
    """The parts of one multipart/form-data request: malformed bodies are a 400 naming the
    problem, a stalled client a 408, a part past its limit a 413 naming the field, and the
    whole body a 413 as soon as it has more than MAX_FORM_FIELDS parts or is larger than
    `file_limit` (the limit of the route's field 'file') + FORM_OVERHEAD_BYTES: refused on the declared
    length before anything is parsed, and on the bytes read when no length is declared
    (chunked), so a body of many small fields is never parsed at length."""

    def __init__(self, request: web.Request, file_limit: int,
                 max_fields: int = MAX_FORM_FIELDS) -> None:
        self._request = request
        self.max_fields = max_fields
        self.file_limit = file_limit
        self.max_bytes = file_limit + FORM_OVERHEAD_BYTES
        self._read_bytes = 0  # the parts' contents so far, over all parts

    def _too_large(self) -> ApiError:
        return ApiError(413, f"multipart body larger than {self.max_bytes} bytes "
                        f"(field 'file' may have {self.file_limit} bytes)")

    async def parts(self) -> AsyncIterator[BodyPartReader]:
        request = self._request
        if request.content_length is not None and request.content_length > self.max_bytes:
            raise self._too_large()
        try:
            reader = await request.multipart()
        except _MALFORMED_MULTIPART as exc:
            raise _malformed_multipart(exc, "the body") from None
        count = 0
        while True:
            try:
                part = await within_read_timeout(request, reader.next(), "the multipart body")
            except _MALFORMED_MULTIPART as exc:
                raise _malformed_multipart(exc, "the body") from None
            if part is None:
                return
            count += 1
            if count > self.max_fields:
                raise ApiError(413, f"multipart body has more than {self.max_fields} fields")
            if not isinstance(part, BodyPartReader):
                raise ApiError.bad_request("nested multipart bodies are not supported")
            yield part

    async def chunks(self, part: BodyPartReader, limit: int,
                     chunk_bytes: int = 1 << 16) -> AsyncIterator[bytes]:
        """The chunks of one part, 413 naming the field once it passes `limit` bytes."""
        size = 0
        while True:
            try:
                chunk = await within_read_timeout(self._request, part.read_chunk(chunk_bytes),
                                                  f"field '{part.name}'")
            except _MALFORMED_MULTIPART as exc:
                raise _malformed_multipart(exc, f"field '{part.name}'") from None
            if not chunk:
                return
            size += len(chunk)
            if size > limit:
                raise ApiError(413, f"field '{part.name}' is larger than {limit} bytes")
            self._read_bytes += len(chunk)
            if self._read_bytes > self.max_bytes:
                raise self._too_large()
            yield chunk

    async def read(self, part: BodyPartReader, limit: int) -> bytes:
        """One part, at most `limit` bytes."""
        return b"".join([chunk async for chunk in self.chunks(part, limit)])

    async def text(self, part: BodyPartReader, limit: int) -> str:
        """One short text field (undecodable bytes become U+FFFD, NUL is refused)."""
        text = (await self.read(part, limit)).decode(errors="replace")
        _check_text(text, str(part.name))
        return text

    async def skip(self, part: BodyPartReader) -> None:
        async for _ in self.chunks(part, 1 << 62):
            pass

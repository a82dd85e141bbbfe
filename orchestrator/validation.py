"""Request parsing at the boundary: every failure is a 4xx naming the field."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

from aiohttp import BodyPartReader, web

from .errors import ApiError

_MISSING = object()
_TYPE_NAMES = {str: "a string", int: "an integer", bool: "a boolean", dict: "an object"}


async def read_json_object(request: web.Request) -> dict[str, Any]:
    try:
        body = await request.json(loads=json.loads)
    except web.HTTPRequestEntityTooLarge:
        raise
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ApiError.bad_request(f"malformed JSON body: {exc}") from None
    if not isinstance(body, dict):
        raise ApiError.bad_request("the JSON body must be an object")
    return body


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
    return value


def choice(body: dict[str, Any], name: str, allowed: tuple[str, ...]) -> str:
    value = field(body, name, str)
    if value not in allowed:
        raise ApiError.bad_request(f"field '{name}' must be one of {', '.join(allowed)}; got {value!r}")
    return value


def json_config(body: dict[str, Any], name: str, default: str, kind: type) -> Any:
    """A field that carries a JSON document as a string (custom_config, multiavatar_config)."""
    text = field(body, name, str, default)
    if not text.strip():
        return None
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ApiError.bad_request(f"field '{name}' is not valid JSON: {exc}") from None
    if not isinstance(value, kind):
        raise ApiError.bad_request(f"field '{name}' must be a JSON {'list' if kind is list else 'object'}")
    return value


async def limited_chunks(part, limit: int, chunk_bytes: int = 1 << 16) -> AsyncIterator[bytes]:
    """The chunks of one multipart field, 413 naming the field once it passes `limit` bytes."""
    size = 0
    while chunk := await part.read_chunk(chunk_bytes):
        size += len(chunk)
        if size > limit:
            raise ApiError(413, f"field '{part.name}' is larger than {limit} bytes")
        yield chunk


async def read_limited(part, limit: int) -> bytes:
    """One multipart field, at most `limit` bytes."""
    return b"".join([chunk async for chunk in limited_chunks(part, limit)])


MAX_FORM_FIELDS = 8  # every multipart route takes a handful of fields
FORM_OVERHEAD_BYTES = 64 << 10  # part headers and the small fields around the file


async def form_parts(request: web.Request, file_limit: int) -> AsyncIterator[BodyPartReader]:
    """The parts of a multipart body, refused with 413 as soon as it is larger than
    `file_limit` (the 'file' field's own limit) + FORM_OVERHEAD_BYTES (declared length) or has more than MAX_FORM_FIELDS parts,
    so a body of many small fields is not parsed at length. Each part's own size is the
    caller's limit (`read_limited`, `limited_chunks`)."""
    limit = file_limit + FORM_OVERHEAD_BYTES
    if request.content_length is not None and request.content_length > limit:
        raise ApiError(413, f"multipart body larger than {limit} bytes "
                       f"(field 'file' may have {file_limit} bytes)")
    reader = await request.multipart()
    count = 0
    while (part := await reader.next()) is not None:
        count += 1
        if count > MAX_FORM_FIELDS:
            raise ApiError(413, f"multipart body has more than {MAX_FORM_FIELDS} fields")
        if not isinstance(part, BodyPartReader):
            raise ApiError.bad_request("nested multipart bodies are not supported")
        yield part

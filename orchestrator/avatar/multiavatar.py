"""`multiavatar_config`: the avatars a session can switch between by name, each with an optional
voice. `POST /human` `avatarid` picks who speaks an utterance; "main" is the session's avatar.

    {"main": "default", "presenter": "presenter2", "guide": {"avatar": "guide", "voice": "en-gb"}}
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from ..errors import ApiError
from .store import Avatar

FIELD = "multiavatar_config"
MAIN = "main"
NAME = re.compile(r"[A-Za-z0-9_.-]{1,64}")
MAX_MEMBERS = 16


@dataclass(frozen=True)
class MemberSpec:
    """A validated entry, before its avatar is loaded."""

    name: str
    avatar_id: str
    voice: str | None


@dataclass(frozen=True)
class Member:
    avatar: Avatar
    voice: str | None  # None: the session's voice


def parse_multiavatar_config(config: dict) -> list[MemberSpec]:
    if len(config) > MAX_MEMBERS:
        raise ApiError.bad_request(f"field '{FIELD}': at most {MAX_MEMBERS} avatars")
    specs = []
    for name, value in config.items():
        if not NAME.fullmatch(name):
            raise ApiError.bad_request(f"field '{FIELD}': name {name!r} may only use letters, "
                                       "digits, '_', '-' and '.'")
        if isinstance(value, str):
            specs.append(MemberSpec(name, value, None))
            continue
        if not isinstance(value, dict) or not isinstance(value.get("avatar"), str):
            raise ApiError.bad_request(f"field '{FIELD}': '{name}' must be an avatar id or "
                                       '{"avatar": id, "voice": name}')
        unknown = sorted(set(value) - {"avatar", "voice"})
        if unknown:
            raise ApiError.bad_request(f"field '{FIELD}': '{name}' has unknown keys {unknown}")
        voice = value.get("voice")
        if voice is not None and not isinstance(voice, str):
            raise ApiError.bad_request(f"field '{FIELD}': '{name}'.voice must be a string")
        specs.append(MemberSpec(name, value["avatar"], voice))
    return specs

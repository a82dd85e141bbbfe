"""The one error type the HTTP layer turns into a `{"code", "msg"}` answer, and the mark of an
expected failure of a server outside this process."""

from __future__ import annotations


class ApiError(Exception):
    """A client-visible failure: HTTP status plus a message that names the field, and headers
    the answer must carry (e.g. `Retry-After` on a 503)."""

    def __init__(self, status: int, msg: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(msg)
        self.status = status
        self.msg = msg
        self.headers = headers or {}

    @classmethod
    def bad_request(cls, msg: str) -> ApiError:
        return cls(400, msg)

    @classmethod
    def not_found(cls, msg: str) -> ApiError:
        return cls(404, msg)


class ExternalServiceError(Exception):
    """A server outside this process failed (a TTS, LLM or ASR server, Triton, a push target):
    expected, not a bug of ours. Its message says which server and why (safe to show); it is
    logged as one rate-limited line (rate_limited_log.py), never with a traceback."""

"""Exceptions raised by the kiln SDK.

Every error the daemon answers with (``{"error": {"code": ..., "message": ...}}``) becomes a
:class:`KilnError` subclass chosen by the HTTP status; the server's message is the exception's
message. Failing to reach the daemon at all raises :class:`KilnConnectionError`.
"""

from __future__ import annotations

import json
from typing import Any

__all__ = [
    "KilnError",
    "BadRequestError",
    "AuthError",
    "NotFoundError",
    "ConflictError",
    "LimitError",
    "SandboxFailedError",
    "KilnConnectionError",
    "KilnTimeoutError",
    "error_from_response",
]


class KilnError(Exception):
    """Base class of every error raised by the SDK.

    Attributes:
        code: the machine-readable code (``"not_found"``, ``"bad_request"``, ...).
        status: the HTTP status of the answer, or 0 when there was no answer.
        message: the human-readable message (the server's, when it sent one).
    """

    default_code = "error"

    def __init__(self, message: str, *, code: str | None = None, status: int = 0) -> None:
        super().__init__(message)
        self.message: str = message
        self.code: str = code if code is not None else self.default_code
        self.status: int = status

    def __repr__(self) -> str:
        return f"{type(self).__name__}(code={self.code!r}, status={self.status}, message={self.message!r})"


class BadRequestError(KilnError):
    """The request was invalid (400 ``bad_request``) or too large (413 ``too_large``)."""

    default_code = "bad_request"


class AuthError(KilnError):
    """The daemon wants a valid token (401 ``unauthorized``): set ``KILN_TOKEN``."""

    default_code = "unauthorized"


class NotFoundError(KilnError):
    """The sandbox, template or file does not exist (404 ``not_found``)."""

    default_code = "not_found"


class ConflictError(KilnError):
    """The sandbox is in the wrong state for this request (409 ``conflict``)."""

    default_code = "conflict"


class LimitError(KilnError):
    """Over the daemon's sandbox or memory limit (429 ``limit``): kill some sandboxes first."""

    default_code = "limit"


class SandboxFailedError(KilnError):
    """The VM died or its agent misbehaved (502 ``sandbox_failed``, or an exec stream ``error``)."""

    default_code = "sandbox_failed"


class KilnConnectionError(KilnError):
    """The daemon could not be reached (no socket, connection refused, dropped connection)."""

    default_code = "connection"


class KilnTimeoutError(KilnError):
    """The daemon did not answer within the client's timeout."""

    default_code = "timeout"


_BY_STATUS: dict[int, type[KilnError]] = {
    400: BadRequestError,
    401: AuthError,
    403: AuthError,
    404: NotFoundError,
    409: ConflictError,
    413: BadRequestError,
    429: LimitError,
    502: SandboxFailedError,
}

_DEFAULT_CODES: dict[int, str] = {
    400: "bad_request",
    401: "unauthorized",
    403: "unauthorized",
    404: "not_found",
    409: "conflict",
    413: "too_large",
    429: "limit",
    500: "internal",
    502: "sandbox_failed",
}


def error_from_response(status: int, body: bytes, reason: str = "") -> KilnError:
    """Builds the exception for an error answer: its class from ``status``, its code and
    message from the ``{"error": {"code", "message"}}`` body (or the raw body / HTTP reason
    when the body is not in that form)."""
    code = _DEFAULT_CODES.get(status, "http_%d" % status)
    message = ""
    try:
        parsed: Any = json.loads(body.decode("utf-8")) if body else None
    except (UnicodeDecodeError, ValueError):
        parsed = None
    err = parsed.get("error") if isinstance(parsed, dict) else None
    if isinstance(err, dict):
        if isinstance(err.get("code"), str):
            code = err["code"]
        if isinstance(err.get("message"), str):
            message = err["message"]
    elif isinstance(err, str):
        message = err
    if not message:
        text = body.decode("utf-8", errors="replace").strip()
        message = text[:2000] if text else f"HTTP {status} {reason}".strip()
    cls = _BY_STATUS.get(status, KilnError)
    return cls(message, code=code, status=status)

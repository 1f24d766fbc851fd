"""Errors of the SIP core.

Every problem with bytes that came from outside is a `SipParseError` carrying
the status code a server should answer with, in the spirit of h11's
``RemoteProtocolError(error_status_hint=...)``. The transport shells catch
exactly this type: anything else escaping the core is a bug of ours.
"""

from __future__ import annotations


class SipError(Exception):
    """Base of every error the SIP core raises on purpose."""


class SipParseError(SipError):
    """Malformed input, with the answer a server should give.

    ``status`` and ``reason`` form the status line of that answer
    (400 for syntax, 505 for another SIP version, 416 for an unsupported URI
    scheme, 413/513 for sizes). ``answerable`` is False when no response can
    be routed (no usable Via, or the input is not a request at all): the shell
    then drops the message and only logs it (RFC 3261 §18.2.1).
    """

    def __init__(self, reason: str, status: int = 400, *, answerable: bool = True) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason
        self.answerable = answerable

    def __repr__(self) -> str:
        return f"SipParseError({self.status}, {self.reason!r}, answerable={self.answerable})"


class LocalProtocolError(SipError):
    """Our own code asked for something SIP does not allow: a bug, not bad input."""

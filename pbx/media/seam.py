"""The media seam: every session description that crosses a call goes through one object.

Theory of operation
-------------------
A call through the PBX has the caller's leg and one leg per branch it
rings (forking rings several phones at once; a dialplan may dial again
after a failure). The offer/answer exchange of RFC 3264 is end to end
between the phones, but each body crosses the PBX from one leg to the
other, and that crossing is where a media feature lives: the RTP relay
rewrites each body so that the phone on the receiving leg sends its RTP
to a port the relay owns for that leg; a recorder, a player or a
conference bridge does the same with ports of its own.

So each call has one `MediaSession`, made by a `MediaFactory` when the
caller's INVITE arrives, and the call hands it every body on its way::

    caller's INVITE ────────── offer ──> each branch's INVITE
    a branch's 183 or 2xx ──── answer ─> the caller's 183 or 200
    re-INVITE or UPDATE ────── offer ──> the other leg's (either way)
    its 2xx ────────────────── answer ─> the 2xx sent back
    late offer (an INVITE or re-INVITE without SDP, RFC 3261 §13.2.1):
    its 2xx ────────────────── offer ──> the 2xx sent back
    the ACK for it ─────────── answer ─> the ACK for the first 2xx

The method called says offer or answer; the `Crossing` says which message
carries the body (method, and status for a response), the leg it comes
from and the leg it goes to. What the method returns is sent on. Besides
the bodies, the session hears which branch won (`connected`), which
branches will carry no media (`branch_ended`: failed, cancelled, or lost
to the winner), which offer of a re-INVITE or UPDATE the other phone
refused (`offer_rejected`: the session stays as it was), and the end of
the call (`release`: exactly once, whatever ended it: a BYE from either
side, CANCEL, every branch failing, the dial timing out, no ACK, the PBX
stopping).

Bodies of INFO and MESSAGE are not session descriptions and do not
cross the seam. PRACK bodies do not cross either, as the call does not
relay them: the PBX answers a caller's PRACK itself and offers no 100rel
to callees.

Refusing: the factory may raise `MediaRefused` (no ports left), and the
caller gets 503 before anything rings. An offer in a request may be
refused the same way: the caller's offer (503 to the caller, no branch
rung, the call ended) or the offer of a re-INVITE or UPDATE (488 to the
leg that sent it, nothing relayed, the call goes on). A body in a
response or an ACK cannot be refused: the phone that sent it has
committed to it. A refusal there, or any other exception a session
raises, is a bug in the session: it is logged with the call's id, and
the call carries on: an offer in a request is refused with 500 (a bug
must not let it bypass the session), any other body goes on unchanged.

The SDP model a session reads and rewrites (`pbx.sip.sdp`: parse,
``with_connection``, directions, round trips of what it does not
understand) is re-exported here, so that a plugin needs no import from
below the public API.

Costs: a call with no media factory (the default) makes no session and
no views, and its bodies cross as the very same bytes; `PassThroughMedia`
does the same through the seam. Nothing is parsed unless a session asks
for `SdpBody.description`.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from pbx.sip.errors import SipParseError
from pbx.sip.sdp import (
    Connection,
    Direction,
    MediaDescription,
    SessionDescription,
    is_hold,
    with_connection,
)

__all__ = [
    "Connection",
    "Crossing",
    "Direction",
    "MediaCall",
    "MediaDescription",
    "MediaFactory",
    "MediaLeg",
    "MediaRefused",
    "MediaSession",
    "PassThroughMedia",
    "SdpBody",
    "SessionDescription",
    "Side",
    "is_hold",
    "with_connection",
]


class MediaRefused(Exception):
    """A media session cannot take this call or this offer (see the module docstring).

    ``status`` None lets the call choose: 503 while the call is being set
    up, 488 Not Acceptable Here for a re-INVITE or UPDATE.
    """

    def __init__(self, reason: str, status: int | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.status = status


class Side(enum.StrEnum):
    CALLER = "caller"
    CALLEE = "callee"


@dataclass(frozen=True, slots=True, kw_only=True)
class MediaLeg:
    """One leg of a call as a media session sees it; the same object for as long as the leg lasts.

    ``peer_host``/``peer_port`` are where the leg's SIP comes from and
    goes to (for a phone behind NAT, its public address); ``local_host``
    is the PBX's own address as that phone reaches it, which is what a
    relay advertises to it, so that a PBX on two networks relays between
    phones that cannot reach each other.
    """

    side: Side
    branch: int | None
    """None for the caller; for a callee, its number among the call's branches
    (0, 1, ...) in the order they were rung, over all of the call's dials."""
    party: str
    """The caller's user, or the branch's target: "1002", or the URI dialed."""
    transport: str
    peer_host: str
    peer_port: int
    local_host: str


@dataclass(frozen=True, slots=True, kw_only=True)
class Crossing:
    """Which message carries a body across, from which leg to which."""

    source: MediaLeg
    destination: MediaLeg
    method: str
    """The method of the transaction: "INVITE", "UPDATE", or "ACK"."""
    status: int | None = None
    """The response's status (183, 200) when a response carries the body; None for a request."""
    initial: bool
    """Part of the INVITE that set the call up (and its ACK), not a re-INVITE or UPDATE."""

    @property
    def early(self) -> bool:
        """Early media: a provisional response's body (RFC 3261 §13.2.1, RFC 3960)."""
        return self.status is not None and self.status < 200


class SdpBody:
    """A body on its way across: the bytes, their Content-Type, and the SDP parsed on demand."""

    __slots__ = ("_description", "content_type", "data")

    def __init__(self, data: bytes, content_type: str | None) -> None:
        self.data = data
        self.content_type = content_type
        self._description: SessionDescription | None = None

    @property
    def is_sdp(self) -> bool:
        """``application/sdp`` (parameters and case aside), or no Content-Type at all."""
        if self.content_type is None:
            return True
        return self.content_type.partition(";")[0].strip().lower() == "application/sdp"

    def description(self) -> SessionDescription:
        """The body parsed (once): `MediaRefused` (488) when it is not a valid SDP body.

        Raised from `MediaSession.offer` for a request, that refusal is the
        status the sender gets: a bad offer is not relayed.
        """
        if self._description is None:
            if not self.is_sdp:
                raise MediaRefused(f"not a session description: {self.content_type}", 488)
            try:
                self._description = SessionDescription.parse(self.data)
            except SipParseError as error:
                raise MediaRefused(error.reason, 488) from None
        return self._description

    def __repr__(self) -> str:
        return f"<SdpBody {self.content_type or 'no Content-Type'}, {len(self.data)} bytes>"


@dataclass(frozen=True, slots=True, kw_only=True)
class MediaCall:
    """The call a session is made for, as the factory sees it when the INVITE arrives."""

    call_id: str
    """The caller's Call-ID, as in the logs and the call record."""
    caller: str
    dialed: str
    caller_leg: MediaLeg


class MediaSession(Protocol):
    """The media of one call (see the module docstring for when each method is called)."""

    def offer(self, body: SdpBody, crossing: Crossing) -> bytes:
        """An offer about to cross; the body to send on (``body.data`` to change nothing).

        Raise `MediaRefused` to refuse an offer carried by a request.
        """

    def answer(self, body: SdpBody, crossing: Crossing) -> bytes:
        """An answer about to cross; the body to send on."""

    def offer_rejected(self, crossing: Crossing, status: int) -> None:
        """The offer of a re-INVITE or UPDATE that crossed as `crossing` got `status` (a 4xx-6xx).

        The session stays as it was before that offer (RFC 3264 §8, RFC
        3261 §14.1): what the session set up for it is to be undone. (An
        offer to a branch that fails is `branch_ended` instead; a relayed
        request that times out or gets 408/481 ends the call.)
        """

    def connected(self, branch: MediaLeg) -> None:
        """`branch` answered and the call is connected to it, before its answer crosses."""

    def branch_ended(self, branch: MediaLeg) -> None:
        """`branch` will carry no media: once per branch that does not win."""

    def release(self) -> None:
        """The call is over: let go of everything. Called exactly once, last."""


MediaFactory = Callable[[MediaCall], MediaSession]
"""Makes the session of each new call; may raise `MediaRefused` (the caller gets 503)."""


class PassThroughMedia:
    """A session that changes nothing: the base to override only what a feature needs."""

    def offer(self, body: SdpBody, crossing: Crossing) -> bytes:
        return body.data

    def answer(self, body: SdpBody, crossing: Crossing) -> bytes:
        return body.data

    def offer_rejected(self, crossing: Crossing, status: int) -> None:
        return None

    def connected(self, branch: MediaLeg) -> None:
        return None

    def branch_ended(self, branch: MediaLeg) -> None:
        return None

    def release(self) -> None:
        return None

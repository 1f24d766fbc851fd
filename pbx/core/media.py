"""A call's media session as the call uses it: leg views, crossings, contained failures.

`pbx.media.seam` is the public side (what a relay or a recorder
implements); this is the core's side of the same seam. A `Call` holds a
`CallMedia` when the `CallManager` has a media factory, and None when it
has not: then no view is made, nothing is called, and every body crosses
as the very bytes that came in (the call path is benchmarked).

A session is plugin code, and a bug in it must not break the call's state
machine halfway through a transition: every call into it is contained
here. An exception (or a refusal where none is allowed) is logged with the
call's id and the body goes on unchanged; only `offer_in_request` lets a
refusal through, as `MediaRefused`, for the call to answer with.
"""

from __future__ import annotations

from collections.abc import Callable

from twisted.logger import Logger

from pbx.media.seam import Crossing, MediaLeg, MediaRefused, MediaSession, SdpBody, Side
from pbx.sip.peer import Peer


def media_leg(side: Side, branch: int | None, party: str, peer: Peer,
              local_address: Callable[[Peer], tuple[str, int]]) -> MediaLeg:
    return MediaLeg(side=side, branch=branch, party=party, transport=peer.transport,
                    peer_host=peer.host, peer_port=peer.port,
                    local_host=local_address(peer)[0])


class CallMedia:
    """One call's `MediaSession`, with the views of its legs (see the module docstring)."""

    log = Logger()

    __slots__ = ("call_id", "caller", "local_address", "session")

    def __init__(self, session: MediaSession, *, call_id: str, caller: MediaLeg,
                 local_address: Callable[[Peer], tuple[str, int]]) -> None:
        self.session = session
        self.call_id = call_id
        self.caller = caller
        self.local_address = local_address

    def branch(self, index: int, party: str, peer: Peer) -> MediaLeg:
        return media_leg(Side.CALLEE, index, party, peer, self.local_address)

    def offer_in_request(self, data: bytes, content_type: str | None,
                         crossing: Crossing) -> bytes:
        """An offer the sender can be refused: `MediaRefused` goes to the call.

        A session that fails otherwise refuses it too, with 500: its bug
        must not let an offer bypass it.
        """
        try:
            return self.session.offer(SdpBody(data, content_type), crossing)
        except MediaRefused:
            raise
        except Exception:
            self.log.failure("The media session of call {call_id} failed on an offer",
                             call_id=self.call_id)
            raise MediaRefused("media session failed", 500) from None

    def offer(self, data: bytes, content_type: str | None, crossing: Crossing) -> bytes:
        """An offer in a response (a late offer): cannot be refused."""
        try:
            return self.session.offer(SdpBody(data, content_type), crossing)
        except Exception:
            self.log.failure("The media session of call {call_id} failed on an offer in a "
                             "{status} (it cannot be refused); sent on unchanged",
                             call_id=self.call_id, status=crossing.status or crossing.method)
            return data

    def answer(self, data: bytes, content_type: str | None, crossing: Crossing) -> bytes:
        try:
            return self.session.answer(SdpBody(data, content_type), crossing)
        except Exception:
            self.log.failure("The media session of call {call_id} failed on an answer "
                             "(it cannot be refused); sent on unchanged", call_id=self.call_id)
            return data

    def offer_rejected(self, crossing: Crossing, status: int) -> None:
        try:
            self.session.offer_rejected(crossing, status)
        except Exception:
            self.log.failure("The media session of call {call_id} failed on a rejected offer",
                             call_id=self.call_id)

    def connected(self, branch: MediaLeg) -> None:
        try:
            self.session.connected(branch)
        except Exception:
            self.log.failure("The media session of call {call_id} failed on connecting",
                             call_id=self.call_id)

    def branch_ended(self, branch: MediaLeg) -> None:
        try:
            self.session.branch_ended(branch)
        except Exception:
            self.log.failure("The media session of call {call_id} failed on a branch's end",
                             call_id=self.call_id)

    def release(self) -> None:
        try:
            self.session.release()
        except Exception:
            self.log.failure("The media session of call {call_id} failed on release",
                             call_id=self.call_id)

"""The caller's provisional responses, made reliable when it requires it (RFC 3262).

A phone that sends ``Require: 100rel`` will only accept a 180 or 183 that
is acknowledged with PRACK. For such a caller every provisional the call
relays gets an RSeq and ``Require: 100rel``, is re-sent at T1, 2*T1, ...
until its PRACK arrives, and the next one waits for that PRACK
(`pbx.sip.reliable.ReliableProvisionalSender` keeps that state). The
first reliable provisional creates the caller's early dialog, which is
where its PRACKs arrive. No PRACK within 64*T1: the INVITE is answered
500 (§3). For everyone else provisionals go out as they come.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from pbx.sip.dialog import Dialog
from pbx.sip.message import Request, Response, make_response
from pbx.sip.reliable import RAck, ReliableProvisionalSender
from pbx.sip.timers import TimerSettings

if TYPE_CHECKING:
    from pbx.core.call import B2buaCall, Cancellable


class CallerProvisionals:
    """The reliable provisionals of one call whose caller requires 100rel.

    Made only for such a caller (`requires_100rel`); a call to anyone else
    sends its provisionals as they come and has none of this.
    """

    __slots__ = ("_timer", "call", "sender")

    def __init__(self, call: B2buaCall) -> None:
        self.call = call
        services = call.services
        self.sender = ReliableProvisionalSender(
            timers=TimerSettings(t1_s=services.t1_s, t2_s=services.t2_s))
        self._timer: Cancellable | None = None

    def send(self, reply: Response) -> None:
        call = self.call
        a = call.a
        if a.dialog is None:
            a.dialog = Dialog.as_uas(a.invite, local_tag=a.local_tag,
                                     local_contact=call.services.contact_for(a.peer, None),
                                     early=True)
            call.services.register_dialog(a.dialog, a)
        sent = self.sender.send(reply, call.services.now())
        if not sent.queued:
            call.services.respond(a.transaction, sent.response)
        self._arm()

    def prack(self, request: Request) -> Response:
        """200 for the PRACK of the outstanding provisional, 481 for anything else (§3)."""
        sender = self.sender
        rack = RAck.from_request(request)
        if rack is None or not sender.receive_prack(rack, self.call.services.now()):
            return make_response(request, 481)
        for released in sender.take_outgoing():
            self.call.services.respond(self.call.a.transaction, released)
        self._arm()
        return make_response(request, 200)

    def final_sent(self) -> None:
        self.sender.final_sent()
        self.stop()

    def stop(self) -> None:
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None

    def _arm(self) -> None:
        self.stop()
        deadline = self.sender.next_deadline()
        if deadline is not None:
            services = self.call.services
            self._timer = services.call_later(max(0.0, deadline - services.now()), self._due)

    def _due(self) -> None:
        self._timer = None
        sender = self.sender
        call = self.call
        if call.ended:
            return
        for again in sender.handle_timer(call.services.now()):
            call.services.respond(call.a.transaction, again)
        if sender.timed_out:
            call.give_up(500, "No PRACK for a reliable provisional response")
            return
        self._arm()

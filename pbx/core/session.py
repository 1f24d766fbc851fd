"""Session timers on the legs of a call (RFC 4028): a vanished phone ends its call.

Theory of operation
-------------------
Each leg negotiates its own timer, the PBX being the UAS of the caller's
INVITE and the UAC of the callee's (`pbx.sip.session_timer` does the
arithmetic). A `LegTimer` then keeps one deadline for its leg:

- when the PBX is the refresher, at half the interval it sends a refresh
  on that leg: UPDATE if the phone allows it (no new offer needed), else
  a re-INVITE repeating the SDP last sent on the leg (same session
  version: RFC 3264 §8 lets an offer repeat itself). A 2xx restarts the
  clock; 408, 481 or no answer at all means the phone is gone, and the
  call ends on both legs;
- when the phone is the refresher, every re-INVITE or UPDATE it sends
  restarts the clock; if none came by ``interval - min(32, interval/3)``
  (§10), the call ends on both legs.

A refresh from a phone is relayed to the other leg like any re-INVITE;
the 2xx relayed back gets this leg's ``Session-Expires`` (and ``Require:
timer``), since a 2xx without it would switch the phone's timer off (§7.2).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from pbx.sip.message import Request, Response
from pbx.sip.session_timer import (
    OPTION_TAG,
    Role,
    SessionExpires,
    SessionTimer,
    uac_request_headers,
)

if TYPE_CHECKING:
    from pbx.core.call import B2buaCall, Cancellable, Leg

RETRY_AFTER_GLARE_S = 2.0
"""A refresh that met a re-INVITE of the phone's (491) is tried again this soon."""


class LegTimer:
    """The RFC 4028 timer of one leg (see the module docstring).

    Each refresh it sends has an owner of its own (`_Refresh`), which holds
    the request only while its transaction lasts: between refreshes a
    timer holds no message.
    """

    __slots__ = ("_deadline", "allows_update", "call", "leg", "timer")

    def __init__(self, call: B2buaCall, leg: Leg, timer: SessionTimer, *,
                 allows_update: bool) -> None:
        self.call = call
        self.leg = leg
        self.timer = timer
        self.allows_update = allows_update
        self._deadline: Cancellable | None = None

    @property
    def we_refresh(self) -> bool:
        return self.timer.we_refresh

    def start(self) -> None:
        self._schedule(self.timer.next_deadline(self.call.services.now())
                       - self.call.services.now())

    def refreshed(self) -> None:
        """A refresh went through (theirs relayed, or ours answered 2xx)."""
        self.start()

    def stop(self) -> None:
        if self._deadline is not None and self._deadline.active():
            self._deadline.cancel()
        self._deadline = None

    def response_headers(self) -> list[tuple[str, str]]:
        """What a 2xx to the phone's refresh must say (§9): the interval and refresher."""
        refresher = Role.UAS if self.we_refresh else Role.UAC
        value = SessionExpires(interval_s=self.timer.interval_s, refresher=refresher)
        return [("Session-Expires", str(value)), ("Require", OPTION_TAG)]

    def request_headers(self) -> list[tuple[str, str]]:
        """What a re-INVITE or UPDATE the PBX sends on this leg carries (§7.4)."""
        return uac_request_headers(
            interval_s=self.timer.interval_s,
            refresher=Role.UAC if self.we_refresh else Role.UAS)

    # ------------------------------------------------------------- timing

    def _schedule(self, delay_s: float) -> None:
        self.stop()
        self._deadline = self.call.services.call_later(max(0.0, delay_s), self._due)

    def _due(self) -> None:
        self._deadline = None
        if self.call.ended:
            return
        if self.we_refresh:
            self._send_refresh()
        else:
            self.call.session_expired(self.leg, "no session refresh from the phone")

    def _send_refresh(self) -> None:
        leg = self.leg
        dialog = leg.dialog
        if dialog is None:
            return
        services = self.call.services
        via = services.via_for(leg.peer)
        if self.allows_update:
            request = dialog.new_request("UPDATE", via=via, headers=self.request_headers())
        else:
            request = dialog.new_request(
                "INVITE", via=via, headers=self.request_headers(), body=leg.last_sdp,
                content_type="application/sdp" if leg.last_sdp else None)
        if services.send_request(request, leg.peer, _Refresh(self, request)) is None:
            self.call.session_expired(leg, "refresh could not be sent")

    # ---------------------------------------- what the answers to a refresh do

    def answered(self, request: Request, response: Response) -> None:
        """A response to our refresh `request`."""
        status = response.status
        if status < 200 or self.call.ended:
            return
        leg = self.leg
        if leg.dialog is not None:
            leg.dialog.receive_response(request, response)
        if 200 <= status < 300:
            if request.method == "INVITE" and leg.dialog is not None:
                ack = leg.dialog.ack(request.cseq.number,
                                     via=self.call.services.via_for(leg.peer))
                self.call.services.send_ack(ack, leg.peer)
            self.refreshed()
        elif status in (408, 481):
            self.call.session_expired(leg, f"refresh answered {status}")
        elif status in (405, 501) and request.method == "UPDATE":
            self.allows_update = False  # fall back to re-INVITE, at once
            self._schedule(0.0)
        elif status == 491:
            self._schedule(RETRY_AFTER_GLARE_S)
        else:
            # Refused for another reason: the phone is alive; try again at the
            # deadline a phone-side refresher would have had.
            self._schedule(self.timer.interval_s / 2)

    def not_answered(self) -> None:
        if not self.call.ended:
            self.call.session_expired(self.leg, "refresh not answered")


class _Refresh:
    """The ResponseOwner of one refresh: the request, while its transaction lasts."""

    __slots__ = ("request", "timer")

    def __init__(self, timer: LegTimer, request: Request) -> None:
        self.timer = timer
        self.request = request

    def on_response(self, response: Response) -> None:
        self.timer.answered(self.request, response)

    def on_failure(self, status: int) -> None:
        self.timer.not_answered()

    def on_ended(self) -> None:
        return None

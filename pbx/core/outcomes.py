"""The answer to one request a plugin sent, as an awaitable `Outcome`.

A `WaitingOwner` is the `ResponseOwner` of such a request: the transaction
layer reports its responses, a time-out (408) or a transport error (503) to
it through the endpoint, and it fires its Deferred once, with the first
final status (RFC 3261 §8.1.3.1: no answer counts as 408, a request that
could not be sent as 503). Provisional responses change nothing.
"""

from __future__ import annotations

from collections.abc import Callable

from twisted.internet.defer import Deferred

from pbx.dialplan import Outcome
from pbx.sip.message import Response

REASONS = {408: "Request Timeout", 481: "Call/Transaction Does Not Exist",
           503: "Service Unavailable"}


class WaitingOwner:
    """Fires `result` with the final outcome of one request; `on_final` hears it first."""

    __slots__ = ("on_final", "result")

    def __init__(self, on_final: Callable[[Response | None, int], None] | None = None
                 ) -> None:
        self.result: Deferred[Outcome] = Deferred()
        self.on_final = on_final
        """Called with the final response (or None and 408/503) before `result` fires."""

    def on_response(self, response: Response) -> None:
        if response.status >= 200:
            self._finish(response, response.status, response.reason)

    def on_failure(self, status: int) -> None:
        self._finish(None, status, REASONS.get(status, ""))

    def on_ended(self) -> None:
        """Over without a final answer (none can come now): as a time-out."""
        self._finish(None, 408, REASONS[408])

    def fail_now(self, status: int) -> None:
        """It could not even be sent (`RequestSender.send_request` said None)."""
        self._finish(None, status, REASONS.get(status, ""))

    def _finish(self, response: Response | None, status: int, reason: str) -> None:
        if self.result.called:
            return
        if self.on_final is not None:
            on_final, self.on_final = self.on_final, None
            on_final(response, status)
        self.result.callback(Outcome(status, reason))


def outcome_now(status: int) -> Deferred[Outcome]:
    """An outcome known without sending anything (481 in an ended dialog)."""
    done: Deferred[Outcome] = Deferred()
    done.callback(Outcome(status, REASONS.get(status, "")))
    return done

"""The timers of the SIP transaction layer (RFC 3261 §17 and Table 4, RFC 6026 §8.4).

Everything the four transaction machines wait for is a named deadline: one of
the letters of RFC 3261 Table 4 (plus L and M from RFC 6026), or ``TRYING``,
the 200 ms grace a server INVITE transaction gives its TU before it answers
100 Trying itself (§17.2.1). The machines never read a clock: a deadline is
``now + duration`` computed from the ``now`` they were handed.

All durations derive from three base values, T1 (the round-trip estimate),
T2 (the cap on retransmission intervals for non-INVITE requests and INVITE
responses) and T4 (how long a message may linger in the network). They live
in one frozen `TimerSettings` so that a deployment on a slow link can raise
T1 in one place (RFC 3261 §17.1.1.1 allows it) and every derived timer
follows, as the RFC intends.

Reliable transports (TCP, TLS, SCTP, WebSocket) retransmit by themselves, so
the retransmission timers A, E and G are not used over them, and the timers
that only exist to absorb retransmissions (D, I, J, K) are zero: the
transaction moves on at once (Table 4).
"""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass


class Timer(enum.Enum):
    """The named deadlines of the transaction machines (RFC 3261 Table 4, RFC 6026 §8.4)."""

    # Identity hashing: timers key a dict in every transaction, and Enum's
    # default hash runs Python code. Members are singletons, so it is consistent.
    __hash__ = object.__hash__

    A = "A"  # INVITE request retransmit interval (client, unreliable only)
    B = "B"  # INVITE transaction timeout (client)
    D = "D"  # wait time for response retransmits (client INVITE, Completed)
    E = "E"  # non-INVITE request retransmit interval (client, unreliable only)
    F = "F"  # non-INVITE transaction timeout (client)
    G = "G"  # INVITE response retransmit interval (server, unreliable only)
    H = "H"  # wait time for ACK receipt (server INVITE, Completed)
    I = "I"  # noqa: E741 - the RFC's name; wait time for ACK retransmits (server, Confirmed)
    J = "J"  # wait time for non-INVITE request retransmits (server, Completed)
    K = "K"  # wait time for response retransmits (client non-INVITE, Completed)
    L = "L"  # wait time for accepted INVITE request retransmits (server, RFC 6026)
    M = "M"  # wait time for retransmission of 2xx to INVITE (client, RFC 6026)
    TRYING = "100"  # send 100 Trying if the TU has not answered (server INVITE, §17.2.1)


# Timers that only pace retransmissions: not used over reliable transports.
_RETRANSMIT_TIMERS = frozenset({Timer.A, Timer.E, Timer.G})


@dataclass(frozen=True, slots=True, kw_only=True)
class TimerSettings:
    """T1, T2, T4 and the durations derived from them (RFC 3261 Table 4).

    ``t1_s`` 500 ms is the RFC default RTT estimate; ``t2_s`` 4 s caps the
    retransmit interval of non-INVITE requests and INVITE final responses;
    ``t4_s`` 5 s is the longest a message stays in the network.
    ``timer_d_s`` is "at least 32 seconds" for unreliable transports
    (§17.1.1.2) because a proxy on the path may retransmit for 64*T1 after
    it got the response. ``send_trying_after_s`` is the 200 ms of §17.2.1
    after which a server INVITE transaction answers 100 Trying on its own;
    None leaves 100 Trying to the TU, 0 sends it at once.
    """

    t1_s: float = 0.5
    t2_s: float = 4.0
    t4_s: float = 5.0
    timer_d_s: float = 32.0
    send_trying_after_s: float | None = 0.2

    def __post_init__(self) -> None:
        if not self.t1_s > 0:
            raise ValueError(f"t1_s must be positive, not {self.t1_s!r}")
        if not self.t2_s >= self.t1_s:
            raise ValueError(f"t2_s ({self.t2_s!r}) must be at least t1_s ({self.t1_s!r})")
        if not self.t4_s >= 0:
            raise ValueError(f"t4_s must not be negative, not {self.t4_s!r}")
        if not self.timer_d_s >= 0:
            raise ValueError(f"timer_d_s must not be negative, not {self.timer_d_s!r}")
        if self.send_trying_after_s is not None and not self.send_trying_after_s >= 0:
            raise ValueError(
                f"send_trying_after_s must be None or >= 0, not {self.send_trying_after_s!r}")

    @property
    def timeout_s(self) -> float:
        """64*T1: Timers B, F, H, J (unreliable), L and M."""
        return 64 * self.t1_s

    def duration_s(self, timer: Timer, *, reliable: bool) -> float | None:
        """How long `timer` runs when started, or None if it is not used at all.

        Zero means "fire at once": the machine moves on in the same step.
        """
        if timer in _RETRANSMIT_TIMERS:
            return None if reliable else self.t1_s
        if timer is Timer.D:
            return 0.0 if reliable else self.timer_d_s
        if timer is Timer.I or timer is Timer.K:
            return 0.0 if reliable else self.t4_s
        if timer is Timer.J:
            return 0.0 if reliable else self.timeout_s
        if timer is Timer.TRYING:
            return self.send_trying_after_s
        return self.timeout_s  # B, F, H, L, M

    def backoff_cap_s(self, timer: Timer) -> float:
        """The longest interval a retransmit timer grows to when it doubles.

        Timer A has no cap (§17.1.1.2: it doubles until Timer B ends the
        transaction); E and G stop at T2 (§17.1.2.2, §17.2.1).
        """
        return math.inf if timer is Timer.A else self.t2_s

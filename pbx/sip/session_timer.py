"""Session timers (RFC 4028): keep-alive for calls whose BYE may never come.

Theory of operation
-------------------
A phone that loses power or its NAT binding never sends its BYE, and a B2BUA
would hold both legs (and a media relay) for ever. RFC 4028 makes a session
expire unless one side, the *refresher*, re-INVITEs or UPDATEs it within the
negotiated interval. Everything here is a pure function of messages and
``now``; the call layer owns the one timer per leg and sends the requests.

Negotiation, once per session refresh request (the INVITE, then every
refresh):

* The UAC offers ``Supported: timer``, maybe ``Session-Expires: N`` with or
  without ``refresher=``, and maybe ``Min-SE`` (§7.1, `uac_request_headers`).
* The UAS (`negotiate_uas`, §9) answers 422 with its ``Min-SE`` when the
  interval asked for is too small and the UAC can retry; otherwise it picks
  the interval (never above the request's, never below its ``Min-SE`` nor
  90 s) and the refresher (Table 2 of §9), and puts both in the 2xx, with
  ``Require: timer`` when the UAC must act on it.
* The UAC (`negotiate_uac_response`, §7.2, §7.3) reads the 2xx: its
  ``Session-Expires`` is what holds, and none means no timer. After a 422 it
  retries with at least the ``Min-SE`` it was given.

Timing (`SessionTimer.next_deadline`): the refresher refreshes once half the
interval has passed (§7.2, §9); the other side sends a BYE if no refresh
came by ``interval - min(32, interval / 3)`` seconds (§10), slightly before
the session would expire. Both are measured from the last successful
refresh: the call layer passes that moment as ``now``.

Grammar (RFC 4028 §4, §5)::

    Session-Expires  = ("Session-Expires" / "x") HCOLON delta-seconds
                       *(SEMI se-params)
    se-params        = refresher-param / generic-param
    refresher-param  = "refresher" EQUAL ("uas" / "uac")
    Min-SE           = "Min-SE" HCOLON delta-seconds *(SEMI generic-param)
"""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass

from pbx.sip.errors import SipParseError
from pbx.sip.headers import parse_non_negative_int, parse_params
from pbx.sip.message import Message, Request, Response
from pbx.sip.uri import Params, format_params

__all__ = [
    "BYE_MARGIN_CAP_S",
    "MIN_SE_FLOOR_S",
    "OPTION_TAG",
    "RECOMMENDED_INTERVAL_S",
    "IntervalTooSmall",
    "MinSE",
    "RetryWithLongerInterval",
    "Role",
    "SessionExpires",
    "SessionTimer",
    "SessionTimerDecision",
    "expires_at",
    "negotiate_uac_response",
    "negotiate_uas",
    "refresh_at",
    "supports_timer",
    "uac_request_headers",
]

OPTION_TAG = "timer"  # RFC 4028 §4: in Supported and Require
MIN_SE_FLOOR_S = 90  # §4, §5: no interval, and no Min-SE, may be below 90 seconds
RECOMMENDED_INTERVAL_S = 1800  # §4: "1800 seconds (30 minutes) is RECOMMENDED"
BYE_MARGIN_CAP_S = 32  # §10: give up min(32 s, interval / 3) before expiry
_MAX_DELTA_S = 2**32 - 1  # delta-seconds, bounded as RFC 3261 §20.19 bounds Expires


class Role(enum.Enum):
    """The two ends of a dialog, as the ``refresher`` parameter names them.

    ``uac`` is the end that sent the *initial* INVITE, for the whole dialog
    (§4): a refresh sent by the original UAS still says ``refresher=uas``
    when the UAS refreshes.
    """

    UAC = "uac"
    UAS = "uas"


@dataclass(frozen=True, slots=True, kw_only=True)
class SessionExpires:
    """``Session-Expires: 1800;refresher=uac`` (RFC 4028 §4)."""

    interval_s: int
    refresher: Role | None = None
    params: Params = ()
    """Parameters other than ``refresher``, in order, for pass-through."""

    @classmethod
    def parse(cls, text: str) -> SessionExpires:
        value, semi, param_text = text.partition(";")
        interval_s = parse_non_negative_int(value, "Session-Expires", _MAX_DELTA_S)
        if interval_s == 0:
            raise SipParseError("Session-Expires of 0 seconds")
        refresher: Role | None = None
        others: list[tuple[str, str | None]] = []
        for name, param in (parse_params(param_text, "Session-Expires") if semi else ()):
            if name.lower() == "refresher":
                try:
                    refresher = Role((param or "").lower())
                except ValueError:
                    raise SipParseError(f"bad refresher {param!r} in Session-Expires") from None
            else:
                others.append((name, param))
        return cls(interval_s=interval_s, refresher=refresher, params=tuple(others))

    @classmethod
    def from_message(cls, message: Message) -> SessionExpires | None:
        """The message's Session-Expires (compact form ``x`` too), or None."""
        text = message.headers.get("session-expires")
        return None if text is None else cls.parse(text)

    def __str__(self) -> str:
        refresher = "" if self.refresher is None else f";refresher={self.refresher.value}"
        return f"{self.interval_s}{refresher}{format_params(self.params)}"


@dataclass(frozen=True, slots=True, kw_only=True)
class MinSE:
    """``Min-SE: 90`` (RFC 4028 §5)."""

    interval_s: int
    params: Params = ()

    @classmethod
    def parse(cls, text: str) -> MinSE:
        value, semi, param_text = text.partition(";")
        interval_s = parse_non_negative_int(value, "Min-SE", _MAX_DELTA_S)
        params = parse_params(param_text, "Min-SE") if semi else ()
        return cls(interval_s=interval_s, params=params)

    @classmethod
    def from_message(cls, message: Message) -> MinSE | None:
        text = message.headers.get("min-se")
        return None if text is None else cls.parse(text)

    def __str__(self) -> str:
        return f"{self.interval_s}{format_params(self.params)}"


def refresh_at(now: float, interval_s: float, we_refresh: bool) -> float:
    """When we send the next refresh: half the interval after `now` (§7.2, §9).

    ``math.inf`` when the other side refreshes: we never do; what we watch
    then is `expires_at`.
    """
    return now + interval_s / 2 if we_refresh else math.inf


def expires_at(now: float, interval_s: float) -> float:
    """When the side that does not refresh gives up and sends a BYE (§10).

    "slightly before the session expiration": the interval minus the
    smaller of 32 seconds and a third of the interval, so a 1800 s session
    is given up at 1768 s and a 90 s one at 60 s.
    """
    return now + interval_s - min(BYE_MARGIN_CAP_S, interval_s / 3)


@dataclass(frozen=True, slots=True, kw_only=True)
class SessionTimer:
    """What was agreed for one dialog, and which end of it we are."""

    interval_s: int
    refresher: Role
    role: Role
    """Our end of the dialog: UAC if we sent the initial INVITE."""

    @property
    def we_refresh(self) -> bool:
        return self.refresher is self.role

    def next_deadline(self, now: float) -> float:
        """When we must act, counted from the last refresh at `now`.

        The refresher sends its refresh at half the interval; the other
        side, if no refresh came, sends a BYE at `expires_at`.
        """
        if self.we_refresh:
            return refresh_at(now, self.interval_s, True)
        return expires_at(now, self.interval_s)

    def session_expires(self) -> SessionExpires:
        """The header value for a 2xx or a refresh: interval and refresher."""
        return SessionExpires(interval_s=self.interval_s, refresher=self.refresher)


@dataclass(frozen=True, slots=True, kw_only=True)
class SessionTimerDecision:
    """A UAS's acceptance: the timer, and what the 2xx must say (§9)."""

    timer: SessionTimer
    require_timer: bool
    """Put ``Require: timer`` in the 2xx: a MUST when the UAC refreshes (it
    has to notice), a SHOULD when the UAS does and the UAC supports timers."""

    def headers(self) -> list[tuple[str, str]]:
        """Header lines to add to the 2xx."""
        lines = [("Session-Expires", str(self.timer.session_expires()))]
        if self.require_timer:
            lines.append(("Require", OPTION_TAG))
        return lines


@dataclass(frozen=True, slots=True, kw_only=True)
class IntervalTooSmall:
    """A UAS's refusal: answer 422 Session Interval Too Small with our Min-SE (§6, §9)."""

    min_se_s: int
    status: int = 422

    def headers(self) -> list[tuple[str, str]]:
        return [("Min-SE", str(self.min_se_s))]


@dataclass(frozen=True, slots=True, kw_only=True)
class RetryWithLongerInterval:
    """A UAC got a 422: send the request again with at least `min_se_s` (§7.3).

    The retry carries ``Session-Expires`` >= ``min_se_s`` and ``Min-SE:
    min_se_s``; for an initial INVITE it is a new INVITE with a new From
    tag (the 422 ended the dialog attempt; RFC 4028 erratum 1681).
    """

    min_se_s: int


def supports_timer(message: Message) -> bool:
    """``timer`` in Supported or Require: the sender understands RFC 4028."""
    return OPTION_TAG in message.supported or OPTION_TAG in message.require


def uac_request_headers(
    *,
    interval_s: int = RECOMMENDED_INTERVAL_S,
    min_se_s: int = MIN_SE_FLOOR_S,
    refresher: Role | None = None,
) -> list[tuple[str, str]]:
    """The lines a UAC adds to a session refresh request (§7.1, §7.4).

    ``refresher`` None lets the UAS choose, as §7.1 suggests for an
    initial INVITE; a refresh repeats the refresher agreed. ``min_se_s``
    is the largest Min-SE any 422 has given us, or 90.
    """
    _check_interval(interval_s, min_se_s)
    expires = SessionExpires(interval_s=interval_s, refresher=refresher)
    return [("Supported", OPTION_TAG), ("Session-Expires", str(expires)),
            ("Min-SE", str(min_se_s))]


def negotiate_uas(
    request: Request,
    *,
    min_se_s: int = MIN_SE_FLOOR_S,
    default_s: int = RECOMMENDED_INTERVAL_S,
    preferred_refresher: Role = Role.UAC,
) -> SessionTimerDecision | IntervalTooSmall:
    """What we, the UAS, answer to a session refresh request (RFC 4028 §9).

    ``min_se_s`` is the shortest interval we accept; ``default_s`` the
    interval we use when the request asks for none, and the most we keep
    when it asks for more (§9 lets the UAS reduce the interval, never
    increase it). ``preferred_refresher`` decides when Table 2 leaves the
    choice to us; the default lets the phone refresh, so that the PBX only
    watches.

    * A request that supports timers with a ``Session-Expires`` below our
      minimum is rejected: `IntervalTooSmall` (422 with ``Min-SE``).
    * A request that does not support timers cannot act on a 422 (a proxy
      added its ``Session-Expires``): its interval is raised to our minimum
      instead, as §8.1 tells proxies to and RFC 4028 erratum 1687 says a
      UAS should.
    * Otherwise the interval is the request's, lowered to ``default_s``
      but never below the request's ``Min-SE`` nor our minimum; without a
      ``Session-Expires`` it is ``default_s`` (raised to the request's
      ``Min-SE``): a B2BUA wants every call to expire if its ends vanish.
    * The refresher follows Table 2: ``uas`` when the UAC does not support
      timers, else the request's ``refresher``, else ours to choose.

    Raises `SipParseError` (400) for a malformed ``Session-Expires`` or
    ``Min-SE``.
    """
    _check_interval(default_s, min_se_s)
    asked = SessionExpires.from_message(request)
    request_min_se = MinSE.from_message(request)
    uac_supports = supports_timer(request)
    floor = max(min_se_s, MIN_SE_FLOOR_S,
                request_min_se.interval_s if request_min_se is not None else 0)
    if asked is None:
        interval_s = max(default_s, floor)
    elif asked.interval_s < min_se_s and uac_supports:
        return IntervalTooSmall(min_se_s=min_se_s)
    elif asked.interval_s < floor:
        interval_s = floor
    else:
        interval_s = min(asked.interval_s, max(default_s, floor))
    if not uac_supports:
        refresher = Role.UAS
    elif asked is not None and asked.refresher is not None:
        refresher = asked.refresher
    else:
        refresher = preferred_refresher
    timer = SessionTimer(interval_s=interval_s, refresher=refresher, role=Role.UAS)
    return SessionTimerDecision(timer=timer, require_timer=uac_supports)


def negotiate_uac_response(
    response: Response,
) -> SessionTimer | RetryWithLongerInterval | None:
    """What a response to our session refresh request means for the timer (§7.2, §7.3).

    * A 2xx with ``Session-Expires``: that interval and refresher hold. A
      2xx that omits ``refresher`` breaks §9 (the UAS MUST set it); we take
      the refresh on ourselves, so the call survives whatever was meant.
      An interval below 90 s is raised to 90: we never refresh faster than
      the RFC lets anybody ask.
    * A 2xx without one: no session expiration (§7.2): None.
    * A 422 with ``Min-SE``: `RetryWithLongerInterval`. Without ``Min-SE``
      (§6 requires it) there is nothing to retry with: None.
    * Anything else: None; the timer, if any, is unchanged.

    Raises `SipParseError` for a malformed ``Session-Expires`` or ``Min-SE``.
    """
    status = response.status
    if status == 422:
        min_se = MinSE.from_message(response)
        if min_se is None:
            return None
        return RetryWithLongerInterval(min_se_s=max(min_se.interval_s, MIN_SE_FLOOR_S))
    if not 200 <= status < 300:
        return None
    settled = SessionExpires.from_message(response)
    if settled is None:
        return None
    return SessionTimer(interval_s=max(settled.interval_s, MIN_SE_FLOOR_S),
                        refresher=settled.refresher or Role.UAC, role=Role.UAC)


def _check_interval(interval_s: int, min_se_s: int) -> None:
    if min_se_s < MIN_SE_FLOOR_S:
        raise ValueError(f"min_se_s must be at least {MIN_SE_FLOOR_S}, not {min_se_s!r}")
    if interval_s < min_se_s:
        raise ValueError(f"interval ({interval_s!r}) must be at least min_se_s ({min_se_s!r})")

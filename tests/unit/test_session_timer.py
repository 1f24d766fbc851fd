"""Session timers (RFC 4028): header values, the UAS and UAC halves of the negotiation, timing.

The negotiation cases replay the call flow of RFC 4028 §13 (Session-Expires
50, then 3600, then 4000 against a Min-SE of 4000) and the rows of §9
Table 2; the timings are the RFC's: refresh at half the interval, BYE at
the interval minus min(32 s, a third of it).
"""

from __future__ import annotations

import math

import pytest

from pbx.sip.errors import SipParseError
from pbx.sip.message import Request, Response, parse_message
from pbx.sip.session_timer import (
    IntervalTooSmall,
    MinSE,
    RetryWithLongerInterval,
    Role,
    SessionExpires,
    SessionTimer,
    SessionTimerDecision,
    expires_at,
    negotiate_uac_response,
    negotiate_uas,
    refresh_at,
    uac_request_headers,
)


def invite(*extra: str) -> Request:
    """Alice's INVITE of RFC 4028 §13 with the given session-timer lines."""
    lines = [
        "INVITE sips:bob@biloxi.example.com SIP/2.0",
        "Via: SIP/2.0/TLS pc33.atlanta.example.com;branch=z9hG4bKnashds8",
        "Max-Forwards: 70",
        "To: Bob <sips:bob@biloxi.example.com>",
        "From: Alice <sips:alice@atlanta.example.com>;tag=1928301774",
        "Call-ID: a84b4c76e66710",
        "CSeq: 314159 INVITE",
        "Contact: <sips:alice@pc33.atlanta.example.com>",
        *extra,
    ]
    message = parse_message(("\r\n".join(lines) + "\r\n\r\n").encode())
    assert isinstance(message, Request)
    return message


def reply(status: int, *extra: str) -> Response:
    lines = [
        f"SIP/2.0 {status} Whatever",
        "Via: SIP/2.0/TLS pc33.atlanta.example.com;branch=z9hG4bKnashds8",
        "To: Bob <sips:bob@biloxi.example.com>;tag=9as888nd",
        "From: Alice <sips:alice@atlanta.example.com>;tag=1928301774",
        "Call-ID: a84b4c76e66710",
        "CSeq: 314159 INVITE",
        *extra,
    ]
    message = parse_message(("\r\n".join(lines) + "\r\n\r\n").encode())
    assert isinstance(message, Response)
    return message


# ------------------------------------------------------------ header values


def test_session_expires_parses_and_prints_back() -> None:
    value = SessionExpires.parse("4000;refresher=uac")
    assert value == SessionExpires(interval_s=4000, refresher=Role.UAC)
    assert str(value) == "4000;refresher=uac"
    assert str(SessionExpires.parse("1800")) == "1800"
    spaced = SessionExpires.parse("1800 ; refresher = UAS ; x-foo=bar")
    assert spaced.refresher is Role.UAS and spaced.params == (("x-foo", "bar"),)
    assert str(spaced) == "1800;refresher=uas;x-foo=bar"


def test_session_expires_compact_form_and_min_se_from_a_message() -> None:
    request = invite("Supported: timer", "x: 3600;refresher=uac", "Min-SE: 3600;foo")
    assert SessionExpires.from_message(request) == SessionExpires(
        interval_s=3600, refresher=Role.UAC)
    assert MinSE.from_message(request) == MinSE(interval_s=3600, params=(("foo", None),))
    assert str(MinSE(interval_s=90)) == "90"
    assert SessionExpires.from_message(invite()) is None
    assert MinSE.from_message(invite()) is None


@pytest.mark.parametrize("text", ["", "abc", "-5", "0", "1800;refresher=both",
                                  "1800;refresher", "99999999999"])
def test_malformed_session_expires_is_a_400(text: str) -> None:
    with pytest.raises(SipParseError) as caught:
        SessionExpires.parse(text)
    assert caught.value.status == 400


# ------------------------------------------------------------ UAS (§9)


def test_rfc_flow_interval_below_our_minimum_is_422_with_min_se() -> None:
    # §13: Session-Expires 50 from a UAC that supports timers.
    outcome = negotiate_uas(invite("Supported: timer", "Session-Expires: 50"),
                            min_se_s=3600, default_s=3600)
    assert outcome == IntervalTooSmall(min_se_s=3600)
    assert outcome.status == 422
    assert outcome.headers() == [("Min-SE", "3600")]
    # Message 4: 3600 against a UAS whose minimum is 4000.
    again = negotiate_uas(invite("Supported: timer", "Session-Expires: 3600",
                                 "Min-SE: 3600"), min_se_s=4000, default_s=4000)
    assert again == IntervalTooSmall(min_se_s=4000)


def test_rfc_flow_accepted_retry_answers_4000_refreshed_by_the_uac() -> None:
    # Message 10: 4000 / Min-SE 4000; the 2xx of §13 says 4000;refresher=uac
    # with Require: timer.
    outcome = negotiate_uas(invite("Supported: timer", "Session-Expires: 4000",
                                   "Min-SE: 4000"), min_se_s=4000, default_s=4000)
    assert isinstance(outcome, SessionTimerDecision)
    assert outcome.timer == SessionTimer(interval_s=4000, refresher=Role.UAC, role=Role.UAS)
    assert outcome.headers() == [("Session-Expires", "4000;refresher=uac"),
                                 ("Require", "timer")]
    assert not outcome.timer.we_refresh


@pytest.mark.parametrize(("lines", "refresher", "require"), [
    # §9 Table 2: UAC supports?  refresher in request  ->  refresher in 2xx
    ((), Role.UAS, False),                                          # N, none -> uas
    (("Session-Expires: 1800",), Role.UAS, False),                  # N (a proxy asked)
    (("Supported: timer", "Session-Expires: 1800"), Role.UAC, True),  # Y, none -> our pick
    (("Supported: timer", "Session-Expires: 1800;refresher=uac"), Role.UAC, True),
    (("Supported: timer", "Session-Expires: 1800;refresher=uas"), Role.UAS, True),
    (("Require: timer", "Session-Expires: 1800;refresher=uas"), Role.UAS, True),
])
def test_refresher_follows_table_2(lines: tuple[str, ...], refresher: Role,
                                   require: bool) -> None:
    outcome = negotiate_uas(invite(*lines))
    assert isinstance(outcome, SessionTimerDecision)
    assert outcome.timer.refresher is refresher
    assert outcome.require_timer is require
    assert ("Require", "timer") in outcome.headers() if require else \
        all(name != "Require" for name, _ in outcome.headers())


def test_our_preference_decides_when_the_uac_leaves_it_open() -> None:
    outcome = negotiate_uas(invite("Supported: timer", "Session-Expires: 1800"),
                            preferred_refresher=Role.UAS)
    assert isinstance(outcome, SessionTimerDecision)
    assert outcome.timer.refresher is Role.UAS and outcome.timer.we_refresh


def test_uas_may_lower_the_interval_but_not_below_the_requests_min_se() -> None:
    plain = negotiate_uas(invite("Supported: timer", "Session-Expires: 7200"))
    assert isinstance(plain, SessionTimerDecision) and plain.timer.interval_s == 1800
    floored = negotiate_uas(invite("Supported: timer", "Session-Expires: 7200",
                                   "Min-SE: 2000"))
    assert isinstance(floored, SessionTimerDecision) and floored.timer.interval_s == 2000
    # Never above what was asked for (§9: "MUST NOT increase").
    short = negotiate_uas(invite("Supported: timer", "Session-Expires: 600"))
    assert isinstance(short, SessionTimerDecision) and short.timer.interval_s == 600


def test_a_uac_without_timer_support_gets_no_422_but_a_longer_interval() -> None:
    # A proxy added Session-Expires: 60; the UAC could not act on a 422
    # (RFC 4028 §8.1, erratum 1687).
    outcome = negotiate_uas(invite("Session-Expires: 60"), min_se_s=120)
    assert isinstance(outcome, SessionTimerDecision)
    assert outcome.timer.interval_s == 120 and outcome.timer.refresher is Role.UAS


def test_without_session_expires_the_uas_asks_for_its_default_above_min_se() -> None:
    outcome = negotiate_uas(invite("Supported: timer", "Min-SE: 1900"))
    assert isinstance(outcome, SessionTimerDecision)
    assert outcome.timer.interval_s == 1900
    assert outcome.headers()[0] == ("Session-Expires", "1900;refresher=uac")


def test_policy_below_the_rfc_floor_is_refused() -> None:
    with pytest.raises(ValueError, match="90"):
        negotiate_uas(invite(), min_se_s=60)
    with pytest.raises(ValueError, match="at least"):
        negotiate_uas(invite(), min_se_s=900, default_s=600)


# ------------------------------------------------------------ UAC (§7)


def test_uac_reads_the_interval_and_refresher_from_the_2xx() -> None:
    timer = negotiate_uac_response(reply(200, "Require: timer",
                                         "Session-Expires: 4000;refresher=uac"))
    assert timer == SessionTimer(interval_s=4000, refresher=Role.UAC, role=Role.UAC)
    assert isinstance(timer, SessionTimer) and timer.we_refresh
    theirs = negotiate_uac_response(reply(200, "Session-Expires: 1800;refresher=uas"))
    assert isinstance(theirs, SessionTimer) and not theirs.we_refresh


def test_uac_without_session_expires_in_the_2xx_has_no_timer() -> None:
    assert negotiate_uac_response(reply(200)) is None
    assert negotiate_uac_response(reply(180, "Session-Expires: 1800")) is None
    assert negotiate_uac_response(reply(486)) is None


def test_uac_refreshes_itself_when_the_2xx_forgets_the_refresher() -> None:
    timer = negotiate_uac_response(reply(200, "Session-Expires: 1800"))
    assert isinstance(timer, SessionTimer) and timer.refresher is Role.UAC


def test_uac_retries_after_422_with_the_min_se_it_got() -> None:
    assert negotiate_uac_response(reply(422, "Min-SE: 3600")) == \
        RetryWithLongerInterval(min_se_s=3600)
    assert negotiate_uac_response(reply(422)) is None  # nothing to retry with
    assert uac_request_headers(interval_s=3600, min_se_s=3600) == [
        ("Supported", "timer"), ("Session-Expires", "3600"), ("Min-SE", "3600")]
    assert uac_request_headers(refresher=Role.UAC)[1] == ("Session-Expires",
                                                          "1800;refresher=uac")


# ------------------------------------------------------------ timing (§7.2, §9, §10)


def test_refresher_refreshes_at_half_the_interval() -> None:
    assert refresh_at(1000.0, 1800, True) == 1900.0
    assert refresh_at(1000.0, 1800, False) == math.inf
    assert SessionTimer(interval_s=4000, refresher=Role.UAC, role=Role.UAC) \
        .next_deadline(10.0) == 2010.0


@pytest.mark.parametrize(("interval_s", "give_up_after_s"), [
    (1800, 1768.0),   # 32 s < 600 s: 32 s before
    (4000, 3968.0),
    (90, 60.0),       # a third, 30 s, is less than 32 s
    (96, 64.0),       # exactly equal margins
])
def test_the_other_side_gives_up_min_32s_or_a_third_before_expiry(
        interval_s: int, give_up_after_s: float) -> None:
    assert expires_at(500.0, interval_s) == 500.0 + give_up_after_s
    watcher = SessionTimer(interval_s=interval_s, refresher=Role.UAC, role=Role.UAS)
    assert watcher.next_deadline(500.0) == 500.0 + give_up_after_s

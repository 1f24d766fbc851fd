"""The per-request log: every answer at info, routine ones once an hour per phone."""

from __future__ import annotations

from typing import Any

import pytest
from twisted.logger import Logger, LogLevel, formatEvent

from pbx.core.request_log import ROUTINE_REPEAT_S, RequestLog
from pbx.sip.message import Request, make_response, parse_message
from pbx.sip.peer import Peer

PHONE = Peer("udp", "192.0.2.10", 5060)
OTHER_PHONE = Peer("udp", "192.0.2.11", 5060)


def register(*, credentials: bool = False, user: str = "1001", call_id: str = "a@b",
             contact: str = "<sip:1001@192.0.2.10:5060>", user_agent: str = "Yealink") -> Request:
    authorization = (f'Authorization: Digest username="{user}", realm="pbx.test", '
                     'nonce="n", uri="sip:pbx.test", response="r", algorithm=MD5\r\n'
                     if credentials else "")
    message = parse_message(
        (f"REGISTER sip:pbx.test SIP/2.0\r\n"
         f"Via: SIP/2.0/UDP 192.0.2.10:5060;branch=z9hG4bK{call_id}\r\n"
         f"From: <sip:{user}@pbx.test>;tag=1\r\nTo: <sip:{user}@pbx.test>\r\n"
         f"Call-ID: {call_id}\r\nCSeq: 1 REGISTER\r\nContact: {contact}\r\n"
         f"User-Agent: {user_agent}\r\n{authorization}Content-Length: 0\r\n\r\n").encode())
    assert isinstance(message, Request)
    return message


def challenge(request: Request) -> Any:
    return make_response(request, 401, to_tag="t", headers=[
        ("WWW-Authenticate", 'Digest realm="pbx.test", nonce="n", algorithm=MD5, qop="auth"')])


class Captured:
    def __init__(self, *, debug: bool = False) -> None:
        self.events: list[dict[str, Any]] = []
        self.log = RequestLog(Logger(namespace="test", observer=self.events.append),
                              debug=debug)

    def lines(self, level: LogLevel = LogLevel.info) -> list[str]:
        return [formatEvent(event) for event in self.events if event["log_level"] is level]


def test_a_challenge_without_credentials_is_logged_once_an_hour_per_phone() -> None:
    captured = Captured()
    first = register(call_id="1")
    captured.log.answered(first, PHONE, challenge(first), now=100.0)
    for second in range(1, 50):
        again = register(call_id=f"x{second}")
        captured.log.answered(again, PHONE, challenge(again), now=100.0 + second)
    assert captured.lines() == [
        "REGISTER from udp:192.0.2.10:5060 answered 401 Unauthorized offering MD5 to "
        "User-Agent 'Yealink' (call-id 1)"]
    # Another phone is news; the same phone an hour later is logged again.
    other = register(call_id="2")
    captured.log.answered(other, OTHER_PHONE, challenge(other), now=200.0)
    later = register(call_id="3")
    captured.log.answered(later, PHONE, challenge(later), now=100.0 + ROUTINE_REPEAT_S)
    assert [line.rsplit("(", 1)[1] for line in captured.lines()] == [
        "call-id 1)", "call-id 2)", "call-id 3)"]


def test_a_challenge_to_credentials_is_logged_every_time() -> None:
    """Stale or wrong credentials: what an admin looks for when a phone fails."""
    captured = Captured()
    for attempt in range(3):
        request = register(credentials=True, call_id=f"c{attempt}")
        captured.log.answered(request, PHONE, challenge(request), now=100.0 + attempt)
    assert len(captured.lines()) == 3


def test_a_refresh_is_logged_once_an_hour_per_binding() -> None:
    captured = Captured()
    for refresh in range(5):
        request = register(credentials=True, call_id=f"r{refresh}")
        captured.log.answered(request, PHONE, make_response(request, 200, to_tag="t"),
                              now=100.0 + refresh * 60)
    request = register(credentials=True, user="1002", contact="<sip:1002@192.0.2.10:5062>")
    captured.log.answered(request, PHONE, make_response(request, 200, to_tag="t"), now=400.0)
    assert captured.lines() == [
        "REGISTER from udp:192.0.2.10:5060 answered 200 OK, authenticated with MD5 "
        "(call-id r0)",
        "REGISTER from udp:192.0.2.10:5060 answered 200 OK, authenticated with MD5 "
        "(call-id a@b)"]


def test_errors_are_logged_every_time() -> None:
    captured = Captured()
    for attempt in range(3):
        request = register(call_id=f"e{attempt}")
        captured.log.answered(request, PHONE, make_response(request, 403, to_tag="t"),
                              now=100.0)
    assert len(captured.lines()) == 3


def test_with_debug_on_the_repeats_are_logged_at_debug() -> None:
    captured = Captured(debug=True)
    for attempt in range(3):
        request = register(call_id=f"d{attempt}")
        captured.log.answered(request, PHONE, challenge(request), now=100.0 + attempt)
    assert len(captured.lines()) == 1
    assert len(captured.lines(LogLevel.debug)) == 2


def test_off_logs_nothing() -> None:
    captured = Captured()
    captured.log.enabled = False
    request = register()
    captured.log.answered(request, PHONE, make_response(request, 403, to_tag="t"), now=1.0)
    assert captured.events == []


@pytest.mark.parametrize("user_agent", ["{evil}", "{0}", "}{"])
def test_braces_in_what_the_phone_sent_are_logged_as_sent(user_agent: str) -> None:
    captured = Captured()
    request = register(user_agent=user_agent)
    captured.log.answered(request, PHONE, challenge(request), now=1.0)
    assert f"to User-Agent {user_agent!r}" in captured.lines()[0]
    assert captured.events[0]["user_agent"] == user_agent

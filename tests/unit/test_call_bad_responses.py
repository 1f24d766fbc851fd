"""A callee's response the call cannot use fails that branch (502), and nothing escapes.

Before, a provisional or 2xx whose Contact did not parse raised out of the
call into the endpoint ("Unhandled error on a datagram"), and the dial
never learnt the branch's outcome.
"""

from __future__ import annotations

import pytest
from twisted.internet.testing import EventLoggingObserver
from twisted.logger import formatEvent, globalLogPublisher

from pbx.core.call import B2buaCall, DialOutcome, Target
from pbx.sip.message import make_response, parse_message
from pbx.sip.session_timer import negotiate_uas
from tests.unit.test_call_session_timer import CALLEE, CALLER, Services, invite


@pytest.mark.parametrize("status", [180, 183, 200])
def test_a_response_with_a_contact_that_does_not_parse_fails_its_branch(status: int) -> None:
    services = Services()
    caller_invite = invite()
    call = B2buaCall(services, transaction=object(),  # type: ignore[arg-type]
                     invite=caller_invite, peer=CALLER, caller="1001", caller_name=None,
                     dialed="1002", session_timer=negotiate_uas(caller_invite))  # type: ignore[arg-type]
    outcomes: list[DialOutcome] = []
    call.dial([Target(request_uri="sip:1002@192.0.2.2", peer=CALLEE, label="1002")], 30,
              outcomes.append)
    (b_invite,) = services.sent("INVITE", CALLEE)
    owner = services.requests[-1][2]
    bad = make_response(b_invite, status, to_tag="callee",
                        headers=[("Contact", "<not a uri>")])
    events = EventLoggingObserver()
    globalLogPublisher.addObserver(events)
    try:
        owner.on_response(parse_message(bad.to_bytes()))  # type: ignore[arg-type]
    finally:
        globalLogPublisher.removeObserver(events)

    assert [(outcome.status, outcome.answered) for outcome in outcomes] == [(502, False)]
    assert any(f"bad {status} from 1002: bad URI in Contact" in formatEvent(event)
               for event in events)

"""The plugin API's services on the whole PBX, with time on a test clock.

Each test starts a plugin written here against `pbx.dialplan` only, and
plays the phones as SIP text (`tests/unit/plugin_office.py`): what a phone
would see on the wire is what is asserted, and what the plugin was told.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest
from twisted.internet.defer import Deferred

from pbx.dialplan import (
    CallPhase,
    CallStateChanged,
    Delivery,
    IncomingRequest,
    Outcome,
    PluginApi,
    PluginDialog,
    RegistrationChanged,
    RegistrationState,
    Reply,
)
from pbx.sip.message import Request, Response
from tests.unit.plugin_office import PluginOffice

SDP = (b"v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n"
       b"m=audio 6000 RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\n")


class Recorder:
    """A plugin that does what each test asks of it and keeps what it was told."""

    name = "recorder"

    def __init__(self, handlers: dict[str, Callable[[IncomingRequest], Awaitable[int | Reply]]]
                 | None = None) -> None:
        self.handlers = handlers or {}
        self.api: PluginApi | None = None
        self.registrations: list[tuple[str, RegistrationState]] = []
        self.calls: list[CallStateChanged] = []
        self.in_dialog: list[tuple[str, str | None, str, str | None]] = []
        self.ended: list[PluginDialog] = []
        self.dialogs: list[PluginDialog] = []

    async def start(self, api: PluginApi) -> None:
        self.api = api
        for method, handler in self.handlers.items():
            api.add_request_handler(method, handler)
        api.on_registration(lambda change: self.registrations.append(
            (change.contact.split("@")[1].split(";")[0], change.state)))
        api.on_call_state(self.calls.append)

    async def stop(self) -> None:
        return None

    # DialogHandler: the subscriptions of these tests
    async def on_request(self, dialog: PluginDialog, request: IncomingRequest) -> int | Reply:
        expires = request.headers.get("expires")
        self.in_dialog.append((request.method, expires, request.target, request.sender))
        if expires == "0":
            dialog.request("NOTIFY", headers=[("Event", "x-test"),
                                              ("Subscription-State", "terminated")])
            dialog.end()
        return Reply(200, headers=[("Expires", expires or "600")])

    def on_ended(self, dialog: PluginDialog) -> None:
        self.ended.append(dialog)

    async def subscribe(self, request: IncomingRequest) -> Reply:
        assert self.api is not None
        dialog = self.api.accept_dialog(request, self)
        self.dialogs.append(dialog)
        dialog.request("NOTIFY", headers=[("Event", "x-test"),
                                          ("Subscription-State", "active;expires=600")],
                       body=b"hello", content_type="text/plain")
        return Reply(200, headers=[("Expires", "600")])


def result(waiting: Awaitable[object]) -> object:
    """What an awaitable the API returned has come to (it must have, by now)."""
    assert isinstance(waiting, Deferred)
    done: list[object] = []
    waiting.addBoth(done.append)
    assert done, "not answered yet"
    return done[0]


def responses(messages: list[Request | Response]) -> list[Response]:
    return [m for m in messages if isinstance(m, Response)]


def requests(messages: list[Request | Response]) -> list[Request]:
    return [m for m in messages if isinstance(m, Request)]


# ------------------------------------------------------------ answering


def test_a_plugin_answers_with_headers_and_a_body(tmp_path: Path) -> None:
    async def publish(request: IncomingRequest) -> Reply:
        return Reply(200, "Published", headers=[("SIP-ETag", "e-1"), ("Expires", "60")],
                     body=b"<ok/>", content_type="application/pidf+xml")

    office = PluginOffice(tmp_path, Recorder({"PUBLISH": publish}))
    (answer,) = responses(office.phone("1001", 6001).send_authenticated(
        "PUBLISH", to_user="1001", headers=(("Event", "presence"),)))
    assert (answer.status, answer.reason) == (200, "Published")
    assert answer.headers.get("sip-etag") == "e-1"
    assert answer.headers.get("expires") == "60"
    assert answer.headers.get("content-type") == "application/pidf+xml"
    assert answer.body == b"<ok/>"
    assert answer.to_addr.tag


# ---------------------------------------------------------- subscriptions


def subscribed(office: PluginOffice, plugin: Recorder) -> tuple[Response, Request]:
    """1001 subscribes to 1002: the 200, and the NOTIFY that follows it."""
    sent = office.phone("1001", 6001).send_authenticated(
        "SUBSCRIBE", to_user="1002", headers=(("Event", "x-test"), ("Expires", "600")))
    assert [type(m).__name__ for m in sent] == ["Response", "Request"], sent  # 200, then NOTIFY
    ok, notify = sent
    assert isinstance(ok, Response) and isinstance(notify, Request)
    return ok, notify


def test_a_subscription_takes_its_refresh_and_unsubscribe(tmp_path: Path) -> None:
    plugin = Recorder()
    plugin.handlers["SUBSCRIBE"] = plugin.subscribe
    office = PluginOffice(tmp_path, plugin)
    phone = office.phone("1001", 6001)
    ok, notify = subscribed(office, plugin)
    tag = ok.to_addr.tag
    assert ok.status == 200 and tag and ok.headers.get("expires") == "600"
    assert ok.headers.get("contact")  # RFC 6665 §4.2.1.1: the dialog's remote target
    assert notify.method == "NOTIFY" and notify.body == b"hello"
    assert notify.to_addr.tag == "phone-tag" and notify.from_addr.tag == tag
    assert notify.headers.get("subscription-state") == "active;expires=600"
    assert str(notify.uri) == "sip:1001@127.0.0.1:6001;transport=udp"
    phone.answer(notify, 200)

    refresh = phone.send("SUBSCRIBE", to_user="1002", to_tag=tag,
                         headers=(("Event", "x-test"), ("Expires", "300")))
    (refreshed,) = responses(refresh)
    assert (refreshed.status, refreshed.headers.get("expires")) == (200, "300")
    assert plugin.in_dialog == [("SUBSCRIBE", "300", "1002", "1001")]

    gone = phone.send("SUBSCRIBE", to_user="1002", to_tag=tag,
                      headers=(("Event", "x-test"), ("Expires", "0")))
    assert [type(m).__name__ for m in gone] == ["Response", "Request"]  # 200, last NOTIFY
    last = gone[1]
    assert isinstance(last, Request)
    assert last.headers.get("subscription-state") == "terminated"
    assert plugin.ended == plugin.dialogs and plugin.dialogs[0].ended
    (stale,) = responses(phone.send("SUBSCRIBE", to_user="1002", to_tag=tag,
                                    headers=(("Event", "x-test"), ("Expires", "300"))))
    assert stale.status == 481  # forgotten


@pytest.mark.parametrize("phone_says", [200, 481, None])
def test_a_notify_in_a_subscription_reports_its_outcome(tmp_path: Path,
                                                       phone_says: int | None) -> None:
    plugin = Recorder()
    plugin.handlers["SUBSCRIBE"] = plugin.subscribe
    office = PluginOffice(tmp_path, plugin)
    phone = office.phone("1001", 6001)
    ok, first = subscribed(office, plugin)
    phone.answer(first, 200)
    (dialog,) = plugin.dialogs
    sending = dialog.request("NOTIFY", headers=[("Event", "x-test"),
                                                ("Subscription-State", "active")])
    (notify,) = office.requests(6001)
    assert notify.cseq.number == first.cseq.number + 1
    if phone_says is None:
        office.advance(31.5)
        assert not result_ready(sending)
        office.advance(1.0)  # Timer F: 64*T1 = 32 s
        expected = 408
    else:
        phone.answer(notify, phone_says)
        expected = phone_says
    outcome = result(sending)
    assert isinstance(outcome, Outcome) and outcome.status == expected
    if expected == 200:
        assert not dialog.ended and plugin.ended == []
    else:
        # §12.2.1.2: the subscriber has lost the dialog; it is over and forgotten.
        assert dialog.ended and plugin.ended == [dialog]
        (refresh,) = responses(phone.send("SUBSCRIBE", to_user="1002", to_tag=ok.to_addr.tag,
                                          headers=(("Event", "x-test"),)))
        assert refresh.status == 481


def result_ready(waiting: Awaitable[object]) -> bool:
    assert isinstance(waiting, Deferred)
    return waiting.called


def test_a_subscription_nobody_refreshes_expires(tmp_path: Path) -> None:
    async def subscribe(request: IncomingRequest) -> Reply:
        assert plugin.api is not None
        plugin.api.accept_dialog(request, plugin).expire_after(60)
        return Reply(200, headers=[("Expires", "60")])

    plugin = Recorder({"SUBSCRIBE": subscribe})
    office = PluginOffice(tmp_path, plugin)
    (ok,) = responses(office.phone("1001", 6001).send_authenticated(
        "SUBSCRIBE", to_user="1002", headers=(("Event", "x-test"),)))
    assert ok.status == 200
    office.advance(59.5)
    assert plugin.ended == []
    office.advance(1.0)
    assert len(plugin.ended) == 1


def test_a_refused_subscription_makes_no_dialog(tmp_path: Path) -> None:
    async def subscribe(request: IncomingRequest) -> int:
        assert plugin.api is not None
        dialog = plugin.api.accept_dialog(request, plugin)
        dialog.request("NOTIFY")  # would follow a 2xx; there is none
        return 403

    plugin = Recorder({"SUBSCRIBE": subscribe})
    office = PluginOffice(tmp_path, plugin)
    sent = office.phone("1001", 6001).send_authenticated(
        "SUBSCRIBE", to_user="1002", headers=(("Event", "x-test"),))
    assert [m.status for m in responses(sent)] == [403] and not requests(sent)
    assert len(plugin.ended) == 1


# ------------------------------------------------------- sending to phones


def test_a_message_to_a_user_with_two_phones_is_sent_to_each(tmp_path: Path) -> None:
    plugin = Recorder()
    office = PluginOffice(tmp_path, plugin)
    desk, mobile = office.phone("1002", 6002), office.phone("1002", 6003)
    assert desk.register().status == 200 and mobile.register().status == 200
    assert plugin.api is not None
    sending = plugin.api.send_to_user("1002", "MESSAGE", body=b"lunch?",
                                      content_type="text/plain", from_user="1001")
    (to_desk,), (to_mobile,) = office.requests(6002), office.requests(6003)
    for request, port in ((to_desk, 6002), (to_mobile, 6003)):
        assert request.method == "MESSAGE" and request.body == b"lunch?"
        assert str(request.uri) == f"sip:1002@127.0.0.1:{port};transport=udp"
        assert request.headers.get("content-type") == "text/plain"
        assert request.from_addr.uri_text == "sip:1001@pbx.test"
        assert request.to_addr.uri_text == "sip:1002@pbx.test"
    assert to_desk.call_id != to_mobile.call_id
    desk.answer(to_desk, 200)
    assert not result_ready(sending)
    mobile.answer(to_mobile, 486)
    assert result(sending) == [
        Delivery("sip:1002@127.0.0.1:6002;transport=udp", 200, "Whatever"),
        Delivery("sip:1002@127.0.0.1:6003;transport=udp", 486, "Whatever"),
    ]


def test_a_message_to_a_user_without_phones_is_answered_at_once(tmp_path: Path) -> None:
    plugin = Recorder()
    office = PluginOffice(tmp_path, plugin)
    assert plugin.api is not None
    assert result(plugin.api.send_to_user("1003", "MESSAGE", body=b"hi")) == []
    assert office.sent == []


def test_a_phone_that_never_answers_is_a_408(tmp_path: Path) -> None:
    plugin = Recorder()
    office = PluginOffice(tmp_path, plugin)
    assert office.phone("1002", 6002).register().status == 200
    assert plugin.api is not None
    sending = plugin.api.send_to_user("1002", "NOTIFY", headers=[("Event", "message-summary")])
    (notify,) = office.requests(6002)
    assert notify.headers.get("contact")  # a NOTIFY carries one (RFC 6665 §8.2.1)
    office.advance(32.5)
    delivered = result(sending)
    assert isinstance(delivered, list) and [d.status for d in delivered] == [408]


# ------------------------------------------------------------------ events


def test_registration_changes_are_told_in_order(tmp_path: Path) -> None:
    plugin = Recorder()
    office = PluginOffice(tmp_path, plugin)
    desk = office.phone("1002", 6002)
    desk.register(expires=600)
    desk.register(expires=600)
    desk.register(expires=0)
    desk.register(expires=60)
    office.advance(61)
    office.service._housekeeping()  # what the service runs every second
    port = "127.0.0.1:6002"
    assert plugin.registrations == [
        (port, RegistrationState.REGISTERED), (port, RegistrationState.REFRESHED),
        (port, RegistrationState.UNREGISTERED), (port, RegistrationState.REGISTERED),
        (port, RegistrationState.EXPIRED)]


def test_no_listener_no_registration_hook(tmp_path: Path) -> None:
    """A PBX whose plugins do not listen pays nothing per REGISTER: nothing is hooked."""
    office = PluginOffice(tmp_path)
    assert office.service.endpoint.dispatcher.binding_listener is None
    changes: list[RegistrationChanged] = []
    office.service.plugins.on_registration(changes.append)
    assert office.service.endpoint.dispatcher.binding_listener is not None
    office.phone("1002", 6002).register()
    assert [c.state for c in changes] == [RegistrationState.REGISTERED]


def calling(office: PluginOffice) -> tuple[Request, str]:
    """1001 calls 1002 (registered at port 6002); the INVITE 1002's phone got, its branch."""
    callee, caller = office.phone("1002", 6002), office.phone("1001", 6001)
    assert callee.register().status == 200
    branch = caller.new_branch()
    caller.send_authenticated("INVITE", to_user="1002", body=SDP, branch=branch,
                              headers=(("Content-Type", "application/sdp"),))
    (invite,) = office.requests(6002)
    assert invite.method == "INVITE"
    return invite, branch


def phases(plugin: Recorder) -> list[tuple[CallPhase, str | None, tuple[str, ...], int | None]]:
    call_ids = {event.call_id for event in plugin.calls}
    assert len(call_ids) == 1 and all(e.caller.user == "1001" for e in plugin.calls)
    return [(e.phase, e.callee, e.callees, e.status) for e in plugin.calls]


def test_call_states_of_an_answered_call(tmp_path: Path) -> None:
    plugin = Recorder()
    office = PluginOffice(tmp_path, plugin)
    invite, _ = calling(office)
    callee, caller = office.phone("1002", 6002), office.phone("1001", 6001)
    callee.answer(invite, 180)
    callee.answer(invite, 180)  # phones repeat themselves: still one RINGING
    callee.answer(invite, 200, body=SDP)
    (ok,) = [m for m in responses(office.take(6001)) if m.status == 200]
    caller.send("ACK", to_user="1002", to_tag=ok.to_addr.tag, cseq=caller.cseq)
    caller.send("BYE", to_user="1002", to_tag=ok.to_addr.tag)
    assert phases(plugin) == [
        (CallPhase.RINGING, "1002", ("1002",), None),
        (CallPhase.ANSWERED, "1002", ("1002",), None),
        (CallPhase.ENDED, "1002", ("1002",), 200)]
    assert plugin.calls[0].dialed == "1002"


def test_call_states_of_a_cancelled_call(tmp_path: Path) -> None:
    plugin = Recorder()
    office = PluginOffice(tmp_path, plugin)
    invite, branch = calling(office)
    office.phone("1002", 6002).answer(invite, 180)
    caller = office.phone("1001", 6001)
    caller.send("CANCEL", to_user="1002", branch=branch, cseq=caller.cseq,
                uri="sip:1002@pbx.test")
    assert phases(plugin) == [
        (CallPhase.RINGING, "1002", ("1002",), None),
        (CallPhase.ENDED, None, ("1002",), 487)]


def test_call_states_of_a_refused_call(tmp_path: Path) -> None:
    plugin = Recorder()
    office = PluginOffice(tmp_path, plugin)
    invite, _ = calling(office)
    callee = office.phone("1002", 6002)
    callee.answer(invite, 180)
    callee.answer(invite, 486)
    assert phases(plugin) == [
        (CallPhase.RINGING, "1002", ("1002",), None),
        (CallPhase.ENDED, None, ("1002",), 486)]


def test_a_call_cut_by_the_pbx_stopping_is_ended(tmp_path: Path) -> None:
    plugin = Recorder()
    office = PluginOffice(tmp_path, plugin)
    invite, _ = calling(office)
    office.phone("1002", 6002).answer(invite, 200, body=SDP)
    office.service.calls.hangup_all()
    assert [event.phase for event in plugin.calls] == [CallPhase.ANSWERED, CallPhase.ENDED]


def test_a_listener_that_fails_does_not_fail_the_register(tmp_path: Path) -> None:
    office = PluginOffice(tmp_path)
    heard: list[RegistrationState] = []

    def broken(change: RegistrationChanged) -> None:
        raise RuntimeError("a plugin's bug")

    office.service.plugins.on_registration(broken)
    office.service.plugins.on_registration(lambda change: heard.append(change.state))
    assert office.phone("1002", 6002).register().status == 200
    assert heard == [RegistrationState.REGISTERED]


def test_past_the_dialog_bound_a_subscription_is_refused(tmp_path: Path) -> None:
    plugin = Recorder()
    plugin.handlers["SUBSCRIBE"] = plugin.subscribe
    office = PluginOffice(tmp_path, plugin)
    office.service.plugin_dialogs.max_dialogs = 1
    _, notify = subscribed(office, plugin)
    office.phone("1001", 6001).answer(notify, 200)
    (refused,) = responses(office.phone("1003", 6003).send_authenticated(
        "SUBSCRIBE", to_user="1002", headers=(("Event", "x-test"),)))
    assert (refused.status, refused.reason) == (503, "Too many dialogs")
    plugin.dialogs[0].end()
    _, again = subscribed(office, plugin)
    assert again.method == "NOTIFY"


def test_a_plugin_sleeps_on_the_pbx_clock(tmp_path: Path) -> None:
    plugin = Recorder()
    office = PluginOffice(tmp_path, plugin)
    assert plugin.api is not None
    woken = plugin.api.sleep(2.0)
    office.advance(1.5)
    assert not result_ready(woken)
    office.advance(0.5)
    assert result_ready(woken)


def test_an_expired_subscription_may_send_its_last_notify(tmp_path: Path) -> None:
    class LastWords(Recorder):
        def on_ended(self, dialog: PluginDialog) -> None:
            super().on_ended(dialog)
            self.last = dialog.request("NOTIFY", headers=[
                ("Event", "x-test"), ("Subscription-State", "terminated;reason=timeout")])

    async def subscribe(request: IncomingRequest) -> Reply:
        assert plugin.api is not None
        plugin.api.accept_dialog(request, plugin).expire_after(60)
        return Reply(200, headers=[("Expires", "60")])

    plugin = LastWords({"SUBSCRIBE": subscribe})
    office = PluginOffice(tmp_path, plugin)
    phone = office.phone("1001", 6001)
    (ok,) = responses(phone.send_authenticated("SUBSCRIBE", to_user="1002",
                                               headers=(("Event", "x-test"),)))
    office.advance(60.5)
    notify, *again = office.requests(6001)
    assert all(sent.cseq == notify.cseq for sent in again)  # Timer E's retransmissions
    assert notify.headers.get("subscription-state") == "terminated;reason=timeout"
    assert notify.from_addr.tag == ok.to_addr.tag
    phone.answer(notify, 200)
    assert result(plugin.last) == Outcome(200, "Whatever")
    (dialog,) = plugin.ended
    assert result(dialog.request("NOTIFY")) == Outcome(481, "Call/Transaction Does Not Exist")

"""Dialogs: the state a UA keeps between requests of one call (RFC 3261 §12).

Theory of operation
-------------------
The B2BUA terminates every call, so it is a full UA on each leg and keeps one
`Dialog` per leg: the A-leg dialog it created as UAS when it answered the
caller (`Dialog.as_uas`, §12.1.1), and a B-leg dialog per callee it created as
UAC from the callee's 1xx/2xx (`Dialog.as_uac`, §12.1.2). A dialog is pure
state keyed by `DialogId` (Call-ID, local tag, remote tag); it never sends,
reads a clock or logs. Four things happen to it:

* **We send a request in it** (`new_request`, `ack`): the Request-URI, Route,
  From, To, Call-ID, CSeq and Contact come from the dialog (§12.2.1.1).
  Each new request takes the next local CSeq; the ACK for a 2xx reuses the
  INVITE's number (§13.2.2.4) and CANCEL is built from the INVITE by the
  transaction layer (`pbx.sip.transaction.build_cancel`), so neither moves it.
* **A request arrives in it** (`receive_request`): CSeq must go up (§12.2.2),
  a target refresh moves the remote target, a BYE ends the dialog. The
  answer is a status to reject with, or None to go on.
* **A response to our request arrives** (`receive_response`): a 2xx to a
  target refresh moves the remote target (§12.2.1.2), a 2xx to the INVITE
  confirms an early dialog (§13.2.2.4), a 481 or 408 means the far end has
  lost the dialog (§12.2.1.2), a non-2xx final answer to the INVITE ends
  an early dialog (§12.3).
* **We end it** (`terminate`), or confirm it as UAS once our 2xx is out
  (`confirm`).

States, as in §12 (the RFC names no figure; these are its words)::

    EARLY ──2xx to the INVITE──▶ CONFIRMED ──BYE, 481, 408──▶ TERMINATED
      └──────── non-2xx final to the INVITE, BYE, 481, 408 ───────▲

Why the dialog is mutable: its sequence numbers and remote target change with
every request and target refresh, and one object per leg is shared by the
call, the dialog table and the transactions that refer to it. Everything it
is built from and hands out (`DialogId`, requests) are values. It compares
and hashes by identity, as an entity should.

Limits: a dialog's size is bounded by the message it came from (the route
set is at most the Record-Route values of one message, which `ParseLimits`
bounds); the table that holds dialogs is the core's, with its own bound.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable
from dataclasses import dataclass

from pbx.sip.errors import LocalProtocolError, SipParseError
from pbx.sip.headers import NameAddr
from pbx.sip.message import Message, Request, Response, build_request
from pbx.sip.uri import SipUri, TelUri, parse_request_uri

__all__ = [
    "REJECTION_REASONS",
    "TARGET_REFRESH_METHODS",
    "Dialog",
    "DialogId",
    "DialogState",
    "dialog_id_of_request",
    "dialog_id_of_response",
]

TARGET_REFRESH_METHODS = frozenset({"INVITE", "UPDATE", "SUBSCRIBE", "NOTIFY", "REFER"})
"""Requests whose Contact replaces the remote target.

INVITE (RFC 3261 §12.2), UPDATE (RFC 3311 §5.1), SUBSCRIBE and NOTIFY
(RFC 6665 §4), and REFER: it creates a subscription (RFC 3515), so we treat
it as SUBSCRIBE. A B2BUA that relays these must keep each leg's target
current, or the next BYE goes to an address the phone has left.
"""

REJECTION_REASONS: dict[int, str] = {
    500: "CSeq Out Of Order",
    481: "Call/Transaction Does Not Exist",
    400: "Bad Contact",
}
"""Reason phrases for the statuses `Dialog.receive_request` returns.

500 is what §12.2.2 prescribes for a request whose CSeq is not above the
last one; "Server Internal Error", the standard phrase, would send whoever
reads the trace looking for a crash, so the phrase names the real cause.
"""

_MAX_CSEQ = 2**31 - 1  # RFC 3261 §8.1.1.5: a CSeq number "MUST be less than 2**31"
_NO_SEQUENCE = frozenset({"ACK", "CANCEL"})  # carry the INVITE's CSeq (§12.2.2, §9.1)
_SECURE_TRANSPORTS = frozenset({"TLS", "WSS"})
_NOT_IN_REQUEST_URI = frozenset({"method"})  # RFC 3261 §19.1.1 Table 1


class DialogState(enum.Enum):
    """The states of a dialog (RFC 3261 §12)."""

    EARLY = "early"
    CONFIRMED = "confirmed"
    TERMINATED = "terminated"


@dataclass(frozen=True, slots=True, kw_only=True)
class DialogId:
    """Call-ID, local tag and remote tag (RFC 3261 §12).

    Compared exactly: Call-IDs are case-sensitive (§20.8), and tags are
    opaque tokens we copy, never retype. A missing tag is "" (the "null"
    tag of §12.1.2), so a request outside any dialog finds none.
    """

    call_id: str
    local_tag: str
    remote_tag: str


def dialog_id_of_request(request: Request) -> DialogId:
    """The dialog a request we *received* belongs to: ours is the To tag (§12.2.2)."""
    return DialogId(call_id=request.call_id, local_tag=request.to_addr.tag or "",
                    remote_tag=request.from_addr.tag or "")


def dialog_id_of_response(response: Response) -> DialogId:
    """The dialog a response to a request *we sent* belongs to: ours is the From tag."""
    return DialogId(call_id=response.call_id, local_tag=response.from_addr.tag or "",
                    remote_tag=response.to_addr.tag or "")


@dataclass(slots=True, kw_only=True, eq=False)
class Dialog:
    """One dialog, seen from our side (RFC 3261 §12).

    ``local_uri`` and ``remote_uri`` are the From/To name-addrs without tags
    (``"Alice" <sip:1001@pbx.test>``); ``remote_target`` is a URI;
    ``route_set`` holds Route values (name-addrs) in the order they go on
    the wire; ``local_contact`` is the name-addr we put in Contact.
    ``local_seq`` 0 means "empty" (§12.1.1): the first request we send
    uses 1, an initial value §8.1.1.5 allows. ``remote_seq`` None is the
    empty remote sequence number of a UAC dialog.
    """

    call_id: str
    local_tag: str
    remote_tag: str
    local_uri: str
    remote_uri: str
    remote_target: str
    local_seq: int = 0
    remote_seq: int | None = None
    route_set: tuple[str, ...] = ()
    secure: bool = False
    state: DialogState = DialogState.CONFIRMED
    local_contact: str = ""

    # ----------------------------------------------------------- creation

    @classmethod
    def as_uas(
        cls,
        request: Request,
        *,
        local_tag: str,
        local_contact: str,
        early: bool,
        secure: bool = False,
    ) -> Dialog:
        """The dialog we create by answering `request` with a 101-299 (§12.1.1).

        ``local_tag`` is the To tag of our response; ``early`` is True for a
        1xx (the dialog is confirmed later with `confirm`). ``secure`` says
        the request arrived over TLS: the dialog is secure only if its
        Request-URI was also a SIPS URI.

        The route set is the request's Record-Route, in order; the remote
        target its Contact; the remote sequence number its CSeq, so a
        retransmission of this request is not "in order" later.

        Raises `SipParseError` (400) if the request has no usable Contact:
        §8.1.1.8 requires one SIP or SIPS URI in any request that can
        establish a dialog, and without it we could not reach the caller.
        """
        if request.to_addr.tag is not None:
            raise LocalProtocolError("as_uas: the request already belongs to a dialog")
        target = _contact_target(request)
        if target is None:
            raise SipParseError("missing Contact in a dialog-creating request")
        return cls(
            call_id=request.call_id,
            local_tag=local_tag,
            remote_tag=request.from_addr.tag or "",
            local_uri=_without_tag(request.to_addr),
            remote_uri=_without_tag(request.from_addr),
            remote_target=target,
            local_seq=0,
            remote_seq=request.cseq.number,
            route_set=_route_values(request),
            secure=secure and request.uri.scheme == "sips",
            state=DialogState.EARLY if early else DialogState.CONFIRMED,
            local_contact=local_contact,
        )

    @classmethod
    def as_uac(cls, request: Request, response: Response) -> Dialog:
        """The dialog a 101-299 `response` to our `request` creates (§12.1.2).

        The route set is the response's Record-Route *reversed* (the first
        hop from us comes first); the remote target the response's Contact;
        the local sequence number the request's CSeq. A 1xx makes an early
        dialog, a 2xx a confirmed one. The dialog is secure when the request
        went over TLS (its top Via says so: we wrote it) to a SIPS URI.

        A 1xx without Contact (some gateways send one) leaves the
        Request-URI as the remote target until the 2xx brings a Contact;
        a 2xx without one (§12.1.1 says it MUST have one) does the same,
        so that a BYE still goes somewhere sensible.

        Raises `SipParseError` (unanswerable: it is a response) when the
        response has no To tag: RFC 2543 tag-less dialogs are not supported.
        """
        status = response.status
        if not 101 <= status <= 299:
            raise LocalProtocolError(f"as_uac: a {status} does not create a dialog")
        remote_tag = response.to_addr.tag
        if not remote_tag:
            raise SipParseError(f"{status} without a To tag cannot create a dialog",
                                answerable=False)
        target = _contact_target(response)
        return cls(
            call_id=request.call_id,
            local_tag=request.from_addr.tag or "",
            remote_tag=remote_tag,
            local_uri=_without_tag(request.from_addr),
            remote_uri=_without_tag(response.to_addr),
            remote_target=target if target is not None else str(request.uri),
            local_seq=request.cseq.number,
            remote_seq=None,
            route_set=_route_values(response)[::-1],
            secure=(request.uri.scheme == "sips"
                    and request.top_via.transport in _SECURE_TRANSPORTS),
            state=DialogState.EARLY if status < 200 else DialogState.CONFIRMED,
            local_contact=request.headers.get("contact") or "",
        )

    # ------------------------------------------------------------ queries

    @property
    def id(self) -> DialogId:
        return DialogId(call_id=self.call_id, local_tag=self.local_tag,
                        remote_tag=self.remote_tag)

    def matches(self, message: Request | Response) -> bool:
        """Does `message` belong here? A request we received, or a response to ours."""
        if isinstance(message, Request):
            return dialog_id_of_request(message) == self.id
        return dialog_id_of_response(message) == self.id

    # ----------------------------------------------------------- sending

    def new_request(
        self,
        method: str,
        *,
        via: str,
        max_forwards: int = 70,
        headers: Iterable[tuple[str, str]] = (),
        body: bytes = b"",
        content_type: str | None = None,
    ) -> Request:
        """A new request inside the dialog, taking the next local CSeq (§12.2.1.1).

        ``via`` is the complete top Via with a fresh branch. A target
        refresh request carries our Contact. ``headers`` come after the
        dialog's own (Authorization, Session-Expires, RAck, Content-Type...).
        """
        if method in _NO_SEQUENCE:
            raise LocalProtocolError(
                f"{method} reuses the INVITE's CSeq: use Dialog.ack() or build_cancel()")
        if self.state is DialogState.TERMINATED:
            raise LocalProtocolError(f"{method} in a terminated dialog")
        if self.local_seq >= _MAX_CSEQ:
            raise LocalProtocolError("local CSeq would reach 2**31")
        self.local_seq += 1
        contact = self.local_contact if method in TARGET_REFRESH_METHODS else None
        return self._build(method, self.local_seq, via=via, max_forwards=max_forwards,
                           contact=contact or None, headers=headers, body=body,
                           content_type=content_type)

    def ack(
        self,
        invite_cseq: int,
        *,
        via: str,
        max_forwards: int = 70,
        headers: Iterable[tuple[str, str]] = (),
        body: bytes = b"",
        content_type: str | None = None,
    ) -> Request:
        """The ACK for a 2xx to the INVITE with CSeq `invite_cseq` (§13.2.2.4).

        Built like any request in the dialog, except that the CSeq number
        is the INVITE's and the local CSeq does not move. ``via`` needs a
        branch of its own: this ACK is a transaction by itself (§17.1.1.3).
        ``headers`` should repeat the INVITE's credentials, if it had any;
        ``body`` is the answer of a late offer.
        """
        return self._build("ACK", invite_cseq, via=via, max_forwards=max_forwards,
                           contact=None, headers=headers, body=body,
                           content_type=content_type)

    def _build(
        self,
        method: str,
        cseq: int,
        *,
        via: str,
        max_forwards: int,
        contact: str | None,
        headers: Iterable[tuple[str, str]],
        body: bytes,
        content_type: str | None,
    ) -> Request:
        uri, routes = self._request_uri_and_routes()
        extra: list[tuple[str, str]] = [("Route", route) for route in routes]
        extra.extend(headers)
        if content_type is not None:
            extra.append(("Content-Type", content_type))
        return build_request(
            method, uri, via=via,
            from_addr=_tagged(self.local_uri, self.local_tag),
            to_addr=_tagged(self.remote_uri, self.remote_tag),
            call_id=self.call_id, cseq=cseq, max_forwards=max_forwards,
            contact=contact, headers=extra, body=body,
        )

    def _request_uri_and_routes(self) -> tuple[SipUri | TelUri, list[str]]:
        """Request-URI and Route values from the route set (§12.2.1.1).

        Loose routing (the first route has ``lr``, RFC 3261): the request
        goes to the remote target and the route set is the Route header.
        Strict routing (RFC 2543 proxies, no ``lr``): the first route
        becomes the Request-URI, without the parameters a Request-URI may
        not carry, and the remote target goes last in Route, so the strict
        router can put it back.
        """
        if not self.route_set:
            return parse_request_uri(self.remote_target), []
        first = NameAddr.parse(self.route_set[0], "Route")
        if _is_loose(first):
            return parse_request_uri(self.remote_target), list(self.route_set)
        uri = parse_request_uri(first.uri_text)
        if isinstance(uri, SipUri) and (uri.headers or any(
                name.lower() in _NOT_IN_REQUEST_URI for name, _ in uri.params)):
            uri = uri.replace(params=tuple(p for p in uri.params
                                           if p[0].lower() not in _NOT_IN_REQUEST_URI),
                              headers=())
        return uri, [*self.route_set[1:], f"<{self.remote_target}>"]

    # ---------------------------------------------------------- receiving

    def receive_request(self, request: Request) -> int | None:
        """Check and apply a request received in this dialog (§12.2.2).

        Returns None to go on, or the status to reject it with (reason
        phrases in `REJECTION_REASONS`):

        * 481 when the dialog has ended or the request is not of this
          dialog (the caller looked it up by `DialogId`; this is the
          safety net);
        * 500 when its CSeq is not above the last one received (§12.2.2:
          "out of order"; an equal one that is not a retransmission, which
          the transaction layer absorbs, is out of order too). ACK and
          CANCEL carry the INVITE's number and are not checked;
        * 400 when a target refresh carries a Contact that is not a SIP or
          SIPS URI.

        A request that is accepted moves the remote sequence number; a
        target refresh with a Contact moves the remote target; a BYE ends
        the dialog. Nothing changes when the request is rejected. A
        rejected ACK is not answered (§17): drop it.

        The request that created a UAS dialog is already counted: do not
        pass it here.
        """
        if self.state is DialogState.TERMINATED or not self.matches(request):
            return 481
        method = request.method
        number = request.cseq.number
        if method not in _NO_SEQUENCE and self.remote_seq is not None \
                and number <= self.remote_seq:
            return 500
        target: str | None = None
        if method in TARGET_REFRESH_METHODS:
            try:
                target = _contact_target(request)
            except SipParseError:
                return 400
        if method not in _NO_SEQUENCE:
            self.remote_seq = number
        if target is not None:
            self.remote_target = target
        if method == "BYE":
            self.state = DialogState.TERMINATED
        return None

    def receive_response(self, request: Request, response: Response) -> bool:
        """Apply a response to `request`, which we sent in this dialog.

        Returns True when the response ended the dialog (the state is then
        TERMINATED and the call must end):

        * 481 or 408 to any request but a CANCEL: the far end no longer has
          the dialog (§12.2.1.2: the UAC SHOULD terminate it);
        * a 300-699 to the INVITE of an early dialog (§12.3: "any early
          dialogs created through provisional responses to that request are
          terminated"), whichever fork it came from.

        A 2xx from this dialog's far end (its To tag) to the INVITE of an
        early dialog confirms it and recomputes the route set from the 2xx
        (§13.2.2.4); a 2xx to a target refresh replaces the remote target
        with its Contact, if present (§12.2.1.2). A 2xx of another fork is
        another dialog and changes nothing here.
        """
        if self.state is DialogState.TERMINATED:
            return False
        status = response.status
        method = request.method
        if status in (408, 481) and method != "CANCEL":
            self.state = DialogState.TERMINATED
            return True
        if status >= 300:
            if method == "INVITE" and self.state is DialogState.EARLY:
                self.state = DialogState.TERMINATED
                return True
            return False
        if status < 200 or not self.matches(response):
            return False
        if method == "INVITE" and self.state is DialogState.EARLY:
            self.state = DialogState.CONFIRMED
            self.route_set = _route_values(response)[::-1]
        if method in TARGET_REFRESH_METHODS:
            try:
                target = _contact_target(response)
            except SipParseError:
                target = None  # a bad Contact in a 2xx: keep the target we have
            if target is not None:
                self.remote_target = target
        return False

    def receive_timeout(self, request: Request) -> bool:
        """Our `request` got no answer at all: treated as a 408 (§12.2.1.2)."""
        if self.state is DialogState.TERMINATED or request.method in _NO_SEQUENCE:
            return False
        self.state = DialogState.TERMINATED
        return True

    # ---------------------------------------------------------- commands

    def confirm(self) -> None:
        """We (UAS) sent a 2xx to the INVITE of this early dialog (§12.1.1)."""
        if self.state is DialogState.TERMINATED:
            raise LocalProtocolError("confirm: the dialog has ended")
        self.state = DialogState.CONFIRMED

    def terminate(self) -> None:
        """We ended the dialog (sent a BYE, or gave up on it)."""
        self.state = DialogState.TERMINATED


# ---------------------------------------------------------------- helpers


_SHARED_TEXT_SIZE = 4096
_shared_text: dict[str, str] = {}


def _shared(text: str) -> str:
    """One str object for equal texts a dialog keeps, so that dialogs share them.

    The From and To URIs (without tags) and the remote targets of an
    office's calls are a few texts per phone, repeated in every call it
    makes or takes; a dialog lasts as long as its call, and every phone
    may be in one at once. Bounded: cleared when full (texts already kept
    stay with their dialogs), so a flood of distinct values costs what it
    would have without this.
    """
    found = _shared_text.get(text)
    if found is None:
        if len(_shared_text) >= _SHARED_TEXT_SIZE:
            _shared_text.clear()
        _shared_text[text] = found = text
    return found


def _without_tag(addr: NameAddr) -> str:
    """A From/To name-addr as the dialog keeps it: everything but the tag."""
    params = tuple(p for p in addr.params if p[0].lower() != "tag")
    return _shared(str(NameAddr(uri_text=addr.uri_text, display_name=addr.display_name,
                                params=params)))


def _tagged(uri: str, tag: str) -> str:
    addr = NameAddr.parse(uri, "dialog URI")
    return str(addr.with_tag(tag)) if tag else str(addr)


def _contact_target(message: Message) -> str | None:
    """The URI of the first Contact, or None if there is none.

    Raises `SipParseError` if it is not a SIP or SIPS URI: a remote target
    becomes a Request-URI, and a ``tel:`` or ``mailto:`` one cannot.
    """
    contacts = message.contacts
    if not contacts:
        return None
    uri = contacts[0].uri
    if not isinstance(uri, SipUri):
        raise SipParseError(f"Contact {contacts[0].uri_text[:60]!r} is not a SIP URI")
    return _shared(contacts[0].uri_text)


def _route_values(message: Message) -> tuple[str, ...]:
    """Record-Route values in received order, each checked to be a SIP URI.

    The text is kept as received, parameters and all (§12.1.1: "preserving
    all URI parameters"), so the Route we send is what the proxy wrote.
    """
    values = message.headers.values("record-route")
    for value in values:
        if not isinstance(NameAddr.parse(value, "Record-Route").uri, SipUri):
            raise SipParseError(f"Record-Route {value[:60]!r} is not a SIP URI")
    return tuple(values)


def _is_loose(route: NameAddr) -> bool:
    """Does this route name a loose router (``lr``, RFC 3261 §19.1.1)?

    An ``lr`` outside the angle brackets counts too: some proxies write a
    bare ``sip:p1.example.com;lr`` (RFC 4028 erratum 3614 shows the same
    slip), which parses as a header parameter.
    """
    uri = route.uri
    if isinstance(uri, SipUri) and uri.param("lr") is not None:
        return True
    return route.param("lr") is not None


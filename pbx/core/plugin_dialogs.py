"""Dialogs plugins own: subscriptions (RFC 6665) and the like.

Theory of operation
-------------------
A plugin answering a request outside any dialog (a SUBSCRIBE) may accept
the dialog its 2xx creates (`PluginApi.accept_dialog`). `PluginDialogs.new`
makes an `OwnedDialog` for it, PENDING: it has its local tag (the To tag
the 2xx will carry) but no state yet, and requests the plugin sends in it
wait. When the 2xx goes out, `OwnedDialog.establish` builds the RFC 3261
§12.1.1 dialog from the request and files it under its `DialogId`, and
`release` sends what waited, after the 2xx; a failure status instead
discards it. The same holding happens while the plugin decides its answer
to a request in the dialog: what it sends meanwhile follows the answer, and
an `end` it asks for takes effect after both (the last NOTIFY of a
subscription goes after the 200 to the unsubscribe). Then::

    PENDING ── 2xx sent ──▶ ACTIVE ── end(), 481/408/no answer to our request,
       │                              time up, PBX stopping ──▶ ENDED
       └──────────── failure status sent ───────────────────────▲

In-dialog requests the endpoint has no call for come to `in_dialog`: one
of ours is checked by the dialog (CSeq order, §12.2.2), handed to the
plugin's `DialogHandler.on_request`, and answered with what it returns.
Requests the plugin sends (`OwnedDialog.request`) go to where the creating
request came from (the phone's flow through its NAT), and their outcome is
an awaitable (`pbx.core.outcomes`). ``on_ended`` is called exactly once.

Bounds: at most ``max_dialogs`` (pending ones included; past it the
request is answered 503), and every dialog has an expiry: `DEFAULT_LIFETIME_S`
after it is established unless the plugin sets its own (`expire_after`,
from the subscription's Expires).
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import replace

from twisted.internet.defer import Deferred
from twisted.logger import Logger

from pbx.core.call import Cancellable
from pbx.core.outcomes import WaitingOwner, outcome_now
from pbx.core.plugin_messages import (
    RequestSender,
    Responder,
    Timers,
    decide,
    headers_with_type,
    incoming_request,
    response_for,
)
from pbx.dialplan import DialogHandler, Outcome, Reject, Reply
from pbx.sip.dialog import (
    REJECTION_REASONS,
    TARGET_REFRESH_METHODS,
    Dialog,
    DialogId,
    DialogState,
    dialog_id_of_request,
)
from pbx.sip.errors import SipParseError
from pbx.sip.message import Request, Response, make_response
from pbx.sip.peer import Peer
from pbx.sip.transaction import ServerTransaction
from pbx.sip.uri import user_of

DEFAULT_MAX_DIALOGS = 10_000
"""Subscriptions of an office: a few per phone (presence of colleagues, BLF keys,
message waiting), for a couple of thousand phones."""
DEFAULT_LIFETIME_S = 3600.0
"""How long a dialog lasts when its plugin sets no expiry: RFC 3856's and RFC 3842's
default subscription duration."""


class DialogPhase(enum.Enum):
    PENDING = "pending"
    ACTIVE = "active"
    ENDED = "ended"


class PluginDialogs:
    """The table of dialogs plugins own, by `DialogId` (see the module docstring)."""

    log = Logger()

    def __init__(self, *, sender: RequestSender, responder: Responder, timers: Timers,
                 max_dialogs: int = DEFAULT_MAX_DIALOGS) -> None:
        self.sender = sender
        self.responder = responder
        self.timers = timers
        self.max_dialogs = max_dialogs
        self._dialogs: dict[DialogId, OwnedDialog] = {}
        self._pending = 0

    def __len__(self) -> int:
        return len(self._dialogs)

    def new(self, request: Request, peer: Peer, user: str | None,
            handler: DialogHandler) -> OwnedDialog:
        """A PENDING dialog for `request`; `Reject` (503) when the table is full."""
        if len(self._dialogs) + self._pending >= self.max_dialogs:
            raise Reject(503, "Too many dialogs")
        self._pending += 1
        return OwnedDialog(self, request, peer, user, handler, self.sender.new_tag())

    def in_dialog(self, transaction: ServerTransaction[Peer], request: Request,
                  peer: Peer) -> bool:
        """A request with a To tag no call knows; False when it is not ours either (481)."""
        dialog = self._dialogs.get(dialog_id_of_request(request))
        if dialog is None:
            return False
        dialog.receive(transaction, request, peer)
        return True

    def end_all(self) -> None:
        """The PBX stops: every dialog ends (and its plugin hears it)."""
        for dialog in list(self._dialogs.values()):
            dialog.discard()

    # ----------------------------------------------------- OwnedDialog's

    def _established(self, dialog: OwnedDialog, state: Dialog) -> None:
        self._pending -= 1
        self._dialogs[state.id] = dialog

    def _forget(self, dialog: OwnedDialog, state: Dialog | None) -> None:
        if state is None:
            self._pending -= 1
        else:
            self._dialogs.pop(state.id, None)


class OwnedDialog:
    """One dialog a plugin owns: the `pbx.dialplan.PluginDialog` it is handed.

    While an answer of the plugin's is being decided (the creating
    request's, or one in the dialog), what the plugin sends in the dialog
    waits and follows that answer, and `end` takes effect after it: a
    subscription's last NOTIFY goes after the 200 to the unsubscribe.
    """

    log = Logger()

    def __init__(self, table: PluginDialogs, request: Request, peer: Peer, user: str | None,
                 handler: DialogHandler, local_tag: str) -> None:
        self._table = table
        self._handler = handler
        self._user = user
        self._peer = peer
        self._remote_uri = request.from_addr.uri_text
        uri = str(request.uri)
        self._target = user_of(uri) or uri
        self.local_tag = local_tag
        """The To tag of the 2xx that creates the dialog."""
        self.phase = DialogPhase.PENDING
        self._state: Dialog | None = None
        self._holds = 1
        """Answers being decided: while any is, requests wait and `end` is put off."""
        self._ending = False
        self._last_words = False
        """In `on_ended`, when the far end still has the dialog: a last request may go."""
        self._waiting: list[tuple[str, list[tuple[str, str]], bytes, WaitingOwner]] = []
        self._expiry: Cancellable | None = None
        self._expires_in_s = DEFAULT_LIFETIME_S

    # ------------------------------------------------- PluginDialog

    @property
    def user(self) -> str | None:
        return self._user

    @property
    def remote_uri(self) -> str:
        return self._remote_uri

    @property
    def target(self) -> str:
        return self._target

    @property
    def ended(self) -> bool:
        return self.phase is DialogPhase.ENDED or self._ending

    def request(self, method: str, *, headers: Sequence[tuple[str, str]] = (),
                body: bytes = b"", content_type: str | None = None) -> Deferred[Outcome]:
        owner = WaitingOwner()
        extra = headers_with_type(headers, body, content_type)
        if self._last_words:
            self._send(method, extra, body, owner)
            return owner.result
        if self.ended:
            return outcome_now(481)
        if self._holds:
            self._waiting.append((method, extra, body, owner))
        else:
            self._send(method, extra, body, owner)
        return owner.result

    def expire_after(self, seconds: float) -> None:
        if self.ended:
            return
        self._expires_in_s = max(0.0, seconds)
        if self.phase is DialogPhase.ACTIVE:
            self._arm_expiry()

    def end(self) -> None:
        if self.phase is DialogPhase.ENDED:
            return
        if self._holds:
            self._ending = True  # after the answer being decided, and what waits for it
            return
        self._finish()

    # ------------------------------------------------- the core's side

    def establish(self, request: Request, contact: str) -> None:
        """Our 2xx to `request` is going out (§12.1.1): the dialog exists from now on."""
        if self.phase is not DialogPhase.PENDING:
            return
        try:
            state = Dialog.as_uas(request, local_tag=self.local_tag, local_contact=contact,
                                  early=False, secure=self._peer.is_secure)
        except SipParseError:
            self.discard()  # no Contact: the phone could not be reached in it
            return
        self._state = state
        self.phase = DialogPhase.ACTIVE
        self._table._established(self, state)
        self._arm_expiry()

    def discard(self) -> None:
        """The creating request was refused after all: the dialog never was."""
        self._holds = 0
        self._finish()

    def release(self) -> None:
        """An answer of the plugin's has left: what waited for it goes now."""
        self._holds = max(0, self._holds - 1)
        if self._holds:
            return
        waiting, self._waiting = self._waiting, []
        for method, headers, body, owner in waiting:
            if self.phase is DialogPhase.ACTIVE:
                self._send(method, headers, body, owner)
            else:
                owner.fail_now(481)
        if self._ending:
            self._finish()

    def receive(self, transaction: ServerTransaction[Peer], request: Request,
                peer: Peer) -> None:
        """A request of the phone's in this dialog: checked, then the plugin answers."""
        state = self._state
        assert state is not None  # only established dialogs are filed
        responder = self._table.responder
        refused = state.receive_request(request)
        if refused is not None:
            responder.respond_later(transaction, request, peer, make_response(
                request, refused, REJECTION_REASONS.get(refused)))
            return
        # Its Request-URI is our Contact: whom the dialog is about is the creating request's.
        incoming = replace(incoming_request(request, self._user), target=self._target)
        contact = state.local_contact if request.method in TARGET_REFRESH_METHODS else None
        self._holds += 1

        def answer(reply: Reply) -> None:
            responder.respond_later(transaction, request, peer, response_for(
                request, reply, to_tag=None, contact=contact))
            self.release()

        decide(lambda: self._handler.on_request(self, incoming), answer, log=self.log,
               method=request.method)

    # ------------------------------------------------- internals

    def _finish(self) -> None:
        """End it now: forgotten, what waits refused 481, the plugin told (once)."""
        if self.phase is DialogPhase.ENDED:
            return
        was_pending = self.phase is DialogPhase.PENDING
        self.phase = DialogPhase.ENDED
        self._ending = False
        if self._expiry is not None and self._expiry.active():
            self._expiry.cancel()
        self._expiry = None
        self._table._forget(self, None if was_pending else self._state)
        waiting, self._waiting = self._waiting, []
        for _, _, _, owner in waiting:
            owner.fail_now(481)
        state = self._state
        # Last words: unless the far end has lost the dialog, on_ended may still
        # send in it (RFC 6665 §4.2.2: NOTIFY with Subscription-State: terminated).
        self._last_words = state is not None and state.state is not DialogState.TERMINATED
        try:
            self._handler.on_ended(self)
        except Exception:
            self.log.failure("A plugin's on_ended failed")
        finally:
            self._last_words = False
            if state is not None:
                state.terminate()

    def _send(self, method: str, headers: list[tuple[str, str]], body: bytes,
              owner: WaitingOwner) -> None:
        state = self._state
        assert state is not None
        sender = self._table.sender
        sent = state.new_request(method, via=sender.via_for(self._peer), headers=headers,
                                 body=body)
        owner.on_final = lambda response, status: self._answered(sent, response, status)
        if sender.send_request(sent, self._peer, owner) is None:
            owner.fail_now(503)

    def _answered(self, sent: Request, response: Response | None, status: int) -> None:
        """The final answer to `sent`: 481, 408 or none end the dialog (§12.2.1.2)."""
        state = self._state
        if state is None or self.phase is not DialogPhase.ACTIVE:
            return
        if response is not None:
            ended = state.receive_response(sent, response)
        else:
            ended = status == 408 and state.receive_timeout(sent)
        if ended:
            self.end()

    def _arm_expiry(self) -> None:
        if self._expiry is not None and self._expiry.active():
            self._expiry.cancel()
        self._expiry = self._table.timers.call_later(self._expires_in_s, self._expired)

    def _expired(self) -> None:
        self._expiry = None
        self.end()

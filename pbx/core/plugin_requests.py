"""Requests outside any dialog that a plugin answers (MESSAGE, SUBSCRIBE, PUBLISH...).

The endpoint authenticates the sender (407, as for a call) and hands the
request here with the plugin's handler. The handler gets an
`IncomingRequest` and answers with a status or a whole `Reply` (headers,
body); while it runs it may accept the dialog its 2xx will create
(`accept_dialog`, `pbx.core.plugin_dialogs`). The answer leaves through
the endpoint (`Responder`); for an accepted dialog, the dialog is filed
before the 2xx is sent and what the plugin sent in it follows the 2xx.
"""

from __future__ import annotations

from dataclasses import dataclass

from twisted.logger import Logger

from pbx.core.plugin_dialogs import DialogPhase, OwnedDialog, PluginDialogs
from pbx.core.plugin_messages import Responder, decide, incoming_request, response_for
from pbx.dialplan import DialogHandler, IncomingRequest, PluginDialog, Reply, RequestHandler
from pbx.sip.message import Request
from pbx.sip.peer import Peer
from pbx.sip.transaction import ServerTransaction


@dataclass(slots=True)
class _Exchange:
    """A request a plugin is deciding on: where its answer goes, and its dialog."""

    transaction: ServerTransaction[Peer]
    request: Request
    peer: Peer
    sender: str | None
    dialog: OwnedDialog | None = None


class PluginRequests:
    log = Logger()

    def __init__(self, *, responder: Responder, dialogs: PluginDialogs) -> None:
        self.responder = responder
        self.dialogs = dialogs
        self._deciding: dict[int, _Exchange] = {}
        """Exchanges whose handler runs, by the id of the `IncomingRequest` it was given
        (alive as long as the handler runs: the ids cannot be reused meanwhile)."""

    def handle(self, handler: RequestHandler, transaction: ServerTransaction[Peer],
               request: Request, peer: Peer, sender: str | None) -> None:
        """Let `handler` answer `request` (now or later) from authenticated `sender`."""
        incoming = incoming_request(request, sender)
        exchange = _Exchange(transaction, request, peer, sender)
        key = id(incoming)
        self._deciding[key] = exchange

        def answer(reply: Reply) -> None:
            del self._deciding[key]
            self._answer(exchange, reply)

        decide(lambda: handler(incoming), answer, log=self.log, method=request.method)

    def accept_dialog(self, request: IncomingRequest, handler: DialogHandler) -> PluginDialog:
        """`pbx.dialplan.DialogService.accept_dialog`."""
        exchange = self._deciding.get(id(request))
        if exchange is None:
            raise ValueError("accept_dialog() is for the request a handler is deciding on, "
                             "before it returns")
        if exchange.dialog is not None:
            raise ValueError("this request's dialog is accepted already")
        exchange.dialog = self.dialogs.new(exchange.request, exchange.peer, exchange.sender,
                                           handler)
        return exchange.dialog

    def _answer(self, exchange: _Exchange, reply: Reply) -> None:
        request = exchange.request
        dialog = exchange.dialog
        sender = self.dialogs.sender
        if dialog is None or reply.status >= 300:
            response = response_for(request, reply, to_tag=sender.new_tag())
            self.responder.respond_later(exchange.transaction, request, exchange.peer, response)
            if dialog is not None:
                dialog.discard()  # refused after all: the dialog never was
            return
        contact = sender.contact_for(exchange.peer, None)
        dialog.establish(request, contact)
        if dialog.phase is DialogPhase.ENDED:
            # §8.1.1.8: without a Contact the phone could not be reached in it.
            reply = Reply(400, "Missing Contact")
        response = response_for(request, reply, to_tag=dialog.local_tag, contact=contact)
        self.responder.respond_later(exchange.transaction, request, exchange.peer, response)
        dialog.release()

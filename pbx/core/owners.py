"""Who owns a dialog, and who owns the responses to a request the PBX sent.

The dispatcher (`pbx.core.dispatcher`) routes by these two tables:

- a request with a To tag goes to the `DialogOwner` registered for its
  dialog (Call-ID, our tag, their tag; RFC 3261 §12.2.2); with none, it is
  answered 481 Call/Transaction Does Not Exist;
- a response to a client transaction, its time-out (408) or a transport
  error (503), and the end of the transaction, go to the `ResponseOwner`
  registered when the request was sent.

Today the legs of calls own dialogs and the calls own the requests they
send (`pbx.core.calls`); a plugin's subscription dialog or a request it
sends outside any dialog register here the same way. Both tables are
bounded by what registers in them: a dialog is forgotten when its owner
ends it, a response owner when its transaction ends.
"""

from __future__ import annotations

from typing import Protocol

from pbx.sip.dialog import DialogId
from pbx.sip.message import Request, Response
from pbx.sip.peer import Peer
from pbx.sip.transaction import ClientTransaction, ServerTransaction


class DialogOwner(Protocol):
    """Gets the requests sent within one dialog (§12.2.2)."""

    def in_dialog_request(self, transaction: ServerTransaction[Peer], request: Request) -> None:
        """A request in the dialog: the owner answers it through its transaction."""

    def in_dialog_ack(self, request: Request) -> None:
        """An ACK for a 2xx the owner sent in this dialog (§13.2.2.4; no answer)."""


class ResponseOwner(Protocol):
    """Gets what happens to a request it sent."""

    def on_response(self, response: Response) -> None: ...

    def on_failure(self, status: int) -> None:
        """No response: 408 for a timeout (Timer B/F), 503 for a transport error."""

    def on_ended(self) -> None:
        """The request's transaction is over: nothing more will come for it."""


class Owners:
    """The dialog and response-owner tables the dispatcher routes by."""

    def __init__(self) -> None:
        self._dialogs: dict[DialogId, DialogOwner] = {}
        self._responses: dict[ClientTransaction[Peer], ResponseOwner] = {}

    # ------------------------------------------------------------- dialogs

    def own_dialog(self, dialog_id: DialogId, owner: DialogOwner) -> None:
        self._dialogs[dialog_id] = owner

    def release_dialog(self, dialog_id: DialogId) -> None:
        self._dialogs.pop(dialog_id, None)

    def dialog_owner(self, dialog_id: DialogId) -> DialogOwner | None:
        return self._dialogs.get(dialog_id)

    @property
    def dialog_count(self) -> int:
        return len(self._dialogs)

    # ----------------------------------------------------------- responses

    def own_responses(self, transaction: ClientTransaction[Peer], owner: ResponseOwner) -> None:
        self._responses[transaction] = owner

    def response_owner(self, transaction: ClientTransaction[Peer]) -> ResponseOwner | None:
        return self._responses.get(transaction)

    def transaction_ended(self, transaction: ClientTransaction[Peer]) -> None:
        """Tell the owner its transaction is over, and forget it."""
        owner = self._responses.pop(transaction, None)
        if owner is not None:
            owner.on_ended()

    @property
    def response_owner_count(self) -> int:
        return len(self._responses)

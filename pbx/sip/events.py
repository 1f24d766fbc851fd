"""What the transaction layer tells its user (the TU, and the shell that drains it).

Events are past-tense facts, pulled with ``TransactionLayer.next_event()``
[aioquic ``events.py``]; datagrams to send are `Outgoing` values pulled with
``take_outgoing()``. Every one is a frozen dataclass, so a test can compare
whole events and the core can ``match`` on them with ``assert_never`` for the
case it forgot.

They are generic in the address type: whatever opaque value the shell passed
as ``source`` / ``destination`` (a ``(transport, host, port)`` tuple, a
connection handle) comes back unchanged and with its type, so the shell
never casts.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Generic, TypeAlias, TypeVar

from pbx.sip.message import Request, Response
from pbx.sip.timers import Timer

if TYPE_CHECKING:
    from pbx.sip.transaction_base import Transaction
    from pbx.sip.transaction_client import ClientTransaction
    from pbx.sip.transaction_server import ServerInviteTransaction, ServerTransaction

A = TypeVar("A")


@dataclass(frozen=True, slots=True, kw_only=True)
class Outgoing(Generic[A]):
    """Bytes the shell must write to `destination`.

    ``transaction`` is the transaction that sent them (None for a stateless
    send): if the write fails, the shell reports it with
    ``TransactionLayer.receive_transport_error(transaction, now)``.
    """

    data: bytes
    destination: A
    transaction: Transaction[A] | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class RequestReceived(Generic[A]):
    """A request that is not a retransmission: a new server transaction exists for it.

    The TU answers through ``TransactionLayer.respond(transaction, ...)``.
    """

    transaction: ServerTransaction[A]
    request: Request
    source: A


@dataclass(frozen=True, slots=True, kw_only=True)
class AckReceived(Generic[A]):
    """An ACK for a 2xx (RFC 3261 §13.3.1.4, RFC 6026 §7.1).

    ``transaction`` is the server INVITE transaction in Accepted that the ACK
    matched, or None: an ACK for a 2xx normally carries a branch of its own
    (§17.1.1.3), so it matches no transaction and goes to the core as is.
    """

    request: Request
    source: A
    transaction: ServerInviteTransaction[A] | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class ResponseReceived(Generic[A]):
    """A response for a client transaction, to be acted on by the TU.

    Retransmitted non-2xx final responses are absorbed by the transaction;
    retransmitted 2xx responses to an INVITE are passed up (RFC 6026 §7.2),
    because only the TU can ACK them.
    """

    transaction: ClientTransaction[A]
    response: Response


@dataclass(frozen=True, slots=True, kw_only=True)
class StrayResponseReceived(Generic[A]):
    """A response that matched no client transaction (RFC 3261 §17.1.3).

    RFC 3261 §18.1.2 says to drop it; a 2xx to an INVITE may still deserve
    an ACK from the core (a 2xx retransmitted after Timer M), so it is
    reported rather than silently discarded.
    """

    response: Response
    source: A


@dataclass(frozen=True, slots=True, kw_only=True)
class TransactionTimedOut(Generic[A]):
    """Timer B, F or H fired: the peer never answered or never ACKed (§17.1.1.2, §17.2.1).

    For a client transaction the TU acts as if it got a 408 (§8.1.3.1).
    """

    transaction: Transaction[A]
    timer: Timer


@dataclass(frozen=True, slots=True, kw_only=True)
class TransportErrorReported(Generic[A]):
    """The shell could not deliver a message of this transaction (§17.1.4, §17.2.4)."""

    transaction: Transaction[A]


@dataclass(frozen=True, slots=True, kw_only=True)
class TransactionTerminated(Generic[A]):
    """The transaction reached Terminated and left the table; nothing will match it again."""

    transaction: Transaction[A]


@dataclass(frozen=True, slots=True, kw_only=True)
class RequestRejected(Generic[A]):
    """The layer answered a request statelessly, without creating a transaction.

    Today that is 503 when the table is full (``max_transactions``): the
    bound that keeps memory flat under a flood. The shell logs it.
    """

    request: Request
    source: A
    status: int
    reason: str


TransactionEvent: TypeAlias = (
    RequestReceived[A]
    | AckReceived[A]
    | ResponseReceived[A]
    | StrayResponseReceived[A]
    | TransactionTimedOut[A]
    | TransportErrorReported[A]
    | TransactionTerminated[A]
    | RequestRejected[A]
)

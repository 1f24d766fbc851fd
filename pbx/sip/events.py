"""What the transaction layer tells its user (the TU, and the shell that drains it).

Events are past-tense facts, pulled with ``TransactionLayer.next_event()``
[aioquic ``events.py``]; datagrams to send are `Outgoing` values pulled with
``take_outgoing()``. Each is a small value object: equal when its class and
fields are equal (a test compares whole events), with a readable repr, and
the core can ``match`` on them with ``assert_never`` for the case it forgot.
Their fields are `Final`: set once, never changed (mypy enforces it).

They are generic in the address type: whatever opaque value the shell passed
as ``source`` / ``destination`` (a ``(transport, host, port)`` tuple, a
connection handle) comes back unchanged and with its type, so the shell
never casts.

Why plain classes and not frozen dataclasses: a registrar makes three of
these for every request, and this module is compiled with the transaction
layer (`pbx.compiled`). mypyc cannot compile a generic dataclass, and a
frozen dataclass's generated ``__init__`` (one ``object.__setattr__`` per
field) is slow for something made three times a request; written out and
compiled, an event costs about what a tuple does (docs/benchmarks.md, "Why
the hot path is written as it is").
"""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar, Final, Generic, TypeAlias, TypeVar

from pbx.sip.message import Request, Response
from pbx.sip.timers import Timer

if TYPE_CHECKING:
    from pbx.sip.transaction_base import Transaction
    from pbx.sip.transaction_client import ClientTransaction
    from pbx.sip.transaction_server import ServerInviteTransaction, ServerTransaction

A = TypeVar("A")


class _Fact:
    """Equality, hash and repr from the fields `_values` lists, as a dataclass has them."""

    __slots__ = ()
    _FIELDS: ClassVar[tuple[str, ...]] = ()

    def _values(self) -> tuple[object, ...]:
        raise NotImplementedError

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, _Fact):
            return NotImplemented
        return type(other) is type(self) and self._values() == other._values()

    def __hash__(self) -> int:
        return hash((type(self).__name__, self._values()))

    def __repr__(self) -> str:
        fields = ", ".join(f"{name}={value!r}"
                           for name, value in zip(self._FIELDS, self._values(), strict=True))
        return f"{type(self).__name__}({fields})"


class Outgoing(_Fact, Generic[A]):
    """Bytes the shell must write to `destination`.

    ``transaction`` is the transaction that sent them (None for a stateless
    send): if the write fails, the shell reports it with
    ``TransactionLayer.receive_transport_error(transaction, now)``.
    """

    __slots__ = ("data", "destination", "transaction")
    _FIELDS = ("data", "destination", "transaction")

    def __init__(
        self, *, data: bytes, destination: A, transaction: Transaction[A] | None = None,
    ) -> None:
        self.data: Final = data
        self.destination: Final = destination
        self.transaction: Final = transaction

    def _values(self) -> tuple[object, ...]:
        return (self.data, self.destination, self.transaction)


class RequestReceived(_Fact, Generic[A]):
    """A request that is not a retransmission: a new server transaction exists for it.

    The TU answers through ``TransactionLayer.respond(transaction, ...)``.
    """

    __slots__ = ("request", "source", "transaction")
    _FIELDS = ("transaction", "request", "source")

    def __init__(self, *, transaction: ServerTransaction[A], request: Request, source: A) -> None:
        self.transaction: Final = transaction
        self.request: Final = request
        self.source: Final = source

    def _values(self) -> tuple[object, ...]:
        return (self.transaction, self.request, self.source)


class AckReceived(_Fact, Generic[A]):
    """An ACK for a 2xx (RFC 3261 §13.3.1.4, RFC 6026 §7.1).

    ``transaction`` is the server INVITE transaction in Accepted that the ACK
    matched, or None: an ACK for a 2xx normally carries a branch of its own
    (§17.1.1.3), so it matches no transaction and goes to the core as is.
    """

    __slots__ = ("request", "source", "transaction")
    _FIELDS = ("request", "source", "transaction")

    def __init__(
        self, *, request: Request, source: A, transaction: ServerInviteTransaction[A] | None = None,
    ) -> None:
        self.request: Final = request
        self.source: Final = source
        self.transaction: Final = transaction

    def _values(self) -> tuple[object, ...]:
        return (self.request, self.source, self.transaction)


class ResponseReceived(_Fact, Generic[A]):
    """A response for a client transaction, to be acted on by the TU.

    Retransmitted non-2xx final responses are absorbed by the transaction;
    retransmitted 2xx responses to an INVITE are passed up (RFC 6026 §7.2),
    because only the TU can ACK them.
    """

    __slots__ = ("response", "transaction")
    _FIELDS = ("transaction", "response")

    def __init__(self, *, transaction: ClientTransaction[A], response: Response) -> None:
        self.transaction: Final = transaction
        self.response: Final = response

    def _values(self) -> tuple[object, ...]:
        return (self.transaction, self.response)


class StrayResponseReceived(_Fact, Generic[A]):
    """A response that matched no client transaction (RFC 3261 §17.1.3).

    RFC 3261 §18.1.2 says to drop it; a 2xx to an INVITE may still deserve
    an ACK from the core (a 2xx retransmitted after Timer M), so it is
    reported rather than silently discarded.
    """

    __slots__ = ("response", "source")
    _FIELDS = ("response", "source")

    def __init__(self, *, response: Response, source: A) -> None:
        self.response: Final = response
        self.source: Final = source

    def _values(self) -> tuple[object, ...]:
        return (self.response, self.source)


class TransactionTimedOut(_Fact, Generic[A]):
    """Timer B, F or H fired: the peer never answered or never ACKed (§17.1.1.2, §17.2.1).

    For a client transaction the TU acts as if it got a 408 (§8.1.3.1).
    """

    __slots__ = ("timer", "transaction")
    _FIELDS = ("transaction", "timer")

    def __init__(self, *, transaction: Transaction[A], timer: Timer) -> None:
        self.transaction: Final = transaction
        self.timer: Final = timer

    def _values(self) -> tuple[object, ...]:
        return (self.transaction, self.timer)


class TransportErrorReported(_Fact, Generic[A]):
    """The shell could not deliver a message of this transaction (§17.1.4, §17.2.4)."""

    __slots__ = ("transaction",)
    _FIELDS = ("transaction",)

    def __init__(self, *, transaction: Transaction[A]) -> None:
        self.transaction: Final = transaction

    def _values(self) -> tuple[object, ...]:
        return (self.transaction,)


class TransactionTerminated(_Fact, Generic[A]):
    """The transaction reached Terminated and left the table; nothing will match it again."""

    __slots__ = ("transaction",)
    _FIELDS = ("transaction",)

    def __init__(self, *, transaction: Transaction[A]) -> None:
        self.transaction: Final = transaction

    def _values(self) -> tuple[object, ...]:
        return (self.transaction,)


class RequestRejected(_Fact, Generic[A]):
    """The layer answered a request statelessly, without creating a transaction.

    Today that is 503 when the table is full (``max_transactions``): the
    bound that keeps memory flat under a flood. The shell logs it.
    """

    __slots__ = ("reason", "request", "source", "status")
    _FIELDS = ("request", "source", "status", "reason")

    def __init__(self, *, request: Request, source: A, status: int, reason: str) -> None:
        self.request: Final = request
        self.source: Final = source
        self.status: Final = status
        self.reason: Final = reason

    def _values(self) -> tuple[object, ...]:
        return (self.request, self.source, self.status, self.reason)


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

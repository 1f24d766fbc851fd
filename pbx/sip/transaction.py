"""The SIP transaction layer: one table of transactions, matching, timers (RFC 3261 §17).

Theory of operation
-------------------
`TransactionLayer` is a sans-I/O object [h11, aioquic]. The shell feeds it
parsed messages with where they came from and the time, ``now`` in seconds
from any monotonic origin:

* ``receive_request(request, source, now)``, and before parsing a datagram
  ``absorb_datagram(data, now)`` (see "Retransmissions before parsing")
* ``receive_response(response, source, now)``
* ``handle_timer(now)`` once ``now`` reaches ``next_deadline()``
* ``receive_transport_error(transaction, now)`` when writing an `Outgoing`
  of that transaction failed

and the TU (the dialog and call layers above) gives it commands:
``send_request``, ``respond``, ``cancel`` and ``send_stateless``. What comes
out is pulled: ``next_event()`` for `pbx.sip.events`, ``take_outgoing()``
for bytes to write, and ``next_deadline()`` for the one timer the shell
keeps armed.

Matching an incoming message to a transaction is a dictionary lookup:

* A response matches the client transaction whose request had the same
  top-Via branch and CSeq method (§17.1.3): the method tells the CANCEL,
  which shares the INVITE's branch (§9.1), from the INVITE.
* A request with an RFC 3261 branch (magic cookie ``z9hG4bK``) matches the
  server transaction with the same branch, top-Via sent-by and method, an
  ACK counting as an INVITE (§17.2.3). A CANCEL is its own transaction;
  `find_server_invite_for_cancel` finds the INVITE it cancels (§9.2).
* A request without the cookie comes from an RFC 2543 element and is
  matched on the Request-URI, From tag, Call-ID, CSeq, top Via and To tag;
  its ACK matches on the To tag of the response we sent (§17.2.3), because
  a 2543 INVITE has no To tag and its ACK carries ours.

A matched request is a retransmission: the transaction re-sends its last
response and nothing goes up. An unmatched one creates a server transaction
and goes up as `RequestReceived`; an unmatched ACK goes up as `AckReceived`
(the ACK for a 2xx is a transaction of its own, §17.1.1.3, and the core
matches it to a dialog); an unmatched response goes up as
`StrayResponseReceived`, for the core to drop or, for a late 2xx, to ACK.

What the layer does and what it leaves to the TU:

* It retransmits requests (A, E), non-2xx INVITE responses (G) and ACKs
  for non-2xx responses, absorbs retransmissions, and sends 100 Trying for
  a slow TU. It does not retransmit 2xx responses or ACK them: both belong
  to the dialog layer (§13.3.1.4, §13.2.2.4, RFC 6026), which sends the
  2xx through ``respond`` in Accepted and the ACK through
  ``send_stateless``.
* It does not choose addresses: a request goes to the ``destination`` the
  TU gives (after RFC 3263 in the shell), a response back to the
  ``source`` of its request, opaque values of the shell's choosing (the
  layer is generic in their type). RFC 3581/§18.2.2 are the shell's job.
* It serialises each message once and keeps the bytes for retransmission.

Answered non-INVITE server transactions over UDP become *tombstones*. In
Completed such a transaction does one thing for 64*T1: re-send its final
response's bytes to each retransmission of its request (§17.2.2). A
registrar answering thousands of REGISTERs a second holds tens of thousands
of them, so the layer keeps just that: the bytes and the address by match
key (in two dicts, see `__init__`), with a FIFO of expiry times (every tombstone lives the
same Timer J, so the oldest expires first: no heap). The transaction object
leaves the table at once and `TransactionTerminated` is reported then,
since nothing it could still do concerns the TU. Tombstones are bounded by
``max_tombstones``; past it the oldest goes early (a retransmission later
than that is processed as a new request, which the TU must tolerate anyway).
With ``max_tombstones=0`` Completed transactions stay whole, as drawn.

A TU may also answer statelessly (§8.2.7) with ``respond_statelessly``: the
response goes out and the transaction ends at once. That is what a challenge
(401/407 without credentials) deserves, and a registrar's 200 whose request
is idempotent (`pbx.core.registrar`): remembering them for Timer J would
cost a registrar hundreds of megabytes at full rate. Over UDP the answer is still kept as a
tombstone for a short while, ``stateless_echo_s`` (8*T1, 4 s: the request's
first three retransmissions), so that a retransmission gets the very same
bytes back: a phone, or SIPp, that already answered a challenge takes a
second identical 401 for the retransmission it is, where a new challenge
(another nonce) is a surprise that fails the registration; and re-sending
costs far less than answering again on a PBX that is behind. Past that
window a retransmission is a new request, as §8.2.7 allows.

Retransmissions before parsing
------------------------------
Past its capacity a UDP server falls behind, its requests wait in the
socket, the phones retransmit, and every retransmission is parsed only to
be found a copy: a registrar spending its time on copies answers fewer
originals, which brings more copies (the collapse Kamailio avoids by
being cheap per message). A retransmission is the same bytes (§17.1.2.2:
the client resends its request as it was), so the shell offers each
datagram to ``absorb_datagram`` first. The layer remembers, by the hash of
their bytes, the datagrams that made its recent non-INVITE server
transactions and INVITE server transactions (``raw`` of
``receive_request``); an exact copy of one whose transaction is still
there, live or a tombstone, is handled as its match would be (the last
response again) without being parsed, and anything else goes the normal
way. The table is two generations of ``stateless_echo_s`` (the window in
which a phone retransmits), bounded in entries, so it costs tens of
bytes per recent request. A false match needs two different datagrams
with the same 64-bit SipHash, whose key is random per process.

Limits: at most ``max_transactions`` live transactions (client and server
together). When full, a new request is answered 503 statelessly and reported
as `RequestRejected`, and ``send_request`` raises `TableFullError`, so a
flood costs CPU, never unbounded memory. A transaction leaves the table the
moment it reaches Terminated (`TransactionTerminated`); its timers are
cancelled and the heap sheds stale entries (see `TimerQueue`). A CANCEL is
exempt from the bound: there is at most one per INVITE client transaction.
"""

from __future__ import annotations

import secrets
from collections import deque
from typing import Final, Generic, NewType, TypeVar

from pbx.sip.errors import LocalProtocolError, SipError
from pbx.sip.events import (
    AckReceived,
    Outgoing,
    RequestReceived,
    RequestRejected,
    StrayResponseReceived,
    TransactionEvent,
    TransactionTerminated,
)
from pbx.sip.message import Request, Response, make_response
from pbx.sip.timers import Timer, TimerSettings
from pbx.sip.transaction_base import (
    MAGIC_COOKIE,
    Action,
    Input,
    TimerQueue,
    Transaction,
    TransactionState,
)
from pbx.sip.transaction_client import (
    ClientInviteTransaction,
    ClientNonInviteTransaction,
    ClientTransaction,
    build_ack,
    build_cancel,
)
from pbx.sip.transaction_server import (
    ServerInviteTransaction,
    ServerNonInviteTransaction,
    ServerTransaction,
)

__all__ = [
    "MAGIC_COOKIE",
    "Action",
    "Branch",
    "ClientInviteTransaction",
    "ClientNonInviteTransaction",
    "ClientTransaction",
    "Input",
    "ServerInviteTransaction",
    "ServerNonInviteTransaction",
    "ServerTransaction",
    "TableFullError",
    "Timer",
    "TimerSettings",
    "Transaction",
    "TransactionLayer",
    "TransactionState",
    "build_ack",
    "build_cancel",
    "new_branch",
    "stateless_tag",
]

A = TypeVar("A")

Branch = NewType("Branch", str)
"""A Via branch parameter that starts with the magic cookie (RFC 3261 §8.1.1.7)."""

_RFC2543 = "rfc2543"  # first element of the keys of RFC 2543 server transactions

MAX_REMEMBERED_DATAGRAMS: Final = 65_536
"""Entries of one generation of the datagram table (see "Retransmissions before parsing").

At 16,000 requests a second that is four seconds, the window a phone
retransmits in; past it a generation ends early, so a flood costs at most
two of these (some 10 MB), never more.
"""


def new_branch() -> Branch:
    """A fresh RFC 3261 branch: the magic cookie and 64 random bits (§8.1.1.7)."""
    return Branch(MAGIC_COOKIE + secrets.token_hex(8))


class TableFullError(SipError):
    """``send_request`` found ``max_transactions`` live transactions: answer 503 upstream."""


def _server_key(branch: str, host: str, port: int | None, method: str) -> str:
    """The §17.2.3 match of a request with an RFC 3261 branch, as one string.

    A string, not a tuple: a str is not tracked by the garbage collector, and
    a registrar keeps one key per recent request (in the table, the tombstones,
    the expiry FIFOs, the datagram table) for Timer J. The parts are tokens, a
    host and a number, none of which holds a space.
    """
    return f"{branch} {host.lower()} {port} {method}"


def _client_key(branch: str, method: str) -> str:
    """The §17.1.3 match of a response to a client transaction: branch and CSeq method."""
    return f"{branch} {method}"


def _rfc2543_key(request: Request, method: str, to_tag: str | None) -> str:
    """The §17.2.3 match of requests without the magic cookie, as one string.

    The Request-URI is compared as written: a retransmission repeats it byte
    for byte, and §19.1.4 equality has no normal form to hash. The parts are
    joined by NUL, which no parsed header holds, so these keys never equal an
    RFC 3261 one (`_server_key`); an absent tag is a SOH, which no tag is.
    """
    via = request.top_via
    parts = (_RFC2543, str(request.uri), _or_absent(request.from_addr.tag), request.call_id,
             str(request.cseq.number), method, via.transport, via.host.lower(), str(via.port),
             _or_absent(via.branch), _or_absent(to_tag))
    return "\x00".join(parts)


def _or_absent(value: str | None) -> str:
    return "\x01" if value is None else value


_TAG_MASK: Final = (1 << 48) - 1
"""48 bits of hash for a stateless To tag: 12 hex digits, as tags made otherwise."""
_TAG_BIT: Final = 1 << 48


def stateless_tag(request: Request) -> str:
    """A To tag that is the same for every retransmission of `request` (§8.2.7)."""
    via = request.top_via
    seed = f"{request.call_id}|{request.from_addr.tag}|{via.branch}|{request.cseq.number}"
    # The process's own SipHash of the text (its key is random per process):
    # a tag must be unique, not secret, and this is much cheaper than a
    # BLAKE2b object, for every challenge (docs/benchmarks.md, "Why the hot
    # path is written as it is"). Another process gives another tag,
    # as it gives another nonce.
    # hex() of the hash with a 49th bit set, less "0x1": 12 digits, leading
    # zeros kept, without the generic format() call a ":012x" costs compiled.
    return hex((hash(seed) & _TAG_MASK) | _TAG_BIT)[3:]


class TransactionLayer(Generic[A]):
    """The transaction table and its four machines; `A` is the shell's address type.

    ``settings`` holds T1/T2/T4 and the derived timers; ``max_transactions``
    bounds the table (100,000 live transactions is some 30 seconds of a
    3,000 calls-per-second flood, and well under the memory of one process).
    """

    def __init__(
        self,
        settings: TimerSettings | None = None,
        *,
        max_transactions: int = 100_000,
        max_tombstones: int = 1_000_000,
    ) -> None:
        if max_transactions < 1:
            raise ValueError(f"max_transactions must be positive, not {max_transactions}")
        if max_tombstones < 0:
            raise ValueError(f"max_tombstones must not be negative, not {max_tombstones}")
        self.settings = settings if settings is not None else TimerSettings()
        self.max_transactions = max_transactions
        self.max_tombstones = max_tombstones
        # A tombstone is its response's bytes, and the address to send them to
        # in a dict of its own: a (bytes, address) tuple per tombstone held an
        # address object, which the garbage collector must then visit in every
        # pass over the tens of thousands of tombstones a registrar holds (an
        # entry of bytes or a tuple of plain values it leaves alone).
        self._tombstones: dict[str, bytes] = {}
        self._tombstone_peers: dict[str, A] = {}
        # The FIFOs of expiry times are parallel deques of plain values rather
        # than one deque of tuples: a tuple per entry is an object the garbage
        # collector tracks and visits, thousands a second on a busy registrar.
        self._tombstone_times: deque[float] = deque()
        self._tombstone_keys: deque[str] = deque()
        # Stateless answers kept for `stateless_echo_s`, in the same dict: the
        # entry itself (its bytes object) is in the FIFO, so an expiry never
        # takes a newer one.
        self._echo_times: deque[float] = deque()
        self._echo_keys: deque[str] = deque()
        self._echo_data: deque[bytes] = deque()
        self.stateless_echo_s = 8 * self.settings.t1_s
        # The match key of each recent request datagram, by the hash of its
        # bytes, in two generations (see "Retransmissions before parsing").
        self._datagrams: dict[int, str] = {}
        self._datagrams_old: dict[int, str] = {}
        self._datagrams_until = 0.0
        self.datagrams_absorbed = 0
        """Retransmissions answered by `absorb_datagram`, unparsed (a counter for operators)."""
        self._clients: dict[str, ClientTransaction[A]] = {}
        self._servers: dict[str, ServerTransaction[A]] = {}
        self._events: deque[TransactionEvent[A]] = deque()
        self._outgoing: list[Outgoing[A]] = []
        self._timer_queue: TimerQueue[A] = TimerQueue()

    def __len__(self) -> int:
        """Live transactions, client and server."""
        return len(self._clients) + len(self._servers)

    def __repr__(self) -> str:
        return (f"<TransactionLayer {len(self._clients)} client, "
                f"{len(self._servers)} server transactions>")

    # ---------------------------------------------------------------- inputs

    def absorb_datagram(self, data: bytes, now: float) -> bool:
        """Handle `data` if it repeats, byte for byte, a recent request still matched.

        True when it did: the transaction (or its tombstone) answered the
        retransmission as `receive_request` would have, and the datagram
        needs no parsing. False for anything else, which the shell parses
        and passes on as usual.
        """
        digest = hash(data)
        key = self._datagrams.get(digest)
        if key is None:
            key = self._datagrams_old.get(digest)
            if key is None:
                return False
        tombstone = self._tombstones.get(key)
        if tombstone is not None:
            self._outgoing.append(Outgoing(data=tombstone,
                                           destination=self._tombstone_peers[key]))
        else:
            found = self._servers.get(key)
            if found is None:
                return False
            found._receive_request(now)
        self.datagrams_absorbed += 1
        return True

    def receive_request(
        self, request: Request, source: A, now: float, *, reliable: bool | None = None,
        raw: bytes | None = None,
    ) -> None:
        """A request from the network (§17.2.3 matching, then the server machines).

        ``reliable`` defaults to what the top Via's transport says. ``raw``
        is the datagram the request was parsed from, for `absorb_datagram`
        to know its retransmissions (None over streams: nothing retransmits there).
        """
        via = request.top_via
        branch = via.branch
        method = request.method
        found: ServerTransaction[A] | None
        if branch is not None and branch.startswith(MAGIC_COOKIE):
            key = _server_key(branch, via.host, via.port, "INVITE" if method == "ACK" else method)
            found = self._servers.get(key)
            if method == "ACK":
                if isinstance(found, ServerInviteTransaction):
                    found._receive_ack(request, source, now)
                else:
                    self._emit(AckReceived(request=request, source=source))
                return
        elif method == "ACK":
            invite = self._rfc2543_invite_for_ack(request)
            if invite is not None:
                invite._receive_ack(request, source, now)
            else:
                self._emit(AckReceived(request=request, source=source))
            return
        else:
            key = _rfc2543_key(request, method, request.to_addr.tag)
            found = self._servers.get(key)
        if found is not None:
            found._receive_request(now)
            return
        tombstone = self._tombstones.get(key)
        if tombstone is not None:
            self._outgoing.append(Outgoing(data=tombstone,
                                           destination=self._tombstone_peers[key]))
            return
        if len(self._clients) + len(self._servers) >= self.max_transactions:
            self._reject(request, source, 503)
            return
        transaction: ServerTransaction[A]
        if reliable is None:
            reliable = via.is_reliable
        if method == "INVITE":
            transaction = ServerInviteTransaction(self, key, request, source, reliable)
        else:
            transaction = ServerNonInviteTransaction(self, key, request, source, reliable)
        self._servers[key] = transaction
        if raw is not None:
            self._remember_datagram(raw, key, now)
        self._emit(RequestReceived(transaction=transaction, request=request, source=source))
        transaction._start(now)

    def receive_response(self, response: Response, source: A, now: float) -> None:
        """A response from the network (§17.1.3: top-Via branch and CSeq method)."""
        branch = response.top_via.branch
        transaction = (None if branch is None
                       else self._clients.get(_client_key(branch, response.cseq.method)))
        if transaction is None:
            self._emit(StrayResponseReceived(response=response, source=source))
            return
        transaction._receive_response(response, now)

    def receive_transport_error(self, transaction: Transaction[A], now: float) -> None:
        """The shell failed to send an `Outgoing` of `transaction` (§17.1.4, §17.2.4)."""
        transaction._apply(Input.TRANSPORT_ERROR, now)

    def handle_timer(self, now: float) -> None:
        """Fire every timer whose deadline is at or before `now`, earliest first."""
        times = self._tombstone_times
        while times and times[0] <= now:
            self._unbury_oldest_tombstone()
        times = self._echo_times
        while times and times[0] <= now:
            self._unbury_oldest_echo()
        queue = self._timer_queue
        while (due := queue.pop_due(now)) is not None:
            transaction, timer = due
            transaction._fire(timer, now)

    # -------------------------------------------------------------- commands

    def send_request(
        self, request: Request, destination: A, now: float, *, reliable: bool | None = None
    ) -> ClientTransaction[A]:
        """Start a client transaction for `request` and send it to `destination`.

        The request must carry a top Via with a fresh RFC 3261 branch (see
        `new_branch`); ``reliable`` defaults to what that Via's transport
        says. An ACK is not a transaction: send the ACK for a 2xx with
        `send_stateless` (the ACK for a non-2xx is sent by the transaction).
        """
        method = request.method
        if method == "ACK":
            raise LocalProtocolError("an ACK is not a transaction: use send_stateless")
        via = request.top_via
        branch = via.branch
        if branch is None or not branch.startswith(MAGIC_COOKIE) or branch == MAGIC_COOKIE:
            raise LocalProtocolError(f"top Via branch {branch!r} lacks the magic cookie")
        key = _client_key(branch, method)
        if key in self._clients:
            raise LocalProtocolError(f"a {method} transaction with branch {branch} exists")
        if len(self._clients) + len(self._servers) >= self.max_transactions:
            raise TableFullError(f"{self.max_transactions} transactions in progress")
        if reliable is None:
            reliable = via.is_reliable
        return self._start_client(key, request, destination, reliable, now)

    def respond(self, transaction: ServerTransaction[A], response: Response, now: float) -> None:
        """Send `response` on a server transaction (the TU's "response from TU").

        Raises `LocalProtocolError` if the transaction's state does not allow
        it: a second final response, anything after Terminated, a non-2xx
        after a 2xx. In Accepted, a 2xx is the TU's retransmission of it
        (RFC 6026 §7.1) and is sent.
        """
        transaction._respond(response, now)

    def respond_statelessly(
        self, transaction: ServerTransaction[A], response: Response, now: float
    ) -> None:
        """Send a final `response` and end `transaction` at once, remembering nothing (§8.2.7).

        For answers that are as good the second time, like a challenge; its
        To tag should be `stateless_tag` so that, once the short echo window
        (see the module's notes) is over, a retransmission answered anew
        still sees the same one.
        """
        if response.status < 200:
            raise LocalProtocolError("a stateless response is final")
        if transaction.state is not transaction.INITIAL_STATE:
            raise LocalProtocolError(
                f"{transaction!r} already answered: respond_statelessly must come first")
        data = response.to_bytes()
        self._outgoing.append(Outgoing(data=data, destination=transaction.peer))
        if not transaction.reliable and self.stateless_echo_s > 0 and (
                len(self._tombstones) < self.max_tombstones):
            key = transaction._key
            self._bury(key, data, transaction.peer)
            self._echo_times.append(now + self.stateless_echo_s)
            self._echo_keys.append(key)
            self._echo_data.append(data)
        transaction.last_response = response
        transaction._enter(TransactionState.TERMINATED, now)

    def cancel(self, transaction: ClientInviteTransaction[A], now: float) -> None:
        """CANCEL a pending INVITE (RFC 3261 §9.1).

        In Proceeding the CANCEL goes out now; in Calling it waits for the
        first provisional response, as §9.1 requires; once a final response
        arrived there is nothing left to cancel and the call does nothing.
        The CANCEL's own transaction is `transaction.cancel_transaction`;
        its responses come up as `ResponseReceived`.
        """
        if transaction._cancel_requested:
            return
        transaction._cancel_requested = True
        if transaction.state is TransactionState.PROCEEDING:
            transaction._send_pending_cancel(now)

    def send_stateless(self, message: Request | Response, destination: A) -> None:
        """Send a message outside any transaction: the ACK for a 2xx, a stateless reply."""
        self._outgoing.append(Outgoing(data=message.to_bytes(), destination=destination))

    # --------------------------------------------------------------- queries

    def find_server_invite_for_cancel(
        self, cancel: Request
    ) -> ServerInviteTransaction[A] | None:
        """The server INVITE transaction a CANCEL refers to, or None (answer 481), §9.2."""
        via = cancel.top_via
        branch = via.branch
        if branch is not None and branch.startswith(MAGIC_COOKIE):
            key = _server_key(branch, via.host, via.port, "INVITE")
        else:
            key = _rfc2543_key(cancel, "INVITE", cancel.to_addr.tag)
        found = self._servers.get(key)
        return found if isinstance(found, ServerInviteTransaction) else None

    # --------------------------------------------------------------- outputs

    def next_event(self) -> TransactionEvent[A] | None:
        """The oldest event not yet taken, or None."""
        return self._events.popleft() if self._events else None

    def take_outgoing(self) -> list[Outgoing[A]]:
        """Everything to write, in order; the list is the caller's."""
        outgoing, self._outgoing = self._outgoing, []
        return outgoing

    def next_deadline(self) -> float | None:
        """When ``handle_timer`` must be called next, or None if no timer runs."""
        deadline = self._timer_queue.next_deadline()
        for times in (self._tombstone_times, self._echo_times):
            if times:
                first = times[0]
                if deadline is None or first < deadline:
                    deadline = first
        return deadline

    def sweep(self, now: float) -> None:
        """Let the remembered datagrams of past windows go (housekeeping calls this).

        A generation of the datagram table ends when a new request arrives
        after its window; after a flood nothing may arrive, and the two
        generations (up to 2 x `MAX_REMEMBERED_DATAGRAMS` entries, some
        25 MB) would be held until something does. Swept each second, they
        are gone two windows after the last request.
        """
        if now >= self._datagrams_until and (self._datagrams or self._datagrams_old):
            self._datagrams_old = self._datagrams
            self._datagrams = {}
            self._datagrams_until = now + self.stateless_echo_s

    @property
    def remembered_datagrams(self) -> int:
        """Request datagrams whose exact copies `absorb_datagram` would recognise."""
        return len(self._datagrams) + len(self._datagrams_old)

    @property
    def tombstones(self) -> int:
        """Answered non-INVITE server transactions still absorbing retransmissions."""
        return len(self._tombstones)

    # ------------------------------------------------ for the machines only

    def _emit(self, event: TransactionEvent[A]) -> None:
        self._events.append(event)

    def _transmit(self, data: bytes, destination: A, transaction: Transaction[A]) -> None:
        self._outgoing.append(
            Outgoing(data=data, destination=destination, transaction=transaction))

    def _entomb(self, transaction: ServerTransaction[A], data: bytes, now: float) -> None:
        """Completed over UDP: keep only what re-sends the final response (see above)."""
        key = transaction._key
        if self._servers.get(key) is transaction:
            del self._servers[key]
        if len(self._tombstones) >= self.max_tombstones:
            self._evict_oldest_tombstone()
        self._bury(key, data, transaction.peer)
        self._tombstone_times.append(now + self.settings.timeout_s)
        self._tombstone_keys.append(key)
        self._emit(TransactionTerminated(transaction=transaction))

    def _evict_oldest_tombstone(self) -> None:
        """Make room past ``max_tombstones``: the oldest Timer J tombstone goes early.

        The bound counts the stateless echoes too (they share the dict); when
        every tombstone is one of those, the oldest echo goes instead.
        """
        if self._tombstone_keys:
            self._unbury_oldest_tombstone()
        elif self._echo_keys:
            self._unbury_oldest_echo()

    def _unbury_oldest_tombstone(self) -> None:
        self._tombstone_times.popleft()
        self._unbury(self._tombstone_keys.popleft())

    def _unbury_oldest_echo(self) -> None:
        self._echo_times.popleft()
        key = self._echo_keys.popleft()
        # The same answer, not an equal one: its bytes object (the key may
        # hold a newer answer since).
        if self._tombstones.get(key) is self._echo_data.popleft():
            self._unbury(key)

    def _remember_datagram(self, raw: bytes, key: str, now: float) -> None:
        datagrams = self._datagrams
        if now >= self._datagrams_until or len(datagrams) >= MAX_REMEMBERED_DATAGRAMS:
            self._datagrams_old = datagrams
            self._datagrams = datagrams = {}
            self._datagrams_until = now + self.stateless_echo_s
        datagrams[hash(raw)] = key

    def _bury(self, key: str, data: bytes, peer: A) -> None:
        self._tombstones[key] = data
        self._tombstone_peers[key] = peer

    def _unbury(self, key: str) -> None:
        if self._tombstones.pop(key, None) is not None:
            del self._tombstone_peers[key]

    def _retire(self, transaction: Transaction[A]) -> None:
        """Terminated: out of the table at once (§17.1.1.2 "destroyed the instant")."""
        key = transaction._key
        if isinstance(transaction, ClientTransaction):
            if self._clients.get(key) is transaction:
                del self._clients[key]
        elif self._servers.get(key) is transaction:
            del self._servers[key]
        self._emit(TransactionTerminated(transaction=transaction))

    def _start_client(
        self,
        key: str,
        request: Request,
        destination: A,
        reliable: bool,
        now: float,
    ) -> ClientTransaction[A]:
        transaction: ClientTransaction[A]
        if request.method == "INVITE":
            transaction = ClientInviteTransaction(
                self, key, request, destination, reliable, request.to_bytes())
        else:
            transaction = ClientNonInviteTransaction(
                self, key, request, destination, reliable, request.to_bytes())
        self._clients[key] = transaction
        transaction._start(now)
        return transaction

    def _send_cancel(
        self, invite: ClientInviteTransaction[A], now: float
    ) -> ClientNonInviteTransaction[A]:
        cancel = build_cancel(invite.request)
        key = _client_key(invite.branch or "", "CANCEL")  # send_request saw it has one
        existing = self._clients.get(key)
        if isinstance(existing, ClientNonInviteTransaction):
            return existing
        transaction = self._start_client(key, cancel, invite.peer, invite.reliable, now)
        assert isinstance(transaction, ClientNonInviteTransaction)
        return transaction

    def _rfc2543_invite_for_ack(self, ack: Request) -> ServerInviteTransaction[A] | None:
        """§17.2.3: the ACK's To tag is the tag of our response, not of the INVITE.

        A re-INVITE carried the dialog's tag already (so did our response);
        an initial INVITE had none. Two lookups cover both.
        """
        ack_tag = ack.to_addr.tag
        for to_tag in (ack_tag, None) if ack_tag is not None else (None,):
            found = self._servers.get(_rfc2543_key(ack, "INVITE", to_tag))
            if (isinstance(found, ServerInviteTransaction)
                    and found.last_response is not None
                    and found.last_response.to_addr.tag == ack_tag):
                return found
        return None

    def _reject(self, request: Request, source: A, status: int) -> None:
        response = make_response(request, status, to_tag=stateless_tag(request))
        self._outgoing.append(Outgoing(data=response.to_bytes(), destination=source))
        self._emit(RequestRejected(
            request=request, source=source, status=status, reason=response.reason))

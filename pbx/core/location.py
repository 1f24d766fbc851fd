"""The location service: which contacts each address-of-record is bound to.

RFC 3261 §10.3 has the registrar keep, per address-of-record (AOR), a set of
bindings to contact URIs, each with an expiry. This module is that table,
held in memory because it is read on every call set-up and written on every
REGISTER; SQLite (`pbx.store`) only keeps a copy so a restart does not forget
who is registered.

Theory of operation
-------------------
* ``_by_aor`` maps an AOR to its `Binding` when it has one (nearly every
  AOR: one phone per user), else to a short tuple of them (at most
  ``max_contacts_per_aor``, 10 by default). It is small, so a linear scan
  beats any index; a tuple costs far less memory than a dict, and no tuple
  at all saves 64 bytes a phone. A change builds the AOR's new bindings
  aside and swaps them in, which is what makes a failed REGISTER change
  nothing. `_held` reads an entry as a tuple, `_packed` writes one.
* Two contacts are the same binding when their URIs are equal by RFC 3261
  §19.1.4, not when their text is. The text is compared first, since a phone
  refreshing its registration sends the same text; only a miss pays for
  parsing with `pbx.sip.uri.parse_uri`. Parsed URIs are not kept: they would
  add several hundred bytes to every binding to save a parse on the rare
  path (what it costs against a same-text refresh: docs/benchmarks.md, "Why
  the hot path is written as it is").
* ``_wheel`` files each binding under the whole second its expiry falls in
  (``_seconds`` is a heap of those seconds), for `expire`: 8 bytes a binding
  in a bucket's list, where a heap entry of (expiry, AOR, contact) cost 72.
  Refreshes and removals leave the old entry behind (lazy deletion): an
  entry counts only if that very `Binding` object is still held. Stale
  entries are dropped when their second comes, and the wheel is rebuilt when
  they outnumber the live ones, so a phone that refreshes every second
  cannot grow it.
* ``_by_connection`` maps a stream connection id to the AOR (rarely AORs) of
  bindings that arrived over it, so a transport whose connection closed can
  ask which bindings it carried without a scan of the whole table.
* Bindings whose time has passed but that `expire` has not collected yet are
  invisible: `bindings` leaves them out, `update` neither matches nor counts
  them, and removes them from their AOR as a side effect.

Nothing here reads a clock, calls back, or does I/O: every method that
depends on time takes ``now``, and every change is *returned* (an
`UpdateResult`, or the list of bindings removed) for the caller to hand to the
store. Failed updates change nothing.
"""

from __future__ import annotations

import enum
import heapq
import math
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from typing import Final, Protocol

from pbx.sip.errors import SipParseError
from pbx.sip.peer import Peer
from pbx.sip.uri import SipUri, Uri, parse_uri

TRANSPORTS: Final = ("udp", "tcp", "tls", "ws", "wss")
"""Transport names a binding may carry, as in a Via's sent-protocol, lowercased."""

# Each transport name maps to the one str object the module holds, so 200,000
# bindings share five strings instead of holding 200,000 copies.
_CANONICAL_TRANSPORT: Final = {name: name for name in TRANSPORTS}

DEFAULT_Q: Final = 1.0
"""Rank of a contact registered without a q-value.

RFC 3261 leaves it to the registrar. Ranking it at the top of the 0-1 range
keeps a phone that expressed no preference ahead of one that asked to be
tried later (q<1), which is what people who set q on one device expect.
"""

DEFAULT_MAX_BINDINGS: Final = 200_000
"""About 160 MB at the measured 790 bytes a binding: far above an office, within one host."""

DEFAULT_MAX_CONTACTS_PER_AOR: Final = 10
"""Desk phone, softphones, a mobile app and room to spare; a REGISTER loop stops here."""

_COMPACT_SLACK: Final = 1024
"""Stale heap entries tolerated before a rebuild, beyond one per live binding."""


@dataclass(slots=True, kw_only=True, init=False, unsafe_hash=True)
class Binding:
    """One contact bound to an AOR, and how to reach it (RFC 3261 §10.3).

    ``contact`` is the URI text as the phone sent it: the B2BUA sends
    requests to exactly that. ``transport``, ``source_host`` and
    ``source_port`` are where the REGISTER really came from (RFC 3581
    ``received``/``rport``), the address to use when the phone sits behind a
    NAT. ``connection_id`` names the stream connection it came over, for
    reusing it (RFC 5626 style); it means nothing after a restart.
    ``expires_at`` and ``updated_at`` are absolute times on the clock the
    service passes in as ``now``.

    ``reachable_as_given`` is the registrar's verdict (`pbx.core.registrar`)
    that requests may go to the contact's own host, port and transport
    rather than back where the REGISTER came from: a third-party
    registration (RFC 3261 §10.2) of another socket on the registering
    host. False, the flow, is what a phone behind NAT or on a stream needs
    and what rows stored before the verdict existed mean. `target` turns
    the binding into the peer to send to.

    The transport and User-Agent, a handful of values shared by thousands of
    bindings, are interned on construction. AORs and source hosts are not:
    most are unique, and an entry in the interning table costs about as much
    as the string it would save (measured).
    """

    aor: Final[str]
    contact: Final[str]
    expires_at: Final[float]
    q: Final[float | None]
    call_id: Final[str]
    cseq: Final[int]
    transport: Final[str]
    source_host: Final[str]
    source_port: Final[int]
    connection_id: Final[int | None]
    instance_id: Final[str | None]
    reg_id: Final[int | None]
    user_agent: Final[str | None]
    updated_at: Final[float]
    reachable_as_given: Final[bool]

    # Written out rather than generated (init=False): compiled (pbx.compiled),
    # a dataclass's generated __init__ stays interpreted Python, 20 times
    # the cost of this one; one is made for every REGISTER. Immutable by
    # type (Final fields, held by mypy) rather than frozen: a frozen class
    # is written field by field through object.__setattr__, a generic call
    # each; hashed and compared by value all the same (unsafe_hash).
    def __init__(
        self, *, aor: str, contact: str, expires_at: float, q: float | None = None,
        call_id: str, cseq: int, transport: str, source_host: str, source_port: int,
        connection_id: int | None = None, instance_id: str | None = None,
        reg_id: int | None = None, user_agent: str | None = None, updated_at: float,
        reachable_as_given: bool = False,
    ) -> None:
        canonical = _CANONICAL_TRANSPORT.get(transport)
        if canonical is None:
            canonical = _CANONICAL_TRANSPORT.get(transport.lower())
            if canonical is None:
                raise ValueError(f"unknown transport {transport!r} for a binding")
        if q is not None and not 0.0 <= q <= 1.0:
            # RFC 3261 §25.1: qvalue = ( "0" [ "." 0*3DIGIT ] ) / ( "1" [ "." 0*3("0") ] )
            raise ValueError(f"q-value {q!r} outside 0..1")
        self.aor = aor
        self.contact = contact
        self.expires_at = expires_at
        self.q = q
        self.call_id = call_id
        self.cseq = cseq
        self.transport = canonical
        self.source_host = source_host
        self.source_port = source_port
        self.connection_id = connection_id
        self.instance_id = instance_id
        self.reg_id = reg_id
        self.user_agent = None if user_agent is None else sys.intern(user_agent)
        self.updated_at = updated_at
        self.reachable_as_given = reachable_as_given

    def target(self) -> Peer:
        """Where requests to this binding go: the contact as given, or the flow.

        The contact is parsed here, at call set-up, rather than kept parsed
        (see the module's notes on memory); it parsed when it was
        registered, so the flow is only a fallback that cannot be reached.
        """
        flow = Peer(self.transport, self.source_host, self.source_port, self.connection_id)
        if not self.reachable_as_given:
            return flow
        uri = _parse_or_none(self.contact)
        if not isinstance(uri, SipUri):
            return flow
        transport = uri.transport or ("tls" if uri.scheme == "sips" else "udp")
        transport = _CANONICAL_TRANSPORT.get(transport, "")
        if not transport or transport in ("ws", "wss"):
            return flow
        port = uri.port or (5061 if transport == "tls" else 5060)
        host = uri.host[1:-1] if uri.host.startswith("[") else uri.host
        return Peer(transport, host, port)


class UpdateStatus(enum.Enum):
    """How a registration change ended; the registrar picks the response code."""

    OK = enum.auto()
    OUT_OF_ORDER = enum.auto()
    """Same Call-ID as a binding with an equal or higher CSeq (RFC 3261 §10.3 step 7):
    a retransmitted or reordered REGISTER. Nothing was changed."""
    TOO_MANY_CONTACTS = enum.auto()
    """The AOR would hold more than ``max_contacts_per_aor`` bindings."""
    TABLE_FULL = enum.auto()
    """The service would hold more than ``max_bindings``: answer 503 with Retry-After."""


@dataclass(frozen=True, slots=True, kw_only=True, init=False)
class UpdateResult:
    """What a change did, for the registrar to answer with and the store to write.

    A (aor, contact) key in ``removed`` never reappears in ``added`` or
    ``refreshed``, so the store may apply the three in any order. A binding
    replaced by a URI-equal contact spelt differently is in ``removed`` (its
    row's key is gone) while its successor is in ``refreshed``.
    """

    status: UpdateStatus
    added: tuple[Binding, ...] = ()
    refreshed: tuple[Binding, ...] = ()
    removed: tuple[Binding, ...] = ()

    def __init__(self, *, status: UpdateStatus, added: tuple[Binding, ...] = (),
                 refreshed: tuple[Binding, ...] = (), removed: tuple[Binding, ...] = ()
                 ) -> None:  # written out: see Binding
        object.__setattr__(self, "status", status)
        object.__setattr__(self, "added", added)
        object.__setattr__(self, "refreshed", refreshed)
        object.__setattr__(self, "removed", removed)

    @property
    def ok(self) -> bool:
        return self.status is UpdateStatus.OK


class BindingRecorder(Protocol):
    """Where binding changes go to be persisted: `pbx.core.pending_bindings.PendingBindings`."""

    def record_update(self, binding: Binding) -> None: ...

    def record_removal(self, aor: str, contact: str) -> None: ...


def _parse_or_none(text: str) -> Uri | None:
    """A contact we cannot parse can still be matched by its exact text."""
    try:
        return parse_uri(text)
    except SipParseError:
        return None


def _find(bindings: Sequence[Binding], contact: str) -> int:
    """Index of the binding whose contact URI equals ``contact`` (RFC 3261 §19.1.4), or -1."""
    for index, binding in enumerate(bindings):
        if binding.contact == contact:
            return index
    if not bindings:
        return -1
    wanted = _parse_or_none(contact)
    if wanted is None:
        return -1
    for index, binding in enumerate(bindings):
        if _parse_or_none(binding.contact) == wanted:
            return index
    return -1


def _rank(binding: Binding) -> tuple[float, float]:
    q = DEFAULT_Q if binding.q is None else binding.q
    return (-q, -binding.updated_at)


class LocationService:
    """The registrar's table of bindings, bounded in total and per AOR.

    Authoritative while the process runs; `load` seeds it from the store at
    start-up. The bounds exist so that a flood of REGISTERs, even
    authenticated ones, costs a refusal rather than memory.
    """

    def __init__(
        self,
        max_bindings: int = DEFAULT_MAX_BINDINGS,
        max_contacts_per_aor: int = DEFAULT_MAX_CONTACTS_PER_AOR,
    ) -> None:
        if max_bindings < 1 or max_contacts_per_aor < 1:
            raise ValueError("location service bounds must be at least 1")
        self.max_bindings = max_bindings
        self.max_contacts_per_aor = max_contacts_per_aor
        # A Binding, or a tuple of two or more: see the module's notes.
        self._by_aor: dict[str, Binding | tuple[Binding, ...]] = {}
        self._count = 0
        self._wheel: dict[int, list[Binding]] = {}
        self._seconds: list[int] = []  # heap of the wheel's keys
        self._wheel_entries = 0
        # connection id -> the AOR using it, or a tuple of AORs (one entry per
        # binding) in the rare case of several bindings on one connection.
        self._by_connection: dict[int, str | tuple[str, ...]] = {}

    # -- queries -------------------------------------------------------------

    def __len__(self) -> int:
        """Bindings held, counting expired ones that `expire` has not collected yet."""
        return self._count

    def aors(self) -> list[str]:
        """AORs holding at least one binding (a copy: safe to change the service meanwhile)."""
        return list(self._by_aor)

    def bindings(self, aor: str, now: float) -> list[Binding]:
        """The AOR's unexpired bindings, the ones to try first first.

        Highest q first (a proxy tries targets in q order, RFC 3261 §16.6); among equal
        q, the most recently registered first, as it is the likeliest to be
        reachable.
        """
        held = self._held(aor)
        if not held:
            return []
        live = [binding for binding in held if binding.expires_at > now]
        live.sort(key=_rank)
        return live

    def bindings_by_connection(self, connection_id: int) -> list[Binding]:
        """Bindings that arrived over a stream connection, expired or not.

        For the transport to learn, when a connection closes, which phones
        it can no longer reach that way. They stay registered: the phone
        reconnects and refreshes, or the binding expires.
        """
        entry = self._by_connection.get(connection_id)
        if entry is None:
            return []
        aors = (entry,) if isinstance(entry, str) else dict.fromkeys(entry)
        return [
            binding
            for aor in aors
            for binding in self._held(aor)
            if binding.connection_id == connection_id
        ]

    def next_deadline(self) -> float | None:
        """When to call `expire` next: possibly early (a stale entry), never late."""
        return float(self._seconds[0]) if self._seconds else None

    # -- changes -------------------------------------------------------------

    def update(self, binding: Binding, now: float) -> UpdateResult:
        """Apply one Contact of a REGISTER (RFC 3261 §10.3 step 7).

        ``binding.expires_at <= now`` (an expires of 0) asks for removal.
        """
        if binding.aor in self._by_aor:
            return self.update_all((binding,), now)
        # The first binding of an AOR, as every phone's first REGISTER after
        # a restart is: nothing to match or order against.
        if binding.expires_at <= now:
            return _NOTHING_CHANGED
        if self._count >= self.max_bindings:
            return _TABLE_FULL
        self._by_aor[binding.aor] = binding
        self._attach(binding)
        self._compact_wheel_if_stale()
        return UpdateResult(status=UpdateStatus.OK, added=(binding,))

    def update_all(self, bindings: Sequence[Binding], now: float) -> UpdateResult:
        """Apply every Contact of one REGISTER, all or nothing.

        Step 7 says the whole request fails if one contact fails its CSeq
        check, so all contacts are checked against a working copy before any
        is applied. All ``bindings`` must share one AOR.
        """
        if not bindings:
            return _NOTHING_CHANGED
        aor = bindings[0].aor
        for binding in bindings:
            if binding.aor != aor:
                raise ValueError("one REGISTER updates one address-of-record")
        held = self._held(aor)
        # working[i] is the binding in slot i; original[i] what the slot held
        # before this request (None for a contact this request adds).
        working: list[Binding] = []
        original: list[Binding | None] = []
        gone: list[Binding] = []  # held bindings this request ends
        for binding in held:
            if binding.expires_at > now:
                working.append(binding)
                original.append(binding)
            else:
                gone.append(binding)
        live_count = len(working)
        for new in bindings:
            index = _find(working, new.contact)
            if index < 0:
                if new.expires_at > now:
                    working.append(new)
                    original.append(None)
                continue
            old = working[index]
            # Only bindings from earlier requests are ordered against this
            # one: a contact listed twice in one REGISTER shares its CSeq.
            from_earlier_request = old is original[index]
            if from_earlier_request:
                if old.call_id == new.call_id and new.cseq <= old.cseq:
                    return _OUT_OF_ORDER
                gone.append(old)
            if new.expires_at > now:
                working[index] = new
            else:
                del working[index]
                del original[index]
        if len(working) > self.max_contacts_per_aor and len(working) > live_count:
            return _TOO_MANY_CONTACTS
        growth = len(working) - len(held)
        if growth > 0 and self._count + growth > self.max_bindings:
            return _TABLE_FULL

        for binding in gone:
            self._detach(binding)
        added: list[Binding] = []
        refreshed: list[Binding] = []
        for index, binding in enumerate(working):  # zip() is a generic call, compiled
            before = original[index]
            if binding is not before:
                self._attach(binding)
                (added if before is None else refreshed).append(binding)
        if working:
            self._by_aor[aor] = _packed(working)
        else:
            self._by_aor.pop(aor, None)
        self._compact_wheel_if_stale()
        # A binding whose contact text lives on in another is upserted, not deleted.
        removed = [
            binding for binding in gone
            if not any(kept.contact == binding.contact for kept in working)
        ]
        return UpdateResult(
            status=UpdateStatus.OK,
            added=tuple(added),
            refreshed=tuple(refreshed),
            removed=tuple(removed),
        )

    def remove_all(self, aor: str, call_id: str, cseq: int, now: float) -> UpdateResult:
        """``Contact: *`` with ``Expires: 0`` (RFC 3261 §10.3 step 6).

        The same Call-ID/CSeq ordering check as `update` applies to every
        unexpired binding: a stale retransmission must not unregister a
        phone that has registered again since.
        """
        held = self._held(aor)
        if not held:
            return _NOTHING_CHANGED
        for binding in held:
            if binding.expires_at > now and binding.call_id == call_id and cseq <= binding.cseq:
                return _OUT_OF_ORDER
        del self._by_aor[aor]
        for binding in held:
            self._detach(binding)
        return UpdateResult(status=UpdateStatus.OK, removed=held)

    def remove(self, aor: str, contact: str) -> Binding | None:
        """Remove one binding outright (an administrator's action): no ordering check."""
        held = self._held(aor)
        if not held:
            return None
        index = _find(held, contact)
        if index < 0:
            return None
        binding = held[index]
        self._set_aor(aor, held[:index] + held[index + 1 :])
        self._detach(binding)
        return binding

    def remove_aor(self, aor: str) -> list[Binding]:
        """Forget an AOR entirely, e.g. when its user is deleted from the config."""
        held = _as_tuple(self._by_aor.pop(aor, None))
        for binding in held:
            self._detach(binding)
        return list(held)

    def expire(self, now: float, *, limit: int | None = None) -> list[Binding]:
        """Remove and return bindings whose ``expires_at`` is at or before ``now``.

        O(log n) per entry. ``limit`` caps the work of one call so that a
        mass expiry (every phone registered in the same second before a
        restart) does not stall the reactor; `next_deadline` then says to
        come back at once.
        """
        expired: list[Binding] = []
        seconds, wheel = self._seconds, self._wheel
        while seconds and seconds[0] <= now and (limit is None or len(expired) < limit):
            second = seconds[0]
            bucket = wheel[second]
            waiting: list[Binding] = []  # due later within this second, or over the limit
            for index, binding in enumerate(bucket):
                if limit is not None and len(expired) >= limit:
                    waiting.extend(bucket[index:])
                    break
                if not self._is_held(binding):
                    continue  # refreshed or removed since: a stale entry
                if binding.expires_at <= now:
                    self._drop(binding)
                    expired.append(binding)
                else:
                    waiting.append(binding)
            self._wheel_entries -= len(bucket) - len(waiting)
            if waiting:
                wheel[second] = waiting
                break  # the rest of this second is not due yet
            del wheel[second]
            heapq.heappop(seconds)
        return expired

    def load(self, bindings: Iterable[Binding], now: float) -> list[Binding]:
        """Seed the table at start-up from what the store kept.

        Returns what was not loaded, for the caller to delete from the
        store: bindings already expired, older duplicates of a contact, and
        any beyond the bounds (the least recently updated go first).
        Connection ids are cleared, since they named connections of the
        process that wrote them.
        """
        dropped: list[Binding] = []
        live: list[Binding] = []
        for binding in bindings:
            if binding.expires_at <= now:
                dropped.append(binding)
            else:
                live.append(binding)
        live.sort(key=lambda binding: binding.updated_at, reverse=True)
        for binding in live:
            held = self._held(binding.aor)
            if (
                _find(held, binding.contact) >= 0
                or len(held) >= self.max_contacts_per_aor
                or self._count >= self.max_bindings
            ):
                dropped.append(binding)
                continue
            if binding.connection_id is not None:
                binding = replace(binding, connection_id=None)
            self._by_aor[binding.aor] = _packed((*held, binding))
            self._attach(binding)
        self._compact_wheel_if_stale()
        return dropped

    # -- bookkeeping ---------------------------------------------------------

    def _held(self, aor: str) -> tuple[Binding, ...]:
        """The AOR's bindings as a tuple (empty if none)."""
        return _as_tuple(self._by_aor.get(aor))

    def _is_held(self, binding: Binding) -> bool:
        """Whether this very object is one of its AOR's bindings (not an equal one)."""
        entry = self._by_aor.get(binding.aor)
        if entry is binding:
            return True
        return type(entry) is tuple and any(held is binding for held in entry)

    def _drop(self, binding: Binding) -> None:
        """Take a held binding out of its AOR and the indexes."""
        held = self._held(binding.aor)
        self._set_aor(binding.aor, tuple(b for b in held if b is not binding))
        self._detach(binding)

    def _set_aor(self, aor: str, bindings: tuple[Binding, ...]) -> None:
        if bindings:
            self._by_aor[aor] = _packed(bindings)
        else:
            del self._by_aor[aor]

    def _file(self, binding: Binding) -> None:
        """File the binding in the wheel under the second its expiry falls in."""
        second = math.floor(binding.expires_at)
        bucket = self._wheel.get(second)
        if bucket is None:
            self._wheel[second] = [binding]
            heapq.heappush(self._seconds, second)
        else:
            bucket.append(binding)
        self._wheel_entries += 1

    def _attach(self, binding: Binding) -> None:
        self._count += 1
        self._file(binding)
        connection_id = binding.connection_id
        if connection_id is not None:
            entry = self._by_connection.get(connection_id)
            if entry is None:
                self._by_connection[connection_id] = binding.aor
            elif isinstance(entry, str):
                self._by_connection[connection_id] = (entry, binding.aor)
            else:
                self._by_connection[connection_id] = (*entry, binding.aor)

    def _detach(self, binding: Binding) -> None:
        self._count -= 1
        connection_id = binding.connection_id
        if connection_id is None:
            return
        entry = self._by_connection.get(connection_id)
        if entry is None or isinstance(entry, str):
            self._by_connection.pop(connection_id, None)
            return
        rest = list(entry)
        rest.remove(binding.aor)
        self._by_connection[connection_id] = rest[0] if len(rest) == 1 else tuple(rest)

    def _compact_wheel_if_stale(self) -> None:
        """Drop stale entries once they outnumber live ones: O(n), paid once per n refreshes.

        Called after every change that files an entry, once ``_by_aor`` is
        consistent again (the rebuild reads it), so the wheel never holds
        more than twice the live bindings plus the slack, whatever the mix
        of changes.
        """
        if self._wheel_entries <= 2 * self._count + _COMPACT_SLACK:
            return
        self._wheel = {}
        self._seconds = []
        self._wheel_entries = 0
        for entry in self._by_aor.values():
            for binding in _as_tuple(entry):
                self._file(binding)


def _as_tuple(entry: Binding | tuple[Binding, ...] | None) -> tuple[Binding, ...]:
    """An entry of ``_by_aor`` (or its absence) as a tuple of bindings."""
    if entry is None:
        return ()
    if type(entry) is tuple:
        return entry
    return (entry,)  # type: ignore[return-value]  # a lone Binding


def _packed(bindings: Sequence[Binding]) -> Binding | tuple[Binding, ...]:
    """How ``_by_aor`` keeps one AOR's bindings: the binding itself when alone."""
    return bindings[0] if len(bindings) == 1 else tuple(bindings)


_NOTHING_CHANGED: Final = UpdateResult(status=UpdateStatus.OK)
_OUT_OF_ORDER: Final = UpdateResult(status=UpdateStatus.OUT_OF_ORDER)
_TOO_MANY_CONTACTS: Final = UpdateResult(status=UpdateStatus.TOO_MANY_CONTACTS)
_TABLE_FULL: Final = UpdateResult(status=UpdateStatus.TABLE_FULL)


__all__ = [
    "DEFAULT_MAX_BINDINGS",
    "DEFAULT_MAX_CONTACTS_PER_AOR",
    "DEFAULT_Q",
    "TRANSPORTS",
    "Binding",
    "BindingRecorder",
    "LocationService",
    "UpdateResult",
    "UpdateStatus",
]

"""The per-datagram work of the UDP listener, in a module that is compiled.

`pbx.transport.udp` plugs this into Twisted: its port's ``doRead`` hands the
socket's ``recvfrom`` to `DatagramPath.read_burst`, and the core's sends come
to `DatagramPath.send`. Twisted's own read loop and the protocol methods it
calls run as Python, interpreter work on every datagram (docs/benchmarks.md,
"Why the hot path is written as it is"); here the
loop, the `Peer` cache and the held answers run compiled (a registrar reads
and writes four datagrams a registration). Nothing here imports the reactor:
the socket's methods and what to do with an error come in as callables.
"""

from __future__ import annotations

import errno
from collections.abc import Callable
from typing import Any

from pbx.sip.peer import Peer
from pbx.transport.sink import MessageSink

SHORTEST_MESSAGE = 16
"""Keep-alives that are not SIP (a bare CRLF, a few NULs: phones hold their NAT
binding open with them) are shorter than this; nothing shorter is a message."""

PEER_CACHE_SIZE = 20_000
"""Addresses whose `Peer` is kept for reuse: every phone of a big office, and then some."""

MAX_HELD_SENDS = 32
"""Datagrams held back during one read burst before they go out anyway.

Bounds the delay holding adds: at the work a message costs, the first
answer of a full batch waits far less than T1, 500 ms (docs/benchmarks.md,
"Why the hot path is written as it is").
"""

_READ_OVER = frozenset({errno.EAGAIN, errno.EWOULDBLOCK, errno.EINTR, errno.ECONNREFUSED})
"""recvfrom errors that only mean "nothing more to read now" (as Twisted's UDP port has them)."""


class DatagramPath:
    """Reads datagrams into the core and sends its answers, holding them during a burst.

    Why hold: a datagram sent to a program that sleeps waiting for it costs
    the sender the wake-up (an inter-processor interrupt, many times what a
    send to a receiver already awake costs: docs/benchmarks.md, "Why the hot
    path is written as it is"). Answering a burst of requests back to back
    wakes each peer once instead of once per answer, so the busier the PBX,
    the less each answer costs it. Nothing is held when a single datagram arrives: a burst of one
    ends with its own answer.
    """

    def __init__(
        self,
        sink: MessageSink,
        *,
        on_error: Callable[[], None],
        slow_send: Callable[[bytes, str, int], None],
        is_our_family: Callable[[str], bool],
    ) -> None:
        self.sink = sink
        self.on_error = on_error
        """Called inside the except block when the core raises on a datagram (logs it)."""
        self.slow_send = slow_send
        """Sends to an address not known to be one of our family (Twisted's checks)."""
        self.is_our_family = is_our_family
        self.sendto: Callable[[bytes, tuple[str, int]], Any] | None = None
        """The socket's sendto, once listening."""
        self._peers: dict[tuple[str, int], Peer] = {}
        self._sendable: set[str] = set()
        # Datagrams held while a read burst is handled; None outside one.
        self._held: list[tuple[bytes, tuple[str, int]]] | None = None

    def read_burst(self, recvfrom: Callable[[int], tuple[bytes, Any]], max_packet: int,
                   budget: int) -> None:
        """Read and deliver what is waiting, up to ``budget`` bytes; then send what was held.

        Errors of the core on one datagram are reported (`on_error`) and the
        burst goes on, as in Twisted's loop; a socket error other than "no
        more now" propagates to the reactor, after the held answers went out.
        """
        self.begin_burst()
        try:
            read = 0
            while read < budget:
                try:
                    data, address = recvfrom(max_packet)
                except OSError as error:
                    if error.errno in _READ_OVER:
                        return
                    raise
                read += len(data)
                if len(data) < SHORTEST_MESSAGE:
                    continue
                self.deliver(data, address[0], address[1])
        finally:
            self.end_burst()

    def deliver(self, data: bytes, host: str, port: int) -> None:
        """One datagram to the core, from the cached `Peer` of its source address."""
        key = (host, port)
        peer = self._peers.get(key)
        if peer is None:
            if len(self._peers) >= PEER_CACHE_SIZE:
                self._peers.clear()
            peer = Peer("udp", host, port)
            self._peers[key] = peer
        try:
            self.sink.receive_data(data, peer, datagram=True)
        except Exception:
            self.on_error()

    def send(self, data: bytes, host: str, port: int) -> None:
        """Send now, or at the end of the read burst under way."""
        sendto = self.sendto
        if sendto is None or host not in self._sendable:
            if sendto is None or not self.is_our_family(host):
                self.slow_send(data, host, port)  # a host name, a fake transport
                return
            if len(self._sendable) >= PEER_CACHE_SIZE:
                self._sendable.clear()
            self._sendable.add(host)
        held = self._held
        if held is not None:
            held.append((data, (host, port)))
            if len(held) >= MAX_HELD_SENDS:
                self._held = []
                self._send_held(held)
            return
        try:  # noqa: SIM105 (compiled, a `with suppress` is a generic context manager)
            sendto(data, (host, port))
        except OSError:
            # ICMP errors from an earlier send surface here on Linux, and a
            # full socket buffer drops the datagram: the transaction's timers
            # deal with both, as with any loss on the way.
            pass

    def begin_burst(self) -> None:
        """Hold sends until `end_burst` (for a read loop that is not `read_burst`)."""
        self._held = []

    def end_burst(self) -> None:
        held = self._held
        self._held = None
        if held:
            self._send_held(held)

    def _send_held(self, held: list[tuple[bytes, tuple[str, int]]]) -> None:
        sendto = self.sendto
        if sendto is None:
            return
        for data, address in held:
            try:  # noqa: SIM105 (as in `send`)
                sendto(data, address)
            except OSError:
                pass  # as in `send`

"""Whole exchanges between a client layer and a server layer over a misbehaving link.

[h11 ``ConnectionPair``, aioquic ``client_and_server``]: a discrete-event
simulation with ``now`` set by hand, a link that drops, duplicates and
reorders datagrams (seeded, so every run is the same), and scripted TUs.
Both sides must end with the events a user would expect.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field

import pytest

from pbx.sip.events import (
    AckReceived,
    Outgoing,
    RequestReceived,
    ResponseReceived,
    TransactionEvent,
)
from pbx.sip.message import Request, Response, parse_message
from pbx.sip.transaction import TransactionLayer, new_branch
from tests.unit.transaction_helpers import UAC, UAS, S, make_ack, make_request, respond_to

# ----------------------------------------------------------- pair harness


@dataclass(order=True)
class Datagram:
    arrival: float
    seq: int
    data: bytes = field(compare=False)
    to_server: bool = field(compare=False)


class Link:
    """A datagram network between two layers that drops, duplicates and reorders."""

    def __init__(self, rng: random.Random, *, loss: float = 0.0, duplicate: float = 0.0,
                 jitter_s: float = 0.0, delay_s: float = 0.01) -> None:
        self.rng, self.loss, self.duplicate = rng, loss, duplicate
        self.jitter_s, self.delay_s = jitter_s, delay_s
        self.in_flight: list[Datagram] = []
        self.seq = 0
        self.delivered = 0

    def send(self, outgoing: list[Outgoing[str]], now: float, to_server: bool) -> None:
        for out in outgoing:
            copies = 2 if self.rng.random() < self.duplicate else 1
            for _ in range(copies):
                if self.rng.random() < self.loss:
                    continue
                self.seq += 1
                arrival = now + self.delay_s + self.rng.random() * self.jitter_s
                self.in_flight.append(Datagram(arrival, self.seq, out.data, to_server))

    def next_arrival(self) -> float | None:
        return min(d.arrival for d in self.in_flight) if self.in_flight else None

    def due(self, now: float) -> list[Datagram]:
        ready = sorted(d for d in self.in_flight if d.arrival <= now)
        self.in_flight = [d for d in self.in_flight if d.arrival > now]
        self.delivered += len(ready)
        return ready


class Pair:
    """A client layer and a server layer over a `Link`, each with a scripted TU."""

    def __init__(
        self,
        link: Link,
        server_tu: Callable[[Pair, RequestReceived[str]], None],
        client_tu: Callable[[Pair, TransactionEvent[str]], None] | None = None,
    ) -> None:
        self.link = link
        self.client_tu = client_tu
        self.client: TransactionLayer[str] = TransactionLayer()
        self.server: TransactionLayer[str] = TransactionLayer()
        self.server_tu = server_tu
        self.now = 0.0
        self.client_events: list[TransactionEvent[str]] = []
        self.server_events: list[TransactionEvent[str]] = []
        self.tu_actions: list[tuple[float, Callable[[], None]]] = []

    def later(self, delay_s: float, action: Callable[[], None]) -> None:
        self.tu_actions.append((self.now + delay_s, action))

    def flush(self) -> None:
        while True:
            self.link.send(self.client.take_outgoing(), self.now, to_server=True)
            self.link.send(self.server.take_outgoing(), self.now, to_server=False)
            moved = False
            while (event := self.client.next_event()) is not None:
                self.client_events.append(event)
                if self.client_tu is not None:
                    self.client_tu(self, event)
                moved = True
            while (event := self.server.next_event()) is not None:
                self.server_events.append(event)
                if isinstance(event, RequestReceived):
                    self.server_tu(self, event)
                moved = True
            if not moved:
                return

    def run(self, until: float = 120.0) -> None:
        self.flush()
        while True:
            candidates = [t for t in (self.link.next_arrival(), self.client.next_deadline(),
                                      self.server.next_deadline()) if t is not None]
            candidates += [t for t, _ in self.tu_actions]
            if not candidates:
                return
            self.now = min(candidates)
            assert self.now <= until, "the exchange never settled"
            for datagram in self.link.due(self.now):
                message = parse_message(datagram.data)
                if datagram.to_server:
                    assert isinstance(message, Request)
                    self.server.receive_request(message, UAC, self.now)
                else:
                    assert isinstance(message, Response)
                    self.client.receive_response(message, UAS, self.now)
                self.flush()
            for when, action in [a for a in self.tu_actions if a[0] <= self.now]:
                self.tu_actions.remove((when, action))
                action()
                self.flush()
            self.client.handle_timer(self.now)
            self.server.handle_timer(self.now)
            self.flush()


def busy_after_ringing(pair: Pair, event: RequestReceived[str]) -> None:
    """A callee that rings at once and declines a second later."""
    transaction, request = event.transaction, event.request
    pair.server.respond(transaction, respond_to(request, 180), pair.now)
    pair.later(1.0, lambda: pair.server.respond(
        transaction, respond_to(request, 486), pair.now))


def answer_200(pair: Pair, event: RequestReceived[str]) -> None:
    pair.server.respond(event.transaction, respond_to(event.request, 200), pair.now)


def kinds(events: list[TransactionEvent[str]]) -> list[str]:
    names = []
    for event in events:
        if isinstance(event, ResponseReceived):
            names.append(str(event.response.status))
        else:
            names.append(type(event).__name__)
    return names


LOSSY = [pytest.param(seed, id=f"seed{seed}") for seed in range(12)]


@pytest.mark.parametrize("seed", LOSSY)
def test_pair_invite_ringing_busy_ack_over_a_lossy_link(seed: int) -> None:
    pair = Pair(Link(random.Random(seed), loss=0.3, duplicate=0.1, jitter_s=0.05),
                busy_after_ringing)
    transaction = pair.client.send_request(make_request(), UAS, 0.0)
    pair.run()
    client, server = kinds(pair.client_events), kinds(pair.server_events)
    # The caller sees the ringing (unless every 180 was lost) and exactly one 486.
    assert set(client[:-2]) <= {"180"}
    assert client[-2:] == ["486", "TransactionTerminated"]
    assert transaction.state is S.TERMINATED
    # The callee saw one INVITE, however many copies arrived, and got its ACK.
    assert server == ["RequestReceived", "TransactionTerminated"]
    assert len(pair.client) == len(pair.server) == 0
    assert pair.client.next_deadline() is None and pair.server.next_deadline() is None


@pytest.mark.parametrize("seed", LOSSY)
def test_pair_non_invite_over_a_lossy_link(seed: int) -> None:
    pair = Pair(Link(random.Random(seed), loss=0.3, duplicate=0.1, jitter_s=0.05), answer_200)
    transaction = pair.client.send_request(make_request("OPTIONS"), UAS, 0.0)
    pair.run()
    assert kinds(pair.client_events) == ["200", "TransactionTerminated"]
    assert kinds(pair.server_events) == ["RequestReceived", "TransactionTerminated"]
    assert transaction.state is S.TERMINATED
    assert len(pair.client) == len(pair.server) == 0


def test_pair_invite_2xx_and_the_tu_s_ack() -> None:
    """The 2xx goes up on the client, whose TU ACKs it with a branch of its own."""
    invite = make_request()
    acks: list[Request] = []

    def ack_2xx(pair: Pair, event: TransactionEvent[str]) -> None:
        if isinstance(event, ResponseReceived) and event.response.status == 200:
            ack = make_ack(invite, to_tag=event.response.to_addr.tag, branch=new_branch())
            acks.append(ack)
            pair.client.send_stateless(ack, UAS)

    pair = Pair(Link(random.Random(0)), answer_200, client_tu=ack_2xx)
    pair.client.send_request(invite, UAS, 0.0)
    pair.run()
    assert kinds(pair.client_events) == ["200", "TransactionTerminated"]  # after Timer M
    assert kinds(pair.server_events) == [
        "RequestReceived", "AckReceived", "TransactionTerminated"]  # after Timer L
    (ack_event,) = [e for e in pair.server_events if isinstance(e, AckReceived)]
    assert ack_event.transaction is None and ack_event.source == UAC
    assert [a.to_bytes() for a in acks] == [ack_event.request.to_bytes()]


def test_lossy_link_really_loses_and_duplicates() -> None:
    """The harness itself: a test over a link that never misbehaved would prove little."""
    link = Link(random.Random(1), loss=0.3, duplicate=0.1)
    outgoing = [Outgoing(data=b"x", destination=UAS)] * 1000
    link.send(outgoing, 0.0, to_server=True)
    assert 600 < len(link.in_flight) < 850


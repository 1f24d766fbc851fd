"""Where the PBX sends a call to a registered phone: its contact, or the way it registered.

A phone behind NAT writes an address the PBX cannot reach in its Contact
and Via; it gets its calls through the address its REGISTER came from. A
contact registered for another socket of the registering host (RFC 3261
§10.2) is called at that socket. Real UDP sockets on 127.0.0.1.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pytest_twisted

from tests.service.conftest import PASSWORDS
from tests.service.sipclient import Phone, Softphone


@dataclass
class PhoneBehindNat(Phone):
    """A phone that believes it is at ``believed`` (host:port): its Via and Contact say so."""

    believed: str = ""

    @property
    def sent_by(self) -> str:
        return self.believed

    @property
    def contact_uri(self) -> str:
        return f"sip:{self.user}@{self.believed};transport=udp"


async def phone_behind_nat(pbx: Any, user: str, believed: str) -> Softphone:
    link = await pbx.link("udp")
    phone = PhoneBehindNat(link, user, PASSWORDS[user], believed=believed)
    softphone = Softphone(phone, media_port=41000)
    await softphone.register()
    return softphone


async def answered_by(caller: Softphone, callee: Softphone) -> None:
    """1001 calls the callee, who must get the INVITE and answer it."""
    outgoing = await caller.call(callee.user)
    incoming = await callee.next_call()
    assert (await outgoing.final_response()).status == 200
    await incoming.next_request("ACK")
    assert (await outgoing.bye()).status == 200
    await incoming.next_request("BYE")


@pytest_twisted.ensureDeferred
async def test_a_phone_with_a_private_contact_gets_its_calls_where_it_registered_from(
        pbx_factory: Any) -> None:
    pbx = await pbx_factory()
    caller = await pbx.softphone("1001")
    callee = await phone_behind_nat(pbx, "1002", "192.168.1.20:5060")
    await answered_by(caller, callee)


@pytest_twisted.ensureDeferred
async def test_a_phone_whose_port_a_nat_rewrote_gets_its_calls_where_it_registered_from(
        pbx_factory: Any) -> None:
    """Its own host in the Contact, but the port in its Via is not the one seen here."""
    pbx = await pbx_factory()
    caller = await pbx.softphone("1001")
    unused = await pbx.link("udp")  # a port of this host that is not the phone's
    believed = f"127.0.0.1:{unused.local_port}"
    callee = await phone_behind_nat(pbx, "1002", believed)
    await answered_by(caller, callee)


@pytest_twisted.ensureDeferred
async def test_a_contact_registered_from_another_socket_gets_the_calls(
        pbx_factory: Any) -> None:
    """RFC 3261 §10.2: a helper registers the answering phone's contact for it."""
    pbx = await pbx_factory()
    caller = await pbx.softphone("1001")
    answering = await pbx.softphone("1002", register=False)
    helper = await pbx.phone("1002")
    reply = await helper.register(contacts=[answering.phone.contact_uri], algorithm=None)
    assert reply.status == 200, str(reply)
    await answered_by(caller, answering)

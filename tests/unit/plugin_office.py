"""A whole PBX on a test `Clock` with one plugin, and phones as plain text: no sockets.

What the PBX sends over UDP is caught per phone port; a phone's request is
handed to the endpoint as if it had arrived. Time moves only with
`PluginOffice.advance`, so transaction time-outs (Timer F: 64*T1) and
dialog expiries are exact and instant. Used by test_plugin_services.py.
"""

from __future__ import annotations

import itertools
from pathlib import Path

from twisted.internet.task import Clock

from pbx.config import parse_config
from pbx.dialplan import Plugin
from pbx.service import PbxService
from pbx.sip.digest import Challenge, authorization_for, select_challenge
from pbx.sip.message import Request, Response, parse_message
from pbx.sip.peer import Peer

DOMAIN = "pbx.test"
PASSWORDS = {"1001": "secret-1001", "1002": "secret-1002", "1003": "secret-1003"}
_branches = itertools.count(1)


class PluginOffice:
    """The PBX (its real service, endpoint and core) and phones at 127.0.0.1:port."""

    def __init__(self, tmp_path: Path, plugin: Plugin | None = None) -> None:
        config = parse_config({
            "pbx": {"data_dir": str(tmp_path)},
            "sip": {"domain": DOMAIN, "udp": "127.0.0.1:5060"},
            "registrar": {"digest_algorithms": ["MD5"]},
            "users": {user: {"password": password} for user, password in PASSWORDS.items()},
        }, str(tmp_path / "pbx.toml"))
        self.clock = Clock()
        self.clock.advance(1_000_000)
        self.service = PbxService(config, reactor=self.clock)
        self.sent: list[tuple[bytes, int]] = []
        self._phones: dict[tuple[str, int], OfficePhone] = {}
        self.service.connections.udp_send = lambda data, host, port: self.sent.append(
            (data, port))
        if plugin is not None:
            host = self.service.plugins
            host.plugins.append(plugin)
            host.start_all()
            self.service.endpoint.request_handlers = host.request_handlers

    def advance(self, seconds: float, step: float = 0.5) -> None:
        """Let `seconds` pass, in steps (timers due meanwhile fire in order)."""
        for _ in range(round(seconds / step)):
            self.clock.advance(step)

    def deliver(self, data: bytes, port: int) -> None:
        self.service.endpoint.receive_data(data, Peer("udp", "127.0.0.1", port),
                                           datagram=True)

    def take(self, port: int) -> list[Request | Response]:
        """Everything sent to the phone at `port` since last asked, parsed."""
        self.clock.advance(0)  # what was sent outside an event leaves on the next turn
        mine = [parse_message(data) for data, to in self.sent if to == port]
        self.sent = [(data, to) for data, to in self.sent if to != port]
        return mine

    def requests(self, port: int) -> list[Request]:
        return [m for m in self.take(port) if isinstance(m, Request)]

    def phone(self, user: str, port: int) -> OfficePhone:
        """The phone of `user` at `port` (the same one each time: its CSeq goes on)."""
        phone = self._phones.get((user, port))
        if phone is None:
            phone = self._phones[(user, port)] = OfficePhone(self, user, port)
        return phone


class OfficePhone:
    """A phone of `user` at 127.0.0.1:`port`: builds requests, answers challenges."""

    def __init__(self, office: PluginOffice, user: str, port: int) -> None:
        self.office = office
        self.user = user
        self.port = port
        self.cseq = 0
        self.call_id = f"{user}-{port}@test"

    @property
    def contact(self) -> str:
        return f"<sip:{self.user}@127.0.0.1:{self.port};transport=udp>"

    def text(self, method: str, *, uri: str | None = None, to_user: str | None = None,
             to_tag: str | None = None, call_id: str | None = None,
             headers: tuple[tuple[str, str], ...] = (), body: bytes = b"",
             from_tag: str = "phone-tag", branch: str | None = None,
             cseq: int | None = None) -> bytes:
        if cseq is None:
            self.cseq += 1
            cseq = self.cseq
        to = f"<sip:{to_user or self.user}@{DOMAIN}>" + (f";tag={to_tag}" if to_tag else "")
        lines = [
            f"{method} {uri or f'sip:{to_user or self.user}@{DOMAIN}'} SIP/2.0",
            f"Via: SIP/2.0/UDP 127.0.0.1:{self.port};branch={branch or self.new_branch()};rport",
            "Max-Forwards: 70",
            f"From: <sip:{self.user}@{DOMAIN}>;tag={from_tag}",
            f"To: {to}",
            f"Call-ID: {call_id or self.call_id}",
            f"CSeq: {cseq} {method}",
            f"Contact: {self.contact}",
            *(f"{name}: {value}" for name, value in headers),
            f"Content-Length: {len(body)}",
        ]
        return ("\r\n".join(lines) + "\r\n\r\n").encode() + body

    @staticmethod
    def new_branch() -> str:
        return f"z9hG4bK{next(_branches)}"

    def send(self, method: str, **kwargs: object) -> list[Request | Response]:
        """Send `method`; everything the PBX sent this phone in return."""
        self.office.deliver(self.text(method, **kwargs), self.port)  # type: ignore[arg-type]
        return self.office.take(self.port)

    def send_authenticated(self, method: str, *, to_user: str | None = None,
                           headers: tuple[tuple[str, str], ...] = (), body: bytes = b"",
                           branch: str | None = None) -> list[Request | Response]:
        """Send `method` outside a dialog, answer the challenge, and send it again."""
        header = "Authorization" if method == "REGISTER" else "Proxy-Authorization"
        asked = "www-authenticate" if method == "REGISTER" else "proxy-authenticate"
        uri = f"sip:{DOMAIN}" if method == "REGISTER" else f"sip:{to_user or self.user}@{DOMAIN}"
        first = [m for m in self.send(method, uri=uri, to_user=to_user, headers=headers,
                                      body=body) if isinstance(m, Response)]
        assert first and first[0].status in (401, 407), first
        chosen = select_challenge(Challenge.parse(v) for v in first[0].headers.values(asked))
        assert chosen is not None
        credentials = authorization_for(
            chosen, username=self.user, password=PASSWORDS[self.user], method=method,
            uri=uri, cnonce=f"cn{next(_branches)}")
        return self.send(method, uri=uri, to_user=to_user, body=body, branch=branch,
                         headers=(*headers, (header, credentials.to_header_value())))

    def register(self, expires: int = 600) -> Response:
        (answer,) = [m for m in self.send_authenticated(
            "REGISTER", headers=(("Expires", str(expires)),)) if isinstance(m, Response)]
        return answer

    def answer(self, request: Request, status: int, *, body: bytes = b"") -> None:
        """Answer a request the PBX sent this phone (with our tag, Contact and `body`)."""
        head = "".join(f"{name}: {value}\r\n" for name, value in request.headers
                       if name.lower() in ("via", "from", "call-id", "cseq"))
        to = request.headers.get("to") or ""
        if ";tag=" not in to:
            to += f";tag=ph{self.port}"
        extra = "Content-Type: application/sdp\r\n" if body else ""
        self.office.deliver(
            f"SIP/2.0 {status} Whatever\r\n{head}To: {to}\r\nContact: {self.contact}\r\n"
            f"{extra}Content-Length: {len(body)}\r\n\r\n".encode() + body, self.port)

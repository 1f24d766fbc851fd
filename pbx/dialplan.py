"""The dialplan API: what a routing file and a plugin may use.

A dialplan is a Python file named in the config (``[dialplan] module``). It
imports this module and the standard library only, and either defines
``async def handle_call(call: Call) -> None`` or builds a `Dialplan` whose
routes match the dialed number::

    from pbx.dialplan import Busy, Call, Dialplan, NoAnswer

    dialplan = Dialplan()

    @dialplan.route(pattern=r"1\\d{3}")          # the office's extensions
    async def extension(call: Call) -> None:
        result = await call.dial(call.dialed, timeout_s=20)
        if isinstance(result, (Busy, NoAnswer)):
            await call.dial("1099")              # the reception picks up instead

    @dialplan.route("666")
    async def nope(call: Call) -> None:
        await call.reject(403)

Handlers only ever await the methods of `Call`; they never see Deferreds,
the reactor or SIP messages. ``dial`` returns a `DialResult` (a type per
outcome, for ``isinstance`` or ``match``); a caller who hangs up makes the
pending await raise `CallEnded`. When a handler returns without having
answered or rejected the call, the caller gets the best final response of
everything that was tried, over all its dials (RFC 3261 §16.7: a busy
callee then a reception that did not answer is 486 Busy Here), or 404 if
nothing was. An exception in a handler fails that call with 500 and is
logged with its traceback; the PBX carries on.

A call never rings the caller's own extension: ``dial``, ``forward``, a
ring group and a hunt leave it out, so a forward to reception made while
reception is the one calling rings nobody. A dial left with nobody to ring
returns `Unavailable` (480) at once and changes nothing the caller hears:
a forward after a busy callee still ends in 486 for the caller. A user who
dials their own extension directly gets 480 from that dial, unless the
dialplan does something else first (``if call.dialed == call.caller.user``:
their voicemail, say).

Plugins add actions to `Call` (``await call.voicemail("1001")``) through
`PluginApi.add_call_action`, when they start; nothing registers itself at
import time.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Protocol, TypeAlias

__all__ = [
    "Answered",
    "Busy",
    "Call",
    "CallEnded",
    "Declined",
    "DialResult",
    "Dialplan",
    "Failed",
    "Handler",
    "IncomingRequest",
    "NoAnswer",
    "Party",
    "Plugin",
    "PluginApi",
    "ReferHandler",
    "Referral",
    "Reject",
    "RequestHandler",
    "Unavailable",
    "Users",
]


class CallEnded(Exception):
    """The caller hung up (or the call was ended) while the handler was waiting."""


@dataclass(frozen=True, slots=True)
class Party:
    """Who is calling: the authenticated user, the name they show, their URI."""

    user: str | None
    display_name: str | None
    uri: str


# ----------------------------------------------------------- dial results


@dataclass(frozen=True, slots=True)
class Answered:
    """Someone picked up; the call is now connected to `target`."""

    target: str


@dataclass(frozen=True, slots=True)
class Busy:
    """486 Busy Here or 600 Busy Everywhere."""

    status: int = 486


@dataclass(frozen=True, slots=True)
class NoAnswer:
    """Rang until the timeout (or the phone gave up: 408)."""


@dataclass(frozen=True, slots=True)
class Unavailable:
    """Nobody to ring: not registered, unknown (404), or 480."""

    status: int = 480


@dataclass(frozen=True, slots=True)
class Declined:
    """The callee refused the call: 603 Decline."""

    status: int = 603


@dataclass(frozen=True, slots=True)
class Failed:
    """Any other final response."""

    status: int
    reason: str = ""


DialResult: TypeAlias = Answered | Busy | NoAnswer | Unavailable | Declined | Failed


def result_for(status: int, reason: str = "") -> DialResult:
    """The `DialResult` a final status means for a dialplan."""
    if status in (486, 600):
        return Busy(status)
    if status in (408, 487):
        return NoAnswer()
    if status in (404, 410, 480, 604):
        return Unavailable(status)
    if status == 603:
        return Declined(status)
    return Failed(status, reason)


# ------------------------------------------------------------ the call


class Users(Protocol):
    """The office's users, read-only."""

    def exists(self, extension: str) -> bool: ...

    def name(self, extension: str) -> str | None: ...

    def is_registered(self, extension: str) -> bool: ...


class CallControl(Protocol):
    """What a `Call` drives: the core's side, hidden from handlers."""

    def dial(self, targets: tuple[str, ...], timeout_s: float) -> Awaitable[DialResult]:
        """Ring `targets`; none (the caller's own extension was all there was) is
        `Unavailable` at once: the handler tried, but what the caller gets stays."""

    def reject(self, status: int, reason: str | None) -> None: ...

    def hangup(self) -> None: ...

    @property
    def answered(self) -> bool: ...

    @property
    def ended(self) -> bool: ...


class Call:
    """One incoming call, as a dialplan handler sees it."""

    def __init__(
        self,
        *,
        caller: Party,
        dialed: str,
        request_uri: str,
        headers: Mapping[str, str],
        users: Users,
        control: CallControl,
        actions: Mapping[str, Callable[..., Awaitable[Any]]] | None = None,
    ) -> None:
        self.caller = caller
        self.dialed = dialed
        """What the caller dialed: the user part of the Request-URI ("1002")."""
        self.request_uri = request_uri
        self.headers = headers
        """The INVITE's headers, read-only, names case-insensitive."""
        self.users = users
        self._control = control
        self._actions = dict(actions or {})
        self.outgoing_headers: dict[str, str] = {}
        """Headers to add to the INVITEs the PBX sends for this call."""
        self.on_refer: ReferHandler | None = None
        """Who answers a REFER (a transfer request) that either party sends in this
        call: set it to an ``async def`` that returns the status (or raises
        `Reject`). Left None, a REFER is answered 603 Decline: the PBX does not
        transfer calls by itself (see `Referral`)."""

    @property
    def answered(self) -> bool:
        return self._control.answered

    async def dial(self, *targets: str, timeout_s: float = 30.0,
                   sequential: bool = False) -> DialResult:
        """Ring extensions or SIP URIs; all at once, or one after another.

        Returns when one answers (`Answered`; the caller is then connected)
        or when none did. In sequence, each target rings for ``timeout_s``
        and the first answer stops the hunt.

        The caller's own extension is never rung: it is left out of the
        targets (a ring group or hunt the caller belongs to rings the
        others). With nobody left, the result is `Unavailable` at once and
        what the caller will hear is unchanged (see the module docstring).
        """
        if not targets:
            raise ValueError("dial() needs at least one target")
        ringable = self._without_caller(targets)
        if not sequential or not ringable:
            return await self._dial(ringable, timeout_s)
        result: DialResult = Unavailable()
        for target in ringable:
            result = await self._dial((target,), timeout_s)
            if isinstance(result, Answered):
                break
        return result

    async def forward(self, target: str, *, timeout_s: float = 30.0) -> DialResult:
        """Send the call on to another extension or URI (forward on busy, no answer...).

        A forward to the caller's own extension rings nobody and returns
        `Unavailable`; the caller then hears the outcome of what was tried
        before (busy stays busy).
        """
        return await self._dial(self._without_caller((target,)), timeout_s)

    async def reject(self, status: int = 486, reason: str | None = None) -> None:
        """Refuse the call with a final status (4xx-6xx)."""
        if not 400 <= status < 700:
            raise ValueError(f"reject() needs a 4xx, 5xx or 6xx status, not {status}")
        self._check_not_ended()
        self._control.reject(status, reason)

    async def hangup(self) -> None:
        """End the call, answered or not."""
        self._control.hangup()

    def __getattr__(self, name: str) -> Callable[..., Awaitable[Any]]:
        """Actions plugins added (`PluginApi.add_call_action`): ``await call.voicemail(...)``."""
        actions = self.__dict__.get("_actions", {})
        if name in actions:
            action = actions[name]
            return lambda *args, **kwargs: action(self, *args, **kwargs)
        raise AttributeError(f"Call has no attribute or plugin action {name!r}")

    async def _dial(self, targets: tuple[str, ...], timeout_s: float) -> DialResult:
        self._check_not_ended()
        result = await self._control.dial(targets, timeout_s)
        self._check_not_ended()
        return result

    def _check_not_ended(self) -> None:
        if self._control.ended and not self._control.answered:
            raise CallEnded()

    def _without_caller(self, targets: tuple[str, ...]) -> tuple[str, ...]:
        """`targets` less the caller's own extension: their phone is the one calling."""
        own = self.caller.user
        if own is None:
            return targets
        return tuple(target for target in targets if target != own)


Handler = Callable[[Call], Awaitable[None]]


@dataclass(frozen=True, slots=True)
class _Route:
    exact: str | None
    prefix: str | None
    pattern: re.Pattern[str] | None
    handler: Handler

    def matches(self, dialed: str) -> bool:
        if self.exact is not None:
            return dialed == self.exact
        if self.prefix is not None:
            return dialed.startswith(self.prefix)
        assert self.pattern is not None
        return self.pattern.fullmatch(dialed) is not None


@dataclass(frozen=True, slots=True)
class Referral:
    """A REFER received within a call (RFC 3515): a party asks for a transfer.

    The hook (`Call.on_refer`) answers it with a final status. Transfer is
    not done by the PBX yet: a 202 Accepted commits whoever answers it to
    carrying the transfer out and reporting its progress (RFC 3515 §2.4.4,
    NOTIFY with a message/sipfrag body), which the public API does not offer
    yet; until it does, a hook refuses (``Reject(603)``) or answers after
    doing something else with the call.
    """

    refer_to: str
    """The Refer-To header's value: where the party asks to be transferred."""
    referred_by: str | None
    """The Referred-By header's value (RFC 3892), if there is one."""
    by: str
    """Which party sent it: "caller" or "callee"."""
    headers: Mapping[str, str]
    """The REFER's headers, names lower-case."""


ReferHandler = Callable[[Referral], Awaitable[int]]
"""Returns the status to answer a REFER with, or raises `Reject`."""


class Dialplan:
    """Routes from what was dialed to handlers, tried in the order they were added."""

    def __init__(self) -> None:
        self._routes: list[_Route] = []

    def route(self, exact: str | None = None, *, prefix: str | None = None,
              pattern: str | None = None) -> Callable[[Handler], Handler]:
        """Decorator: ``@dialplan.route("100")``, ``(prefix="9")``, ``(pattern=r"1\\d\\d\\d")``."""
        if sum(x is not None for x in (exact, prefix, pattern)) != 1:
            raise ValueError("give exactly one of exact, prefix or pattern")
        compiled = re.compile(pattern) if pattern is not None else None

        def register(handler: Handler) -> Handler:
            self._routes.append(_Route(exact, prefix, compiled, handler))
            return handler

        return register

    def __iter__(self) -> Iterator[_Route]:
        return iter(self._routes)

    def find(self, dialed: str) -> Handler | None:
        for route in self._routes:
            if route.matches(dialed):
                return route.handler
        return None

    async def handle_call(self, call: Call) -> None:
        handler = self.find(call.dialed)
        if handler is None:
            await call.reject(404, "No route for this number")
            return
        await handler(call)


# ------------------------------------------------------------- plugins


class Reject(Exception):
    """Raised by a plugin's request handler: answer with this status instead."""

    def __init__(self, status: int, reason: str | None = None) -> None:
        super().__init__(f"{status} {reason or ''}".strip())
        self.status = status
        self.reason = reason


@dataclass(frozen=True, slots=True)
class IncomingRequest:
    """A request outside any call (MESSAGE, SUBSCRIBE, PUBLISH...) for a plugin.

    ``sender`` is the authenticated user, or None when the request was not
    authenticated (a plugin that needs it answers ``Reject(403)``).
    """

    method: str
    sender: str | None
    sender_uri: str
    target: str
    """The user part of the Request-URI: "1002"."""
    request_uri: str
    headers: Mapping[str, str]
    body: bytes
    content_type: str | None


RequestHandler = Callable[[IncomingRequest], Awaitable[int]]
"""Returns the status to answer (200, 202...), or raises `Reject`."""


class PluginApi(Protocol):
    """What a plugin gets in ``start``."""

    users: Users

    def add_call_action(self, name: str,
                        action: Callable[..., Awaitable[Any]]) -> None:
        """Make ``await call.<name>(...)`` call ``action(call, ...)`` in every dialplan."""

    def add_request_handler(self, method: str, handler: RequestHandler) -> None:
        """Handle requests of `method` sent outside a call (the PBX then allows it)."""


class Plugin(Protocol):
    """A feature built on this API, listed in the config and started by the PBX."""

    name: str

    async def start(self, api: PluginApi) -> None: ...

    async def stop(self) -> None: ...

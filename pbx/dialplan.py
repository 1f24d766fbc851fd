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

Plugins add actions to `Call` (``await call.voicemail("1001")``) when
they start (`PluginApi.provide_call_action`); nothing registers itself at
import time. Each action a dialplan may call is declared here, on `Call`,
with its signature (`call_action`), so that mypy checks a dialplan's use of
it and ``help(Call)`` lists it; a plugin provides the code behind it.

What a plugin receives in ``start(api)`` (`PluginApi`) is documented in
``docs/plugins.md``.
"""

from __future__ import annotations

import enum
import functools
import re
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import (
    TYPE_CHECKING,
    Any,
    Concatenate,
    Generic,
    ParamSpec,
    Protocol,
    TypeAlias,
    TypeVar,
    overload,
)

if TYPE_CHECKING:
    from pbx.media.seam import MediaFactory

__all__ = [
    "Answered",
    "Busy",
    "Call",
    "CallAction",
    "CallEnded",
    "CallPhase",
    "CallStateChanged",
    "Declined",
    "Delivery",
    "DialResult",
    "DialogHandler",
    "Dialplan",
    "Failed",
    "Handler",
    "IncomingRequest",
    "NoAnswer",
    "Outcome",
    "Party",
    "Plugin",
    "PluginApi",
    "PluginDialog",
    "ReferHandler",
    "Referral",
    "RegistrationChanged",
    "RegistrationState",
    "Reject",
    "Reply",
    "RequestHandler",
    "Unavailable",
    "Users",
    "call_action",
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


_P = ParamSpec("_P")
_R = TypeVar("_R")


class CallAction(Generic[_P, _R]):
    """An action a plugin provides on `Call`, declared here with its signature.

    Declared with `call_action` on a stub method of `Call`, so that
    ``await call.voicemail("1002")`` is checked by mypy against the stub
    (a misspelt name or a wrong argument is an error before the PBX ever
    runs the dialplan) and ``help(Call)`` lists every action with its
    docstring. At run time the attribute looks up the code the plugin
    provided (`PluginApi.provide_call_action`); with no plugin providing
    it, reading the attribute raises `AttributeError` naming the action,
    so ``hasattr(call, "voicemail")`` tells a dialplan whether it can use it.
    """

    def __init__(self, stub: Callable[Concatenate[Call, _P], Awaitable[_R]]) -> None:
        self.name = stub.__name__
        self.__doc__ = stub.__doc__
        self.__wrapped__ = stub

    @overload
    def __get__(self, call: None, owner: type[Call]) -> CallAction[_P, _R]: ...

    @overload
    def __get__(self, call: Call, owner: type[Call]) -> Callable[_P, Awaitable[_R]]: ...

    def __get__(self, call: Call | None, owner: type[Call]
                ) -> CallAction[_P, _R] | Callable[_P, Awaitable[_R]]:
        if call is None:
            return self
        action = call._actions.get(self.name)
        if action is None:
            raise AttributeError(f"no plugin provides the call action {self.name!r} "
                                 "(is the plugin listed under [plugins] in the config?)")
        return functools.partial(action, call)


def call_action(stub: Callable[Concatenate[Call, _P], Awaitable[_R]]) -> CallAction[_P, _R]:
    """Declare a plugin's action on `Call` from a stub method (its body is never run)."""
    return CallAction(stub)


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

    # ------------------------------------------------- plugins' actions
    # Each is provided by the plugin named in its docstring; see `CallAction`.

    @call_action
    async def voicemail(self, mailbox: str) -> None:
        """Answer and record a message for `mailbox` (the voicemail plugin)."""

    @call_action
    async def conference(self, room: str, *, pin: str | None = None) -> None:
        """Join the caller to conference `room` (the conference plugin)."""

    def action(self, name: str) -> Callable[..., Awaitable[object]]:
        """An action a plugin added under a name `Call` does not declare.

        Unchecked by mypy: for a plugin's own actions, before they are
        declared here. `AttributeError` names it when no plugin added it.
        """
        action = self._actions.get(name)
        if action is None:
            raise AttributeError(f"Call has no plugin action {name!r}")
        return functools.partial(action, self)

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
    authenticated (a plugin that needs it answers ``Reject(403)``). In a
    dialog a plugin owns (`PluginDialog`), it is the user who created the
    dialog: the dialog's identifiers are what vouch for the requests in it.
    """

    method: str
    sender: str | None
    sender_uri: str
    target: str
    """The user part of the Request-URI: "1002". In a dialog, the creating request's."""
    request_uri: str
    headers: Mapping[str, str]
    """The first value of each header, names lowercased (compact forms as sent)."""
    body: bytes
    content_type: str | None


@dataclass(frozen=True, slots=True)
class Reply:
    """A plugin's whole answer to a request: status, headers and body.

    ``headers`` are added as given (Expires, ETag, Allow-Events...);
    ``content_type`` goes with a non-empty ``body``. A 2xx to a request that
    created a dialog (`PluginApi.accept_dialog`), or to a SUBSCRIBE inside
    one, gets the PBX's Contact unless ``headers`` carry one.
    """

    status: int
    reason: str | None = None
    headers: Sequence[tuple[str, str]] = ()
    body: bytes = b""
    content_type: str | None = None

    def __post_init__(self) -> None:
        if not 200 <= self.status < 700:
            raise ValueError(f"a plugin answers with a final status (200-699), not {self.status}")


RequestHandler = Callable[[IncomingRequest], Awaitable[int | Reply]]
"""Returns the status to answer (200, 202...) or a whole `Reply`, or raises `Reject`."""


@dataclass(frozen=True, slots=True)
class Outcome:
    """How a request a plugin sent ended: the final status of its answer.

    No answer at all is 408 (the transaction timed out) or 503 (it could
    not be sent: a transport error, or the PBX's transaction table full),
    as RFC 3261 §8.1.3.1 has a UA report them.
    """

    status: int
    reason: str

    @property
    def ok(self) -> bool:
        return 200 <= self.status < 300


@dataclass(frozen=True, slots=True)
class Delivery:
    """The outcome of a request sent to one registered phone (`PluginApi.send_to_user`)."""

    contact: str
    """The binding's contact: which of the user's phones this was."""
    status: int
    reason: str

    @property
    def ok(self) -> bool:
        return 200 <= self.status < 300


class PluginDialog(Protocol):
    """A dialog a plugin owns (RFC 3261 §12): a subscription, say (RFC 6665).

    Made by `PluginApi.accept_dialog` while the plugin answers the request
    that creates it; it exists once that answer is a 2xx. Requests the
    phone sends in it reach the plugin's `DialogHandler`; the plugin sends
    requests in it with `request`. It ends, exactly once, when the plugin
    ends it, when a request sent in it is answered 481 or 408 or is never
    answered (§12.2.1.2), when its time runs out (`expire_after`), or when
    the PBX stops; the handler's ``on_ended`` is then called and the PBX
    forgets it. The PBX holds a bounded number of them (the
    ``max_dialogs`` of `pbx.core.plugin_dialogs`): past it, accepting one
    answers the request 503.
    """

    @property
    def user(self) -> str | None:
        """The authenticated user whose request created the dialog."""

    @property
    def remote_uri(self) -> str:
        """The other side's URI (the From of the request that created it)."""

    @property
    def target(self) -> str:
        """The user part of the creating request's URI: whom it is about ("1002")."""

    @property
    def ended(self) -> bool: ...

    def request(self, method: str, *, headers: Sequence[tuple[str, str]] = (),
                body: bytes = b"", content_type: str | None = None) -> Awaitable[Outcome]:
        """Send `method` (NOTIFY...) in the dialog; its `Outcome` once answered.

        Sent at once, or, before the 2xx that creates the dialog has left,
        right after it. In an ended dialog the outcome is 481 at once.
        """

    def expire_after(self, seconds: float) -> None:
        """End the dialog `seconds` from now unless this is called again (a refresh)."""

    def end(self) -> None:
        """End the dialog now (after the last NOTIFY of a subscription, say)."""


class DialogHandler(Protocol):
    """What a plugin gives `PluginApi.accept_dialog`: it hears what happens in the dialog."""

    async def on_request(self, dialog: PluginDialog, request: IncomingRequest) -> int | Reply:
        """A request in the dialog (a SUBSCRIBE refresh...): answered with what this returns."""

    def on_ended(self, dialog: PluginDialog) -> None:
        """The dialog has ended (see `PluginDialog`) and is forgotten.

        Unless the far end ended it (a 481 or 408, or no answer, to a request
        sent in it), one last request may still be sent from here: the NOTIFY
        with ``Subscription-State: terminated;reason=timeout`` of an expired
        subscription (RFC 6665 §4.2.2), say. Later requests get 481 at once.
        """


class RegistrationState(enum.Enum):
    """What happened to one binding of a user (RFC 3261 §10)."""

    REGISTERED = "registered"
    """A new contact: a phone that was not registered there now is."""
    REFRESHED = "refreshed"
    """A contact registered again before it expired (phones do it every few minutes)."""
    UNREGISTERED = "unregistered"
    """The phone removed it (Expires: 0), or the user was removed from the config."""
    EXPIRED = "expired"
    """Its time ran out without a refresh: the phone went away without saying so."""


@dataclass(frozen=True, slots=True, kw_only=True)
class RegistrationChanged:
    """One binding of `user` changed (`PluginApi.on_registration`)."""

    user: str
    contact: str
    state: RegistrationState
    user_agent: str | None = None

    @property
    def registered(self) -> bool:
        """Whether the phone at `contact` can now be reached."""
        return self.state in (RegistrationState.REGISTERED, RegistrationState.REFRESHED)


class CallPhase(enum.Enum):
    """Where a call is, as busy lamps show it (RFC 4235's early, confirmed, terminated)."""

    RINGING = "ringing"
    ANSWERED = "answered"
    ENDED = "ended"


@dataclass(frozen=True, slots=True, kw_only=True)
class CallStateChanged:
    """A call through the PBX changed phase (`PluginApi.on_call_state`).

    A call is reported ``RINGING`` once per callee that rings (its phone
    answered 180 or 183), ``ANSWERED`` once, and ``ENDED`` exactly once,
    however it ends: cancelled, unanswered, refused, hung up by either side,
    failed, or cut by the PBX stopping. ``callees`` of an ``ENDED`` lists
    every callee that was rung, so that a lamp lit for any of them goes out.
    """

    call_id: str
    """The caller's Call-ID: the same for every event of one call."""
    phase: CallPhase
    caller: Party
    dialed: str
    callee: str | None
    """RINGING: who rings; ANSWERED: who answered; ENDED: who was connected, or None."""
    callees: tuple[str, ...] = ()
    """Every callee rung so far ("1002", or a SIP URI dialed), in order."""
    status: int | None = None
    """ENDED: 200 for an answered call, else the caller's final status (487, 486...)."""


class RequestService(Protocol):
    """Requests outside any call, answered by a plugin."""

    def add_request_handler(self, method: str, handler: RequestHandler) -> None:
        """Handle requests of `method` sent outside a call (the PBX then allows it).

        The PBX authenticates the sender first (407, as for a call).
        """


class DialogService(Protocol):
    """Dialogs a plugin owns (subscriptions)."""

    def accept_dialog(self, request: IncomingRequest, handler: DialogHandler) -> PluginDialog:
        """Make the dialog a 2xx to `request` creates, owned by `handler`.

        Called from the request handler before it returns; the dialog exists
        once the handler's answer is a 2xx (a failure status discards it).
        Raises `Reject` (503) when the PBX holds as many dialogs as it may.
        """


class OutboundService(Protocol):
    """Requests outside any dialog to a user's phones (MESSAGE, unsolicited NOTIFY)."""

    def send_to_user(self, user: str, method: str, *,
                     headers: Sequence[tuple[str, str]] = (), body: bytes = b"",
                     content_type: str | None = None,
                     from_user: str | None = None) -> Awaitable[list[Delivery]]:
        """Send `method` to every registered phone of `user`; one `Delivery` each.

        Each phone gets its own request, sent to where its registration
        came from (through its NAT), From ``from_user`` (else the PBX's
        domain) and To `user`. A user with no phone registered gives ``[]``
        at once.
        """


class EventService(Protocol):
    """Registration and call-state changes, as they happen.

    Listeners are called on the reactor thread, in the order changes
    happen; one that raises is logged and does not stop the others. They
    should be quick: start slow work (a NOTIFY...) and return.
    """

    def on_registration(self, listener: Callable[[RegistrationChanged], None]) -> None: ...

    def on_call_state(self, listener: Callable[[CallStateChanged], None]) -> None: ...


class TaskService(Protocol):
    """Work a plugin starts and does not wait for, and waiting for time to pass."""

    def spawn(self, work: Awaitable[object]) -> None:
        """Run `work` (a coroutine) on the PBX's loop; an exception in it is logged.

        For what a synchronous listener starts, or what a request handler
        starts to finish after its answer: ``api.spawn(self.notify(...))``
        where ``notify`` awaits a `PluginDialog.request`'s `Outcome`.
        """

    def sleep(self, seconds: float) -> Awaitable[None]:
        """Done `seconds` from now, on the PBX's clock (a test's clock in tests).

        For a deadline of the plugin's own (give up on a delivery sooner
        than the transaction time-out), or a resend later.
        """


class ActionService(Protocol):
    """Actions dialplans call on `Call`."""

    def provide_call_action(self, action: CallAction[_P, _R],
                            implementation: Callable[Concatenate[Call, _P], Awaitable[_R]]
                            ) -> None:
        """Provide the code of an action declared on `Call`: ``(Call.voicemail, code)``.

        mypy checks `implementation` against the declaration.
        """

    def add_call_action(self, name: str,
                        action: Callable[..., Awaitable[Any]]) -> None:
        """Make ``action(call, ...)`` the action `name` of every call, unchecked.

        A name `Call` declares is reached as ``call.name(...)``; any other
        only through ``call.action(name)``.
        """


class MediaService(Protocol):
    """The audio of calls: where a relay, a recorder or a conference plugs in."""

    def use_media(self, factory: MediaFactory) -> None:
        """Give every call from now on a `pbx.media.seam.MediaSession` made by `factory`.

        Every SDP body that crosses from one leg to the other goes through
        the call's session (docs/media-seam.md); a factory that raises
        `pbx.media.seam.MediaRefused` refuses the call with 503. One plugin
        only: a second raises ``ValueError``. Calls already up keep theirs.
        """


class PluginApi(RequestService, DialogService, OutboundService, EventService, TaskService,
                ActionService, MediaService, Protocol):
    """What a plugin gets in ``start``: one `Protocol` per service, and the users."""

    users: Users


class Plugin(Protocol):
    """A feature built on this API, listed in the config and started by the PBX."""

    name: str

    async def start(self, api: PluginApi) -> None: ...

    async def stop(self) -> None: ...

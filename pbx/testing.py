"""Testing dialplans without a network: your handler on the PBX's own call logic.

A dialplan author writes ordinary pytest tests::

    from pbx.dialplan import Answered, Busy
    from pbx.testing import FakeCall, load_dialplan, run

    handler = load_dialplan("dialplans/office.py")

    def test_busy_extension_forwards_to_reception():
        call = FakeCall(dialed="1002", caller="1003",
                        users=["1001", "1002", "1003"],
                        answers={"1002": Busy(), "1001": Answered("1001")})
        run(handler, call)
        assert call.dialed_targets == [("1002",), ("1001",)]
        assert call.connected_to == "1001"

Nothing here decides what a call does. `run` starts a whole PBX in
memory, `pbx.service.PbxService` on a `twisted.internet.task.Clock`, and
phones that speak SIP to it: every extension of ``answers`` registers a
phone, the caller's phone sends the INVITE (and answers the PBX's 407), and
the PBX runs your handler as it runs any dialplan. So a dial rings what the
PBX's location service finds, forks, times out, cancels and ranks final
responses (RFC 3261 §16.7) with the code that does so on a live PBX, and
`final_status` is the status the caller's phone received.

``answers`` is what each phone does when the PBX's INVITE reaches it:

- `Answered`: rings, then answers (200 with SDP);
- `Busy`, `Declined`, `Unavailable`, `Failed`: answers that status at once
  (486 or 600, 603, 480 or 404..., any other);
- `NoAnswer`: rings until the PBX gives up on it (the dial's ``timeout_s``,
  on the PBX's own clock: no test waits for it);
- `Rings(seconds, then)`: rings for that long, then does ``then``
  (``Rings(25, Answered("1002"))`` is too late for a 20 s dial).

An extension with no entry in ``answers`` has no phone registered (so is
`Unavailable` to a dial, as on a live PBX), and so has one listed in
``FakeUsers(unregistered=...)``. A key that is a SIP URI
(``"sip:2000@192.0.2.7"``) is a phone at that address, not a user. The
office's users are those of ``users``, the extensions of ``answers`` and
the caller (who authenticates, as every caller of the PBX does).

`FakeCall` is what the handler is given: a `pbx.dialplan.Call` whose
actions are handed to the PBX's own `Call` for this call, recording on the
way what the handler did (the dials with their timeouts and results, a
rejection, a hang-up, who got connected). Once the PBX runs the handler,
its ``caller``, ``headers``, ``request_uri`` and ``users`` are the PBX's own
(the headers of the INVITE as it arrived, any case; ``users.is_registered``
true for the phones that registered). ``caller_hangs_up_on`` makes the
caller give up (CANCEL) as soon as that target rings; it rings even without
an entry in ``answers``.

`run` drives the handler to its end with no event loop: the PBX's clock is
moved on to its next timer whenever nothing is left to deliver, so a dial
that rings for 20 seconds takes no time. A handler that waits for
something else (a timer of its own, a socket) does not finish within
`run`'s ``limit_s`` of the PBX's time, and `run` says so. An exception in
the handler is raised again by `run` (the caller got 500, as on a live PBX).
"""

from __future__ import annotations

import sys
from collections.abc import Awaitable, Callable, Coroutine, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pbx.core.call import display_name
from pbx.dialplan import Answered, Call, CallEnded, DialResult, Handler, NoAnswer, Party
from pbx.sip.message import Response
from pbx.testbed import DOMAIN, Office, PhoneScript, Rings

__all__ = ["Attempt", "FakeCall", "FakeUsers", "PhoneScript", "Rings", "load_dialplan", "run"]

RUN_LIMIT_S = 3600.0
"""How much of the PBX's time `run` lets a handler take: a long hunt, but not forever."""


@dataclass(frozen=True, slots=True)
class Attempt:
    """One ``dial`` (or ``forward``) the handler made."""

    targets: tuple[str, ...]
    timeout_s: float
    result: DialResult


class FakeUsers:
    """The office's users for a test: who exists, their names, who has no phone registered."""

    def __init__(self, extensions: Iterable[str] = (), *, names: Mapping[str, str] | None = None,
                 unregistered: Iterable[str] = ()) -> None:
        self.extensions = frozenset(extensions)
        self.names: Mapping[str, str] = dict(names or {})
        self.unregistered = frozenset(unregistered)

    def exists(self, extension: str) -> bool:
        return extension in self.extensions

    def name(self, extension: str) -> str | None:
        return self.names.get(extension)

    def is_registered(self, extension: str) -> bool:
        """Before `run`: not listed as unregistered. During it, the PBX's own answer."""
        return extension in self.extensions and extension not in self.unregistered


# ------------------------------------------------------------ the call


@dataclass(slots=True)
class _Record:
    """What the handler did and what came of it, for one `run`."""

    attempts: list[Attempt] = field(default_factory=list)
    elapsed_s: float | None = None
    rejections: list[tuple[int, str | None]] = field(default_factory=list)
    hung_up: bool = False


class _LiveControl:
    """FakeCall's `pbx.dialplan.CallControl`: each action is the PBX's, recorded on the way.

    ``live`` is the `Call` the PBX gave the dialplan for this call; its
    actions run the core's (`pbx.core.router`, `pbx.core.call`), and raise
    `CallEnded` themselves once the caller has gone.
    """

    def __init__(self, record: _Record) -> None:
        self.record = record
        self.live: Call | None = None

    def _call(self) -> Call:
        if self.live is None:
            raise RuntimeError("a FakeCall acts only while pbx.testing.run runs it")
        return self.live

    @property
    def answered(self) -> bool:
        return self.live is not None and self.live.answered

    @property
    def ended(self) -> bool:
        return False  # the PBX's Call raises CallEnded itself (see the class docstring)

    async def dial(self, targets: tuple[str, ...], timeout_s: float) -> DialResult:
        live = self._call()
        result: DialResult = NoAnswer()  # what a dial the caller walked away from returned
        try:
            if targets:
                result = await live.dial(*targets, timeout_s=timeout_s)
            else:
                # Only the caller's own extension: the PBX's forward to it rings
                # nobody and counts as tried, as the dial that filtered it out.
                result = await live.forward(live.caller.user or "", timeout_s=timeout_s)
        finally:
            self.record.attempts.append(Attempt(targets, timeout_s, result))
        return result

    def reject(self, status: int, reason: str | None) -> None:
        _at_once(self._call().reject(status, reason))
        self.record.rejections.append((status, reason))

    def hangup(self) -> None:
        _at_once(self._call().hangup())
        self.record.hung_up = True


def _at_once(action: Awaitable[None]) -> None:
    """Run an action of the PBX's `Call` that never waits (reject, hangup)."""
    coroutine: Coroutine[Any, Any, None] = action  # type: ignore[assignment]
    try:
        coroutine.send(None)
    except StopIteration:
        return
    coroutine.close()
    raise RuntimeError(f"{coroutine!r} waited; it was expected to complete at once")


class FakeCall(Call):
    """A call for tests: the handler's `Call`, played on an in-memory PBX by `run`."""

    def __init__(
        self,
        *,
        dialed: str,
        caller: str = "1001",
        caller_name: str | None = None,
        users: Iterable[str] | FakeUsers = (),
        answers: Mapping[str, PhoneScript] | None = None,
        headers: Mapping[str, str] | None = None,
        caller_hangs_up_on: str | None = None,
        actions: Mapping[str, Callable[..., Awaitable[Any]]] | None = None,
        domain: str = DOMAIN,
    ) -> None:
        """``caller_hangs_up_on``: the caller gives up while this target rings.

        ``caller_name`` is the name the caller's phone shows; as on the PBX,
        the name the office configured for the caller (``users``' names)
        wins, and `Call.caller`'s ``display_name`` is that.
        """
        self.directory = users if isinstance(users, FakeUsers) else FakeUsers(users)
        self.answers: Mapping[str, PhoneScript] = dict(answers or {})
        self.caller_hangs_up_on = caller_hangs_up_on
        self.caller_user = caller
        self.caller_shown_name = caller_name
        self.invite_headers: Mapping[str, str] = dict(headers or {})
        self._live_control = _LiveControl(_Record())
        self._office: Office | None = None
        super().__init__(
            caller=Party(user=caller, display_name=display_name(self.directory.name(caller))
                         or display_name(caller_name), uri=f"sip:{caller}@{domain}"),
            dialed=dialed,
            request_uri=f"sip:{dialed}@{domain}",
            headers={name.lower(): value for name, value in self.invite_headers.items()},
            users=self.directory,
            control=self._live_control,
            actions=actions,
        )

    def _attach(self, live: Call) -> None:
        """The PBX runs the dialplan for this call: from now on, act through `live`."""
        self._live_control.live = live
        self.caller = live.caller
        self.request_uri = live.request_uri
        self.headers = live.headers
        self.users = live.users
        live.outgoing_headers.update(self.outgoing_headers)
        self.outgoing_headers = live.outgoing_headers

    def _start(self, handler: Handler) -> Office:
        self._live_control.record = _Record()
        self._live_control.live = None
        directory = self.directory
        self._office = Office(
            handler=handler, caller=self.caller_user,
            caller_shown_name=display_name(self.caller_shown_name), dialed=self.dialed,
            headers=self.invite_headers, scripts=self.answers, users=directory.extensions,
            names=directory.names, unregistered=directory.unregistered,
            caller_hangs_up_on=self.caller_hangs_up_on)
        return self._office

    @property
    def _record(self) -> _Record:
        return self._live_control.record

    @property
    def attempts(self) -> list[Attempt]:
        return self._record.attempts

    @property
    def dialed_targets(self) -> list[tuple[str, ...]]:
        """The targets of each dial, in order: ``[("1002",), ("1001",)]``."""
        return [attempt.targets for attempt in self._record.attempts]

    @property
    def connected_to(self) -> str | None:
        """The target whose phone answered, once the caller got the 200."""
        if self._final() is None or self.final_status != 200:
            return None
        return next((attempt.result.target for attempt in reversed(self._record.attempts)
                     if isinstance(attempt.result, Answered)), None)

    @property
    def rejected(self) -> tuple[int, str | None] | None:
        """The handler's ``reject`` that the caller got, as (status, reason)."""
        final = self._final()
        return next((rejection for rejection in self._record.rejections
                     if final is not None and rejection[0] == final.status), None)

    @property
    def hung_up(self) -> bool:
        """The handler hung up, or the caller did."""
        office = self._office
        return self._record.hung_up or (office is not None and office.caller.hung_up)

    @property
    def final_status(self) -> int:
        """The final status the caller's phone received (200 once connected)."""
        final = self._final()
        if final is None:
            raise RuntimeError("the caller has no final response: run(handler, call) first")
        return final.status

    @property
    def rang(self) -> dict[str, list[str]]:
        """Per scripted phone, the Request-URI of each INVITE the PBX sent it."""
        office = self._office
        if office is None:
            return {}
        return {key: [str(invite.uri) for invite in phone.rang]
                for key, phone in office.phones.items()}

    def requests_to(self, target: str) -> list[str]:
        """The methods of the requests the PBX sent `target`'s phone, in order."""
        office = self._office
        phone = office.phones.get(target) if office is not None else None
        return [] if phone is None else [request.method for request in phone.requests]

    @property
    def elapsed_s(self) -> float:
        """The PBX's time from the caller's INVITE to the handler's end (dial timers...)."""
        elapsed = self._record.elapsed_s
        if elapsed is None:
            raise RuntimeError("the handler has not run: run(handler, call) first")
        return elapsed

    def invites_to(self, target: str) -> list[Mapping[str, str]]:
        """The headers of each INVITE the PBX sent `target`'s phone (names lower-case)."""
        office = self._office
        phone = office.phones.get(target) if office is not None else None
        if phone is None:
            return []
        return [{name.lower(): value for name, value in invite.headers}
                for invite in phone.rang]

    def _final(self) -> Response | None:
        return self._office.caller.final if self._office is not None else None


@dataclass(slots=True)
class _Handling:
    """How far the PBX got with the handler in one `run`."""

    started: bool = False
    finished: bool = False
    failure: Exception | None = None


def run(handler: Handler, call: FakeCall, *, limit_s: float = RUN_LIMIT_S) -> None:
    """Place `call` on an in-memory PBX whose dialplan is `handler` (see the module docstring).

    Running the same `FakeCall` again starts over, on a new PBX.
    """
    if not isinstance(call, FakeCall):
        raise TypeError(f"run() places a pbx.testing.FakeCall, not {type(call).__name__}")
    handling = _Handling()

    async def dialplan(live: Call) -> None:
        handling.started = True
        call._attach(live)
        try:
            await handler(call)
        except CallEnded:
            raise
        except Exception as error:
            handling.failure = error
            raise  # the PBX answers the caller 500, as it does for any dialplan
        finally:
            handling.finished = True

    office = call._start(dialplan)
    started_at = office.clock.seconds()
    office.caller.invite()
    # Until the handler is done, or the PBX answered the caller without running it.
    office.drive(lambda: handling.finished or (
        not handling.started and office.caller.final is not None), limit_s)
    call._record.elapsed_s = office.clock.seconds() - started_at
    if handling.failure is not None:
        raise handling.failure
    if not handling.started:
        final = office.caller.final
        raise RuntimeError(f"the PBX answered the call {final.status if final else '?'} "
                           "before the dialplan ran")


def load_dialplan(path: str | Path) -> Handler:
    """The handler of a dialplan file, loaded exactly as the PBX loads it.

    A relative `path` is looked for, in this order: in the current
    directory; then in the directory of the file that calls
    ``load_dialplan`` (the test module) and in each of its parents, up to
    the root. So ``load_dialplan("dialplans/office.py")`` in
    ``tests/unit/test_office_dialplan.py`` finds the repository's file
    whether pytest runs from the repository, from ``tests/`` or from
    anywhere else. The first existing file wins. When there is none,
    `FileNotFoundError` names every place that was looked in; a file that
    exists but does not import raises `pbx.core.router.DialplanError`.
    """
    from pbx.core.router import DialplanLoader

    caller_file = sys._getframe(1).f_code.co_filename
    loader = DialplanLoader()
    loader.load(_find_dialplan(Path(path), Path(caller_file)))
    return loader.handler


def _find_dialplan(path: Path, caller_file: Path) -> Path:
    """Where a dialplan file named in a test is (the rule of `load_dialplan`)."""
    if path.is_absolute():
        candidates = [path]
    else:
        candidates = [Path.cwd() / path]
        if caller_file.is_file():  # not "<stdin>" or "<string>"
            folder = caller_file.resolve().parent
            candidates += [base / path for base in (folder, *folder.parents)]
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    looked = "\n".join(f"  {candidate}" for candidate in dict.fromkeys(candidates))
    raise FileNotFoundError(f"dialplan file {str(path)!r} not found; looked for:\n{looked}")

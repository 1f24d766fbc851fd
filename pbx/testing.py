"""Testing dialplans without a network: a scripted call that runs your real handler.

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

`FakeCall` is a real `pbx.dialplan.Call` whose dialing is scripted:
``answers`` says what each target does (`Answered`, `Busy`, `NoAnswer`...;
an extension that is not listed and a URI are `Unavailable`). It records
what the handler did: the dials with their timeouts, a rejection, a hang-up,
and which target got connected. `final_status` is what the caller would
have got, decided the way the PBX decides it: for a call nobody answered,
the best outcome of all its dials (RFC 3261 §16.7, ranked by the core's own
`rank_final_status`: busy before unavailable before no answer), 503 told as
500, and 404 when nothing was tried.

As on a live PBX, the caller's own extension is never rung: a dial that
had only the caller to ring is recorded with no targets (``()`` in
`FakeCall.dialed_targets`), returns `Unavailable`, and does not change
`final_status`. In a dial of several targets one that rings until the
timeout (`NoAnswer`) makes the dial `NoAnswer`, as the PBX's dial timer does.

`run` drives the handler to its end without an event loop: every fake
action completes at once, so a handler that awaits only `Call` methods
finishes in one step. A handler that waits on something else (a timer, a
socket) cannot be run this way and `run` says so.
"""

from __future__ import annotations

import sys
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pbx.core.call import display_name, rank_final_status
from pbx.dialplan import (
    Answered,
    Busy,
    Call,
    Declined,
    DialResult,
    Failed,
    Handler,
    NoAnswer,
    Party,
    Unavailable,
)

__all__ = ["Attempt", "FakeCall", "FakeUsers", "load_dialplan", "run"]

_STATUS_OF_RESULT: dict[type, int] = {Busy: 486, NoAnswer: 408, Unavailable: 480,
                                      Declined: 603}
"""The status a result stands for on the wire (`Failed` and the rest carry theirs)."""


@dataclass(frozen=True, slots=True)
class Attempt:
    """One ``dial`` (or ``forward``) the handler made."""

    targets: tuple[str, ...]
    timeout_s: float
    result: DialResult


class FakeUsers:
    """The office's users for a test: who exists, their names, who is registered."""

    def __init__(self, extensions: Iterable[str] = (), *, names: Mapping[str, str] | None = None,
                 unregistered: Iterable[str] = ()) -> None:
        self._extensions = set(extensions)
        self._names = dict(names or {})
        self._unregistered = set(unregistered)

    def exists(self, extension: str) -> bool:
        return extension in self._extensions

    def name(self, extension: str) -> str | None:
        return self._names.get(extension)

    def is_registered(self, extension: str) -> bool:
        return extension in self._extensions and extension not in self._unregistered


@dataclass(slots=True)
class _ScriptedControl:
    """The `pbx.dialplan.CallControl` of a FakeCall: results come from the script."""

    answers: Mapping[str, DialResult]
    attempts: list[Attempt] = field(default_factory=list)
    rejected: tuple[int, str | None] | None = None
    hung_up: bool = False
    connected_to: str | None = None
    caller_hangs_up_on: str | None = None

    @property
    def answered(self) -> bool:
        return self.connected_to is not None

    @property
    def ended(self) -> bool:
        return self.hung_up or self.rejected is not None

    async def dial(self, targets: tuple[str, ...], timeout_s: float) -> DialResult:
        if not targets:  # only the caller's own extension was dialed: nobody rings
            self.attempts.append(Attempt(targets, timeout_s, Unavailable()))
            return Unavailable()
        if self.caller_hangs_up_on is not None and self.caller_hangs_up_on in targets:
            self.hung_up = True
            result: DialResult = NoAnswer()
            self.attempts.append(Attempt(targets, timeout_s, result))
            return result
        results = [self.answers.get(target, Unavailable()) for target in targets]
        answered = next((r for r in results if isinstance(r, Answered)), None)
        if answered is not None:
            result = answered
        elif any(isinstance(r, NoAnswer) for r in results):
            result = NoAnswer()  # still ringing when the dial's time ran out
        else:
            result = _best(results)
        if isinstance(result, Answered):
            self.connected_to = result.target
        self.attempts.append(Attempt(targets, timeout_s, result))
        return result

    def reject(self, status: int, reason: str | None) -> None:
        if not self.ended and not self.answered:
            self.rejected = (status, reason)

    def hangup(self) -> None:
        self.hung_up = True


def _best(results: list[DialResult]) -> DialResult:
    """The result the caller hears about when several failed (§16.7, as the core ranks)."""
    if not results:
        return Unavailable()
    return min(results, key=lambda result: rank_final_status(_status(result)))


def _status(result: DialResult) -> int:
    if isinstance(result, Failed):
        return result.status
    if isinstance(result, Answered):
        return 200
    return getattr(result, "status", _STATUS_OF_RESULT.get(type(result), 500))


class FakeCall(Call):
    """A call for tests: a real `Call` whose dialing follows ``answers``."""

    def __init__(
        self,
        *,
        dialed: str,
        caller: str = "1001",
        caller_name: str | None = None,
        users: Iterable[str] | FakeUsers = (),
        answers: Mapping[str, DialResult] | None = None,
        headers: Mapping[str, str] | None = None,
        caller_hangs_up_on: str | None = None,
        actions: Mapping[str, Callable[..., Awaitable[Any]]] | None = None,
        domain: str = "pbx.test",
    ) -> None:
        """``caller_hangs_up_on``: the caller gives up while this target rings.

        ``caller_name`` is the name the caller's phone shows; as on the PBX,
        the name the office configured for the caller (``users``' names)
        wins, and `Call.caller`'s ``display_name`` is that.
        """
        self.control = _ScriptedControl(answers=dict(answers or {}),
                                        caller_hangs_up_on=caller_hangs_up_on)
        directory = users if isinstance(users, FakeUsers) else FakeUsers(users)
        super().__init__(
            caller=Party(user=caller, display_name=display_name(directory.name(caller))
                         or display_name(caller_name), uri=f"sip:{caller}@{domain}"),
            dialed=dialed,
            request_uri=f"sip:{dialed}@{domain}",
            headers={name.lower(): value for name, value in (headers or {}).items()},
            users=directory,
            control=self.control,
            actions=actions,
        )

    @property
    def attempts(self) -> list[Attempt]:
        return self.control.attempts

    @property
    def dialed_targets(self) -> list[tuple[str, ...]]:
        """The targets of each dial, in order: ``[("1002",), ("1001",)]``."""
        return [attempt.targets for attempt in self.control.attempts]

    @property
    def connected_to(self) -> str | None:
        return self.control.connected_to

    @property
    def rejected(self) -> tuple[int, str | None] | None:
        return self.control.rejected

    @property
    def hung_up(self) -> bool:
        return self.control.hung_up

    @property
    def final_status(self) -> int:
        """What the caller got: 200 if connected, the rejection, else the PBX's choice."""
        control = self.control
        if control.connected_to is not None:
            return 200
        if control.rejected is not None:
            return control.rejected[0]
        if control.hung_up:
            return 487
        if not control.attempts:
            return 404
        rang = [attempt.result for attempt in control.attempts if attempt.targets]
        if not rang:
            return 480  # dialed, but only the caller's own extension: nobody rang
        status = _status(_best(rang))
        return 500 if status == 503 else status


def run(handler: Handler, call: Call) -> None:
    """Run `handler` on `call` to its end (see the module docstring)."""
    from pbx.dialplan import CallEnded

    coroutine = handler(call)
    try:
        coroutine.send(None)  # type: ignore[attr-defined]
    except StopIteration:
        return
    except CallEnded:
        return
    coroutine.close()  # type: ignore[attr-defined]
    raise RuntimeError(
        "the handler waited for something other than the call's own actions; "
        "pbx.testing.run can only drive handlers that await Call methods")


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

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
have got, decided the way the PBX decides it (RFC 3261 §16.7 for a call
nobody answered; 404 when nothing was tried).

`run` drives the handler to its end without an event loop: every fake
action completes at once, so a handler that awaits only `Call` methods
finishes in one step. A handler that waits on something else (a timer, a
socket) cannot be run this way and `run` says so.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

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
        if self.caller_hangs_up_on is not None and self.caller_hangs_up_on in targets:
            self.hung_up = True
            result: DialResult = NoAnswer()
            self.attempts.append(Attempt(targets, timeout_s, result))
            return result
        results = [self.answers.get(target, Unavailable()) for target in targets]
        answered = next((r for r in results if isinstance(r, Answered)), None)
        result = answered if answered is not None else _best(results)
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
    """The result the caller hears about when several branches failed (§16.7)."""
    if not results:
        return Unavailable()

    def rank(result: DialResult) -> tuple[int, int]:
        status = _status(result)
        return (0 if status >= 600 else status // 100, status)

    return min(results, key=rank)


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
        """``caller_hangs_up_on``: the caller gives up while this target rings."""
        self.control = _ScriptedControl(answers=dict(answers or {}),
                                        caller_hangs_up_on=caller_hangs_up_on)
        super().__init__(
            caller=Party(user=caller, display_name=caller_name,
                         uri=f"sip:{caller}@{domain}"),
            dialed=dialed,
            request_uri=f"sip:{dialed}@{domain}",
            headers={name.lower(): value for name, value in (headers or {}).items()},
            users=users if isinstance(users, FakeUsers) else FakeUsers(users),
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
        return _status(_best([attempt.result for attempt in control.attempts]))


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
    """The handler of a dialplan file, loaded exactly as the PBX loads it."""
    from pbx.core.router import DialplanLoader

    loader = DialplanLoader()
    loader.load(Path(path))
    return loader.handler

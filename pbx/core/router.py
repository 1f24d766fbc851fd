"""Hands each new call to the dialplan, and loads the dialplan file.

The dialplan is a Python file named in the config. `DialplanLoader.load`
imports it under a private module name each time (so a SIGHUP picks up an
edited file), finds ``handle_call`` or a `pbx.dialplan.Dialplan` named
``dialplan``, and refuses a file that is missing ("file not found"), does
not import, or has neither: the error names the file, and whatever was
loaded before stays in force.

`run_dialplan` wraps a core `Call` in the public `pbx.dialplan.Call` and
runs the handler as a coroutine on the reactor (Twisted drives ``async
def`` through `Deferred.fromCoroutine`). When the handler returns, a call
it left unanswered gets its best response; when it raises, the call fails
with 500 and the traceback is logged with the call's Call-ID.
"""

from __future__ import annotations

import importlib.util
import itertools
import sys
from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.python.failure import Failure

from pbx.core.call import B2buaCall, CallState, DialOutcome, Target
from pbx.dialplan import (
    Answered,
    Call,
    CallEnded,
    Dialplan,
    DialResult,
    Handler,
    Party,
    Unavailable,
    Users,
    result_for,
)
from pbx.sip.headers import header_key

_module_numbers = itertools.count(1)


class DialplanError(Exception):
    """A dialplan file that cannot be used; the message names the file."""


async def default_handler(call: Call) -> None:
    """Without a dialplan: extensions ring their phones, anything else is 404."""
    if call.users.exists(call.dialed):
        await call.dial(call.dialed)
    else:
        await call.reject(404)


class DialplanLoader:
    log = Logger()

    def __init__(self) -> None:
        self.handler: Handler = default_handler
        self.path: Path | None = None

    def load(self, path: Path | None) -> None:
        """Import `path` and use it from now on; DialplanError leaves the old one."""
        if path is None:
            self.handler, self.path = default_handler, None
            return
        if not path.is_file():
            # Said plainly: a missing file is not a dialplan with a bug in it.
            what = "is a directory, not a file" if path.is_dir() else "file not found"
            raise DialplanError(f"{path}: {what}")
        name = f"pbx_dialplan_{next(_module_numbers)}"
        spec = importlib.util.spec_from_file_location(name, path)
        if spec is None or spec.loader is None:
            raise DialplanError(f"{path}: not a Python file")
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        try:
            # Compiled from the source every time: the bytecode cache keys on
            # whole seconds and the size, so an edit of the same length within
            # a second of the last load would run the old code.
            code = compile(path.read_bytes(), str(path), "exec", dont_inherit=True)
            exec(code, module.__dict__)
        except Exception as error:
            raise DialplanError(f"{path}: does not import: "
                                f"{type(error).__name__}: {error}") from error
        finally:
            sys.modules.pop(name, None)
        handler = getattr(module, "handle_call", None)
        plan = getattr(module, "dialplan", None)
        if handler is None and isinstance(plan, Dialplan):
            handler = plan.handle_call
        if not callable(handler):
            raise DialplanError(
                f"{path}: defines neither 'async def handle_call(call)' nor a "
                "'dialplan = Dialplan()'")
        self.handler = handler
        self.path = path
        self.log.info("Dialplan loaded from {path}", path=str(path))


class _Control:
    """The `pbx.dialplan.CallControl` of one core call."""

    def __init__(self, call: B2buaCall, resolve: Callable[[str], list[Target]]) -> None:
        self.call = call
        self.resolve = resolve
        self.tried = False
        """Did the handler dial anything (even a user with no phone registered)?"""
        self.outgoing_headers: dict[str, str] = {}
        """The public call's ``outgoing_headers`` (the same dict)."""

    @property
    def answered(self) -> bool:
        return self.call.state is CallState.ANSWERED or self.call.record.answered_at is not None

    @property
    def ended(self) -> bool:
        return self.call.ended

    def dial(self, targets: tuple[str, ...], timeout_s: float) -> Awaitable[DialResult]:
        self.tried = True
        resolved: list[Target] = []
        for target in targets:
            resolved.extend(self.resolve(target))
        waiting: Deferred[DialResult] = Deferred()
        if not resolved:
            if targets:
                # Users with no phone registered: 480 for the caller, unless
                # something else tried does better. No targets at all (the
                # caller's own extension was all the dial had) changes nothing.
                self.call.nobody_to_ring()
            waiting.callback(Unavailable(480))
            return waiting

        def done(outcome: DialOutcome) -> None:
            if outcome.answered_by is not None:
                waiting.callback(Answered(outcome.answered_by))
            else:
                waiting.callback(result_for(outcome.status, outcome.reason))

        self.call.dial(resolved, timeout_s, done,
                       extra_headers=list(self.outgoing_headers.items()))
        return waiting

    def reject(self, status: int, reason: str | None) -> None:
        self.call.reject(status, reason)

    def hangup(self) -> None:
        self.call.hangup()


def run_dialplan(
    handler: Handler,
    call: B2buaCall,
    *,
    caller: Party,
    dialed: str,
    users: Users,
    resolve: Callable[[str], list[Target]],
    actions: dict[str, Callable[..., Awaitable[Any]]],
    log: Logger,
    on_public: Callable[[Call], None] | None = None,
) -> Deferred[None]:
    """Run `handler` for `call`; what it leaves undecided is decided here.

    ``on_public`` is given the dialplan's `Call` before the handler runs: the
    core keeps it for the hooks a handler sets on it (``on_refer``).
    """
    invite = call.a.invite
    control = _Control(call, resolve)
    public = Call(caller=caller, dialed=dialed, request_uri=str(invite.uri),
                  headers=_ReadOnlyHeaders(invite.headers), users=users,
                  control=control, actions=actions)
    control.outgoing_headers = public.outgoing_headers
    if on_public is not None:
        on_public(public)

    def finished(_: object) -> None:
        if not call.ended and call.state is not CallState.ANSWERED:
            if not control.tried:
                # Nothing dialed: 404. A user with no phone registered was
                # dialed, and is 480 (`Call.finish`), not 404.
                call.reject(404, "Not Found")
            else:
                call.finish()

    def failed(failure: Failure) -> None:
        if isinstance(failure.value, CallEnded):
            return
        log.failure("Dialplan handler failed for call {call_id}", failure=failure,
                    call_id=call.record.call_id)
        if not call.ended and call.state is not CallState.ANSWERED:
            call.reject(500, "Dialplan error")

    running: Deferred[None] = Deferred.fromCoroutine(_run(handler, public))
    running.addCallbacks(finished, failed)
    return running


async def _run(handler: Handler, call: Call) -> None:
    await handler(call)


class _ReadOnlyHeaders(Mapping[str, str]):
    """The INVITE's headers for a handler: names in any case or compact form; no writes."""

    def __init__(self, headers: Iterable[tuple[str, str]]) -> None:
        values: dict[str, str] = {}
        for name, value in headers:
            values.setdefault(header_key(name), value)  # the first line of each
        self._values = values

    def __getitem__(self, name: str) -> str:
        return self._values[header_key(name)]

    def __iter__(self) -> Iterator[str]:
        return iter(self._values)

    def __len__(self) -> int:
        return len(self._values)

"""Binding changes waiting to be written to the store, coalesced per (AOR, contact).

Every accepted REGISTER records what it changed here, on the request path,
and `pbx.store.BindingWriter` writes the net effect in the store's next
group commit, a couple of milliseconds later (`CommitGate`), before the
REGISTER's 200 is sent. Recording is a dictionary store or three;
it lives in this compiled module (`pbx.compiled`) because, as a method of the
interpreted store module, the call alone cost about as much again.

The map holds at most one entry per distinct key touched since the last
flush, so its size is bounded by the location service's own bounds, whatever
the REGISTER rate. Implements `pbx.core.location.BindingRecorder`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Protocol

from pbx.core.location import Binding, UpdateResult


class CommitGate(Protocol):
    """Where an answer that reports a recorded change waits for it to be on disk.

    Implemented by `pbx.store.GroupCommit`; the endpoint and the calls see
    only this, so the core does not import the store.
    """

    def after_commit(self, callback: Callable[[bool], None]) -> None:
        """Call ``callback(stored)`` once what was recorded so far is committed (True)
        or its commit failed (False)."""


class PendingBindings:
    """(aor, contact) -> the binding to upsert, or None to delete its row."""

    def __init__(self) -> None:
        self._pending: dict[tuple[str, str], Binding | None] = {}

    def __len__(self) -> int:
        return len(self._pending)

    def record_update(self, binding: Binding) -> None:
        self._pending[(binding.aor, binding.contact)] = binding

    def record_removal(self, aor: str, contact: str) -> None:
        self._pending[(aor, contact)] = None

    def record_result(self, result: UpdateResult) -> None:
        """Record everything an accepted `LocationService.update` changed."""
        pending = self._pending
        for binding in result.removed:
            pending[(binding.aor, binding.contact)] = None
        for binding in result.added:
            pending[(binding.aor, binding.contact)] = binding
        for binding in result.refreshed:
            pending[(binding.aor, binding.contact)] = binding

    def record_removals(self, bindings: Iterable[Binding]) -> None:
        """Record bindings that are gone: from `LocationService.expire` or `load`."""
        pending = self._pending
        for binding in bindings:
            pending[(binding.aor, binding.contact)] = None

    def peek(self) -> tuple[list[Binding], list[tuple[str, str]]]:
        """What is pending, as (rows to upsert, keys of rows to delete); kept until `clear`."""
        upserts: list[Binding] = []
        removals: list[tuple[str, str]] = []
        for key, binding in self._pending.items():
            if binding is None:
                removals.append(key)
            else:
                upserts.append(binding)
        return upserts, removals

    def clear(self) -> None:
        """Forget what `peek` returned, once it is written."""
        self._pending = {}

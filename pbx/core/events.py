"""Registration and call-state changes, told to the plugins that listen.

`PluginEvents` is the `pbx.dialplan.EventService` of the plugin API. The
core reports to it (the endpoint each REGISTER's binding changes,
housekeeping the expired bindings, a reload the bindings of removed users,
the call manager each callee ringing or answering and each call's end); it
turns those into `RegistrationChanged` and `CallStateChanged` values and
calls the listeners in order. A listener that raises is logged and the
others still hear the change.

Cost: the REGISTER path is compiled and measured. The endpoint asks its
``binding_listener`` slot, which stays None (one attribute test per
REGISTER) until a plugin calls `on_registration`: a PBX whose plugins do
not listen pays nothing more (`RegistrationSource`).

Calls: each callee is reported ``RINGING`` once per call, however many
provisional responses its phones send; a call's callees are kept only
until its ``ENDED``, which every call reaches (`pbx.core.call.B2buaCall._end`
is the one way out), so the table is bounded by the calls in progress.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Protocol

from twisted.logger import Logger

from pbx.core.call import B2buaCall
from pbx.core.location import Binding, UpdateResult
from pbx.dialplan import (
    CallPhase,
    CallStateChanged,
    Party,
    RegistrationChanged,
    RegistrationState,
)


class BindingListener(Protocol):
    """Hears every binding change of a REGISTER, as the registrar made it."""

    def bindings_changed(self, changes: UpdateResult, now: float) -> None: ...


class RegistrationSource(Protocol):
    """Where REGISTERs are handled (`pbx.core.endpoint.SipEndpoint`): a slot to listen in."""

    binding_listener: BindingListener | None


class PluginEvents:
    log = Logger()

    def __init__(self, *, domain: str) -> None:
        self.domain = domain
        self.source: RegistrationSource | None = None
        """Set by the service: where to start listening once a plugin wants to hear."""
        self._registration_listeners: list[Callable[[RegistrationChanged], None]] = []
        self._call_listeners: list[Callable[[CallStateChanged], None]] = []
        self._callees: dict[str, list[str]] = {}
        """The callees each call in progress has rung, by the caller's Call-ID."""

    # ------------------------------------------------------- EventService

    def on_registration(self, listener: Callable[[RegistrationChanged], None]) -> None:
        self._registration_listeners.append(listener)
        if self.source is not None:
            self.source.binding_listener = self

    def on_call_state(self, listener: Callable[[CallStateChanged], None]) -> None:
        self._call_listeners.append(listener)

    # ------------------------------------------------------- registrations

    def bindings_changed(self, changes: UpdateResult, now: float) -> None:
        """A REGISTER's changes (`BindingListener`)."""
        for binding in changes.removed:
            # A binding that had run out is collected by the next REGISTER of
            # its user: it expired, whatever this REGISTER said.
            self._tell_registration(binding, RegistrationState.EXPIRED
                                    if binding.expires_at <= now
                                    else RegistrationState.UNREGISTERED)
        for binding in changes.added:
            self._tell_registration(binding, RegistrationState.REGISTERED)
        for binding in changes.refreshed:
            self._tell_registration(binding, RegistrationState.REFRESHED)

    def bindings_expired(self, bindings: Iterable[Binding]) -> None:
        """Bindings whose time ran out without a refresh (the service's housekeeping)."""
        for binding in bindings:
            self._tell_registration(binding, RegistrationState.EXPIRED)

    def bindings_removed(self, bindings: Iterable[Binding]) -> None:
        """Bindings removed by the PBX (a user deleted from the config)."""
        for binding in bindings:
            self._tell_registration(binding, RegistrationState.UNREGISTERED)

    def _tell_registration(self, binding: Binding, state: RegistrationState) -> None:
        if not self._registration_listeners:
            return
        event = RegistrationChanged(user=binding.aor, contact=binding.contact, state=state,
                                    user_agent=binding.user_agent)
        for listener in self._registration_listeners:
            try:
                listener(event)
            except Exception:
                self.log.failure("A plugin's registration listener failed on {user}",
                                 user=binding.aor)

    # ------------------------------------------------------------- calls

    def callee_ringing(self, call: B2buaCall, callee: str) -> None:
        if not self._call_listeners:
            return
        rung = self._callees.setdefault(call.record.call_id, [])
        if callee in rung:
            return
        rung.append(callee)
        self._tell_call(call, CallPhase.RINGING, callee, tuple(rung))

    def callee_answered(self, call: B2buaCall, callee: str) -> None:
        if not self._call_listeners:
            return
        rung = self._callees.setdefault(call.record.call_id, [])
        if callee not in rung:
            rung.append(callee)  # answered at once, with no 180 first
        self._tell_call(call, CallPhase.ANSWERED, callee, tuple(rung))

    def call_ended(self, call: B2buaCall) -> None:
        rung = self._callees.pop(call.record.call_id, None)
        if not self._call_listeners:
            return
        record = call.record
        status = 200 if record.answered_at is not None else (record.status or 480)
        self._tell_call(call, CallPhase.ENDED, record.answered_by, tuple(rung or ()),
                        status=status)

    def _tell_call(self, call: B2buaCall, phase: CallPhase, callee: str | None,
                   callees: tuple[str, ...], *, status: int | None = None) -> None:
        record = call.record
        event = CallStateChanged(
            call_id=record.call_id, phase=phase,
            caller=Party(user=record.caller, display_name=record.caller_name,
                         uri=f"sip:{record.caller}@{self.domain}"),
            dialed=record.dialed, callee=callee, callees=callees, status=status)
        for listener in self._call_listeners:
            try:
                listener(event)
            except Exception:
                self.log.failure("A plugin's call-state listener failed on {call_id}",
                                 call_id=record.call_id)

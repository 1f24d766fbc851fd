"""Loading, checking, starting and stopping plugins (`pbx.dialplan.Plugin`).

Each ``[plugins.NAME]`` table of the config names a Python file (a module,
or a package's ``__init__.py``: `pbx.config` resolves product plugins in
``plugins/`` and paths of the administrator's own) that defines
``create_plugin(settings) -> Plugin``. It is imported, called with
the plugin's own ``settings`` table, and the object it returns is checked
against the `Plugin` protocol before anything starts [buildbot
``plugins/db.py``]; a failure names the plugin and the file, and stops
start-up. Nothing registers itself at import time: a plugin adds what it
offers from its ``start(api)``, through `PluginHost` (the `PluginApi`).
"""

from __future__ import annotations

import importlib.util
import inspect
import itertools
import sys
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, Concatenate, ParamSpec, Protocol, TypeVar

from twisted.internet.defer import Deferred, gatherResults
from twisted.logger import Logger

from pbx.core.events import PluginEvents
from pbx.core.outbound import Outbound
from pbx.core.plugin_messages import Timers
from pbx.core.plugin_requests import PluginRequests
from pbx.dialplan import (
    Call,
    CallAction,
    CallStateChanged,
    Delivery,
    DialogHandler,
    IncomingRequest,
    Plugin,
    PluginDialog,
    RegistrationChanged,
    RequestHandler,
    Users,
)
from pbx.media.seam import MediaFactory

_numbers = itertools.count(1)
P = ParamSpec("P")
R = TypeVar("R")
S = TypeVar("S")


class PluginSource(Protocol):
    """Where a plugin comes from, as the service hands it over (`pbx.config.PluginConfig`).

    A protocol rather than the config's class: the core is given plain
    values and never imports `pbx.config`, which is read by the service.
    """

    @property
    def name(self) -> str: ...

    @property
    def module(self) -> Path: ...

    @property
    def settings(self) -> Mapping[str, object]: ...


class PluginError(Exception):
    """A plugin that cannot be used; the message names it."""


class PluginHost:
    """The `pbx.dialplan.PluginApi` every plugin gets, and the plugins' lifecycle.

    The services behind the API (`pbx.core.plugin_requests`,
    `pbx.core.outbound`, `pbx.core.events`) are the core's; the host only
    hands them out, so a plugin never holds a core object.
    """

    log = Logger()

    def __init__(self, users: Users, actions: dict[str, Callable[..., Awaitable[Any]]], *,
                 requests: PluginRequests | None = None, outbound: Outbound | None = None,
                 events: PluginEvents | None = None, timers: Timers | None = None,
                 media: Callable[[MediaFactory], None] | None = None) -> None:
        self.users = users
        self.actions = actions
        self.request_handlers: dict[str, RequestHandler] = {}
        self.plugins: list[Plugin] = []
        self._requests = requests
        self._outbound = outbound
        self._events = events
        self._timers = timers
        self._media = media
        self._media_taken = False

    # ------------------------------------------------------------- PluginApi

    def use_media(self, factory: MediaFactory) -> None:
        if self._media is None:
            raise RuntimeError("this PBX has no media seam to plug into")
        if self._media_taken:
            raise ValueError("the calls' media is already provided by another plugin")
        self._media_taken = True
        self._media(factory)

    def add_call_action(self, name: str, action: Callable[..., Awaitable[Any]]) -> None:
        if not name.isidentifier() or name.startswith("_"):
            raise ValueError(f"call action name {name!r} is not a public identifier")
        if name in self.actions:
            raise ValueError(f"call action {name!r} is already provided by another plugin")
        declared = getattr(Call, name, None)
        if declared is not None and not isinstance(declared, CallAction):
            raise ValueError(f"{name!r} is a method of Call, not an action a plugin provides")
        self.actions[name] = action

    def provide_call_action(self, action: CallAction[P, R],
                            implementation: Callable[Concatenate[Call, P], Awaitable[R]]
                            ) -> None:
        self.add_call_action(action.name, implementation)

    def add_request_handler(self, method: str, handler: RequestHandler) -> None:
        method = method.upper()
        if method in ("INVITE", "ACK", "BYE", "CANCEL", "REGISTER", "PRACK", "UPDATE"):
            raise ValueError(f"{method} belongs to the core; a plugin cannot take it")
        if method in self.request_handlers:
            raise ValueError(f"{method} is already handled by another plugin")
        self.request_handlers[method] = handler

    def accept_dialog(self, request: IncomingRequest, handler: DialogHandler) -> PluginDialog:
        return self._service(self._requests, "dialogs").accept_dialog(request, handler)

    def send_to_user(self, user: str, method: str, *,
                     headers: Sequence[tuple[str, str]] = (), body: bytes = b"",
                     content_type: str | None = None,
                     from_user: str | None = None) -> Awaitable[list[Delivery]]:
        return self._service(self._outbound, "sending").send_to_user(
            user, method, headers=headers, body=body, content_type=content_type,
            from_user=from_user)

    def on_registration(self, listener: Callable[[RegistrationChanged], None]) -> None:
        self._service(self._events, "events").on_registration(listener)

    def on_call_state(self, listener: Callable[[CallStateChanged], None]) -> None:
        self._service(self._events, "events").on_call_state(listener)

    def spawn(self, work: Awaitable[object]) -> None:
        async def running() -> None:
            await work

        Deferred.fromCoroutine(running()).addErrback(
            lambda failure: self.log.failure("A plugin's background work failed",
                                             failure=failure))

    def sleep(self, seconds: float) -> Awaitable[None]:
        done: Deferred[None] = Deferred()
        self._service(self._timers, "timers").call_later(seconds, lambda: done.callback(None))
        return done

    @staticmethod
    def _service(service: S | None, what: str) -> S:
        if service is None:
            raise RuntimeError(f"this PBX was built without the plugins' {what} service")
        return service

    # ------------------------------------------------------------- lifecycle

    def load(self, configs: Iterable[PluginSource]) -> None:
        """Import and check every configured plugin; PluginError on the first bad one."""
        for config in configs:
            self.plugins.append(self._load_one(config))

    def _load_one(self, config: PluginSource) -> Plugin:
        where = f"plugin {config.name!r} ({config.module})"
        name = f"pbx_plugin_{next(_numbers)}"
        # A package's __init__.py is imported as a package (its folder its path),
        # so it imports its own modules relatively: "from . import mailbox".
        spec = importlib.util.spec_from_file_location(name, config.module)
        if spec is None or spec.loader is None:
            raise PluginError(f"{where}: not a Python file")
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        try:
            spec.loader.exec_module(module)
        except Exception as error:
            sys.modules.pop(name, None)
            raise PluginError(f"{where}: does not import: {type(error).__name__}: {error}"
                              ) from error
        create = getattr(module, "create_plugin", None)
        if not callable(create):
            raise PluginError(f"{where}: defines no create_plugin(settings)")
        try:
            plugin = create(dict(config.settings))
        except Exception as error:
            raise PluginError(f"{where}: create_plugin failed: {error}") from error
        problems = [
            what for what, ok in (
                ("a str 'name'", isinstance(getattr(plugin, "name", None), str)),
                ("'async def start(api)'",
                 inspect.iscoroutinefunction(getattr(plugin, "start", None))),
                ("'async def stop()'", inspect.iscoroutinefunction(getattr(plugin, "stop", None))),
            ) if not ok
        ]
        if problems:
            raise PluginError(f"{where}: not a Plugin: it lacks {', '.join(problems)}")
        return plugin  # type: ignore[no-any-return]

    def start_all(self) -> Deferred[None]:
        return self._each(lambda plugin: plugin.start(self), "start")

    def stop_all(self) -> Deferred[None]:
        return self._each(lambda plugin: plugin.stop(), "stop")

    def _each(self, step: Callable[[Plugin], Awaitable[None]], what: str) -> Deferred[None]:
        running = [Deferred.fromCoroutine(self._guarded(step, plugin, what))
                   for plugin in self.plugins]
        done: Deferred[None] = gatherResults(running).addCallback(lambda _: None)
        return done

    async def _guarded(self, step: Callable[[Plugin], Awaitable[None]], plugin: Plugin,
                       what: str) -> None:
        """One plugin's start or stop; a failure is logged and does not stop the others."""
        try:
            await step(plugin)
        except Exception:
            self.log.failure("Plugin {plugin} failed to {what}", plugin=plugin.name, what=what)



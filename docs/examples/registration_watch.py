"""An example plugin: phones subscribe to whether a colleague's phone is registered.

A phone sends ``SUBSCRIBE sip:1002@pbx.example.org`` with ``Event:
x-registration`` (a made-up event package, RFC 6665 §7.2 style). The
plugin accepts the subscription dialog, answers 200 with the Expires it
grants, NOTIFYs the current state at once and again whenever 1002's phones
register or unregister, takes refreshes, and on an unsubscribe (Expires: 0)
sends the last NOTIFY (Subscription-State: terminated) and ends the dialog.

It is the complete example of docs/plugins.md, and tests/service/
test_plugin_example.py loads this very file into a PBX and drives it over
real sockets. It imports only `pbx.dialplan` and the standard library.

Config::

    [plugins.registration_watch]
    module = "docs/examples/registration_watch.py"
    settings = { max_expires_s = 600 }
"""

from __future__ import annotations

from collections.abc import Mapping

from pbx.dialplan import (
    IncomingRequest,
    PluginApi,
    PluginDialog,
    RegistrationChanged,
    RegistrationState,
    Reject,
    Reply,
)

EVENT = "x-registration"


class Subscription:
    """One watcher's subscription to one user: the `DialogHandler` of its dialog."""

    def __init__(self, plugin: RegistrationWatch, user: str) -> None:
        self.plugin = plugin
        self.user = user
        self.dialog: PluginDialog | None = None
        self.expires_s = 0

    async def on_request(self, dialog: PluginDialog, request: IncomingRequest) -> int | Reply:
        """A refresh, or an unsubscribe (Expires: 0), of this subscription."""
        if request.method != "SUBSCRIBE":
            raise Reject(405, "Only SUBSCRIBE in a subscription")
        expires = self.plugin.granted(request)
        if expires == 0:
            self.plugin.notify(self, terminated=True)
            dialog.end()  # after the 200 and that last NOTIFY
        else:
            self.expires_s = expires
            dialog.expire_after(expires)
        return Reply(200, headers=[("Expires", str(expires))])

    def on_ended(self, dialog: PluginDialog) -> None:
        self.plugin.subscriptions.discard(self)


class RegistrationWatch:
    name = "registration_watch"

    def __init__(self, settings: Mapping[str, object]) -> None:
        max_expires = settings.get("max_expires_s", 600)
        self.max_expires_s = max_expires if isinstance(max_expires, int) else 600
        self.subscriptions: set[Subscription] = set()
        self.outcomes: list[int] = []
        """The status of every NOTIFY's answer (for the curious; the test reads it)."""

    async def start(self, api: PluginApi) -> None:
        self.api = api
        api.add_request_handler("SUBSCRIBE", self.subscribe)
        api.on_registration(self.registration_changed)

    async def stop(self) -> None:
        """Nothing to do: the PBX ended every subscription first (on_ended ran)."""

    async def subscribe(self, request: IncomingRequest) -> Reply:
        """A new subscription: to an existing user, by an authenticated one."""
        if request.headers.get("event", "").split(";")[0].strip() != EVENT:
            raise Reject(489, "Bad Event")  # RFC 6665 §8.2.1
        if request.sender is None:
            raise Reject(403)
        if not self.api.users.exists(request.target):
            raise Reject(404, "No such user")
        expires = self.granted(request)
        subscription = Subscription(self, request.target)
        subscription.expires_s = expires
        subscription.dialog = self.api.accept_dialog(request, subscription)
        if expires == 0:  # a fetch: one NOTIFY, then over (RFC 6665 §4.4.3)
            self.notify(subscription, terminated=True)
            subscription.dialog.end()
        else:
            subscription.dialog.expire_after(expires)
            self.subscriptions.add(subscription)
            self.notify(subscription)  # sent right after the 200
        return Reply(200, headers=[("Expires", str(expires))])

    def granted(self, request: IncomingRequest) -> int:
        asked = request.headers.get("expires", str(self.max_expires_s))
        return min(int(asked), self.max_expires_s) if asked.isdigit() else self.max_expires_s

    def registration_changed(self, change: RegistrationChanged) -> None:
        if change.state is RegistrationState.REFRESHED:
            return  # nothing a watcher would see
        for subscription in list(self.subscriptions):
            if subscription.user == change.user:
                self.notify(subscription)

    def notify(self, subscription: Subscription, *, terminated: bool = False) -> None:
        """NOTIFY the state of the watched user; started now, its outcome kept later."""
        self.api.spawn(self._notify(subscription, terminated))

    async def _notify(self, subscription: Subscription, terminated: bool) -> None:
        dialog = subscription.dialog
        assert dialog is not None
        registered = self.api.users.is_registered(subscription.user)
        state = ("terminated;reason=noresource" if terminated
                 else f"active;expires={subscription.expires_s}")
        body = f"{subscription.user} {'registered' if registered else 'unregistered'}\n"
        outcome = await dialog.request(
            "NOTIFY", headers=[("Event", EVENT), ("Subscription-State", state)],
            body=body.encode(), content_type="text/plain")
        # A 481 or no answer has ended the dialog already (on_ended forgot it).
        self.outcomes.append(outcome.status)


def create_plugin(settings: Mapping[str, object]) -> RegistrationWatch:
    return RegistrationWatch(settings)

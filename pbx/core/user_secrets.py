"""The configured users as the authenticator needs them: their HA1s and names.

The registrar asks three things of the users on every authenticated request
(does this user have an HA1 for an algorithm, what is it, what is the
configured spelling of the name) and the config's users answer them. Asked
through the service's methods and the config's, that was about ten calls
into interpreted Python per registration, a measurable part of its cost
(docs/benchmarks.md, "Why the hot path is written as it is"); this
class answers them in the compiled request path (`pbx.compiled`) from the
same `UserConfig` records, replaced as a whole on reload.

The rules are those of the digest code's `pbx.sip.digest_server.ha1_of`
(which `pbx.config.UserConfig.ha1_for` uses too): a password is hashed for
the realm on every lookup, a stored HA1 is returned for its own algorithm
only; and here, a disabled or unknown user has none.
"""

from __future__ import annotations

from collections.abc import Mapping

from pbx.sip.digest_server import SecretHolder, ha1_of, has_ha1


class UserSecrets:
    """HA1s and names of the configured users of one realm."""

    def __init__(self, users: Mapping[str, SecretHolder], realm: str) -> None:
        self.users = users
        """By extension; the service replaces the whole mapping on reload."""
        self.realm = realm
        """The realm in force: the one the service started with (a reload keeps it)."""

    def ha1(self, extension: str, algorithm: str) -> str | None:
        """The user's HA1 for `algorithm`, or None for an unknown or disabled user."""
        user = self.users.get(extension)
        if user is None or not user.enabled:
            return None
        return ha1_of(user, self.realm, algorithm)

    def has_ha1(self, extension: str, algorithm: str) -> bool:
        """Whether `ha1` would give an HA1 (not None), without hashing."""
        user = self.users.get(extension)
        return user is not None and user.enabled and has_ha1(user, algorithm)

    def user_name(self, extension: str) -> str:
        """The config's own str for `extension` (equal text, shared object)."""
        user = self.users.get(extension)
        return extension if user is None else user.extension

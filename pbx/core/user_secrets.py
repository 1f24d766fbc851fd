"""The configured users as the authenticator needs them: their HA1s and names.

The registrar asks three things of the users on every authenticated request
(does this user have an HA1 for an algorithm, what is it, what is the
configured spelling of the name) and the config's users answer them. Asked
through the service's methods and the config's, that was about ten calls
into interpreted Python per registration, a few percent of its cost; this
class answers them in the compiled request path (`pbx.compiled`) from the
same `UserConfig` records, replaced as a whole on reload.

The rules are `pbx.config.UserConfig.ha1_for`'s: a password is hashed for
the realm on every lookup (not cached: a cache of two hashes for 100,000
users held some 40 MB, and a hash costs about a microsecond), a stored HA1
is returned for its own algorithm only, and a disabled or unknown user has
none.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Protocol

from pbx.sip.digest import compute_ha1


class SecretHolder(Protocol):
    """What a user record offers (`pbx.config.UserConfig`); read-only."""

    @property
    def extension(self) -> str: ...

    @property
    def enabled(self) -> bool: ...

    @property
    def password(self) -> str | None: ...

    @property
    def ha1(self) -> str | None: ...

    @property
    def ha1_sha256(self) -> str | None: ...


def stored_ha1(user: SecretHolder, algorithm: str) -> str | None:
    """The HA1 stored for `algorithm`; ValueError for an algorithm we cannot hash."""
    if algorithm == "MD5":
        return user.ha1
    if algorithm == "SHA-256":
        return user.ha1_sha256
    raise ValueError(f"unsupported digest algorithm {algorithm!r}")


def ha1_of(user: SecretHolder, realm: str, algorithm: str) -> str | None:
    """H(extension:realm:password) for `algorithm`, else the stored HA1 or None.

    ``enabled`` is the caller's to check.
    """
    stored = stored_ha1(user, algorithm)  # refuses an unknown algorithm first
    password = user.password
    if password is not None:
        return compute_ha1(user.extension, realm, password, algorithm)
    return stored


def has_ha1(user: SecretHolder, algorithm: str) -> bool:
    """Whether `ha1_of` gives an HA1 (not None), without hashing."""
    return stored_ha1(user, algorithm) is not None or user.password is not None


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

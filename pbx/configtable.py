"""Reading a TOML config: typed getters that collect every problem with its key.

`pbx.config` describes *what* the config holds; this module is *how* a
table is read: each getter checks one key, records a `ConfigProblem`
(file, dotted key, what was expected) instead of stopping at the first
mistake, and ``finish`` reports keys nobody asked for, with a "did you
mean" [buildbot ``config/errors.py``]. `ConfigError` carries them all.
"""

from __future__ import annotations

import difflib
import ipaddress
import json
import os
import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import overload

_Key = tuple[str, ...]
"""A dotted key as its parts: ("users", "1001", "password")."""

# RFC 1123 §2.1 host name: labels of letters, digits and inner hyphens.
_MAX_SHOWN_CHARS = 60  # a value quoted in an error message is cut here
_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
_HOSTNAME_RE = re.compile(rf"{_LABEL}(?:\.{_LABEL})*")
_DIGITS_RE = re.compile(r"[0-9]+")
_BARE_KEY_RE = re.compile(r"[A-Za-z0-9_-]+")
_CONTROL_RE = re.compile(r"[\x00-\x1f\x7f]")
_LISTEN_EXAMPLE = 'expected "address:port" such as "0.0.0.0:5060" or "[::1]:5060"'


@dataclass(frozen=True, slots=True, kw_only=True)
class ConfigProblem:
    """One thing wrong with a config file: where, and what was expected."""

    file: str
    key: str  # dotted, e.g. "users.1001.password"; "" for the file as a whole
    message: str

    def __str__(self) -> str:
        if self.key:
            return f"{self.file}: {self.key}: {self.message}"
        return f"{self.file}: {self.message}"


class ConfigError(Exception):
    """The config cannot be used; `problems` lists every reason at once.

    ``str(error)`` is one line per problem, each starting with the file path,
    ready to log or print for the administrator.
    """

    def __init__(self, problems: Iterable[ConfigProblem]) -> None:
        self.problems = tuple(problems)
        if not self.problems:
            raise ValueError("a ConfigError needs at least one problem")
        super().__init__("\n".join(str(p) for p in self.problems))

    def __str__(self) -> str:
        return "\n".join(str(p) for p in self.problems)


# --------------------------------------------------------------------------
# The configuration
# --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class Listen:
    """An address and port to listen on; port 0 asks for an ephemeral one.

    ``host`` is bare (no brackets around IPv6), as Twisted's ``interface``
    argument wants it; ``str()`` gives the "address:port" form back.
    """

    host: str
    port: int

    def __str__(self) -> str:
        if ":" in self.host:
            return f"[{self.host}]:{self.port}"
        return f"{self.host}:{self.port}"

    @classmethod
    def parse(cls, text: str) -> Listen:
        """Parse "address:port" ("[v6]:port" for IPv6); ValueError says why not."""

        def bad(reason: str) -> ValueError:
            return ValueError(f"{_LISTEN_EXAMPLE}, got {_quote(text)} ({reason})")

        if text.startswith("["):
            close = text.find("]")
            if close < 0:
                raise bad('"]" is missing')
            host, rest = text[1:close], text[close + 1 :]
            if not rest.startswith(":"):
                raise bad('expected ":port" after "]"')
            port_text = rest[1:]
            if not _is_ipv6(host):
                raise bad(f"{_quote(host)} is not an IPv6 address")
        else:
            if ":" not in text:
                if _DIGITS_RE.fullmatch(text):
                    raise bad(f'the address is missing; for all interfaces write "0.0.0.0:{text}"')
                raise bad("the port is missing")
            host, _, port_text = text.rpartition(":")
            if ":" in host:
                raise bad("an IPv6 address goes in brackets")
            if not host:
                raise bad('the address is missing; for all interfaces write "0.0.0.0"')
            if not _is_host(host):
                raise bad(f"{_quote(host)} is not an IP address or host name")
        if not port_text:
            raise bad("the port is missing")
        if not _DIGITS_RE.fullmatch(port_text):
            raise bad("the port must be a number")
        port = int(port_text)
        if port > 65535:
            raise bad("the port must be 0-65535")
        return cls(host=host, port=port)


class _Missing:
    """Marks a key absent from the file, apart from a value that was bad (None)."""


_MISSING = _Missing()

_SECTIONS = (
    "pbx", "sip", "registrar", "security", "admin", "dialplan", "users", "plugins",
)

# Words people reach for that are spelled otherwise here.
_ALIASES = {
    "realm": "domain",
    "secret": "password",
    "pin": "voicemail_pin",
    "display_name": "name",
    "expires": "default_expires_s",
}


class _Problems:
    def __init__(self, file: str) -> None:
        self.file = file
        self.items: list[ConfigProblem] = []

    def add(self, key: _Key, message: str) -> None:
        self.items.append(ConfigProblem(file=self.file, key=_dotted(key), message=message))


class _Table:
    """One TOML table being read: each getter checks one key, `finish` flags the rest.

    A getter that finds a bad value records the problem, remembers the key
    as bad (see `ok`) and returns the default so reading can go on.
    """

    def __init__(
        self, problems: _Problems, key: _Key, data: Mapping[str, object], base_dir: Path
    ) -> None:
        self.problems = problems
        self.key = key
        self.base_dir = base_dir
        self._data = data
        self._known: list[str] = []
        self._bad: set[str] = set()

    # -- bookkeeping

    def _get(self, name: str) -> object:
        self._known.append(name)
        return self._data.get(name, _MISSING)

    def has(self, name: str) -> bool:
        return name in self._data

    def ok(self, *names: str) -> bool:
        """Whether none of these keys had a problem."""
        return not self._bad.intersection(names)

    def error(self, name: str, message: str) -> None:
        self._bad.add(name)
        self.problems.add((*self.key, name), message)

    def error_here(self, message: str) -> None:
        self.problems.add(self.key, message)

    def _wrong_type(self, name: str, expected: str, value: object, *, secret: bool = False) -> None:
        got = _kind(value) if secret else _describe(value)
        self.error(name, f"expected {expected}, got {got}")

    def finish(self) -> None:
        """Report every key no getter asked for; a typo must not pass silently."""
        for name in self._data:
            if name in self._known:
                continue
            what = "section" if not self.key else "key"
            hint = _ALIASES.get(name)
            if hint not in self._known:
                close = difflib.get_close_matches(name, self._known, n=1, cutoff=0.6)
                hint = close[0] if close else None
            message = f"unknown {what}"
            if self.key and name in _SECTIONS:
                # TOML puts every key after a [header] into that table.
                message += f"; [{name}] is a section: move it above [{self.key[0]}] or give it"
                message += f" its own [{name}] header"
            elif hint is not None:
                message += f"; did you mean {_quote(hint)}?"
            elif self._known:
                message += "; expected one of " + ", ".join(self._known)
            self.problems.add((*self.key, name), message)

    def take_all(self) -> Iterator[tuple[str, object]]:
        """Every key of a table whose keys are data (the users)."""
        for name, value in self._data.items():
            self._known.append(name)
            yield name, value

    # -- values

    def table(self, name: str, *, example: str | None = None) -> _Table:
        value = self._get(name)
        if isinstance(value, _Missing):
            value = {}
        elif not isinstance(value, Mapping):
            self._wrong_type(name, f"a table {example or f'[{name}]'}", value)
            value = {}
        return _Table(self.problems, (*self.key, name), value, self.base_dir)

    def boolean(self, name: str, default: bool) -> bool:
        value = self._get(name)
        if isinstance(value, _Missing):
            return default
        if not isinstance(value, bool):
            self._wrong_type(name, "true or false", value)
            return default
        return value

    def integer(self, name: str, default: int, *, minimum: int) -> int:
        value = self._get(name)
        if isinstance(value, _Missing):
            return default
        if isinstance(value, bool) or not isinstance(value, int):
            self._wrong_type(name, f"an integer of at least {minimum}", value)
            return default
        if value < minimum:
            self.error(name, f"expected an integer of at least {minimum}, got {value}")
            return default
        return value

    def number(self, name: str, default: float, *, minimum: float) -> float:
        value = self._get(name)
        if isinstance(value, _Missing):
            return default
        if isinstance(value, bool) or not isinstance(value, int | float):
            self._wrong_type(name, f"a number of at least {minimum:g}", value)
            return default
        if not (minimum <= value < float("inf")):  # also rejects nan
            self.error(name, f"expected a number of at least {minimum:g}, got {value}")
            return default
        return float(value)

    @overload
    def string(self, name: str, default: str, *, secret: bool = False) -> str: ...
    @overload
    def string(self, name: str, default: None, *, secret: bool = False) -> str | None: ...
    def string(self, name: str, default: str | None, *, secret: bool = False) -> str | None:
        value = self._string(name, secret=secret)
        if value is None or isinstance(value, _Missing):
            return default
        return value

    def _string(self, name: str, *, secret: bool = False) -> str | _Missing | None:
        """A non-empty string on one line, None if bad, _MISSING if absent."""
        value = self._get(name)
        if isinstance(value, _Missing):
            return value
        if not isinstance(value, str):
            self._wrong_type(name, "a string", value, secret=secret)
            return None
        if not value:
            self.error(name, 'expected a non-empty string, got ""')
            return None
        if _CONTROL_RE.search(value):
            self.error(name, "expected a single line without control characters")
            return None
        return value

    def choice(self, name: str, default: str, choices: tuple[str, ...]) -> str:
        value = self._get(name)
        if isinstance(value, _Missing):
            return default
        if value not in choices:
            expected = "one of " + ", ".join(_quote(c) for c in choices)
            self.error(name, f"expected {expected}, got {_describe(value)}")
            return default
        assert isinstance(value, str)
        return value

    def host(self, name: str, *, required: str | None = None) -> str | None:
        """A host name or IP address (IPv6 with or without brackets), stored bare."""
        value = self._string(name)
        if isinstance(value, _Missing):
            if required is not None:
                self.error(name, f"required: {required}")
            return None
        if value is None:
            return None
        bare = value[1:-1] if value.startswith("[") and value.endswith("]") else value
        if not (_is_host(bare) or _is_ipv6(bare)):
            self.error(name, f"expected a host name or IP address, got {_quote(value)}")
            return None
        return bare

    def listen(self, name: str) -> Listen | None:
        value = self._get(name)
        if isinstance(value, _Missing):
            return None
        if not isinstance(value, str):
            hint = ""
            if isinstance(value, int) and not isinstance(value, bool):
                hint = f'; for all interfaces write "0.0.0.0:{value}"'
            self.error(name, f"{_LISTEN_EXAMPLE}, got {_describe(value)}{hint}")
            return None
        try:
            return Listen.parse(value)
        except ValueError as e:
            self.error(name, str(e))
            return None

    def path(
        self,
        name: str,
        default: str | None = None,
        *,
        must_exist: bool = False,
        suffix: str | None = None,
    ) -> Path | None:
        """A path, resolved against the config file's directory."""
        value = self._string(name)
        if isinstance(value, _Missing):
            value = default
        if value is None:
            return None
        if value.startswith("~"):
            self.error(
                name,
                f'expected an absolute path or one relative to the config file ("~" is not'
                f" expanded), got {_quote(value)}",
            )
            return None
        resolved = (self.base_dir / value).resolve()
        if suffix is not None and resolved.suffix != suffix:
            self.error(name, f"expected a {suffix} file, got {_quote(value)}")
        elif must_exist:
            if not resolved.exists():
                # A relative path copied along with the file but not its
                # folder's neighbours is the usual cause: say where it was
                # looked for from, not only where.
                relative = "" if Path(value).is_absolute() else (
                    f" ({_quote(value)} is relative to the folder of the config file,"
                    f" {self.base_dir})")
                self.error(name, f"file not found: {resolved}{relative}")
            elif not resolved.is_file():
                self.error(name, f"not a file: {resolved}")
            elif not os.access(resolved, os.R_OK):
                self.error(name, f"file not readable: {resolved}")
        return resolved

    def hex_digest(self, name: str, pattern: re.Pattern[str], digits: str, what: str) -> str | None:
        value = self._string(name, secret=True)
        if value is None or isinstance(value, _Missing):
            return None
        if not pattern.fullmatch(value):
            got = f"{len(value)} characters"
            if len(value) == int(digits):
                got += ", not all hex digits"
            self.error(name, f"expected {digits} hex digits (the {what}), got {got}")
            return None
        return value.lower()

    def pin(self, name: str) -> str | None:
        """Digits, written as a string or as a TOML integer.

        An integer loses nothing: TOML forbids leading zeros in integers, so
        a PIN starting with 0 has to be written as a string anyway.
        """
        value = self._get(name)
        if isinstance(value, _Missing):
            return None
        if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
            return str(value)
        if isinstance(value, str) and _DIGITS_RE.fullmatch(value):
            return value
        got = "a string with other characters" if isinstance(value, str) else _kind(value)
        self.error(name, f'expected digits such as "1234", got {got}')
        return None


# --------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------


def _is_ipv6(text: str) -> bool:
    try:
        ipaddress.IPv6Address(text)
    except ValueError:
        return False
    return True


def _is_host(text: str) -> bool:
    """An IPv4 address or an RFC 1123 host name (IPv6 is checked apart)."""
    if len(text) > 253:
        return False
    try:
        ipaddress.IPv4Address(text)
    except ValueError:
        # A name whose last label is numeric would be a mistyped IPv4 address.
        return bool(_HOSTNAME_RE.fullmatch(text)) and not text.rsplit(".", 1)[-1].isdigit()
    return True


def _dotted(key: _Key) -> str:
    return ".".join(k if _BARE_KEY_RE.fullmatch(k) else json.dumps(k) for k in key)


def _quote(text: str) -> str:
    if len(text) > _MAX_SHOWN_CHARS:
        text = text[: _MAX_SHOWN_CHARS - 3] + "..."
    return json.dumps(text, ensure_ascii=False)


def _kind(value: object) -> str:
    """The TOML type of a value, with its article."""
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int):
        return "an integer"
    if isinstance(value, float):
        return "a float"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, Mapping):
        return "a table"
    return "a date or time"


def _describe(value: object) -> str:
    """The value as the administrator wrote it, and its type."""
    if isinstance(value, str):
        return f"{_quote(value)} (a string)"
    if isinstance(value, bool):
        return f"{'true' if value else 'false'} (a boolean)"
    if isinstance(value, int | float):
        return f"{value!r} ({_kind(value)})"
    return _kind(value)

"""The PBX configuration: one TOML file read into frozen dataclasses.

Theory of operation
-------------------
`load_config` reads the file with `tomllib` and hands the resulting dict to
`parse_config`, which walks every section once. Each value is checked where it
is read; a bad value is recorded as a `ConfigProblem` (file, dotted key, what
was expected, what was found) and the walk goes on with the default in its
place, so one run reports every problem at once [buildbot ConfigErrors, with
no global]. Keys nobody asked for are reported as unknown, with a "did you
mean" from `difflib`: a typo must stop start-up rather than silently leave a
default in force. Checks that tie two keys together (t1 < t2, min <= default
<= max, both TLS files or neither, distinct ports) run only when both keys
read cleanly, so one mistake is not reported twice. Only when the problem list
is empty are the dataclasses returned; otherwise `ConfigError` carries them
all.

Nothing here binds a socket or writes a file. Paths are resolved against the
directory of the config file (not the working directory, which twistd may
change) and only the files the PBX must read at start-up (TLS certificate and
key, dialplan module) are checked for existence. Secrets (passwords, HA1
hashes, voicemail PINs) are never echoed in error messages nor shown in
reprs, since both end up in logs.

On SIGHUP the service calls `load_config` again; if it raises, the old config
stays in force and the error is logged. `diff_users` tells it which users to
add, update and remove.
"""

from __future__ import annotations

import gc
import ipaddress
import pickle
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from functools import partial
from pathlib import Path
from types import MappingProxyType
from typing import Literal

from pbx.configtable import (
    _MISSING,
    ConfigError,
    ConfigProblem,
    Listen,
    _describe,
    _kind,
    _Missing,
    _Problems,
    _quote,
    _Table,
)
from pbx.sip.digest_server import ha1_of, has_ha1

__all__ = [
    "MAX_EXTENSION_CHARS",
    "PLUGINS_DIR",
    "SIP_TRANSPORTS",
    "AdminSection",
    "Config",
    "ConfigError",
    "ConfigProblem",
    "DialplanSection",
    "DigestAlgorithm",
    "Listen",
    "LogFormat",
    "PbxSection",
    "PluginConfig",
    "RegistrarSection",
    "SecuritySection",
    "SipSection",
    "UserConfig",
    "UsersDiff",
    "diff_users",
    "load_config",
    "parse_config",
]

LogFormat = Literal["text", "json"]
DigestAlgorithm = Literal["MD5", "SHA-256"]

# Limits of our own choosing, to keep values sane and messages short.
MAX_EXTENSION_CHARS = 64  # longer user parts are a mistake, not a phone number

# SIP names of the listeners, in the order they are reported and started.
SIP_TRANSPORTS = ("udp", "tcp", "tls", "ws", "wss")

# RFC 3261 §25.1: user = 1*( unreserved / escaped / user-unreserved ), minus
# the escapes and the user-unreserved punctuation (&=+$,;?/) that would need
# quoting in a URI: unreserved = alphanum / "-" / "_" / "." / "!" / "~" /
# "*" / "'" / "(" / ")". Digits-only extensions are a subset.
_EXTENSION_RE = re.compile(r"[A-Za-z0-9\-_.!~*'()]+")
# RFC 1123 §2.1 host name: labels of letters, digits and inner hyphens.
_MD5_HEX_RE = re.compile(r"[0-9a-fA-F]{32}")
_SHA256_HEX_RE = re.compile(r"[0-9a-fA-F]{64}")
# A plugin named by name: a Python identifier, so that it is a file name and a module name.
_PLUGIN_NAME_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
PLUGINS_DIR = Path(__file__).resolve().parent.parent / "plugins"
"""The product's plugins: the ``plugins/`` folder beside the `pbx` package (the
project's root in a source tree, site-packages once installed)."""
# TOML bare keys (TOML 1.0 §Keys); anything else is quoted in a dotted key.


# --------------------------------------------------------------------------
# Errors
# --------------------------------------------------------------------------





@dataclass(frozen=True, slots=True, kw_only=True)
class PbxSection:
    """[pbx]: where the PBX keeps its files and how it logs."""

    data_dir: Path  # absolute: SQLite database, voicemail, prompts, generated TLS
    debug: bool = False  # log whole SIP messages (under pbx.sip.wire)
    # One event per request answered (method, peer, status, Call-ID), routine
    # ones once an hour per phone (`pbx.core.request_log`). Lifecycle events
    # (registered, call started/ended, expired) are logged regardless.
    log_requests: bool = True
    log_format: LogFormat = "text"


@dataclass(frozen=True, slots=True, kw_only=True)
class SipSection:
    """[sip]: the domain served, the listeners and the RFC 3261 timers."""

    domain: str  # also the digest realm
    udp: Listen | None = None
    tcp: Listen | None = None
    tls: Listen | None = None
    ws: Listen | None = None
    wss: Listen | None = None
    # Both or neither. Neither, with tls or wss set: the service makes a
    # self-signed certificate in data_dir on first start.
    tls_cert: Path | None = None
    tls_key: Path | None = None
    public_address: str | None = None  # host for Via/Contact; None: derive from the listener
    user_agent: str = "pbx/0.1"
    t1_ms: int = 500  # RFC 3261 §17.1.1.1: RTT estimate
    t2_ms: int = 4000  # RFC 3261 §17.1.2.2: cap on non-INVITE retransmit interval
    t4_ms: int = 5000  # RFC 3261 §17.1.2.2: how long a message lingers in the network
    max_transactions: int = 100_000  # bound on the transaction table
    # Stream connections (TCP, TLS, WS, WSS); see pbx.transport.stream and .connections.
    message_timeout_s: float = 30.0  # a message must arrive whole this long after its first byte
    idle_timeout_s: float = 600.0  # a connection with no binding riding on it, silent this long
    handshake_timeout_s: float = 10.0  # a TLS handshake or WebSocket upgrade, from the accept
    max_connections: int = 10_000  # open at once; lowered at start-up to fit the open-file limit
    max_connections_per_source: int = 256  # from one address (an office NAT: 100+ phones)

    @property
    def listeners(self) -> Mapping[str, Listen]:
        """The transports that are enabled ("udp", "tcp", ...) and their address."""
        found = {name: getattr(self, name) for name in SIP_TRANSPORTS}
        return MappingProxyType({k: v for k, v in found.items() if v is not None})

    @property
    def needs_tls(self) -> bool:
        """Whether a certificate is needed (given, or to be generated)."""
        return self.tls is not None or self.wss is not None


@dataclass(frozen=True, slots=True, kw_only=True)
class RegistrarSection:
    """[registrar]: binding lifetimes (RFC 3261 §10.3) and limits."""

    min_expires_s: int = 60  # shorter requests get 423 Interval Too Brief
    max_expires_s: int = 3600  # longer requests are cut down to this
    default_expires_s: int = 3600  # when the REGISTER asks for none
    max_contacts_per_user: int = 10
    nonce_lifetime_s: int = 300
    # The digest algorithms enabled at all. Which of them a phone is offered
    # depends on its User-Agent (`sha256_user_agents`): deployed phones take
    # the first challenge whatever it is, and some give up on the whole 401
    # when it carries SHA-256 (baresip 1.0 / libre 1.1: "Register: Function
    # not implemented"; SIPp and the browser libraries answer MD5 only).
    digest_algorithms: tuple[DigestAlgorithm, ...] = ("SHA-256", "MD5")
    # Case-insensitive substrings of the User-Agent of phones known to answer
    # a SHA-256 challenge: they are offered SHA-256 first, then MD5 (RFC 8760
    # §2.4); every other phone MD5 alone, as Asterisk, Kamailio and
    # FreeSWITCH do by default. ("*",): every phone; (): none. Linphone
    # (belle-sip) was seen to take SHA-256 when it comes first, and to fall
    # back to MD5 when it knows only an MD5 hash of its password.
    sha256_user_agents: tuple[str, ...] = ("Linphone",)


@dataclass(frozen=True, slots=True, kw_only=True)
class SecuritySection:
    """[security]: answers to password guessing, and what one source address may send."""

    max_auth_failures: int = 10  # failures within the window before a cooldown
    failure_window_s: int = 60
    cooldown_s: int = 300  # how long a source is refused after too many failures
    slowdown_after: int = 3  # failures after which answers are delayed
    slowdown_s: float = 1.0  # the delay; 0 turns slowing down off
    log_file: Path | None = None  # one line per security event, for fail2ban
    # Messages one source address may send within source_window_s before all
    # it sends is dropped for source_block_s (pbx.core.pike); 0: no limit.
    max_messages_per_source: int = 2000
    source_window_s: float = 2.0
    source_block_s: float = 30.0


@dataclass(frozen=True, slots=True, kw_only=True)
class AdminSection:
    """[admin]: the place of the admin web (status pages, REST API, metrics), not built yet.

    It has no settings in this version. Its one key so far, ``http``, is
    refused rather than accepted: a key that is accepted must do what it
    says, and with nothing listening an administrator would look for the
    pages on a port that never answers, with a silent log.
    """


@dataclass(frozen=True, slots=True, kw_only=True)
class DialplanSection:
    """[dialplan]: the Python file that routes calls."""

    module: Path | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class PluginConfig:
    """[plugins.NAME]: a plugin's file and its own settings (free-form, the plugin's to check)."""

    name: str
    module: Path  # the .py file to import: a module, or a package's __init__.py
    settings: Mapping[str, object] = field(default_factory=dict)


@dataclass(frozen=True, slots=True, kw_only=True)
class UserConfig:
    """[users.<extension>]: one phone user.

    Credentials are either a ``password`` or stored hashes (``ha1`` for MD5,
    ``ha1_sha256`` for SHA-256, RFC 7616 §3.4.2), never both. A stored hash
    is only valid for the realm it was computed with, which is sip.domain.
    Secrets stay out of the repr so a logged config leaks nothing.
    """

    extension: str
    name: str | None = None
    password: str | None = field(default=None, repr=False)
    ha1: str | None = field(default=None, repr=False)  # 32 lowercase hex digits
    ha1_sha256: str | None = field(default=None, repr=False)  # 64 lowercase hex digits
    voicemail_pin: str | None = field(default=None, repr=False)  # digits
    enabled: bool = True

    def ha1_for(self, realm: str, algorithm: DigestAlgorithm) -> str | None:
        """H(extension:realm:password) for `algorithm`, or None if unknown.

        With a password the hash is computed for any realm; otherwise the
        stored hash for that algorithm is returned (it was made for
        sip.domain), or None when only the other algorithm's hash is stored,
        so the registrar offers only what it can verify. The ``-sess``
        variants use the same HA1. ``enabled`` is the caller's to check.
        The registrar asks `pbx.core.user_secrets` directly (compiled); both use
        the digest code's `pbx.sip.digest_server.ha1_of`.
        """
        return ha1_of(self, realm, algorithm)

    def has_ha1(self, algorithm: DigestAlgorithm) -> bool:
        """Whether `ha1_for` gives an HA1 for `algorithm` (not None), without hashing."""
        return has_ha1(self, algorithm)


@dataclass(frozen=True, slots=True, kw_only=True)
class Config:
    """A whole, checked configuration; ``users`` is keyed by extension, in file order."""

    path: Path
    pbx: PbxSection
    sip: SipSection
    registrar: RegistrarSection
    security: SecuritySection
    admin: AdminSection
    dialplan: DialplanSection
    users: Mapping[str, UserConfig]
    plugins: tuple[PluginConfig, ...] = ()


@dataclass(frozen=True, slots=True, kw_only=True)
class UsersDiff:
    """What a reload changes among the users, as extensions."""

    added: tuple[str, ...]
    changed: tuple[str, ...]
    removed: tuple[str, ...]

    def __bool__(self) -> bool:
        return bool(self.added or self.changed or self.removed)


def diff_users(old: Config, new: Config) -> UsersDiff:
    """Compare the users of two configs, for the SIGHUP reload.

    A user counts as changed when any of its settings differ, or when the
    domain did: the realm is part of every digest credential, so all
    surviving users' credentials change with it. Extensions come in file
    order (removed ones in the old file's order).
    """
    realm_changed = old.sip.domain != new.sip.domain
    return UsersDiff(
        added=tuple(ext for ext in new.users if ext not in old.users),
        changed=tuple(
            ext
            for ext, user in new.users.items()
            if ext in old.users and (realm_changed or old.users[ext] != user)
        ),
        removed=tuple(ext for ext in old.users if ext not in new.users),
    )


# --------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------


def load_config(path: str | Path) -> Config:
    """Read and check a TOML config file; raise ConfigError listing every problem."""
    path = Path(path).resolve()
    file = str(path)
    try:
        with path.open("rb") as f:
            data = tomllib.load(f)
    except OSError as e:
        reason = e.strerror or str(e)
        message = f"cannot read: {reason}"
        raise ConfigError([ConfigProblem(file=file, key="", message=message)]) from None
    except UnicodeDecodeError as e:
        message = f"not UTF-8 text: byte {e.start} cannot be decoded"
        raise ConfigError([ConfigProblem(file=file, key="", message=message)]) from None
    except tomllib.TOMLDecodeError as e:
        message = f"invalid TOML: {e}"
        raise ConfigError([ConfigProblem(file=file, key="", message=message)]) from None
    config = parse_config(data, file)
    # The users' objects were made while tomllib's whole document was alive,
    # scattered among its temporaries, so the allocator could give none of
    # that memory back once they are freed: about 70 MB for good with
    # 100,000 users. Freeing the document (it holds reference cycles), then
    # packing the users, dropping them and unpacking them into fresh memory
    # leaves them side by side and lets the old memory go (measured: 126 MB
    # resident after loading such a file, 55 MB with this).
    del data
    gc.collect()
    packed = pickle.dumps(dict(config.users), protocol=pickle.HIGHEST_PROTOCOL)
    config = replace(config, users={})  # the last reference to the scattered users
    users: dict[str, UserConfig] = pickle.loads(packed)
    return replace(config, users=users)


def parse_config(
    data: Mapping[str, object], source: str, *, base_dir: Path | None = None,
    plugins_dir: Path | None = None,
) -> Config:
    """Check an already-decoded config; `source` names the file in messages.

    Relative paths are resolved against `base_dir`, by default the directory
    of `source`; plugins named without a path are looked for in
    `plugins_dir`, by default the product's `PLUGINS_DIR`.
    """
    path = Path(source).resolve()
    problems = _Problems(source)
    root = _Table(problems, (), data, base_dir or path.parent)
    pbx = _read_pbx(root.table("pbx"))
    sip = _read_sip(root.table("sip"))
    registrar = _read_registrar(root.table("registrar"))
    security = _read_security(root.table("security"))
    admin = _read_admin(root.table("admin"))
    dialplan = _read_dialplan(root.table("dialplan"))
    users = _read_users(root.table("users", example="[users.1001]"))
    plugins = _read_plugins(root.table("plugins", example="[plugins.voicemail]"),
                            plugins_dir or PLUGINS_DIR)
    root.finish()
    _check_ports(problems, sip)
    if problems.items:
        raise ConfigError(problems.items)
    return Config(
        path=path,
        pbx=pbx,
        sip=sip,
        registrar=registrar,
        security=security,
        admin=admin,
        dialplan=dialplan,
        users=MappingProxyType(users),
        plugins=plugins,
    )


def _read_pbx(t: _Table) -> PbxSection:
    data_dir = t.path("data_dir", default="var")
    debug = t.boolean("debug", False)
    log_requests = t.boolean("log_requests", True)
    log_format: LogFormat = "text"
    if t.choice("log_format", "text", ("text", "json")) == "json":
        log_format = "json"
    t.finish()
    return PbxSection(data_dir=data_dir or Path(), debug=debug, log_format=log_format,
                      log_requests=log_requests)


_SIP = SipSection(domain="")


def _read_sip(t: _Table) -> SipSection:
    domain = t.host("domain", required='the SIP domain this PBX serves, such as "pbx.example.org"')
    found = {name: t.listen(name) for name in SIP_TRANSPORTS}
    if not any(found.values()) and t.ok(*SIP_TRANSPORTS):
        t.error_here("expected at least one listener: " + ", ".join(SIP_TRANSPORTS))
    tls_cert = t.path("tls_cert", must_exist=True)
    tls_key = t.path("tls_key", must_exist=True)
    for given, missing in (("tls_cert", "tls_key"), ("tls_key", "tls_cert")):
        if t.has(given) and not t.has(missing):
            t.error(
                missing,
                f"expected together with sip.{given}: give both, or neither to have"
                " a self-signed certificate made in pbx.data_dir",
            )
    public_address = t.host("public_address")
    user_agent = t.string("user_agent", _SIP.user_agent)
    t1_ms = t.integer("t1_ms", _SIP.t1_ms, minimum=1)
    t2_ms = t.integer("t2_ms", _SIP.t2_ms, minimum=1)
    t4_ms = t.integer("t4_ms", _SIP.t4_ms, minimum=1)
    if t.ok("t1_ms", "t2_ms") and t2_ms <= t1_ms:
        t.error("t2_ms", f"expected more than sip.t1_ms ({t1_ms}), got {t2_ms}")
    max_transactions = t.integer("max_transactions", _SIP.max_transactions, minimum=1)
    # A deadline under 0.1 s would close healthy connections on a busy machine.
    message_timeout_s = t.number("message_timeout_s", _SIP.message_timeout_s, minimum=0.1)
    idle_timeout_s = t.number("idle_timeout_s", _SIP.idle_timeout_s, minimum=0.1)
    handshake_timeout_s = t.number("handshake_timeout_s", _SIP.handshake_timeout_s,
                                   minimum=0.1)
    max_connections = t.integer("max_connections", _SIP.max_connections, minimum=1)
    max_per_source = t.integer("max_connections_per_source",
                               _SIP.max_connections_per_source, minimum=1)
    t.finish()
    return SipSection(
        domain=domain or "",
        **found,
        tls_cert=tls_cert,
        tls_key=tls_key,
        public_address=public_address,
        user_agent=user_agent,
        t1_ms=t1_ms,
        t2_ms=t2_ms,
        t4_ms=t4_ms,
        max_transactions=max_transactions,
        message_timeout_s=message_timeout_s,
        idle_timeout_s=idle_timeout_s,
        handshake_timeout_s=handshake_timeout_s,
        max_connections=max_connections,
        max_connections_per_source=max_per_source,
    )


_REGISTRAR = RegistrarSection()


def _read_registrar(t: _Table) -> RegistrarSection:
    d = _REGISTRAR
    min_s = t.integer("min_expires_s", d.min_expires_s, minimum=1)
    max_s = t.integer("max_expires_s", d.max_expires_s, minimum=1)
    default_s = t.integer("default_expires_s", d.default_expires_s, minimum=1)
    if t.ok("min_expires_s", "max_expires_s") and min_s > max_s:
        t.error("min_expires_s", f"expected at most registrar.max_expires_s ({max_s}), got {min_s}")
    elif t.ok("min_expires_s", "max_expires_s", "default_expires_s") and not (
        min_s <= default_s <= max_s
    ):
        t.error(
            "default_expires_s",
            f"expected between registrar.min_expires_s ({min_s})"
            f" and registrar.max_expires_s ({max_s}), got {default_s}",
        )
    section = RegistrarSection(
        min_expires_s=min_s,
        max_expires_s=max_s,
        default_expires_s=default_s,
        max_contacts_per_user=t.integer(
            "max_contacts_per_user", d.max_contacts_per_user, minimum=1
        ),
        nonce_lifetime_s=t.integer("nonce_lifetime_s", d.nonce_lifetime_s, minimum=1),
        digest_algorithms=_digest_algorithms(t, d.digest_algorithms),
        sha256_user_agents=_user_agent_patterns(t, d.sha256_user_agents),
    )
    t.finish()
    return section


def _digest_algorithms(
    t: _Table, default: tuple[DigestAlgorithm, ...]
) -> tuple[DigestAlgorithm, ...]:
    value = t._get("digest_algorithms")
    if value is _MISSING:
        return default
    expected = 'a list of the algorithms enabled, "SHA-256" and/or "MD5", e.g. ["SHA-256", "MD5"]'
    if not isinstance(value, list) or not value:
        t._wrong_type("digest_algorithms", expected, value)
        return default
    chosen: list[DigestAlgorithm] = []
    for item in value:
        if item not in ("SHA-256", "MD5") or item in chosen:
            t.error("digest_algorithms", f"expected {expected}, got {_describe(value)}")
            return default
        chosen.append(item)
    return tuple(chosen)


def _user_agent_patterns(t: _Table, default: tuple[str, ...]) -> tuple[str, ...]:
    value = t._get("sha256_user_agents")
    if value is _MISSING:
        return default
    expected = ('a list of User-Agent substrings, e.g. ["Linphone"]; ["*"] for every phone, '
                '[] for none')
    if not isinstance(value, list) or not all(isinstance(item, str) and item.strip()
                                              for item in value):
        t._wrong_type("sha256_user_agents", expected, value)
        return default
    return tuple(value)


_SECURITY = SecuritySection()


def _read_security(t: _Table) -> SecuritySection:
    d = _SECURITY
    section = SecuritySection(
        max_auth_failures=t.integer("max_auth_failures", d.max_auth_failures, minimum=1),
        failure_window_s=t.integer("failure_window_s", d.failure_window_s, minimum=1),
        cooldown_s=t.integer("cooldown_s", d.cooldown_s, minimum=1),
        slowdown_after=t.integer("slowdown_after", d.slowdown_after, minimum=1),
        slowdown_s=t.number("slowdown_s", d.slowdown_s, minimum=0.0),
        log_file=t.path("log_file"),
        max_messages_per_source=t.integer("max_messages_per_source",
                                          d.max_messages_per_source, minimum=0),
        source_window_s=t.number("source_window_s", d.source_window_s, minimum=0.001),
        source_block_s=t.number("source_block_s", d.source_block_s, minimum=0.0),
    )
    t.finish()
    return section


def _read_admin(t: _Table) -> AdminSection:
    if t.has("http"):
        t._get("http")  # known, so that finish() does not call it a typo as well
        t.error("http", "the admin web (status pages, REST API, metrics) is not built in this"
                " version, so nothing would listen there; remove the key")
    t.finish()
    return AdminSection()


def _read_dialplan(t: _Table) -> DialplanSection:
    section = DialplanSection(module=t.path("module", must_exist=True, suffix=".py"))
    t.finish()
    return section


def _read_plugins(t: _Table, plugins_dir: Path) -> tuple[PluginConfig, ...]:
    """One table per plugin: where its code is (`_plugin_module`) and its ``settings`` table."""
    plugins: list[PluginConfig] = []
    for name, _ in list(t.take_all()):
        table = t.table(name, example=f"[plugins.{name}]")
        module = _plugin_module(table, name, plugins_dir)
        settings = table._get("settings")
        if isinstance(settings, _Missing):
            settings = {}
        elif not isinstance(settings, Mapping):
            table._wrong_type("settings", f"a table [plugins.{name}.settings]", settings)
            settings = {}
        table.finish()
        if module is not None:
            plugins.append(PluginConfig(name=name, module=module,
                                        settings=MappingProxyType(dict(settings))))
    return tuple(plugins)


def _plugin_module(table: _Table, name: str, plugins_dir: Path) -> Path | None:
    """The file to import for ``[plugins.NAME]``: a plugin's module or package ``__init__.py``.

    ``module`` is a path when it ends in ``.py`` or holds a ``/`` (a file, or
    the folder of a package), relative to the config file like every path;
    otherwise it names one of the product's plugins, in `plugins_dir`; and
    without it, the table's own name does. A product plugin is
    ``plugins_dir/NAME.py`` or the package ``plugins_dir/NAME/``.
    """
    value = table._string("module")
    if value is None:
        return None  # not a string: reported
    if isinstance(value, _Missing):
        wanted, report = name, table.error_here
    elif value.endswith(".py"):
        return table.path("module", must_exist=True, suffix=".py")
    elif "/" in value or "\\" in value:
        folder = table.path("module")
        if folder is None or not table.ok("module"):
            return None
        if not (folder / "__init__.py").is_file():
            found = ("it holds no __init__.py" if folder.is_dir() else
                     "not a folder" if folder.exists() else "not found")
            table.error("module", f"expected a plugin's .py file or a package folder holding"
                                  f" __init__.py, got {_quote(value)} ({folder}: {found})")
            return None
        return folder / "__init__.py"
    else:
        wanted, report = value, partial(table.error, "module")
    if _PLUGIN_NAME_RE.fullmatch(wanted):
        for candidate in (plugins_dir / f"{wanted}.py", plugins_dir / wanted / "__init__.py"):
            if candidate.is_file():
                return candidate
    shipped = _product_plugins(plugins_dir)
    report(f"no plugin {_quote(wanted)} among the product's plugins in {plugins_dir} (there "
           + (f"are: {', '.join(shipped)}" if shipped else "are none yet")
           + '); for a plugin of your own, give module = "path/to/plugin.py", relative to'
           " the folder of the config file")
    return None


def _product_plugins(plugins_dir: Path) -> list[str]:
    """The names of the plugins in `plugins_dir`, for messages."""
    if not plugins_dir.is_dir():
        return []
    found = {path.stem for path in plugins_dir.glob("*.py") if path.name != "__init__.py"}
    found |= {path.parent.name for path in plugins_dir.glob("*/__init__.py")}
    return sorted(name for name in found if _PLUGIN_NAME_RE.fullmatch(name))


def _read_users(t: _Table) -> dict[str, UserConfig]:
    users: dict[str, UserConfig] = {}
    for ext, value in t.take_all():
        key = (*t.key, ext)
        if len(ext) > MAX_EXTENSION_CHARS or not _EXTENSION_RE.fullmatch(ext):
            t.problems.add(
                key,
                "expected an extension: digits, or a SIP user name of letters, digits"
                f" and -_.!~*'() (at most {MAX_EXTENSION_CHARS}), got {_quote(ext)}",
            )
        if not isinstance(value, Mapping):
            t.problems.add(key, f"expected a table such as [users.1001], got {_kind(value)}")
            continue
        users[ext] = _read_user(_Table(t.problems, key, value, t.base_dir), ext)
    return users


def _read_user(t: _Table, ext: str) -> UserConfig:
    name = t.string("name", None)
    password = t.string("password", None, secret=True)
    ha1 = t.hex_digest("ha1", _MD5_HEX_RE, "32", f'MD5 of "{ext}:<domain>:<password>"')
    ha1_sha256 = t.hex_digest(
        "ha1_sha256", _SHA256_HEX_RE, "64", f'SHA-256 of "{ext}:<domain>:<password>"'
    )
    if t.has("password") and (t.has("ha1") or t.has("ha1_sha256")):
        t.error_here("expected either password or ha1/ha1_sha256, not both")
    elif not (t.has("password") or t.has("ha1") or t.has("ha1_sha256")):
        t.error_here("expected credentials: password, or ha1 and/or ha1_sha256")
    pin = t.pin("voicemail_pin")
    enabled = t.boolean("enabled", True)
    t.finish()
    return UserConfig(
        extension=ext,
        name=name,
        password=password,
        ha1=ha1,
        ha1_sha256=ha1_sha256,
        voicemail_pin=pin,
        enabled=enabled,
    )


def _check_ports(problems: _Problems, sip: SipSection) -> None:
    """Two TCP listeners on one port would fail at bind time; say so now."""
    stream = {"sip.tcp": sip.tcp, "sip.tls": sip.tls, "sip.ws": sip.ws, "sip.wss": sip.wss}
    taken: list[tuple[str, Listen]] = []
    for key, listen in stream.items():
        if listen is None or listen.port == 0:
            continue
        for other_key, other in taken:
            if other.port == listen.port and _overlap(other.host, listen.host):
                problems.add(
                    tuple(key.split(".")),
                    f"port {listen.port} is already used by {other_key} ({_quote(str(other))});"
                    " TCP, TLS and WebSocket listeners need distinct ports",
                )
                break
        taken.append((key, listen))


def _overlap(a: str, b: str) -> bool:
    """Whether binding both hosts to one port would collide.

    "::" is taken as dual-stack (Linux's default, which Twisted keeps), so
    it collides with everything; "0.0.0.0" with anything but IPv6 literals.
    A host name may resolve to anything, so it collides with a wildcard.
    """
    if a == b:
        return True
    ip_a, ip_b = _ip(a), _ip(b)
    return any(
        wild is not None
        and wild.is_unspecified
        and (wild.version == 6 or other is None or other.version == 4)
        for wild, other in ((ip_a, ip_b), (ip_b, ip_a))
    )


def _ip(host: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        return None


# --------------------------------------------------------------------------
# Reading values
# --------------------------------------------------------------------------




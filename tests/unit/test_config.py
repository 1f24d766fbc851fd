"""Tests of the configuration loader (`pbx.config`).

What an administrator sees is the message: each error test asserts the whole
line, file and dotted key included. Expected HA1 values are computed here
with plain hashlib from RFC 7616 §3.4.2 (H(user ":" realm ":" password)).
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import shutil
import tomllib
from pathlib import Path

import pytest

from pbx.config import (
    Config,
    ConfigError,
    ConfigProblem,
    Listen,
    UserConfig,
    diff_users,
    load_config,
    parse_config,
)
from pbx.sip.digest import compute_ha1

SHIPPED = Path(__file__).resolve().parents[2] / "etc" / "pbx.toml"
SOURCE = "/srv/pbx/pbx.toml"
SIP = '[sip]\ndomain = "pbx.test"\nudp = "127.0.0.1:0"\n'


def config_text(sip: str = "", rest: str = "") -> str:
    """A valid minimal config, with lines added to [sip] and tables after it."""
    return f"{SIP}{sip}\n{rest}"


def parse(text: str, base_dir: Path | None = None) -> Config:
    return parse_config(tomllib.loads(text), SOURCE, base_dir=base_dir)


def problems(text: str, base_dir: Path | None = None) -> list[str]:
    with pytest.raises(ConfigError) as info:
        parse(text, base_dir)
    return [str(p) for p in info.value.problems]


def md5_hex(text: str) -> str:
    return hashlib.md5(text.encode()).hexdigest()


def sha256_hex(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


# --------------------------------------------------------------------------
# The shipped file
# --------------------------------------------------------------------------


def test_shipped_config_loads_as_is() -> None:
    config = load_config(SHIPPED)

    assert config.path == SHIPPED
    assert config.pbx.data_dir == SHIPPED.parent.parent / "var"
    assert {k: str(v) for k, v in config.sip.listeners.items()} == {
        "udp": "0.0.0.0:5060",
        "tcp": "0.0.0.0:5060",
        "tls": "0.0.0.0:5061",
        "ws": "0.0.0.0:5066",
    }
    assert config.sip.needs_tls and config.sip.tls_cert is None and config.sip.tls_key is None
    assert config.dialplan.module == SHIPPED.parent.parent / "dialplans" / "office.py"
    assert [(u.extension, u.name) for u in config.users.values()] == [
        ("1001", "Alice"),
        ("1002", "Bob"),
        ("1003", "Carol"),
    ]


def test_shipped_config_works_when_copied_with_its_neighbour_folders(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """What the README promises: etc/ and dialplans/ copied side by side work as shipped."""
    shutil.copytree(SHIPPED.parent, tmp_path / "office" / "etc")
    shutil.copytree(SHIPPED.parents[1] / "dialplans", tmp_path / "office" / "dialplans")
    monkeypatch.chdir(tmp_path)  # started from elsewhere: the working directory plays no part

    config = load_config(tmp_path / "office" / "etc" / "pbx.toml")

    assert config.dialplan.module == tmp_path / "office" / "dialplans" / "office.py"
    assert config.dialplan.module.read_bytes() == (
        SHIPPED.parents[1] / "dialplans" / "office.py").read_bytes()
    assert config.pbx.data_dir == tmp_path / "office" / "var"


def test_shipped_config_copied_alone_says_where_the_dialplan_was_looked_for(
        tmp_path: Path) -> None:
    (tmp_path / "etc").mkdir()
    shutil.copy(SHIPPED, tmp_path / "etc" / "pbx.toml")

    with pytest.raises(ConfigError) as info:
        load_config(tmp_path / "etc" / "pbx.toml")

    assert [str(p) for p in info.value.problems] == [
        f"{tmp_path / 'etc' / 'pbx.toml'}: dialplan.module: file not found:"
        f" {tmp_path / 'dialplans' / 'office.py'} (\"../dialplans/office.py\" is"
        f" relative to the folder of the config file, {tmp_path / 'etc'})"
    ]


def test_loaded_users_are_what_the_file_says_in_file_order(tmp_path: Path) -> None:
    """load_config rebuilds the users in fresh memory (see its comment): nothing lost."""
    users = "".join(
        f'[users.{1000 + n}]\nname = "User {n}"\npassword = "pw {n}"\nvoicemail_pin = "{n:04d}"\n'
        for n in range(50)) + '[users.carol]\nha1 = "' + "a" * 32 + '"\nenabled = false\n'
    text = config_text(rest=users)
    path = tmp_path / "pbx.toml"
    path.write_text(text)

    loaded = load_config(path)
    parsed = parse_config(tomllib.loads(text), str(path))

    assert list(loaded.users) == list(parsed.users) == [str(1000 + n) for n in range(50)] + [
        "carol"]
    for extension, user in parsed.users.items():
        again = loaded.users[extension]
        assert (again.extension, again.name, again.password, again.ha1, again.ha1_sha256,
                again.voicemail_pin, again.enabled) == (
            user.extension, user.name, user.password, user.ha1, user.ha1_sha256,
            user.voicemail_pin, user.enabled)
    assert loaded.users["1007"].ha1_for("pbx.test", "MD5") == md5_hex("1007:pbx.test:pw 7")
    assert loaded.users["carol"].enabled is False
    with pytest.raises(dataclasses.FrozenInstanceError):
        loaded.users["1001"].name = "x"  # type: ignore[misc]


def test_shipped_hashes_match_the_documented_password_and_domain() -> None:
    config = load_config(SHIPPED)
    carol = config.users["1003"]
    realm = config.sip.domain

    assert carol.password is None
    assert carol.ha1 == md5_hex(f"1003:{realm}:carol-change-me")
    assert carol.ha1_sha256 == sha256_hex(f"1003:{realm}:carol-change-me")
    assert config.users["1001"].ha1_for(realm, "MD5") == md5_hex(f"1001:{realm}:alice-change-me")


def test_minimal_config_gets_the_defaults() -> None:
    config = parse(SIP)

    assert config.path == Path(SOURCE)
    assert config.pbx.data_dir == Path("/srv/pbx/var")
    assert (config.pbx.debug, config.pbx.log_format) == (False, "text")
    assert config.sip.udp == Listen(host="127.0.0.1", port=0)
    assert config.sip.tcp is None and config.sip.public_address is None
    assert (config.sip.t1_ms, config.sip.t2_ms, config.sip.t4_ms) == (500, 4000, 5000)
    assert config.sip.user_agent == "pbx/0.1"
    assert config.registrar.default_expires_s == 3600
    assert config.security.slowdown_s == 1.0 and config.security.log_file is None
    assert config.dialplan.module is None
    assert dict(config.users) == {}


def test_config_is_immutable() -> None:
    config = parse(config_text(rest='[users.1001]\npassword = "pw"\n'))

    with pytest.raises(dataclasses.FrozenInstanceError):
        config.sip.domain = "other.test"  # type: ignore[misc]
    with pytest.raises(TypeError):
        config.users["1002"] = config.users["1001"]  # type: ignore[index]


# --------------------------------------------------------------------------
# Paths
# --------------------------------------------------------------------------


def test_relative_paths_resolve_against_the_config_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    conf = tmp_path / "conf"
    (conf / "tls").mkdir(parents=True)
    (conf / "tls" / "pbx.crt").write_text("cert")
    (conf / "tls" / "pbx.key").write_text("key")
    (tmp_path / "plans").mkdir()
    (tmp_path / "plans" / "office.py").write_text("")
    (conf / "pbx.toml").write_text(
        '[pbx]\ndata_dir = "var"\n'
        '[sip]\ndomain = "pbx.test"\ntls = "[::1]:0"\n'
        'tls_cert = "tls/pbx.crt"\ntls_key = "tls/pbx.key"\n'
        '[security]\nlog_file = "../logs/security.log"\n'
        '[dialplan]\nmodule = "../plans/office.py"\n'
    )
    monkeypatch.chdir(tmp_path / "plans")  # the working directory must not matter

    config = load_config("../conf/pbx.toml")

    assert config.path == conf / "pbx.toml"
    assert config.pbx.data_dir == conf / "var"
    assert config.sip.tls_cert == conf / "tls" / "pbx.crt"
    assert config.sip.tls_key == conf / "tls" / "pbx.key"
    assert config.security.log_file == tmp_path / "logs" / "security.log"
    assert config.dialplan.module == tmp_path / "plans" / "office.py"


def test_absolute_data_dir_is_kept(tmp_path: Path) -> None:
    config = parse(f'[pbx]\ndata_dir = "{tmp_path}/data"\n{SIP}')
    assert config.pbx.data_dir == tmp_path / "data"


def test_home_relative_path_is_refused() -> None:
    assert problems(f'[pbx]\ndata_dir = "~/pbx"\n{SIP}') == [
        f"{SOURCE}: pbx.data_dir: expected an absolute path or one relative to the config"
        ' file ("~" is not expanded), got "~/pbx"'
    ]


def test_tls_certificate_file_not_found(tmp_path: Path) -> None:
    (tmp_path / "pbx.key").write_text("key")
    text = config_text('tls = "0.0.0.0:5061"\ntls_cert = "pbx.crt"\ntls_key = "pbx.key"')

    assert problems(text, tmp_path) == [
        f"{SOURCE}: sip.tls_cert: file not found: {tmp_path / 'pbx.crt'}"
        f' ("pbx.crt" is relative to the folder of the config file, {tmp_path})'
    ]


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads every file")
def test_tls_key_not_readable(tmp_path: Path) -> None:
    (tmp_path / "pbx.crt").write_text("cert")
    (tmp_path / "pbx.key").write_text("key")
    (tmp_path / "pbx.key").chmod(0)
    text = config_text('tls_cert = "pbx.crt"\ntls_key = "pbx.key"')

    assert problems(text, tmp_path) == [
        f"{SOURCE}: sip.tls_key: file not readable: {tmp_path / 'pbx.key'}"
    ]


def test_tls_certificate_and_key_go_together(tmp_path: Path) -> None:
    (tmp_path / "pbx.crt").write_text("cert")

    assert problems(config_text('tls_cert = "pbx.crt"'), tmp_path) == [
        f"{SOURCE}: sip.tls_key: expected together with sip.tls_cert: give both, or neither"
        " to have a self-signed certificate made in pbx.data_dir"
    ]


def test_dialplan_module_must_exist_and_be_python(tmp_path: Path) -> None:
    (tmp_path / "office.txt").write_text("")

    assert problems(config_text(rest='[dialplan]\nmodule = "office.py"'), tmp_path) == [
        f"{SOURCE}: dialplan.module: file not found: {tmp_path / 'office.py'}"
        f' ("office.py" is relative to the folder of the config file, {tmp_path})'
    ]
    assert problems(config_text(rest=f'[dialplan]\nmodule = "{tmp_path}/x.py"')) == [
        f"{SOURCE}: dialplan.module: file not found: {tmp_path / 'x.py'}"
    ]
    assert problems(config_text(rest='[dialplan]\nmodule = "office.txt"'), tmp_path) == [
        f'{SOURCE}: dialplan.module: expected a .py file, got "office.txt"'
    ]


# --------------------------------------------------------------------------
# Listeners
# --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "host", "port"),
    [
        ("0.0.0.0:5060", "0.0.0.0", 5060),
        ("127.0.0.1:0", "127.0.0.1", 0),
        ("[::1]:5060", "::1", 5060),
        ("[2001:db8::7]:65535", "2001:db8::7", 65535),
        ("pbx.example.org:5061", "pbx.example.org", 5061),
    ],
)
def test_listen_parses_address_and_port(text: str, host: str, port: int) -> None:
    listen = Listen.parse(text)
    assert listen == Listen(host=host, port=port)
    assert str(listen) == text


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("5060", 'the address is missing; for all interfaces write "0.0.0.0:5060"'),
        ("host:", "the port is missing"),
        ("host:99999", "the port must be 0-65535"),
        ("host:50a0", "the port must be a number"),
        ("host:-1", "the port must be a number"),
        ("[::1]5060", 'expected ":port" after "]"'),
        ("[::1", '"]" is missing'),
        ("::1:5060", "an IPv6 address goes in brackets"),
        ("[127.0.0.1]:5060", '"127.0.0.1" is not an IPv6 address'),
        (":5060", 'the address is missing; for all interfaces write "0.0.0.0"'),
        ("10.0.0:5060", '"10.0.0" is not an IP address or host name'),
        ("bad_host:5060", '"bad_host" is not an IP address or host name'),
    ],
)
def test_bad_listen_values_name_key_and_expectation(text: str, reason: str) -> None:
    assert problems(config_text(f'tcp = "{text}"')) == [
        f'{SOURCE}: sip.tcp: expected "address:port" such as "0.0.0.0:5060" or'
        f' "[::1]:5060", got "{text}" ({reason})'
    ]


@pytest.mark.parametrize("value", ['"127.0.0.1:8080"', '"0.0.0.0:5060"', "8080"])
def test_admin_http_is_refused_until_the_admin_web_exists(value: str) -> None:
    # Accepted, it would promise pages on a port where nothing listens, with
    # a silent log; refused whatever its value, and not taken for a port
    # that the SIP listeners would collide with.
    text = config_text('tcp = "0.0.0.0:5060"', rest=f"[admin]\nhttp = {value}")
    assert problems(text) == [
        f"{SOURCE}: admin.http: the admin web (status pages, REST API, metrics) is not built"
        " in this version, so nothing would listen there; remove the key"
    ]


def test_an_empty_admin_section_is_accepted() -> None:
    assert parse(config_text(rest="[admin]\n")).sip.udp == Listen(host="127.0.0.1", port=0)


def test_listen_given_as_a_number_gets_a_hint() -> None:
    assert problems('[sip]\ndomain = "pbx.test"\nudp = 5060\n') == [
        f'{SOURCE}: sip.udp: expected "address:port" such as "0.0.0.0:5060" or "[::1]:5060",'
        ' got 5060 (an integer); for all interfaces write "0.0.0.0:5060"'
    ]


def test_at_least_one_listener_is_required() -> None:
    assert problems('[sip]\ndomain = "pbx.test"\n') == [
        f"{SOURCE}: sip: expected at least one listener: udp, tcp, tls, ws, wss"
    ]


def test_stream_listeners_need_distinct_ports() -> None:
    text = (
        '[sip]\ndomain = "pbx.test"\nudp = "0.0.0.0:5060"\ntcp = "0.0.0.0:5060"\n'
        'tls = "127.0.0.1:5060"\nws = "127.0.0.1:0"\nwss = "127.0.0.1:0"\n'
    )
    assert problems(text) == [
        f'{SOURCE}: sip.tls: port 5060 is already used by sip.tcp ("0.0.0.0:5060");'
        " TCP, TLS and WebSocket listeners need distinct ports"
    ]


@pytest.mark.parametrize(
    ("tcp", "tls", "collide"),
    [
        ("[::]:5060", "127.0.0.1:5060", True),  # "::" is dual-stack
        ("0.0.0.0:5060", "localhost:5060", True),
        ("0.0.0.0:5060", "[::1]:5060", False),  # different address families
        ("127.0.0.1:5060", "192.0.2.1:5060", False),
        ("0.0.0.0:0", "0.0.0.0:0", False),  # ephemeral ports never collide
    ],
)
def test_port_collisions_respect_addresses(tcp: str, tls: str, collide: bool) -> None:
    text = f'[sip]\ndomain = "pbx.test"\ntcp = "{tcp}"\ntls = "{tls}"\n'
    if collide:
        assert [p.split(": ")[1] for p in problems(text)] == ["sip.tls"]
    else:
        assert str(parse(text).sip.tls) == tls


# --------------------------------------------------------------------------
# Types and ranges
# --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            config_text('t1_ms = "500"'),
            'sip.t1_ms: expected an integer of at least 1, got "500" (a string)',
        ),
        (
            config_text(rest="[registrar]\nmax_contacts_per_user = true"),
            "registrar.max_contacts_per_user: expected an integer of at least 1,"
            " got true (a boolean)",
        ),
        (
            config_text("max_transactions = 1.5"),
            "sip.max_transactions: expected an integer of at least 1, got 1.5 (a float)",
        ),
        (
            config_text(rest="[security]\ncooldown_s = -300"),
            "security.cooldown_s: expected an integer of at least 1, got -300",
        ),
        (
            config_text(rest="[security]\nslowdown_s = -0.5"),
            "security.slowdown_s: expected a number of at least 0, got -0.5",
        ),
        (
            config_text(rest='[pbx]\ndebug = "yes"'),
            'pbx.debug: expected true or false, got "yes" (a string)',
        ),
        (
            config_text(rest='[pbx]\nlog_format = "xml"'),
            'pbx.log_format: expected one of "text", "json", got "xml" (a string)',
        ),
        (
            config_text('user_agent = ""'),
            'sip.user_agent: expected a non-empty string, got ""',
        ),
        (
            config_text('user_agent = "pbx\\r\\nX-Injected: 1"'),
            "sip.user_agent: expected a single line without control characters",
        ),
        (
            config_text('public_address = "192.0.2.1:5060"'),
            'sip.public_address: expected a host name or IP address, got "192.0.2.1:5060"',
        ),
        (
            f'admin = "127.0.0.1:8080"\n{SIP}',
            'admin: expected a table [admin], got "127.0.0.1:8080" (a string)',
        ),
    ],
)
def test_wrong_types_and_ranges_name_key_and_expectation(text: str, expected: str) -> None:
    assert problems(text) == [f"{SOURCE}: {expected}"]


def test_float_setting_accepts_an_integer() -> None:
    assert parse(config_text(rest="[security]\nslowdown_s = 2")).security.slowdown_s == 2.0


def test_public_address_is_stored_without_brackets() -> None:
    assert parse(config_text('public_address = "[2001:db8::1]"')).sip.public_address == (
        "2001:db8::1"
    )


def test_domain_is_required() -> None:
    assert problems('[sip]\nudp = "0.0.0.0:5060"\n') == [
        f'{SOURCE}: sip.domain: required: the SIP domain this PBX serves, such as "pbx.example.org"'
    ]


def test_t1_must_be_less_than_t2() -> None:
    assert problems(config_text("t1_ms = 4000")) == [
        f"{SOURCE}: sip.t2_ms: expected more than sip.t1_ms (4000), got 4000"
    ]


def test_expires_must_be_ordered() -> None:
    assert problems(config_text(rest="[registrar]\nmin_expires_s = 7200")) == [
        f"{SOURCE}: registrar.min_expires_s: expected at most registrar.max_expires_s (3600),"
        " got 7200"
    ]
    assert problems(config_text(rest="[registrar]\ndefault_expires_s = 30")) == [
        f"{SOURCE}: registrar.default_expires_s: expected between registrar.min_expires_s (60)"
        " and registrar.max_expires_s (3600), got 30"
    ]


def test_a_bad_value_is_not_reported_twice() -> None:
    # t1_ms is wrong; the t1 < t2 check must not pile on with the default.
    assert problems(config_text('t1_ms = "9000"\nt2_ms = 600')) == [
        f'{SOURCE}: sip.t1_ms: expected an integer of at least 1, got "9000" (a string)'
    ]


# --------------------------------------------------------------------------
# Reporting
# --------------------------------------------------------------------------


def test_every_problem_is_reported_at_once(tmp_path: Path) -> None:
    path = tmp_path / "pbx.toml"
    path.write_text(
        '[pbx]\nlog_format = "JSON"\n'
        '[sip]\ndomain = "pbx.test"\nudp = "5060"\nt1_ms = 0\n'
        '[registrar]\nmin_expires_s = "60"\n'
        '[users.1001]\npassword = "pw"\nha1 = "0123456789abcdef0123456789abcdef"\n'
    )
    with pytest.raises(ConfigError) as info:
        load_config(path)

    assert [p.key for p in info.value.problems] == [
        "pbx.log_format",
        "sip.udp",
        "sip.t1_ms",
        "registrar.min_expires_s",
        "users.1001",
    ]
    lines = str(info.value).splitlines()
    assert len(lines) == 5
    assert all(line.startswith(f"{path}: ") for line in lines)
    assert lines[-1] == f"{path}: users.1001: expected either password or ha1/ha1_sha256, not both"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (config_text('domian = "x"'), 'sip.domian: unknown key; did you mean "domain"?'),
        (config_text('realm = "x"'), 'sip.realm: unknown key; did you mean "domain"?'),
        (config_text(rest="[sipp]\nx = 1"), 'sipp: unknown section; did you mean "sip"?'),
        (
            config_text(rest='[user.1001]\npassword = "pw"'),
            'user: unknown section; did you mean "users"?',
        ),
        (
            config_text(rest='[users.1001]\npassword = "pw"\npasword = "pw"'),
            'users.1001.pasword: unknown key; did you mean "password"?',
        ),
        (
            config_text('admin = "127.0.0.1:8080"'),
            "sip.admin: unknown key; [admin] is a section: move it above [sip] or give it its"
            " own [admin] header",
        ),
        (
            config_text(rest="[admin]\nport = 8080"),
            "admin.port: unknown key",
        ),
    ],
)
def test_unknown_keys_are_errors_with_a_suggestion(text: str, expected: str) -> None:
    assert problems(text) == [f"{SOURCE}: {expected}"]


def test_toml_syntax_error_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "pbx.toml"
    path.write_text('[sip]\ndomain = "pbx.test\n')
    with pytest.raises(ConfigError) as info:
        load_config(path)

    (line,) = str(info.value).splitlines()
    assert line.startswith(f"{path}: invalid TOML: ")
    assert "line 2" in line


def test_missing_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(tmp_path / "nope.toml")
    assert str(info.value) == f"{tmp_path / 'nope.toml'}: cannot read: No such file or directory"


def test_non_utf8_file_is_a_config_error(tmp_path: Path) -> None:
    path = tmp_path / "pbx.toml"
    path.write_bytes(b'[sip]\ndomain = "caf\xe9"\n')
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert str(info.value) == f"{path}: not UTF-8 text: byte 19 cannot be decoded"


def test_config_error_needs_a_problem() -> None:
    with pytest.raises(ValueError):
        ConfigError([])
    problem = ConfigProblem(file="f.toml", key="sip.udp", message="expected x")
    assert str(ConfigError([problem])) == "f.toml: sip.udp: expected x"


# --------------------------------------------------------------------------
# Users
# --------------------------------------------------------------------------


def test_user_settings_are_read() -> None:
    config = parse(
        config_text(
            rest='[users.1001]\nname = "Alice"\npassword = "pw"\nvoicemail_pin = 1234\n'
            "enabled = false\n"
            '[users."alice.smith"]\nha1 = "0123456789ABCDEF0123456789ABCDEF"\n'
            'voicemail_pin = "0042"\n'
        )
    )
    alice = config.users["1001"]
    assert (alice.name, alice.password, alice.voicemail_pin, alice.enabled) == (
        "Alice",
        "pw",
        "1234",
        False,
    )
    smith = config.users["alice.smith"]
    assert smith.ha1 == "0123456789abcdef0123456789abcdef"
    assert (smith.password, smith.ha1_sha256, smith.voicemail_pin) == (None, None, "0042")
    assert smith.enabled


def test_user_needs_exactly_one_kind_of_credential() -> None:
    text = config_text(
        rest='[users.1001]\nname = "A"\n'
        f'[users.1002]\npassword = "pw"\nha1_sha256 = "{"a" * 64}"\n'
        f'[users.1003]\nha1 = "{"b" * 32}"\nha1_sha256 = "{"c" * 64}"\n'
    )
    assert problems(text) == [
        f"{SOURCE}: users.1001: expected credentials: password, or ha1 and/or ha1_sha256",
        f"{SOURCE}: users.1002: expected either password or ha1/ha1_sha256, not both",
    ]


def test_bad_user_values_name_the_key_without_echoing_secrets() -> None:
    text = config_text(
        rest="[users.1001]\npassword = 98765\n"
        '[users.1002]\nha1 = "5f4dcc3b5aa765d61d8327deb882cf9"\nvoicemail_pin = "12a4"\n'
        '[users."bob@example"]\npassword = "pw"\n'
    )
    found = problems(text)
    assert found == [
        f"{SOURCE}: users.1001.password: expected a string, got an integer",
        f'{SOURCE}: users.1002.ha1: expected 32 hex digits (the MD5 of "1002:<domain>:'
        '<password>"), got 31 characters',
        f'{SOURCE}: users.1002.voicemail_pin: expected digits such as "1234",'
        " got a string with other characters",
        f'{SOURCE}: users."bob@example": expected an extension: digits, or a SIP user name'
        ' of letters, digits and -_.!~*\'() (at most 64), got "bob@example"',
    ]
    assert not any("98765" in line or "5f4dcc" in line or "12a4" in line for line in found)


def test_hash_of_the_right_length_with_bad_digits() -> None:
    text = config_text(rest=f'[users.1001]\nha1_sha256 = "{"g" * 64}"')
    assert problems(text) == [
        f'{SOURCE}: users.1001.ha1_sha256: expected 64 hex digits (the SHA-256 of "1001:<domain>:'
        '<password>"), got 64 characters, not all hex digits'
    ]


def test_user_repr_hides_secrets() -> None:
    user = UserConfig(extension="1001", password="s3cret", ha1="a" * 32, voicemail_pin="4711")
    assert "s3cret" not in repr(user) and "aaaa" not in repr(user) and "4711" not in repr(user)


def test_ha1_for_computes_from_the_password() -> None:
    user = UserConfig(extension="1001", password="s3cret")

    assert user.ha1_for("pbx.test", "MD5") == md5_hex("1001:pbx.test:s3cret")
    assert user.ha1_for("pbx.test", "SHA-256") == sha256_hex("1001:pbx.test:s3cret")
    assert user.ha1_for("other.test", "MD5") == md5_hex("1001:other.test:s3cret")


def test_ha1_for_returns_the_stored_hash_or_none() -> None:
    stored = md5_hex("1002:pbx.test:pw")
    user = UserConfig(extension="1002", ha1=stored)

    assert user.ha1_for("pbx.test", "MD5") == stored
    assert user.ha1_for("pbx.test", "SHA-256") is None
    with pytest.raises(ValueError):
        user.ha1_for("pbx.test", "SHA-512")  # type: ignore[arg-type]


@pytest.mark.parametrize("user", [
    UserConfig(extension="1001", password="s3cret"),
    UserConfig(extension="1002", ha1="a" * 32),
    UserConfig(extension="1003", ha1_sha256="b" * 64),
    UserConfig(extension="1004", ha1="a" * 32, ha1_sha256="b" * 64),
], ids=["password", "md5", "sha256", "both"])
def test_has_ha1_says_whether_ha1_for_has_one(user: UserConfig) -> None:
    for algorithm in ("MD5", "SHA-256"):
        assert user.has_ha1(algorithm) == (user.ha1_for("pbx.test", algorithm) is not None)
    with pytest.raises(ValueError):
        user.has_ha1("SHA-512")  # type: ignore[arg-type]


def test_ha1_for_known_answer_and_agreement_with_the_digest_module() -> None:
    # RFC 2617 §3.5: Mufasa / testrealm@host.com / "Circle Of Life".
    user = UserConfig(extension="Mufasa", password="Circle Of Life")
    assert user.ha1_for("testrealm@host.com", "MD5") == "939e7578ed9e3c518a452acee763bce9"
    # What the registrar hands to DigestAuthenticator.verify must be its HA1.
    for algorithm in ("MD5", "SHA-256"):
        assert user.ha1_for("pbx.test", algorithm) == compute_ha1(
            "Mufasa", "pbx.test", "Circle Of Life", algorithm
        )


def test_diff_users_reports_added_changed_and_removed() -> None:
    old = parse(
        config_text(
            rest='[users.1001]\npassword = "a"\n[users.1002]\npassword = "b"\n'
            '[users.1003]\npassword = "c"\n'
        )
    )
    new = parse(
        config_text(
            rest='[users.1001]\npassword = "a"\n[users.1003]\npassword = "c2"\n'
            '[users.1004]\npassword = "d"\n[users.1005]\npassword = "e"\n'
        )
    )

    diff = diff_users(old, new)
    assert (diff.added, diff.changed, diff.removed) == (("1004", "1005"), ("1003",), ("1002",))
    assert diff
    assert not diff_users(new, new)


def test_diff_users_counts_a_new_domain_as_changing_every_user() -> None:
    users = '[users.1001]\npassword = "a"\n[users.1002]\npassword = "b"\n'
    old = parse(config_text(rest=users))
    new = parse(f'[sip]\ndomain = "pbx.example.org"\nudp = "127.0.0.1:0"\n{users}')

    assert diff_users(old, new).changed == ("1001", "1002")


def test_digest_algorithms_order_is_kept_and_checked(tmp_path: Path) -> None:
    base = '[sip]\ndomain = "pbx.test"\nudp = "127.0.0.1:0"\n[registrar]\n'
    good = parse_config(tomllib.loads(base + 'digest_algorithms = ["MD5", "SHA-256"]\n'),
                        str(tmp_path / "pbx.toml"))
    assert good.registrar.digest_algorithms == ("MD5", "SHA-256")
    with pytest.raises(ConfigError) as caught:
        parse_config(tomllib.loads(base + 'digest_algorithms = ["SHA-1"]\n'),
                     str(tmp_path / "pbx.toml"))
    assert "registrar.digest_algorithms" in str(caught.value)
    assert "SHA-256" in str(caught.value)


def test_sha256_user_agents_default_names_linphone_and_is_checked(tmp_path: Path) -> None:
    base = '[sip]\ndomain = "pbx.test"\nudp = "127.0.0.1:0"\n[registrar]\n'
    shipped = parse_config(tomllib.loads(base), str(tmp_path / "pbx.toml"))
    assert shipped.registrar.sha256_user_agents == ("Linphone",)
    assert shipped.registrar.digest_algorithms == ("SHA-256", "MD5")
    everyone = parse_config(tomllib.loads(base + 'sha256_user_agents = ["*"]\n'),
                            str(tmp_path / "pbx.toml"))
    assert everyone.registrar.sha256_user_agents == ("*",)
    nobody = parse_config(tomllib.loads(base + "sha256_user_agents = []\n"),
                          str(tmp_path / "pbx.toml"))
    assert nobody.registrar.sha256_user_agents == ()
    with pytest.raises(ConfigError) as caught:
        parse_config(tomllib.loads(base + 'sha256_user_agents = "Linphone"\n'),
                     str(tmp_path / "pbx.toml"))
    assert "registrar.sha256_user_agents: expected a list of User-Agent substrings" in str(
        caught.value)

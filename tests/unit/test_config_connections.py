"""[sip] keys bounding stream connections: defaults, and mistakes named with file and key."""

from __future__ import annotations

import tomllib

import pytest

from pbx.config import ConfigError, SipSection, parse_config

SOURCE = "/srv/pbx/pbx.toml"
SIP = '[sip]\ndomain = "pbx.test"\ntcp = "127.0.0.1:0"\n'


def sip(lines: str = "") -> SipSection:
    return parse_config(tomllib.loads(SIP + lines), SOURCE).sip


def problems(lines: str) -> list[str]:
    with pytest.raises(ConfigError) as info:
        sip(lines)
    return [str(problem) for problem in info.value.problems]


def test_defaults_hold_an_office_behind_one_address() -> None:
    section = sip()

    assert (section.message_timeout_s, section.idle_timeout_s,
            section.handshake_timeout_s) == (30.0, 600.0, 10.0)
    assert section.max_connections == 10_000
    assert section.max_connections_per_source >= 100  # 100+ phones behind one NAT


def test_values_are_read() -> None:
    section = sip("message_timeout_s = 5\nidle_timeout_s = 90.5\nhandshake_timeout_s = 2\n"
                  "max_connections = 500\nmax_connections_per_source = 20\n")

    assert (section.message_timeout_s, section.idle_timeout_s,
            section.handshake_timeout_s) == (5.0, 90.5, 2.0)
    assert (section.max_connections, section.max_connections_per_source) == (500, 20)


def test_wrong_values_are_all_named() -> None:
    assert problems('message_timeout_s = 0\nidle_timeout_s = "long"\n'
                    "handshake_timeout_s = -1\nmax_connections = 0\n"
                    "max_connections_per_source = 1.5\n") == [
        f"{SOURCE}: sip.message_timeout_s: expected a number of at least 0.1, got 0",
        f"{SOURCE}: sip.idle_timeout_s: expected a number of at least 0.1,"
        ' got "long" (a string)',
        f"{SOURCE}: sip.handshake_timeout_s: expected a number of at least 0.1, got -1",
        f"{SOURCE}: sip.max_connections: expected an integer of at least 1, got 0",
        f"{SOURCE}: sip.max_connections_per_source: expected an integer of at least 1,"
        " got 1.5 (a float)",
    ]

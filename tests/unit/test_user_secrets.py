"""What the registrar asks of the configured users (`pbx.core.user_secrets`)."""

from __future__ import annotations

import hashlib

import pytest

from pbx.config import UserConfig
from pbx.core.user_secrets import UserSecrets

REALM = "pbx.test"


def md5_hex(text: str) -> str:
    return hashlib.md5(text.encode()).hexdigest()


def sha256_hex(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def secrets_of(*users: UserConfig) -> UserSecrets:
    return UserSecrets({user.extension: user for user in users}, REALM)


def test_a_password_is_hashed_for_the_realm_in_force() -> None:
    secrets = secrets_of(UserConfig(extension="1001", password="s3cret"))

    assert secrets.ha1("1001", "MD5") == md5_hex("1001:pbx.test:s3cret")
    assert secrets.ha1("1001", "SHA-256") == sha256_hex("1001:pbx.test:s3cret")
    assert secrets.has_ha1("1001", "MD5") and secrets.has_ha1("1001", "SHA-256")


def test_a_stored_hash_serves_its_own_algorithm_only() -> None:
    stored = md5_hex("1002:pbx.test:pw")
    secrets = secrets_of(UserConfig(extension="1002", ha1=stored))

    assert secrets.ha1("1002", "MD5") == stored
    assert secrets.ha1("1002", "SHA-256") is None
    assert secrets.has_ha1("1002", "MD5") and not secrets.has_ha1("1002", "SHA-256")


def test_unknown_and_disabled_users_have_no_hash() -> None:
    secrets = secrets_of(UserConfig(extension="1003", password="pw", enabled=False))

    for extension in ("1003", "9999"):
        assert secrets.ha1(extension, "MD5") is None
        assert not secrets.has_ha1(extension, "MD5")


def test_an_algorithm_it_cannot_hash_is_refused() -> None:
    secrets = secrets_of(UserConfig(extension="1001", password="s3cret"))

    with pytest.raises(ValueError, match="SHA-512"):
        secrets.ha1("1001", "SHA-512")
    with pytest.raises(ValueError, match="SHA-512"):
        secrets.has_ha1("1001", "SHA-512")


@pytest.mark.parametrize("user", [
    UserConfig(extension="1001", password="s3cret"),
    UserConfig(extension="1002", ha1="a" * 32),
    UserConfig(extension="1003", ha1_sha256="b" * 64),
    UserConfig(extension="1004", ha1="a" * 32, ha1_sha256="b" * 64),
], ids=["password", "md5", "sha256", "both"])
def test_the_answers_are_the_configs_own(user: UserConfig) -> None:
    secrets = secrets_of(user)
    for algorithm in ("MD5", "SHA-256"):
        assert secrets.ha1(user.extension, algorithm) == user.ha1_for(REALM, algorithm)
        assert secrets.has_ha1(user.extension, algorithm) == user.has_ha1(algorithm)


def test_the_user_name_is_the_configs_own_string() -> None:
    extension = "".join(["10", "01"])  # a str of its own, equal to the literal
    user = UserConfig(extension=extension, password="pw")
    secrets = secrets_of(user)

    assert secrets.user_name("1001") is extension
    assert secrets.user_name("4242") == "4242"


def test_replacing_the_users_takes_effect_at_once() -> None:
    secrets = secrets_of(UserConfig(extension="1001", password="old"))

    secrets.users = {"1001": UserConfig(extension="1001", password="new"),
                     "1005": UserConfig(extension="1005", password="pw")}

    assert secrets.ha1("1001", "MD5") == md5_hex("1001:pbx.test:new")
    assert secrets.has_ha1("1005", "MD5")

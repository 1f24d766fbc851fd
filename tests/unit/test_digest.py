"""Tests of SIP digest authentication's header values, maths and client (`pbx.sip.digest`).

Known answers come from RFC 7616 §3.9.1 and RFC 2617 §3.5; the SIP cases are
recomputed here with plain hashlib from the RFC formulas, independently of the
module's own helpers. The server side is tested in `test_digest_server.py`.
"""

from __future__ import annotations

import contextlib
import hashlib
import subprocess
import sys

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pbx.sip import digest
from pbx.sip.digest import (
    Challenge,
    Credentials,
    UnsupportedDigestError,
    authorization_for,
    compute_ha1,
    compute_response,
    ha1_for,
    parse_auth_params,
    select_challenge,
)
from pbx.sip.errors import SipParseError
from tests.unit.digest_helpers import (
    T0,
    make_auth,
)

# RFC 7616 §3.9.1
RFC7616_REALM = "http-auth@example.org"
RFC7616_NONCE = "7ypf/xlj9XXwfDPEoM4URrv/xwf94BcCAzFZH4GiTo0v"
RFC7616_CNONCE = "f2/wE4q74E6zIJEtWaHKaf5wv/H5QzzpXusqGemxURZJ"
RFC7616_OPAQUE = "FQhe/qaU925kfnzjCev0ciny7QMkPqMAFRtzCUYo5tdS"
RFC7616_RESPONSES = {
    "MD5": "8ca523f5e9506fed4657c9700eebdbec",
    "SHA-256": "753927fa0e85d155564e2e272a28d1802ca10daf4496794697cf8db5856cb6c1",
}



def hexhash(algorithm: str, text: str) -> str:
    name = "md5" if algorithm.upper().startswith("MD5") else "sha256"
    return hashlib.new(name, text.encode()).hexdigest()


# --------------------------------------------------------------------------
# Known answers
# --------------------------------------------------------------------------


@pytest.mark.parametrize("algorithm", ["MD5", "SHA-256"])
def test_rfc7616_known_answer(algorithm: str) -> None:
    ha1 = compute_ha1("Mufasa", RFC7616_REALM, "Circle of Life", algorithm)
    response = compute_response(
        ha1=ha1,
        nonce=RFC7616_NONCE,
        method="GET",
        uri="/dir/index.html",
        algorithm=algorithm,
        qop="auth",
        nc="00000001",
        cnonce=RFC7616_CNONCE,
    )
    assert response == RFC7616_RESPONSES[algorithm]


def test_rfc2617_known_answer() -> None:
    ha1 = compute_ha1("Mufasa", "testrealm@host.com", "Circle Of Life")
    response = compute_response(
        ha1=ha1,
        nonce="dcd98b7102dd2f0e8b11d0f600bfb0c093",
        method="GET",
        uri="/dir/index.html",
        qop="auth",
        nc="00000001",
        cnonce="0a4f113b",
    )
    assert response == "6629fae49393a05397450978507c4ef1"


def test_sip_register_by_hand() -> None:
    """A REGISTER as a phone would hash it, written out with hashlib."""

    def md5(text: str) -> str:
        return hashlib.md5(text.encode()).hexdigest()

    ha1 = md5("alice:pbx.example.org:s3cr3t")
    ha2 = md5("REGISTER:sip:pbx.example.org;transport=tcp")
    expected = md5(f"{ha1}:abcNONCE:0000000a:xyz:auth:{ha2}")
    assert ha1_for("alice", "pbx.example.org", "s3cr3t", "MD5") == ha1
    got = compute_response(
        ha1=ha1,
        nonce="abcNONCE",
        method="REGISTER",
        uri="sip:pbx.example.org;transport=tcp",
        algorithm="MD5",
        qop="auth",
        nc="0000000a",
        cnonce="xyz",
    )
    assert got == expected


@pytest.mark.parametrize(
    ("algorithm", "qop"),
    [
        ("MD5", None),
        ("MD5", "auth"),
        ("SHA-256", None),
        ("SHA-256", "auth"),
        ("MD5-sess", "auth"),
        ("SHA-256-sess", "auth"),
    ],
)
def test_response_matches_rfc_formulas(algorithm: str, qop: str | None) -> None:
    """RFC 7616 §3.4.1-§3.4.2, RFC 2069 §2.1.2 for qop absent."""
    nonce, cnonce, nc, uri = "n0nce", "cn0nce", "00000002", "sip:1002@pbx.example.org"
    ha1 = hexhash(algorithm, "bob:pbx.example.org:pw")
    assert compute_ha1("bob", "pbx.example.org", "pw", algorithm) == ha1
    session_key = hexhash(algorithm, f"{ha1}:{nonce}:{cnonce}") if "sess" in algorithm else ha1
    ha2 = hexhash(algorithm, f"INVITE:{uri}")
    if qop is None:
        expected = hexhash(algorithm, f"{session_key}:{nonce}:{ha2}")
    else:
        expected = hexhash(algorithm, f"{session_key}:{nonce}:{nc}:{cnonce}:{qop}:{ha2}")
    got = compute_response(
        ha1=ha1,
        nonce=nonce,
        method="INVITE",
        uri=uri,
        algorithm=algorithm,
        qop=qop,
        nc=nc if qop else None,
        cnonce=cnonce if qop else None,
    )
    assert got == expected


@pytest.mark.parametrize(
    ("algorithm", "qop"), [("MD5", "auth-int"), ("SHA-512-256", "auth"), ("MD5-sess", None)]
)
def test_compute_refuses_what_it_does_not_support(algorithm: str, qop: str | None) -> None:
    with pytest.raises(UnsupportedDigestError):
        compute_response(
            ha1="0" * 32,
            nonce="n",
            method="GET",
            uri="/",
            algorithm=algorithm,
            qop=qop,
            nc="00000001",
            cnonce="c" if qop else None,
        )


# --------------------------------------------------------------------------
# Parsing and formatting
# --------------------------------------------------------------------------

RFC7616_AUTHORIZATION = (
    'Digest username="Mufasa",\r\n'
    '    realm="http-auth@example.org",\r\n'
    '    uri="/dir/index.html",\r\n'
    "    algorithm=SHA-256,\r\n"
    f'    nonce="{RFC7616_NONCE}",\r\n'
    "    nc=00000001,\r\n"
    f'    cnonce="{RFC7616_CNONCE}",\r\n'
    "    qop=auth,\r\n"
    f'    response="{RFC7616_RESPONSES["SHA-256"]}",\r\n'
    f'    opaque="{RFC7616_OPAQUE}"'
)


def test_parse_rfc7616_header_with_folded_lines() -> None:
    creds = Credentials.parse(RFC7616_AUTHORIZATION)
    assert creds == Credentials(
        username="Mufasa",
        realm=RFC7616_REALM,
        nonce=RFC7616_NONCE,
        uri="/dir/index.html",
        response=RFC7616_RESPONSES["SHA-256"],
        algorithm="SHA-256",
        cnonce=RFC7616_CNONCE,
        nc="00000001",
        qop="auth",
        opaque=RFC7616_OPAQUE,
    )
    ha1 = compute_ha1("Mufasa", creds.realm, "Circle of Life", creds.algorithm)
    recomputed = compute_response(
        ha1=ha1,
        nonce=creds.nonce,
        method="GET",
        uri=creds.uri,
        algorithm=creds.algorithm,
        qop=creds.qop,
        nc=creds.nc,
        cnonce=creds.cnonce,
    )
    assert recomputed == creds.response


def test_parse_awkward_quoting() -> None:
    scheme, params = parse_auth_params(
        r'Digest realm="a\"b", nonce="x, y=z", opaque="back\\slash", domain=""'
    )
    assert scheme == "Digest"
    assert params == {"realm": 'a"b', "nonce": "x, y=z", "opaque": "back\\slash", "domain": ""}


def test_parse_is_lenient_about_case_spacing_and_empty_elements() -> None:
    scheme, params = parse_auth_params(
        '  digest   REALM = "r" ,, Nonce="n"\t,ALGORITHM=md5 ,qop=auth,  '
    )
    assert scheme == "digest"
    assert params == {"realm": "r", "nonce": "n", "algorithm": "md5", "qop": "auth"}
    creds = Credentials.parse(
        'digest username="u", realm="r", nonce="n", uri="sip:x", response="00", algorithm=md5'
    )
    assert creds.algorithm == "MD5"


@pytest.mark.parametrize(
    "value",
    [
        "",
        "   ",
        "Digest,realm=x",
        'Digest realm="unterminated',
        "Digest realm",
        "Digest realm=a nonce=b",
        "Digest realm=a, realm=b",
        'Digest realm="a\r\nb"',
        "Digest realm=\x00",
        "Digest realm=x, Basic realm=y",
        "Digest " + ", ".join(f"p{i}=v" for i in range(40)),
        "Digest realm=" + "x" * 5000,
    ],
)
def test_parse_rejects_malformed(value: str) -> None:
    with pytest.raises(SipParseError) as info:
        parse_auth_params(value)
    assert info.value.status == 400


FULL = 'username="u", realm="r", nonce="n", uri="sip:x", response="00"'


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        ('Basic realm="r"', "not Digest"),
        ('Digest realm="r", nonce="n", uri="sip:x", response="00"', "username is missing"),
        ('Digest username="u", nonce="n", uri="sip:x", response="00"', "realm is missing"),
        ('Digest username="u", realm="r", uri="sip:x", response="00"', "nonce is missing"),
        ('Digest username="u", realm="r", nonce="n", response="00"', "uri is missing"),
        ('Digest username="u", realm="r", nonce="n", uri="sip:x"', "response is missing"),
        (f"Digest {FULL}, qop=auth, cnonce=c, nc=0001", "nc '0001' is not 8 hex digits"),
        (f"Digest {FULL}, qop=auth, cnonce=c, nc=0000000g", "not 8 hex digits"),
        (f"Digest {FULL}, qop=auth, cnonce=c, nc=0x000001", "not 8 hex digits"),
        (f"Digest {FULL}, qop=auth, nc=00000001", "without cnonce and nc"),
        (f"Digest {FULL}, qop=auth, cnonce=c", "without cnonce and nc"),
    ],
)
def test_credentials_parse_errors(value: str, reason: str) -> None:
    with pytest.raises(SipParseError) as info:
        Credentials.parse(value)
    assert info.value.status == 400
    assert reason in info.value.reason


def test_credentials_round_trip_with_awkward_values() -> None:
    creds = Credentials(
        username='a"b\\c',
        realm="x, y",
        nonce="n=1",
        uri="sip:1001@pbx.example.org;transport=tcp",
        response="ab" * 16,
        algorithm="MD5",
        cnonce="c,c",
        nc="0000000A",
        qop="auth",
        opaque="",
    )
    text = creds.to_header_value()
    assert text == (
        'Digest username="a\\"b\\\\c", realm="x, y", nonce="n=1", '
        'uri="sip:1001@pbx.example.org;transport=tcp", response="' + "ab" * 16 + '", '
        'algorithm=MD5, cnonce="c,c", opaque="", qop=auth, nc=0000000A'
    )
    assert Credentials.parse(text) == creds


def test_challenge_parse_rfc3261_example() -> None:
    challenge = Challenge.parse(
        'Digest realm="atlanta.com", domain="sip:boxesbybob.com", qop="auth, auth-int", '
        'nonce="f84f1cec41e6cbe5aea9c8e88d359", opaque="", stale=FALSE, algorithm=MD5'
    )
    assert challenge == Challenge(
        realm="atlanta.com",
        nonce="f84f1cec41e6cbe5aea9c8e88d359",
        algorithm="MD5",
        qop=("auth", "auth-int"),
        opaque="",
        stale=False,
        domain="sip:boxesbybob.com",
    )
    assert Challenge.parse(challenge.to_header_value()) == challenge
    with pytest.raises(SipParseError, match="nonce is missing"):
        Challenge.parse('Digest realm="r"')


def test_challenge_header_value_as_sent() -> None:
    auth = make_auth()
    sha, md5 = auth.challenges(T0, stale=True)
    assert sha.opaque is not None
    assert sha.to_header_value() == (
        f'Digest realm="pbx.example.org", nonce="{sha.nonce}", opaque="{sha.opaque}", '
        'stale=TRUE, algorithm=SHA-256, qop="auth"'
    )
    assert Challenge.parse(md5.to_header_value()) == md5


@given(
    st.one_of(
        st.text(),
        st.text().map(lambda s: "Digest " + s),
        st.text(alphabet='Digest rnoc="\\,=\t\r\n\x00\udc80\ud800é').map(lambda s: "Digest " + s),
    )
)
def test_parse_arbitrary_text_returns_or_raises_sip_parse_error(value: str) -> None:
    try:
        scheme, params = parse_auth_params(value)
    except SipParseError as e:
        assert e.status == 400
    else:
        assert scheme
        assert all(name == name.lower() for name in params)
    for parse in (Credentials.parse, Challenge.parse):
        with contextlib.suppress(SipParseError):
            parse(value)


quotable = st.text(st.characters(codec="utf-8", exclude_characters="\r\n"))


@given(
    username=quotable,
    realm=quotable,
    nonce=quotable,
    uri=quotable,
    response=quotable,
    algorithm=st.sampled_from(["MD5", "SHA-256", "MD5-sess", "SHA-256-sess", "X-new", "a b"]),
    auth=st.one_of(
        st.none(),
        st.tuples(quotable, st.from_regex(r"[0-9a-fA-F]{8}", fullmatch=True)),
    ),
    opaque=st.none() | quotable,
)
def test_credentials_round_trip(
    username: str,
    realm: str,
    nonce: str,
    uri: str,
    response: str,
    algorithm: str,
    auth: tuple[str, str] | None,
    opaque: str | None,
) -> None:
    creds = Credentials(
        username=username,
        realm=realm,
        nonce=nonce,
        uri=uri,
        response=response,
        algorithm=algorithm,
        cnonce=None if auth is None else auth[0],
        nc=None if auth is None else auth[1],
        qop=None if auth is None else "auth",
        opaque=opaque,
    )
    assert Credentials.parse(creds.to_header_value()) == creds


# --------------------------------------------------------------------------
# Client side
# --------------------------------------------------------------------------


def test_client_answers_the_rfc7616_challenge() -> None:
    challenge = Challenge.parse(
        f'Digest realm="{RFC7616_REALM}", qop="auth, auth-int", algorithm=SHA-256, '
        f'nonce="{RFC7616_NONCE}", opaque="{RFC7616_OPAQUE}"'
    )
    creds = authorization_for(
        challenge,
        username="Mufasa",
        password="Circle of Life",
        method="GET",
        uri="/dir/index.html",
        cnonce=RFC7616_CNONCE,
    )
    assert creds == Credentials.parse(RFC7616_AUTHORIZATION)


@pytest.mark.parametrize(
    "challenge",
    [
        Challenge(realm="r", nonce="n", qop=("auth-int",)),
        Challenge(realm="r", nonce="n", algorithm="SHA-512-256", qop=("auth",)),
        Challenge(realm="r", nonce="n", algorithm="MD5-sess"),
    ],
)
def test_client_refuses_what_it_cannot_answer(challenge: Challenge) -> None:
    with pytest.raises(UnsupportedDigestError):
        authorization_for(
            challenge, username="u", password="p", method="INVITE", uri="sip:x", cnonce="c"
        )
    assert select_challenge([challenge]) is None


def test_select_challenge_takes_the_topmost_usable() -> None:
    unusable = Challenge(realm="r", nonce="n", algorithm="SHA-512-256", qop=("auth",))
    sha = Challenge(realm="r", nonce="n", algorithm="SHA-256", qop=("auth",))
    md5 = Challenge(realm="r", nonce="n", algorithm="MD5", qop=("auth",))
    assert select_challenge([unusable, sha, md5]) is sha
    assert select_challenge([]) is None


def test_sip_core_stays_sans_io() -> None:
    code = (
        "import sys, pbx.sip.digest, pbx.sip.digest_server;"
        " assert 'twisted.internet.reactor' not in sys.modules"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


# ------------------------------------------------ the fast auth-param path

_NAMES = st.from_regex(r"[A-Za-z][A-Za-z0-9\-_]{0,8}", fullmatch=True)
_BARE = st.from_regex(r"[\x21\x23-\x2b\x2d-\x5b\x5d-\x7e]{1,12}", fullmatch=True)
_QUOTED = st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=12).map(
    lambda text: '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"')
_SEPARATORS = st.sampled_from([",", ", ", " , ", ",,", ", ,", ",\t", " ,"])


@given(st.lists(st.tuples(_NAMES, st.sampled_from(["=", " = ", "= "]),
                          st.one_of(_BARE, _QUOTED)), max_size=12),
       _SEPARATORS, st.sampled_from(["", " ", ",", " ,"]))
def test_fast_auth_params_agree_with_the_grammar(
        params: list[tuple[str, str, str]], separator: str, tail: str) -> None:
    """Whatever takes the fast path answers exactly what the full grammar answers."""
    rest = separator.join(f"{name}{equals}{value}" for name, equals, value in params) + tail
    value = "Digest " + rest
    try:
        expected: dict[str, str] | str = digest._auth_params_exact(value, len("Digest "))
    except SipParseError as error:
        expected = error.reason
    try:
        scheme, got = parse_auth_params(value)
        assert scheme == "Digest"
        answer: dict[str, str] | str = got
    except SipParseError as error:
        answer = error.reason
    if isinstance(expected, dict) and isinstance(answer, dict):
        assert answer == expected
    else:
        assert isinstance(answer, str) and isinstance(expected, str)


# ------------------------------------------------ the fast credentials path

_CREDENTIAL_NAMES = st.sampled_from([
    "username", "realm", "nonce", "uri", "response", "algorithm", "cnonce", "nc", "qop",
    "opaque", "Nonce", "userhash", "stale", "x-extra"])
_CREDENTIAL_VALUES = st.one_of(
    _BARE, _QUOTED, st.sampled_from(["MD5", "md5", "SHA-256", "auth", "00000001", "0000000g"]),
    st.text(st.characters(codec="utf-8"), max_size=6).map(lambda text: f'"{text}"'))
_WELL_FORMED = [
    ("username", '"1001"'), ("realm", '"pbx.example.org"'), ("nonce", '"abc-_"'),
    ("uri", '"sip:pbx"'), ("response", '"0123456789abcdef0123456789abcdef"'),
    ("algorithm", "MD5"), ("cnonce", '"c1"'), ("opaque", '"o"'), ("qop", "auth"),
    ("nc", "00000001")]


def _exact_or_reason(value: str) -> Credentials | str:
    try:
        return digest._credentials_exact(value)
    except SipParseError as error:
        return error.reason


_GAPS = st.sampled_from([", "] * 8 + [",", "", " , ", ",,", ", ,", ",\t", " ,"])


@settings(max_examples=400)
@given(st.permutations(_WELL_FORMED), st.integers(0, 10) | st.just(10),
       st.lists(st.tuples(_CREDENTIAL_NAMES, _CREDENTIAL_VALUES) | st.sampled_from(_WELL_FORMED),
                max_size=2),
       st.lists(st.integers(0, 12), min_size=2, max_size=2),
       st.sampled_from(["=", " = ", "= ", " ="]),
       st.lists(_GAPS, min_size=12, max_size=12) | st.just([", "] * 12),
       st.sampled_from(["", " ", ",", " ,"]),
       st.sampled_from(["Digest "] * 4 + ["Digest  ", "digest ", "Digest\t", "Basic "]))
def test_fast_credentials_agree_with_the_grammar(
        well_formed: list[tuple[str, str]], keep: int, extra: list[tuple[str, str]],
        at: list[int], equals: str, gaps: list[str], tail: str, scheme: str) -> None:
    """Whatever `_credentials_plain` answers (or raises) is what the full grammar answers.

    Credentials as phones send them, or some of them, with a parameter or
    two added (repeated, unknown, oddly spelt or valued) and odd separators.
    """
    params = [f"{name}={value}" for name, value in well_formed[:keep]]
    for (name, value), index in zip(extra, at, strict=False):
        params.insert(index, f"{name}{equals}{value}")
    value = scheme + "".join(gap + param for gap, param in zip(gaps, params, strict=False))[2:]
    value += tail
    expected = _exact_or_reason(value)
    try:
        fast = digest._credentials_plain(value)
    except SipParseError as error:
        assert error.reason == expected
    else:
        assert fast is None or fast == expected
    got: Credentials | str
    try:
        got = Credentials.parse(value)
    except SipParseError as error:
        got = error.reason
    assert got == expected


@pytest.mark.parametrize("value", [
    # sipp / authorization_for
    'Digest username="1001", realm="pbx", nonce="n", uri="sip:pbx", response="r", '
    'algorithm=MD5, cnonce="c1", opaque="o", qop=auth, nc=00000001',
    # Linphone-like: no space after the commas, quoted algorithm
    'Digest realm="pbx",nonce="n",algorithm="SHA-256",username="1001",uri="sip:pbx",'
    'response="r",cnonce="c",nc=0000000a,qop=auth',
    # RFC 2069 style, no qop
    'Digest username="1001",realm="pbx",nonce="n",uri="sip:pbx",response="r"',
])
def test_credentials_as_phones_write_them_take_the_fast_path(value: str) -> None:
    fast = digest._credentials_plain(value)
    assert fast is not None
    assert fast == digest._credentials_exact(value)


@pytest.mark.parametrize("value", [
    'Digest username="a\\"b", realm="pbx", nonce="n", uri="u", response="r"',  # quoted-pair
    'Digest username="é", realm="pbx", nonce="n", uri="u", response="r"',  # non-ASCII
    'Digest username="a\tb", realm="pbx", nonce="n", uri="u", response="r"',  # tab
    'Digest username="1", username="2", realm="pbx", nonce="n", uri="u", response="r"',
    'Digest Username="1", realm="pbx", nonce="n", uri="u", response="r"',
    'Digest username ="1", realm="pbx", nonce="n", uri="u", response="r"',
    'Digest username="1", realm="pbx", nonce="n", uri="u", response="r", x=1',
    'Digest username="1", realm="pbx", nonce="n", uri="u"',  # no response
    'Digest username="1", realm="pbx", nonce="n", uri="u", response="r", qop=auth ',
])
def test_anything_unusual_leaves_the_fast_path(value: str) -> None:
    assert digest._credentials_plain(value) is None


@pytest.mark.parametrize("name", [name for name, _ in _WELL_FORMED])
@pytest.mark.parametrize("spelling", ["twice", "upper", "spaced", "unquoted", "empty", "glued"])
def test_each_parameter_oddly_written_agrees_with_the_grammar(name: str, spelling: str) -> None:
    params = [f"{n}={v}" for n, v in _WELL_FORMED]
    index = [n for n, _ in _WELL_FORMED].index(name)
    value = dict(_WELL_FORMED)[name]
    params[index] = {
        "twice": f"{name}={value}, {name}={value}",
        "upper": f"{name.upper()}={value}",
        "spaced": f"{name} = {value} ",
        "unquoted": f"{name}={value.strip(chr(34)) or 'x'}",
        "empty": f'{name}=""',
        "glued": f"{name}={value}{params[(index + 1) % len(params)]}",
    }[spelling]
    if spelling == "glued":
        del params[(index + 1) % len(params)]
    header = "Digest " + ", ".join(params)
    expected = _exact_or_reason(header)
    try:
        fast = digest._credentials_plain(header)
    except SipParseError as error:
        assert error.reason == expected
    else:
        assert fast is None or fast == expected
    if spelling == "twice":
        assert fast is None

"""Plugins: loaded from the config, checked, started, and given requests outside calls."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import pytest_twisted

from pbx.sip.digest import Challenge, authorization_for, select_challenge

PLUGIN = '''
from pbx.dialplan import IncomingRequest, Reject

class Inbox:
    """Keeps the MESSAGEs sent to existing users in memory; refuses the rest."""

    name = "inbox"

    def __init__(self, settings):
        self.greeting = settings["greeting"]
        self.messages = []

    async def start(self, api):
        self.users = api.users
        api.add_request_handler("MESSAGE", self.message)
        api.add_call_action("greet", self.greet)
        import builtins
        builtins.PBX_TEST_INBOX = self  # how the test looks inside; not a pattern to copy

    async def stop(self):
        self.stopped = True

    async def message(self, request: IncomingRequest) -> int:
        if not self.users.exists(request.target):
            raise Reject(404, "No such user")
        self.messages.append((request.sender, request.target, request.body,
                              request.content_type))
        return 202

    async def greet(self, call):
        await call.reject(480, self.greeting)

def create_plugin(settings):
    return Inbox(settings)
'''


def proxy_authorization(reply: Any, *, user: str, password: str, uri: str) -> str:
    challenges = [Challenge.parse(v) for v in reply.get_all("proxy-authenticate")]
    challenge = select_challenge(challenges)
    assert challenge is not None
    return authorization_for(challenge, username=user, password=password, method="MESSAGE",
                             uri=uri, cnonce="c0ffee").to_header_value()


@pytest_twisted.ensureDeferred
async def test_a_plugin_takes_message_after_the_pbx_authenticates_the_sender(
    pbx_factory: Any, tmp_path: Path,
) -> None:
    plugin_file = tmp_path / "inbox.py"
    plugin_file.write_text(PLUGIN)
    pbx = await pbx_factory({"plugins": {"inbox": {
        "module": str(plugin_file), "settings": {"greeting": "Out to lunch"}}}})
    phone = await pbx.phone("1001")
    options = await phone.request("OPTIONS")
    assert "MESSAGE" in {m.strip() for m in options.get("Allow").split(",")}

    uri = "sip:1002@pbx.test"
    first = await phone.request("MESSAGE", to_user="1002", request_uri=uri,
                                body=b"lunch?", content_type="text/plain")
    assert first.status == 407
    auth = proxy_authorization(first, user="1001", password=phone.password, uri=uri)
    accepted = await phone.request("MESSAGE", to_user="1002", request_uri=uri,
                                   headers=[("Proxy-Authorization", auth)],
                                   body=b"lunch?", content_type="text/plain")
    assert accepted.status == 202

    import builtins

    inbox = builtins.PBX_TEST_INBOX  # type: ignore[attr-defined]
    assert inbox.messages == [("1001", "1002", b"lunch?", "text/plain")]

    nobody = "sip:4711@pbx.test"
    first = await phone.request("MESSAGE", to_user="4711", request_uri=nobody, body=b"hi",
                                content_type="text/plain")
    auth = proxy_authorization(first, user="1001", password=phone.password, uri=nobody)
    refused = await phone.request("MESSAGE", to_user="4711", request_uri=nobody, body=b"hi",
                                  content_type="text/plain",
                                  headers=[("Proxy-Authorization", auth)])
    assert (refused.status, refused.reason) == (404, "No such user")
    del builtins.PBX_TEST_INBOX  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("x = 1\n", "defines no create_plugin(settings)"),
        ("def create_plugin(settings):\n    return object()\n",
         "not a Plugin: it lacks a str 'name', 'async def start(api)', 'async def stop()'"),
        ("import nonexistent_module_xyz\n", "does not import: ModuleNotFoundError"),
    ],
)
@pytest_twisted.ensureDeferred
async def test_a_bad_plugin_stops_start_up_naming_it(
    pbx_factory: Any, tmp_path: Path, source: str, expected: str,
) -> None:
    plugin_file = tmp_path / "bad.py"
    plugin_file.write_text(source)
    with pytest.raises(SystemExit) as stopped:
        await pbx_factory({"plugins": {"bad": {"module": str(plugin_file)}}})
    message = str(stopped.value)
    assert "plugins:" in message and "plugin 'bad'" in message and str(plugin_file) in message
    assert expected in message


PACKAGE_INIT = '''
from pbx.dialplan import IncomingRequest

from .answers import ACCEPTED


class Answering:
    name = "answering"

    async def start(self, api):
        api.add_request_handler("MESSAGE", self.message)

    async def stop(self):
        pass

    async def message(self, request: IncomingRequest) -> int:
        return ACCEPTED


def create_plugin(settings):
    return Answering()
'''


@pytest.mark.parametrize("named", ["by name", "by folder"])
@pytest_twisted.ensureDeferred
async def test_a_package_plugin_named_in_the_product_folder_or_by_path_is_loaded(
    pbx_factory: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, named: str,
) -> None:
    """``[plugins.NAME]`` alone loads plugins/NAME/ (its modules imported relatively)."""
    package = tmp_path / "plugins" / "answering"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text(PACKAGE_INIT)
    (package / "answers.py").write_text("ACCEPTED = 202\n")
    monkeypatch.setattr("pbx.config.PLUGINS_DIR", tmp_path / "plugins")
    table = {} if named == "by name" else {"module": str(package)}
    pbx = await pbx_factory({"plugins": {"answering": table}})
    phone = await pbx.phone("1001")

    options = await phone.request("OPTIONS")
    assert "MESSAGE" in {m.strip() for m in options.get("Allow").split(",")}
    uri = "sip:1002@pbx.test"
    first = await phone.request("MESSAGE", to_user="1002", request_uri=uri, body=b"hi",
                                content_type="text/plain")
    auth = proxy_authorization(first, user="1001", password=phone.password, uri=uri)
    accepted = await phone.request("MESSAGE", to_user="1002", request_uri=uri, body=b"hi",
                                   content_type="text/plain",
                                   headers=[("Proxy-Authorization", auth)])
    assert accepted.status == 202

"""The example plugin of docs/plugins.md, loaded from its file into a PBX, over real sockets.

A watcher phone subscribes to ``x-registration`` of 1002, hears 1002's
phone register and unregister through NOTIFYs, refreshes, unsubscribes
and gets the last NOTIFY; the subscription is then forgotten (481).
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path
from typing import Any

import pytest_twisted

from pbx.sip.digest import Challenge, authorization_for, select_challenge
from tests.service.conftest import eventually
from tests.service.sipclient import Link, Phone, Received, Reply, parse_frame

EXAMPLE = Path(__file__).parents[2] / "docs" / "examples" / "registration_watch.py"
EVENT = ("Event", "x-registration")


def with_credentials(challenge: Reply, phone: Phone, uri: str) -> tuple[str, str]:
    chosen = select_challenge(Challenge.parse(v) for v in challenge.get_all("proxy-authenticate"))
    assert chosen is not None
    assert phone.password is not None
    credentials = authorization_for(chosen, username=phone.user, password=phone.password,
                                    method="SUBSCRIBE", uri=uri, cnonce="c0ffee")
    return "Proxy-Authorization", credentials.to_header_value()


async def next_request(link: Link) -> Received:
    frame = parse_frame(await link.next_frame())
    assert isinstance(frame, Received), str(frame)
    return frame


def answer(link: Link, request: Received, status: int = 200) -> None:
    head = "".join(f"{name}: {value}\r\n" for name, value in request.headers
                   if name.lower() in ("via", "from", "to", "call-id", "cseq"))
    link.send(f"SIP/2.0 {status} OK\r\n{head}Content-Length: 0\r\n\r\n".encode())


async def notified(link: Link) -> tuple[str, bytes]:
    """The next NOTIFY's Subscription-State and body, answered 200."""
    notify = await next_request(link)
    assert notify.method == "NOTIFY" and notify.get("event") == "x-registration"
    answer(link, notify)
    return notify.get("subscription-state") or "", notify.body


@pytest_twisted.ensureDeferred
async def test_the_example_plugin_over_real_sockets(pbx_factory: Any, reactor: Any) -> None:
    pbx = await pbx_factory({"plugins": {"registration_watch": {
        "module": str(EXAMPLE), "settings": {"max_expires_s": 300}}}})
    watcher = await pbx.phone("1001")
    uri = "sip:1002@pbx.test"
    contact = [f"<{watcher.contact_uri}>"]
    challenge = await watcher.request("SUBSCRIBE", to_user="1002", request_uri=uri,
                                      contacts=contact, headers=[EVENT, ("Expires", "3600")])
    assert challenge.status == 407
    ok = await watcher.request(
        "SUBSCRIBE", to_user="1002", request_uri=uri, contacts=contact,
        headers=[EVENT, ("Expires", "3600"), with_credentials(challenge, watcher, uri)])
    assert (ok.status, ok.get("expires")) == (200, "300")  # the most it grants
    tag, dialog_uri = ok.to_tag, ok.contact_uri
    assert tag and dialog_uri
    assert await notified(watcher.link) == ("active;expires=300", b"1002 unregistered\n")

    desk = await pbx.phone("1002")
    assert (await desk.register()).status == 200
    assert await notified(watcher.link) == ("active;expires=300", b"1002 registered\n")

    refreshed = await watcher.request("SUBSCRIBE", to_user="1002", to_tag=tag,
                                      request_uri=dialog_uri, contacts=contact,
                                      headers=[EVENT, ("Expires", "120")])
    assert (refreshed.status, refreshed.get("expires")) == (200, "120")

    assert (await desk.register(expires=0)).status == 200
    assert await notified(watcher.link) == ("active;expires=120", b"1002 unregistered\n")

    gone = await watcher.request("SUBSCRIBE", to_user="1002", to_tag=tag,
                                 request_uri=dialog_uri, contacts=contact,
                                 headers=[EVENT, ("Expires", "0")])
    assert (gone.status, gone.get("expires")) == (200, "0")
    assert await notified(watcher.link) == ("terminated;reason=noresource",
                                            b"1002 unregistered\n")
    stale = await watcher.request("SUBSCRIBE", to_user="1002", to_tag=tag,
                                  request_uri=dialog_uri, contacts=contact,
                                  headers=[EVENT, ("Expires", "120")])
    assert stale.status == 481

    plugin = pbx.service.plugins.plugins[0]
    await eventually(reactor, lambda: len(plugin.outcomes) == 4)
    assert plugin.outcomes == [200, 200, 200, 200]
    assert plugin.subscriptions == set()


@pytest_twisted.ensureDeferred
async def test_the_example_refuses_another_event_package(pbx_factory: Any) -> None:
    pbx = await pbx_factory({"plugins": {"registration_watch": {"module": str(EXAMPLE)}}})
    watcher = await pbx.phone("1001")
    uri = "sip:1002@pbx.test"
    contact = [f"<{watcher.contact_uri}>"]
    challenge = await watcher.request("SUBSCRIBE", to_user="1002", request_uri=uri,
                                      contacts=contact, headers=[("Event", "presence")])
    refused = await watcher.request(
        "SUBSCRIBE", to_user="1002", request_uri=uri, contacts=contact,
        headers=[("Event", "presence"), with_credentials(challenge, watcher, uri)])
    assert (refused.status, refused.reason) == (489, "Bad Event")
    await watcher.link.silence(0.2)  # no NOTIFY: no subscription


def test_the_example_in_the_docs_is_the_file_the_tests_run() -> None:
    docs = (Path(__file__).parents[2] / "docs" / "plugins.md").read_text()
    assert f"```python\n{EXAMPLE.read_text()}```\n" in docs


def test_the_example_imports_only_the_public_api() -> None:
    tree = ast.parse(EXAMPLE.read_text())
    imported = {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
    imported |= {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import)
                 for alias in node.names}
    outside = {name for name in imported if name is not None and name.split(".")[0] not in (
        *sys.stdlib_module_names, "__future__") and name != "pbx.dialplan"}
    assert imported and not outside


@pytest_twisted.ensureDeferred
async def test_stopping_the_pbx_ends_the_subscriptions(pbx_factory: Any) -> None:
    pbx = await pbx_factory({"plugins": {"registration_watch": {"module": str(EXAMPLE)}}})
    watcher = await pbx.phone("1001")
    uri = "sip:1002@pbx.test"
    contact = [f"<{watcher.contact_uri}>"]
    challenge = await watcher.request("SUBSCRIBE", to_user="1002", request_uri=uri,
                                      contacts=contact, headers=[EVENT])
    ok = await watcher.request("SUBSCRIBE", to_user="1002", request_uri=uri, contacts=contact,
                               headers=[EVENT, with_credentials(challenge, watcher, uri)])
    assert ok.status == 200
    assert (await notified(watcher.link))[0].startswith("active")
    plugin = pbx.service.plugins.plugins[0]
    assert len(plugin.subscriptions) == 1
    await pbx.stop()
    assert plugin.subscriptions == set()  # on_ended: the plugin heard its dialog end

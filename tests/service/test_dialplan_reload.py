"""Editing the dialplan of a running PBX: `PbxService.reload` (what SIGHUP does)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from twisted.internet.testing import EventLoggingObserver
from twisted.logger import LogLevel, formatEvent

from tests.service.conftest import PASSWORDS

REJECT = """
async def handle_call(call):
    await call.reject(403, "Closed for the holidays")
"""

DIAL = """
from pbx.dialplan import Dialplan

dialplan = Dialplan()


@dialplan.route(pattern=r"10\\d\\d")
async def extension(call):
    await call.dial(call.dialed, timeout_s=5)
"""


def config_text(plan: Path) -> str:
    lines = [
        "[pbx]", 'data_dir = "data"', "",
        "[sip]", 'domain = "pbx.test"', 'udp = "127.0.0.1:0"', "",
        "[dialplan]", f'module = "{plan.name}"', "",
    ]
    for extension in ("1001", "1002"):
        lines += [f"[users.{extension}]", f'password = "{PASSWORDS[extension]}"', ""]
    return "\n".join(lines)


@pytest_twisted.ensureDeferred
async def test_reload_switches_dialplans_and_keeps_the_old_one_when_broken(
        pbx_factory: Any, tmp_path: Path, log_events: EventLoggingObserver) -> None:
    plan = tmp_path / "routes.py"
    plan.write_text(REJECT)
    config = tmp_path / "pbx.toml"
    config.write_text(config_text(plan))
    pbx = await pbx_factory(from_file=config)
    caller = await pbx.softphone("1001")
    await pbx.softphone("1002")

    refused = await (await caller.call("1002")).final_response()
    assert (refused.status, refused.reason) == (403, "Closed for the holidays")

    plan.write_text(DIAL)
    assert pbx.service.reload() is True
    call = await caller.call("1002")
    assert (await call.final_response()).status == 200
    assert (await call.bye()).status == 200

    plan.write_text(DIAL.replace("async def extension(call):", "async def extension(call)"))
    pbx.service.reload()
    errors = [event for event in log_events
              if event.get("log_level") is LogLevel.error and "routes.py" in formatEvent(event)]
    assert len(errors) == 1
    assert "SyntaxError" in formatEvent(errors[0])
    call = await caller.call("1002")  # the dialplan that worked still does
    assert (await call.final_response()).status == 200
    assert (await call.bye()).status == 200


@pytest_twisted.ensureDeferred
async def test_an_edit_of_the_same_size_in_the_same_second_is_picked_up(
        pbx_factory: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "dont_write_bytecode", False)  # as under twistd
    plan = tmp_path / "routes.py"
    plan.write_text(REJECT)
    config = tmp_path / "pbx.toml"
    config.write_text(config_text(plan))
    pbx = await pbx_factory(from_file=config)
    caller = await pbx.softphone("1001")

    # Same length, same mtime second: a cached bytecode file would not see it.
    plan.write_text(REJECT.replace("403", "404"))
    assert pbx.service.reload() is True
    assert (await (await caller.call("1002")).final_response()).status == 404

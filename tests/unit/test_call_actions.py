"""Plugins' actions on `Call`: declared, typed, checked by mypy, provided by a plugin."""

from __future__ import annotations

from pathlib import Path

import pytest
from mypy import api as mypy_api

from pbx.core.plugins import PluginHost
from pbx.dialplan import Answered, Call
from pbx.testing import FakeCall, FakeUsers, run

REPOSITORY = Path(__file__).parents[2]

DIALPLAN = """\
from pbx.dialplan import Answered, Call


async def handle_call(call: Call) -> None:
    result = await call.dial(call.dialed, timeout_s=20)
    if not isinstance(result, Answered):
        await call.{action}
"""


def test_mypy_checks_a_dialplan_use_of_plugin_actions(tmp_path: Path) -> None:
    good = tmp_path / "good.py"
    good.write_text(DIALPLAN.format(action='voicemail(call.dialed)\n        '
                                           'await call.conference("room-1", pin="1234")'))
    misspelt = tmp_path / "misspelt.py"
    misspelt.write_text(DIALPLAN.format(action="voicemal(call.dialed)"))
    wrong_arguments = tmp_path / "wrong_arguments.py"
    wrong_arguments.write_text(DIALPLAN.format(action="voicemail(1002)"))
    report, errors, status = mypy_api.run([
        "--strict", "--no-incremental", "--cache-dir", str(tmp_path / "cache"),
        "--config-file", str(REPOSITORY / "pyproject.toml"),
        str(good), str(misspelt), str(wrong_arguments)])
    assert status == 1, report + errors
    problems = sorted(line for line in report.splitlines() if ": error:" in line)
    assert len(problems) == 2, report
    spelling, arguments = problems
    assert spelling.startswith(f"{misspelt}:7: error:"), spelling
    assert '"Call" has no attribute "voicemal"' in spelling
    assert arguments.startswith(f"{wrong_arguments}:7: error:"), arguments
    assert 'incompatible type "int"; expected "str"' in arguments


def test_a_provided_action_is_reached_as_a_call_method() -> None:
    host = PluginHost(FakeUsers(["1002"]), {})
    left: list[tuple[str | None, str]] = []

    async def voicemail(call: Call, mailbox: str) -> None:
        left.append((call.caller.user, mailbox))

    host.provide_call_action(Call.voicemail, voicemail)

    async def handler(call: Call) -> None:
        if not isinstance(await call.dial(call.dialed), Answered):
            await call.voicemail(call.dialed)

    run(handler, FakeCall(dialed="1002", caller="1003", users=["1002"], actions=host.actions))
    assert left == [("1003", "1002")]


def test_an_action_no_plugin_provides_says_so() -> None:
    call = FakeCall(dialed="1002")
    assert not hasattr(call, "voicemail")
    with pytest.raises(AttributeError, match="no plugin provides the call action 'voicemail'"):
        call.voicemail  # noqa: B018
    assert "voicemail" in dir(Call) and Call.voicemail.__doc__  # discoverable: help(Call)


def test_a_plugin_cannot_take_a_call_method_as_an_action() -> None:
    host = PluginHost(FakeUsers([]), {})

    async def dial(call: Call) -> None:
        return None

    with pytest.raises(ValueError, match="'dial' is a method of Call"):
        host.add_call_action("dial", dial)


def test_an_undeclared_action_is_reached_through_action() -> None:
    async def fax(call: Call, number: str) -> str:
        return f"{call.dialed} -> {number}"

    seen: list[object] = []

    async def handler(call: Call) -> None:
        seen.append(await call.action("fax")("555"))

    run(handler, FakeCall(dialed="1002", actions={"fax": fax}))
    assert seen == ["1002 -> 555"]



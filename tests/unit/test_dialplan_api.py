"""The public dialplan API: routes, results, the loader, plugin actions."""

from __future__ import annotations

from pathlib import Path

import pytest

from pbx.core.router import DialplanError, DialplanLoader, _ReadOnlyHeaders
from pbx.dialplan import (
    Answered,
    Busy,
    Call,
    Declined,
    Dialplan,
    Failed,
    NoAnswer,
    Unavailable,
    result_for,
)
from pbx.testing import FakeCall, FakeUsers, load_dialplan, run

REPOSITORY = Path(__file__).parents[2]


@pytest.mark.parametrize(
    ("status", "expected"),
    [(486, Busy(486)), (600, Busy(600)), (408, NoAnswer()), (487, NoAnswer()),
     (404, Unavailable(404)), (480, Unavailable(480)), (603, Declined(603)),
     (503, Failed(503, "x"))],
)
def test_final_statuses_map_to_dial_results(status: int, expected: object) -> None:
    assert result_for(status, "x") == expected


def test_routes_are_tried_in_order_exact_prefix_pattern() -> None:
    plan = Dialplan()
    seen: list[str] = []

    @plan.route("100")
    async def exact(call: Call) -> None:
        seen.append("exact")

    @plan.route(prefix="1")
    async def prefix(call: Call) -> None:
        seen.append("prefix")

    @plan.route(pattern=r"\d{4}")
    async def pattern(call: Call) -> None:
        seen.append("pattern")

    for dialed in ("100", "123", "2000"):
        run(plan.handle_call, FakeCall(dialed=dialed))
    assert seen == ["exact", "prefix", "pattern"]
    unrouted = FakeCall(dialed="abc")
    run(plan.handle_call, unrouted)
    assert unrouted.rejected == (404, "No route for this number")


def test_a_route_needs_exactly_one_kind_of_match() -> None:
    with pytest.raises(ValueError, match="exactly one"):
        Dialplan().route("1", prefix="1")


def test_reject_needs_a_failure_status() -> None:
    async def handler(call: Call) -> None:
        await call.reject(200)

    with pytest.raises(ValueError, match="4xx, 5xx or 6xx"):
        run(handler, FakeCall(dialed="1"))


def test_plugin_actions_are_reached_as_call_methods() -> None:
    left: list[tuple[str, str]] = []

    async def voicemail(call: Call, box: str) -> None:
        left.append((call.caller.user or "", box))

    async def handler(call: Call) -> None:
        result = await call.dial(call.dialed)
        if not isinstance(result, Answered):
            await call.voicemail(call.dialed)

    run(handler, FakeCall(dialed="1002", caller="1003", users=["1002"],
                          actions={"voicemail": voicemail}))
    assert left == [("1003", "1002")]
    with pytest.raises(AttributeError, match="plugin action 'fax'"):
        FakeCall(dialed="1").action("fax")


def test_headers_are_read_only_and_case_insensitive_with_compact_forms() -> None:
    headers = _ReadOnlyHeaders([("Subject", "hello"), ("f", "<sip:a@b>"), ("Subject", "2nd")])
    assert headers["subject"] == "hello"
    assert headers["From"] == "<sip:a@b>"
    assert "SUBJECT" in headers and headers["SUBJECT"] == "hello"
    with pytest.raises(TypeError):
        headers["x"] = "y"  # type: ignore[index]


def test_loader_refuses_a_file_that_does_not_import_and_keeps_the_old(tmp_path: Path) -> None:
    good = tmp_path / "good.py"
    good.write_text("async def handle_call(call):\n    await call.reject(403)\n")
    loader = DialplanLoader()
    loader.load(good)
    before = loader.handler
    broken = tmp_path / "broken.py"
    broken.write_text("async def handle_call(call)\n")  # a syntax error
    with pytest.raises(DialplanError, match=r"broken\.py: does not import: SyntaxError"):
        loader.load(broken)
    assert loader.handler is before and loader.path == good
    empty = tmp_path / "empty.py"
    empty.write_text("x = 1\n")
    with pytest.raises(DialplanError, match="defines neither"):
        loader.load(empty)


def test_loader_says_a_missing_file_is_not_found_and_keeps_the_old(tmp_path: Path) -> None:
    loader = DialplanLoader()
    with pytest.raises(DialplanError) as raised:
        loader.load(tmp_path / "typo.py")
    assert str(raised.value) == f"{tmp_path / 'typo.py'}: file not found"
    assert loader.path is None


def test_load_dialplan_finds_a_relative_path_from_the_repository_or_from_tests(
        monkeypatch: pytest.MonkeyPatch) -> None:
    call = FakeCall(dialed="666")
    for folder in (REPOSITORY, REPOSITORY / "tests", REPOSITORY / "tests" / "unit"):
        monkeypatch.chdir(folder)  # where pytest may be run from
        run(load_dialplan("dialplans/office.py"), call)
        assert call.rejected == (603, "This number is not in service")


def test_load_dialplan_prefers_the_current_directory(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "dialplans").mkdir()
    (tmp_path / "dialplans" / "office.py").write_text(
        "async def handle_call(call):\n    await call.reject(486)\n")
    monkeypatch.chdir(tmp_path)
    call = FakeCall(dialed="666")
    run(load_dialplan("dialplans/office.py"), call)
    assert call.final_status == 486


def test_load_dialplan_names_every_place_it_looked_for_a_missing_file(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(FileNotFoundError) as raised:
        load_dialplan("dialplans/nope.py")
    message = str(raised.value)
    assert "'dialplans/nope.py' not found" in message
    assert "does not import" not in message
    for base in (tmp_path, Path(__file__).parent, REPOSITORY, Path("/")):
        assert f"  {base / 'dialplans' / 'nope.py'}\n" in message + "\n"


def test_dial_leaves_out_the_callers_own_extension() -> None:
    async def handler(call: Call) -> None:
        await call.dial("1001", "1002", timeout_s=5)
        await call.dial("1002", "1001", timeout_s=5, sequential=True)
        assert isinstance(await call.forward("1001"), Unavailable)
        assert isinstance(await call.dial("1001"), Unavailable)

    call = FakeCall(dialed="1002", caller="1001", users=["1001", "1002"],
                    answers={"1001": Answered("1001"), "1002": Busy()})
    run(handler, call)
    assert call.dialed_targets == [("1002",), ("1002",), (), ()]
    assert call.final_status == 486  # what rang, not the dials that rang nobody


def test_a_timeout_in_a_ring_group_makes_it_no_answer_as_the_pbx_does() -> None:
    async def handler(call: Call) -> None:
        assert isinstance(await call.dial("1002", "1003"), NoAnswer)

    call = FakeCall(dialed="600", caller="1001", answers={"1002": Busy(), "1003": NoAnswer()})
    run(handler, call)
    assert call.final_status == 408


def test_loader_takes_an_edited_file_on_the_next_load(tmp_path: Path) -> None:
    path = tmp_path / "plan.py"
    path.write_text("async def handle_call(call):\n    await call.reject(403)\n")
    loader = DialplanLoader()
    loader.load(path)
    first = FakeCall(dialed="1")
    run(loader.handler, first)
    path.write_text("async def handle_call(call):\n    await call.reject(486)\n")
    loader.load(path)
    second = FakeCall(dialed="1")
    run(loader.handler, second)
    assert (first.final_status, second.final_status) == (403, 486)


def test_the_caller_shows_the_configured_name_before_the_phones_own() -> None:
    users = FakeUsers(["1001", "1002"], names={"1001": "Alice \"Reception\""})
    named = FakeCall(dialed="1002", caller="1001", caller_name="desk phone", users=users)
    unnamed = FakeCall(dialed="1001", caller="1002", caller_name="Bob's\r\nphone", users=users)
    assert named.caller.display_name == 'Alice "Reception"'
    assert unnamed.caller.display_name == "Bob's phone"  # no line break into a header

"""PBX_REQUIRE_INTEROP=1 (.ci/run) turns an interop test's skip into a failure.

A CI machine without root, SIPp, baresip or linphonec would otherwise skip
every call test and still end green. Each case runs a small pytest session
in a folder of its own, with the hooks of tests/interop/conftest.py, and
reads its summary line: what a developer and CI see.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.interop.conftest import REPO

SESSION_CONFTEST = """
from tests.interop.conftest import pytest_make_collect_report, pytest_runtest_makereport


def pytest_configure(config):
    config.addinivalue_line("markers", "interop: talks to a real SIP program")
"""

SKIPPING_TESTS = """
import pytest

pytestmark = pytest.mark.interop


@pytest.mark.skipif(True, reason="sipp not installed (apt-get install sip-tester)")
def test_needs_sipp():
    pass


@pytest.fixture
def namespace():
    pytest.skip("needs root to create a network namespace")


def test_needs_root(namespace):
    pass


def test_runs():
    pass
"""

SKIPPING_MODULE = """
import pytest

pytest.importorskip("no_module_by_this_name")
pytestmark = pytest.mark.interop


def test_never_collected():
    pass
"""


def run_session(folder: Path, files: dict[str, str], *, required: bool) -> str:
    folder.mkdir()
    (folder / "conftest.py").write_text(SESSION_CONFTEST)
    for name, text in files.items():
        (folder / name).write_text(text)
    environment = {key: value for key, value in os.environ.items()
                   if key != "PBX_REQUIRE_INTEROP"}
    environment["PYTHONPATH"] = str(REPO)
    if required:
        environment["PBX_REQUIRE_INTEROP"] = "1"
    completed = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-rfEs", "-p", "no:cacheprovider",
         "-o", "addopts=", str(folder)],
        cwd=folder, env=environment, capture_output=True, text=True, timeout=120, check=False)
    return completed.stdout + completed.stderr


def test_a_developer_sees_skips_with_their_reasons(tmp_path: Path) -> None:
    output = run_session(tmp_path / "dev", {"test_calls.py": SKIPPING_TESTS}, required=False)
    assert "1 passed, 2 skipped" in output, output
    assert "sipp not installed" in output, output


@pytest.mark.parametrize("mark_interop", [True, False], ids=["interop", "other"])
def test_ci_fails_an_interop_test_that_would_skip(tmp_path: Path, mark_interop: bool) -> None:
    tests = SKIPPING_TESTS if mark_interop else SKIPPING_TESTS.replace(
        "pytestmark = pytest.mark.interop", "")
    output = run_session(tmp_path / "ci", {"test_calls.py": tests}, required=True)
    if mark_interop:  # skips happen while setting up: pytest counts them as errors
        assert "1 passed, 2 errors" in output, output
        assert "would have been skipped: sipp not installed" in output, output
        assert "would have been skipped: needs root" in output, output
    else:  # the skips of other tests are left alone
        assert "1 passed, 2 skipped" in output, output


def test_ci_fails_an_interop_module_that_would_skip(tmp_path: Path) -> None:
    output = run_session(tmp_path / "ci", {"test_media.py": SKIPPING_MODULE}, required=True)
    assert "1 error" in output, output
    assert "would have been skipped: could not import 'no_module_by_this" in output, output

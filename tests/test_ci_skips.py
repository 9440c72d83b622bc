"""tests/conftest.py: under CI=true a skip fails, unless allowed with its reason.

Each case runs a real pytest in a temporary directory whose conftest takes
the hooks of tests/conftest.py, on a few small test files.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

CONFTEST = """\
import tests.conftest as hooks
from tests.conftest import *  # noqa: F403 - the hooks

hooks.ALLOWED_SKIPS += (
    hooks.AllowedSkip("test_cases.py::test_allowed", r"no frobnicator: .*", "none here",
                      lambda: True),
    hooks.AllowedSkip("test_cases.py::test_allowed_elsewhere", r".*", "not on this machine",
                      lambda: False),
)
"""
CASES = """\
import pytest

def test_passes():
    assert True

def test_skipped():
    pytest.skip("tool not installed")

@pytest.mark.skipif(True, reason="needs root")
def test_skipif():
    pass

def test_allowed():
    pytest.skip("no frobnicator: version 1")

def test_allowed_other_reason():
    pytest.skip("something else")

def test_allowed_elsewhere():
    pytest.skip("the condition does not hold here")

@pytest.mark.xfail(reason="known")
def test_xfail():
    assert False
"""


def run_pytest(tmp_path: Path, ci: bool, *files: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "CI"}
    if ci:
        env["CI"] = "true"
    env["PYTHONPATH"] = str(REPO)
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-rA", "-o", "addopts=",
         "--rootdir", str(tmp_path), *files],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60)


@pytest.fixture
def project(tmp_path: Path) -> Path:
    (tmp_path / "conftest.py").write_text(CONFTEST)
    (tmp_path / "test_cases.py").write_text(CASES)
    return tmp_path


def outcomes(stdout: str) -> dict[str, str]:
    """test name -> PASSED/FAILED/ERROR/XFAIL from the -rA short summary (skips by reason)."""
    found = {}
    for line in stdout.splitlines():
        word, _, rest = line.partition(" ")
        if word in ("PASSED", "FAILED", "ERROR", "XFAIL") and "::" in rest:
            found[rest.split("::")[1].split()[0]] = word
        elif word == "SKIPPED" and rest.startswith("[1] test_cases.py:"):
            # skips are listed by location: "SKIPPED [1] test_cases.py:7: tool not installed"
            found.setdefault("skips", "")
            found["skips"] += rest.split(": ", 1)[1] + ";"
    return found


def test_outside_ci_skips_stay_skips(project) -> None:
    result = run_pytest(project, False, "test_cases.py")
    assert result.returncode == 0, result.stdout
    assert "1 passed, 5 skipped, 1 xfailed" in result.stdout, result.stdout


def test_under_ci_a_skip_fails_unless_allowed_with_its_reason(project) -> None:
    result = run_pytest(project, True, "test_cases.py")
    assert result.returncode == 1, result.stdout
    got = outcomes(result.stdout)
    assert got["test_passes"] == "PASSED"
    assert got["test_xfail"] == "XFAIL"  # an expected failure is not a skip
    # A skip in the call fails the test; one in set-up (a marker, a fixture) is an error.
    assert got["test_skipif"] == "ERROR", result.stdout
    for name in ("test_skipped", "test_allowed_other_reason", "test_allowed_elsewhere"):
        assert got[name] == "FAILED", (name, result.stdout)
    assert got["skips"] == "no frobnicator: version 1;", result.stdout
    assert "skipped under CI=true, where it must run: tool not installed" in result.stdout
    assert "skipped under CI=true, where it must run: needs root" in result.stdout
    assert "3 failed, 1 passed, 1 skipped, 1 xfailed, 1 error" in result.stdout, result.stdout


def test_under_ci_a_module_skipped_at_import_fails_the_session(project) -> None:
    (project / "test_needs_module.py").write_text(
        "import pytest\n"
        "pytest.importorskip('no_such_module_iim')\n"
        "def test_never():\n    pass\n")
    (project / "test_fine.py").write_text("def test_fine():\n    pass\n")
    result = run_pytest(project, True, "test_needs_module.py", "test_fine.py")
    assert result.returncode == 1, result.stdout
    assert "skipped under CI=true" in result.stdout
    assert "test_needs_module.py: skipped under CI=true, where it must run: could not import" \
        in result.stdout, result.stdout
    result = run_pytest(project, False, "test_needs_module.py", "test_fine.py")
    assert result.returncode == 0, result.stdout


def test_the_allowed_skips_name_real_tests_and_say_why() -> None:
    from tests import conftest

    for entry in conftest.ALLOWED_SKIPS:
        path, name = entry.nodeid.split("::")
        assert f"def {name}(" in (REPO / path).read_text(), entry.nodeid
        assert len(entry.why) > 40, entry.nodeid

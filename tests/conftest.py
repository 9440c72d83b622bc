"""Every run: under CI (``CI=true``) a skipped test is a failed test.

CI installs what the suites need (scripts/apt-packages, the virtualenvs,
masakari-api) and runs as root, so a test that skips there is a check that
quietly did not run.  The skips that cannot be avoided on CI's machine are
listed in ``ALLOWED_SKIPS``, each with why; a skip is allowed only when its
reason matches the entry and the entry's condition holds on this machine.
A module skipped as a whole (``pytest.importorskip`` at import) fails the
session the same way.  Outside CI skips stay skips (a developer's machine may
lack root or a tool).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from dataclasses import dataclass
from typing import Callable, Optional

import pytest

# The first systemd release with `udevadm verify` (added in March 2023, after 253).
UDEVADM_VERIFY_SINCE = 254


def systemd_version() -> int:
    """The major version of the installed systemd (0 when there is none)."""
    tool = shutil.which("systemctl") or shutil.which("systemd-analyze")
    if tool is None:
        return 0
    out = subprocess.run([tool, "--version"], capture_output=True, text=True, timeout=30)
    m = re.match(r"systemd (\d+)", out.stdout)
    return int(m.group(1)) if m else 0


@dataclass(frozen=True)
class AllowedSkip:
    nodeid: str  # the test's node id without parameters
    reason: str  # a regular expression the skip's reason must match in full
    why: str  # why CI cannot run it
    applies: Callable[[], bool]  # the circumstance that makes the skip unavoidable, checked here


ALLOWED_SKIPS = (
    AllowedSkip(
        nodeid="tests/packaging/test_packages.py::test_udev_rule_verifies",
        reason=r"udevadm verify needs systemd >= 254: .*",
        why=("Debian 12 (CI's image) ships systemd and udev 252, and bookworm-backports is not "
             "among its apt sources; the rule's keys are still checked by content"),
        applies=lambda: systemd_version() < UDEVADM_VERIFY_SINCE,
    ),
)


def in_ci() -> bool:
    return os.environ.get("CI") == "true"


def skip_reason(report) -> str:
    longrepr = report.longrepr
    text = longrepr[2] if isinstance(longrepr, tuple) else str(longrepr)
    return text.removeprefix("Skipped: ")


def allowed(nodeid: str, reason: str) -> Optional[AllowedSkip]:
    base = nodeid.split("[", 1)[0]
    for entry in ALLOWED_SKIPS:
        if entry.nodeid == base and re.fullmatch(entry.reason, reason) and entry.applies():
            return entry
    return None


def refusal(reason: str) -> str:
    return (f"skipped under CI=true, where it must run: {reason}\n"
            "(CI installs what the tests need; a skip that cannot be avoided there goes in "
            "tests/conftest.py ALLOWED_SKIPS, with why)")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if in_ci() and report.skipped and not hasattr(report, "wasxfail"):
        reason = skip_reason(report)
        if allowed(item.nodeid, reason) is None:
            report.outcome = "failed"
            report.longrepr = refusal(reason)


_skipped_modules: list[tuple[str, str]] = []


@pytest.hookimpl(hookwrapper=True)
def pytest_make_collect_report(collector):
    outcome = yield
    report = outcome.get_result()
    if in_ci() and report.skipped:
        reason = skip_reason(report)
        if allowed(report.nodeid, reason) is None:
            _skipped_modules.append((report.nodeid, reason))


def pytest_terminal_summary(terminalreporter):
    if _skipped_modules:
        terminalreporter.section("skipped under CI=true", sep="=", red=True)
        for nodeid, reason in _skipped_modules:
            terminalreporter.line(f"{nodeid}: {refusal(reason)}")


def pytest_sessionfinish(session, exitstatus):
    if _skipped_modules and exitstatus == pytest.ExitCode.OK:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED

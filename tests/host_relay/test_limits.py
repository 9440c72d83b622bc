"""The relay raises its open-file limit and warns when it stays low."""

from __future__ import annotations

import logging
import resource
import subprocess
import sys

from host_relay.limits import raise_nofile_limit


def test_soft_limit_is_raised_to_the_hard_limit() -> None:
    # In a child, so the test process keeps its own limits.
    code = (
        "import resource, logging; logging.basicConfig(level=logging.INFO)\n"
        "from host_relay.limits import raise_nofile_limit\n"
        "soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)\n"
        "resource.setrlimit(resource.RLIMIT_NOFILE, (256, hard))\n"
        "got = raise_nofile_limit(want=64)\n"
        "print(got, hard, resource.getrlimit(resource.RLIMIT_NOFILE)[0])\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=30, check=True)
    got, hard, now = (int(x) for x in out.stdout.split())
    assert got == now == hard
    assert "Open-file limit" in out.stderr


def test_low_hard_limit_is_reported_with_the_fix(caplog) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    with caplog.at_level(logging.INFO):
        got = raise_nofile_limit(want=hard + 1 if hard != resource.RLIM_INFINITY else 2**62)
    assert got == resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    assert any("LimitNOFILE" in r.getMessage() and r.levelno == logging.WARNING
               for r in caplog.records)

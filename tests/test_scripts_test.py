"""scripts/test: its own usage, a subset honoured on every Python, nothing selected fails.

The plans are read from ``--dry-run`` (the pytest command of each run,
nothing installed or run); the exit status of a selection that selects
nothing from a real run on the default Python, which stops before the others.
"""

from __future__ import annotations

import os
import shlex
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "scripts" / "test"
DESELECT_310 = "--deselect tests/host_relay/test_conf.py::test_sample_is_in_sync"


def run(*args: str, cwd: Path = REPO, timeout: float = 60) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTEST_ADDOPTS", "CI")}
    return subprocess.run([str(SCRIPT), *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=timeout)


def plan(*args: str, cwd: Path = REPO) -> dict[str, str]:
    """{run name: its pytest arguments} printed by --dry-run."""
    result = run("--dry-run", *args, cwd=cwd)
    assert result.returncode == 0, result.stderr
    out = {}
    for line in result.stdout.splitlines():
        name, _, command = line.partition(": ")
        words = shlex.split(command)
        out[name] = " ".join(shlex.quote(w) for w in words[1:])
    return out


def test_help_is_its_own_usage() -> None:
    result = run("--help")
    assert result.returncode == 0 and result.stderr == ""
    text = result.stdout
    assert text.startswith("Usage: scripts/test [--allow-empty=VERSION]... [PYTEST-ARGS]...")
    for words in ("ruff check", "Python 3.10", "Python 3.9", "scripts/test -m slow",
                  "--allow-empty=VERSION", "--dry-run", "CI=true", "Exit status"):
        assert words in text, words
    assert "pytest [options]" not in text  # not pytest's help
    assert run("-h").stdout == text


def test_no_subset_runs_each_part_on_its_python() -> None:
    got = plan()
    assert got == {
        "default Python": "",
        "Python 3.10 (relay)": f"-p no:cacheprovider {DESELECT_310} "
                               "tests/protocol tests/host_relay tests/bench",
        "Python 3.9 (agent)": "-p no:cacheprovider tests/protocol tests/guest_agent tests/bench",
    }


def test_a_guest_subset_is_not_the_whole_relay_suite_on_3_10() -> None:
    result = run("--dry-run", "tests/guest_agent")
    assert "Python 3.10 (relay): nothing in tests/guest_agent belongs to its part" in result.stderr
    assert plan("tests/guest_agent") == {
        "default Python": "tests/guest_agent",
        "Python 3.9 (agent)": "-p no:cacheprovider tests/guest_agent",
    }


def test_paths_are_relative_to_where_it_is_called_and_options_go_everywhere() -> None:
    got = plan("-x", "-k", "outbox or conf", "host_relay/test_outbox.py::test_x",
               cwd=REPO / "tests")
    assert got == {
        "default Python": "-x -k 'outbox or conf' tests/host_relay/test_outbox.py::test_x",
        "Python 3.10 (relay)": f"-p no:cacheprovider {DESELECT_310} "
                               "-x -k 'outbox or conf' tests/host_relay/test_outbox.py::test_x",
    }


def test_an_option_value_is_not_taken_for_a_path() -> None:
    got = plan("--deselect", "tests/host_relay/test_conf.py::test_x", "tests/protocol")
    assert set(got) == {"default Python", "Python 3.10 (relay)", "Python 3.9 (agent)"}
    assert got["Python 3.9 (agent)"] == ("-p no:cacheprovider --deselect "
                                         "tests/host_relay/test_conf.py::test_x tests/protocol")


def test_a_path_containing_the_parts_runs_the_parts() -> None:
    got = plan("-m", "slow", ".")
    assert got["default Python"] == "-m slow ."
    assert got["Python 3.9 (agent)"] == ("-p no:cacheprovider -m slow "
                                         "tests/protocol tests/guest_agent tests/bench")


def test_only_the_secondary_pythons_may_be_allowed_to_select_nothing() -> None:
    for bad in ("--allow-empty=3.11", "--allow-empty=default"):
        result = run("--dry-run", bad)
        assert result.returncode == 2, result.stderr
        assert "only the secondary runs may select nothing (3.10 or 3.9)" in result.stderr


def test_a_selection_of_nothing_fails() -> None:
    result = run("-q", "-k", "no_such_test_in_iim", "tests/protocol/test_samples.py",
                 timeout=300)
    assert result.returncode == 5, result.stdout + result.stderr
    assert ("default Python: no tests selected by: -q -k no_such_test_in_iim "
            "tests/protocol/test_samples.py") in result.stderr
    assert "a selection that runs nothing is a failure" in result.stderr
    assert "Python 3.10" not in result.stderr  # it stopped there

"""Config validation: every class of error names file:line and what to write instead."""

from __future__ import annotations

import subprocess
import sys

import pytest

from guest_agent.config import (
    DEFAULT_GRACE,
    DEFAULT_PORT,
    AgentConfig,
    CheckConfig,
    ConfigError,
    load_config,
    parse_config,
)
from guest_agent.durations import format_duration, parse_duration
from tests.guest_agent.conftest import agent_env

GOOD = """\
port: /dev/ttyS1
heartbeat_interval: 500ms
checks:
  - name: web
    process: nginx
    min_count: 2
    grace: 5s
  - name: app
    cmdline: 'gunicorn .*myapp'
  - name: db
    pidfile: /run/db.pid
"""


def test_good_config_and_defaults():
    cfg = parse_config(GOOD, "a.yaml")
    assert cfg.port == "/dev/ttyS1" and cfg.heartbeat_interval == 0.5
    web, app, db = cfg.checks
    assert (web.kind, web.target, web.min_count, web.grace) == ("process", "nginx", 2, 5.0)
    assert (app.kind, app.min_count, app.grace) == ("cmdline", 1, DEFAULT_GRACE)
    assert db.label == "pidfile /run/db.pid"
    assert parse_config("") == AgentConfig(source="<string>")
    assert AgentConfig().port == DEFAULT_PORT


ERRORS = [
    # (yaml, expected text of the one problem)
    (
        "heartbeat_intervall: 2\n",
        "f.yaml:1: heartbeat_intervall: unknown key; did you mean "
        "`heartbeat_interval`? allowed keys: port, heartbeat_interval",
    ),
    (
        "checks:\n  - name: a\n    process: x\n    min_count: 0\n",
        "f.yaml:4: checks[0].min_count: must be an integer >= 1 and <= 4096, e.g. `min_count: 1`",
    ),
    ("checks:\n  - name: a\n    process: x\n    min_count: two\n", "f.yaml:4: checks[0].min_count"),
    (
        "checks:\n  - name: a\n    process: x\n    grace: 1h\n",
        "f.yaml:4: checks[0].grace: must be a duration between 0 and 600 seconds, e.g. `grace: 3s`",
    ),
    (
        "checks:\n  - name: a\n    process: x\n    pidfile: /p\n",
        "f.yaml:2: checks[0]: needs exactly one of process, cmdline, pidfile, http, tcp, exec, "
        "heartbeat or file (found process and pidfile)",
    ),
    (
        "checks:\n  - name: a\n",
        "f.yaml:2: checks[0]: needs exactly one of process, cmdline, pidfile, http, tcp, exec, "
        "heartbeat or file (found none), e.g. `process: nginx`",
    ),
    ("checks:\n  - process: x\n", "f.yaml:2: checks[0]: has no name; add one, e.g. `name: web`"),
    (
        "checks:\n  - {name: a, process: x}\n  - {name: a, process: y}\n",
        "f.yaml:3: checks[1].name: 'a' is already the name of check 0; names must be unique",
    ),
    (
        "checks:\n  - {name: a, cmdline: 'foo('}\n",
        "f.yaml:2: checks[0].cmdline: is not a valid regular expression",
    ),
    (
        "checks:\n  - {name: a, process: /usr/sbin/nginx}\n",
        "f.yaml:2: checks[0].process: is the process name as `ps -o comm` shows it, "
        "without a path, e.g. `process: nginx`",
    ),
    (
        "checks:\n  - {name: a, pidfile: /p, min_count: 2}\n",
        "f.yaml:2: checks[0].min_count: a pidfile names one process",
    ),
    (
        "checks:\n  - {name: a, pidfile: run/p.pid}\n",
        "f.yaml:2: checks[0].pidfile: must be an absolute path",
    ),
    (
        "checks:\n  - {name: " + "n" * 65 + ", process: x}\n",
        "checks[0].name: must be at most 64 bytes",
    ),
    (
        "checks:\n  - {name: a, process: x, colour: red}\n",
        "f.yaml:2: checks[0].colour: unknown key; allowed keys: name, process, cmdline, pidfile",
    ),
    ("checks:\n  - {name: a, proces: x}\n", "did you mean `process`?"),
    ("checks: nginx\n", "f.yaml:1: checks: must be a list of checks"),
    ("checks:\n  - nginx\n", "f.yaml:2: checks[0]: must be a mapping"),
    (
        "heartbeat_interval: 0.01\n",
        "f.yaml:1: heartbeat_interval: must be a duration between "
        "0.1 and 60 seconds, e.g. `heartbeat_interval: 1s`",
    ),
    ("heartbeat_interval: true\n", "f.yaml:1: heartbeat_interval: `True` is not a duration"),
    ("rescan_interval: 0\n", "f.yaml:1: rescan_interval: must be a duration between 0.5 and 300"),
    ("port: ttyS1\n", "f.yaml:1: port: must be an absolute path, e.g. `port: /dev/virtio-ports/"),
    ("control_socket: [a]\n", "f.yaml:1: control_socket: must be an absolute path"),
    ("port: /a\nport: /b\n", "f.yaml:2: port: given twice; keep one"),
    ("- port: /a\n", "f.yaml:1: must be a mapping of settings"),
    ("port: [\n", "f.yaml:2: not valid YAML"),
]


@pytest.mark.parametrize("text,expected", ERRORS)
def test_each_bad_input_names_line_and_fix(text, expected):
    with pytest.raises(ConfigError) as info:
        parse_config(text, "f.yaml")
    assert expected in str(info.value), str(info.value)


def test_too_many_checks():
    text = "checks:\n" + "".join(f"  - {{name: c{i}, process: p}}\n" for i in range(33))
    with pytest.raises(ConfigError, match="f.yaml:2: checks: at most 32 checks"):
        parse_config(text, "f.yaml")


def test_all_problems_reported_at_once():
    with pytest.raises(ConfigError) as info:
        parse_config("foo: 1\nchecks:\n  - {name: a, process: x, min_count: 0}\n", "f.yaml")
    assert len(info.value.problems) == 2


def test_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="cannot read the configuration"):
        load_config(str(tmp_path / "nope.yaml"))


def test_dataclasses_validate_themselves():
    with pytest.raises(ValueError):
        CheckConfig(name="a", kind="process", target="x", min_count=0)
    with pytest.raises(ValueError):
        AgentConfig(heartbeat_interval=100)
    with pytest.raises(ValueError):
        AgentConfig(checks=(CheckConfig("a", "process", "x"), CheckConfig("a", "process", "y")))


def test_durations():
    assert parse_duration("30s") == 30 and parse_duration("10m") == 600
    assert parse_duration("2h") == 7200 and parse_duration(1.5) == 1.5
    assert parse_duration("250ms") == 0.25
    for bad in ("-1", "ten", "1w", True, None, float("nan")):
        with pytest.raises(ValueError):
            parse_duration(bad)
    assert format_duration(90) == "1m30s" and format_duration(600) == "10m"


def check_config(path):
    return subprocess.run(
        [sys.executable, "-m", "guest_agent.cli", "check-config", "-c", str(path)],
        capture_output=True,
        text=True,
        env=agent_env(),
        timeout=30,
    )


def test_check_config_cli(tmp_path):
    good = tmp_path / "good.yaml"
    good.write_text(GOOD)
    out = check_config(good)
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith(f"OK: {good}: 3 checks")

    bad = tmp_path / "bad.yaml"
    bad.write_text(GOOD.replace("min_count: 2", "min_count: -3").replace("port:", "prot:"))
    out = check_config(bad)
    assert out.returncode == 2
    assert f"{bad}:1: prot: unknown key; did you mean `port`?" in out.stderr
    assert f"{bad}:6: checks[0].min_count: must be an integer >= 1" in out.stderr

    out = check_config(tmp_path / "missing.yaml")
    assert out.returncode == 2 and "cannot read the configuration" in out.stderr

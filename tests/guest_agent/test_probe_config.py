"""Probe checks in the config: keys per kind, bounds, and the messages of issue 13."""

from __future__ import annotations

import pytest

from guest_agent.config import CheckConfig, ConfigError, parse_config
from guest_agent.probes.options import KIND_KEYS, parse_hostport, parse_http
from tests.guest_agent.test_config import check_config

PROBES = """\
checks:
  - name: web
    http: http://127.0.0.1:8080/healthz
    status: [200, 204]
  - name: db
    tcp: "[::1]:5432"
    period: 10s
    timeout: 1s
    failures: 5
    successes: 2
    start_delay: 1m
  - name: queue
    exec: ["/usr/local/bin/queue-ok", "--quick"]
    user: nobody
  - name: worker
    heartbeat: worker
    timeout: 30s
  - name: batch
    file: /var/lib/batch/stamp
    max_age: 10m
"""


def test_probe_checks_and_their_defaults():
    web, db, queue, worker, batch = parse_config(PROBES, "a.yaml").checks
    assert (web.kind, web.period, web.timeout, web.failures, web.successes) == (
        "http", 5.0, 2.0, 3, 1)
    assert web.status == (200, 204) and web.is_probe and web.start_delay == 0
    assert (db.target, db.period, db.timeout, db.failures, db.successes, db.start_delay) == (
        "[::1]:5432", 10.0, 1.0, 5, 2, 60.0)
    assert queue.argv == ("/usr/local/bin/queue-ok", "--quick") and queue.user == "nobody"
    assert queue.target == "/usr/local/bin/queue-ok --quick"
    assert (worker.kind, worker.target, worker.timeout) == ("heartbeat", "worker", 30.0)
    assert (batch.max_age, batch.failures, batch.successes) == (600.0, 1, 1)
    assert parse_config("checks:\n  - {name: h, heartbeat: h}\n").checks[0].timeout == 30.0


ERRORS = [
    ("checks:\n  - {name: a, http: 'http://x:1/', grace: 3}\n",
     "f.yaml:2: checks[0].grace: not used by this check: an http check takes period, timeout, "
     "failures, successes, start_delay, status; remove `grace`"),
    ("checks:\n  - {name: a, process: x, period: 3}\n",
     "f.yaml:2: checks[0].period: not used by this check: a process check takes min_count, "
     "grace; remove `period`"),
    ("checks:\n  - {name: a, heartbeat: a, failures: 3}\n",
     "a heartbeat check takes timeout, start_delay, user; remove `failures`"),
    ("checks:\n  - {name: a, file: /x, status: [200]}\n",
     "a file check takes max_age, period, timeout, start_delay; remove `status`"),
    ("checks:\n  - {name: a, tcp: 'x:1', timeout: 5s}\n",
     "f.yaml:2: checks[0]: timeout (5s) must be less than period (5s)"),
    ("checks:\n  - {name: a, file: /x}\n", "f.yaml:2: checks[0]: a file check needs max_age"),
    ("checks:\n  - {name: a, exec: /bin/true}\n", "checks[0].exec: must be a list"),
    ("checks:\n  - {name: a, exec: [queue-ok]}\n", "the program must be an absolute path"),
    ("checks:\n  - {name: a, http: 'https://x/'}\n", "checks[0].http: https is not probed"),
    ("checks:\n  - {name: a, http: 'ftp://x/'}\n", "checks[0].http: must be an http:// URL"),
    ("checks:\n  - {name: a, tcp: 5432}\n", "checks[0].tcp: needs the host too, e.g. "
     "`tcp: 127.0.0.1:5432`"),
    ("checks:\n  - {name: a, tcp: 'db'}\n", "checks[0].tcp: must be host:port"),
    ("checks:\n  - {name: a, http: 'http://x/', status: [200, 700]}\n",
     "checks[0].status: must be a list of 1 to 16 HTTP status codes"),
    ("checks:\n  - {name: a, http: 'http://x/', failures: 0}\n",
     "checks[0].failures: must be an integer from 1 to 100"),
    ("checks:\n  - {name: a, exec: [/bin/true], user: 'bad user'}\n",
     "checks[0].user: must be a user name or uid"),
    ("checks:\n  - {name: a, heartbeat: 'has space'}\n", "checks[0].heartbeat: must be the name"),
    ("checks:\n  - {name: a, http: 'http://x/', period: 5 minutes}\n",
     "f.yaml:2: checks[0].period: `5 minutes` is not a duration: write a number of seconds or "
     "a number and one unit (ms, s, m, h or d), e.g. `period: 5s`"),
    ("checks:\n  - {name: a, http: 'http://x/', period: 2h}\n",
     "f.yaml:2: checks[0].period: must be a duration between 0.1 and 3600 seconds"),
    # issue 13: units listed for a non-duration, apart from the out-of-range message
    ("checks:\n  - {name: a, process: x, grace: 5 minutes}\n",
     "checks[0].grace: `5 minutes` is not a duration: write a number of seconds or a number "
     "and one unit (ms, s, m, h or d), e.g. `grace: 3s`"),
    ("heartbeat_interval: 1 sec\n", "f.yaml:1: heartbeat_interval: `1 sec` is not a duration"),
    ("checks:\n  - name: a\n\tprocess: x\n",
     "f.yaml:3: a tab in the indentation: YAML is indented with spaces only; indent with spaces"),
    ("port:\t/dev/x\nchecks: []\n", "not valid YAML: a tab where YAML allows only spaces"),
]


@pytest.mark.parametrize("text,expected", ERRORS)
def test_each_bad_probe_input_names_line_and_fix(text, expected):
    with pytest.raises(ConfigError) as info:
        parse_config(text, "f.yaml")
    assert expected in str(info.value), str(info.value)
    assert "found character" not in str(info.value)  # never PyYAML's own wording for a tab


def test_out_of_range_and_not_a_duration_are_different_messages():
    for text in ("grace: 1h", "grace: an hour"):
        with pytest.raises(ConfigError) as info:
            parse_config(f"checks:\n  - name: a\n    process: x\n    {text}\n", "f.yaml")
        message = str(info.value)
        assert ("ms, s, m, h or d" in message) == (text == "grace: an hour"), message
        assert ("between 0 and 600" in message) == (text == "grace: 1h"), message


def test_dataclass_checks_probe_fields():
    with pytest.raises(ValueError, match="timeout"):
        CheckConfig("a", "http", "http://x/", period=1.0, timeout=1.0)
    with pytest.raises(ValueError):
        CheckConfig("a", "exec", "x", argv=("relative",))
    assert CheckConfig("a", "heartbeat", "a").timeout == 30.0


def test_every_kind_lists_its_keys():
    assert set(KIND_KEYS) == {"http", "tcp", "exec", "heartbeat", "file"}
    assert "user" in KIND_KEYS["exec"] and "status" in KIND_KEYS["http"]


def test_targets():
    assert parse_hostport("[::1]:80").host == "::1"
    assert parse_hostport("db.local:5432").numeric is False
    end = parse_http("http://[::1]:8080/health?deep=1")
    assert (end.host, end.port, end.path, end.netloc) == ("::1", 8080, "/health?deep=1",
                                                          "[::1]:8080")
    assert parse_http("http://localhost/").port == 80


def test_check_config_summarises_probes_and_warns_when_empty(tmp_path):
    good = tmp_path / "probes.yaml"
    good.write_text(PROBES)
    out = check_config(good)
    assert out.returncode == 0, out.stderr
    assert "web: http 'http://127.0.0.1:8080/healthz', period 5s, timeout 2s, failures 3" in (
        out.stdout)
    assert "a dead target fails within 17s" in out.stdout
    assert "worker: heartbeat 'worker', timeout 30s" in out.stdout
    assert "heartbeats are received on /run/iim-agent/notify.sock" in out.stdout
    assert "WARNING" not in out.stdout

    for text in ("", "checks: []\n", "port: /dev/ttyS1\n"):
        empty = tmp_path / "empty.yaml"
        empty.write_text(text)
        out = check_config(empty)
        assert out.returncode == 0, out.stderr
        assert "WARNING: no checks are configured: the agent watches nothing" in out.stdout

    tab = tmp_path / "tab.yaml"
    tab.write_text("checks:\n  - name: a\n\tprocess: x\n")
    out = check_config(tab)
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert f"{tab}:3: a tab in the indentation" in out.stderr and "indent with spaces" in (
        out.stderr)

    bad = tmp_path / "bad.yaml"
    bad.write_text("checks:\n  - name: web\n    http: http://127.0.0.1/\n    min_count: 2\n")
    out = check_config(bad)
    assert out.returncode == 2
    assert (f"{bad}:4: checks[0].min_count: not used by this check: an http check takes "
            "period, timeout, failures, successes, start_delay, status") in out.stderr

"""The agent's configuration: frozen, validated dataclasses and a YAML loader.

The loader (:mod:`guest_agent.config_parser`) walks the node tree from
``yaml.compose`` so every problem names
the file, the line and what to write instead, e.g.::

    /etc/iim/agent.yaml:7: checks[0].min_count: must be an integer >= 1, e.g. `min_count: 1`

All problems of a file are reported at once (:class:`ConfigError`).
"""

from __future__ import annotations

import dataclasses
import logging
import os
import re
from typing import Any, Optional

from guest_agent.durations import duration_in
from guest_agent.probes import options as probe
from guest_agent.probes.options import KIND_KEYS, PROBE_KEYS, PROBE_KINDS
from iim_protocol.messages import (
    MAX_CHECKS,
    MAX_HEARTBEAT_INTERVAL,
    MAX_NAME_BYTES,
    MAX_TEXT_BYTES,
    MIN_HEARTBEAT_INTERVAL,
)

LOG = logging.getLogger(__name__)

DEFAULT_CONFIG_PATH = "/etc/iim/agent.yaml"
DEFAULT_PORT = "/dev/virtio-ports/org.openstack.iim.0"
# In its own directory: the systemd unit makes it with RuntimeDirectory= (ProtectSystem=strict
# leaves /run itself read-only); outside systemd ControlServer creates it.
DEFAULT_CONTROL_SOCKET = "/run/iim-agent/control.sock"
# Heartbeat checks listen here for sd_notify-style datagrams (only when one is configured).
DEFAULT_NOTIFY_SOCKET = "/run/iim-agent/notify.sock"
DEFAULT_HEARTBEAT_INTERVAL = 1.0
DEFAULT_RESCAN_INTERVAL = 5.0
# A process_iter pass costs ~15 ms per 300 processes: every 0.5 s is 3 % of a core.
MIN_RESCAN_INTERVAL = 0.5
# Slower than that and a restarted service stays unwatched for too long.
MAX_RESCAN_INTERVAL = 300.0
DEFAULT_GRACE = 3.0  # covers a service manager's quick restart
# Longer and a dead service goes unreported too long: use `iim-agent pause` for maintenance.
MAX_GRACE = 600.0
MAX_MIN_COUNT = 4096  # more processes than that for one check is a typo
# Patterns and paths end up in failure reasons, which are at most MAX_TEXT_BYTES.
MAX_TARGET_BYTES = MAX_TEXT_BYTES // 2
MATCH_KINDS = ("process", "cmdline", "pidfile")
KINDS = MATCH_KINDS + PROBE_KINDS

TOP_KEYS = ("port", "heartbeat_interval", "rescan_interval", "control_socket", "notify_socket",
            "checks")
PROCESS_KEYS = ("min_count", "grace")
CHECK_KEYS = ("name", *KINDS, *PROCESS_KEYS, *PROBE_KEYS)


class ConfigError(ValueError):
    """One or more problems in a configuration file, one per line of ``str()``."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = list(problems)


# Field validators: each returns the clean value or raises ValueError with a
# message that says what to write instead.  The dataclasses and the loader
# share them.


_number_in = duration_in


def accepted_keys(kind: str) -> tuple[str, ...]:
    """The keys a check of ``kind`` takes besides ``name`` and the kind itself."""
    return KIND_KEYS.get(kind, PROCESS_KEYS)


def kind_keys_text(kind: str) -> str:
    what = "a process check" if kind in MATCH_KINDS else (
        f"an {kind} check" if kind in ("http", "exec") else f"a {kind} check")
    return f"{what} takes {', '.join(accepted_keys(kind))}"


def _abs_path(key: str, value: Any, example: str) -> str:
    if not isinstance(value, str) or not value.startswith("/") or "\0" in value:
        raise ValueError(f"must be an absolute path, e.g. `{key}: {example}`")
    return value


def check_name(value: Any) -> str:
    if not isinstance(value, str) or not value:
        raise ValueError('must be a non-empty string, e.g. `name: "nginx"`')
    if len(value.encode("utf-8")) > MAX_NAME_BYTES:
        raise ValueError(f"must be at most {MAX_NAME_BYTES} bytes, e.g. `name: nginx`")
    if not value.isprintable():
        raise ValueError("must not contain control characters, e.g. `name: nginx`")
    return value


def check_target(kind: str, value: Any) -> str:
    examples = {"process": "nginx", "cmdline": "'gunicorn .*myapp'", "pidfile": "/run/nginx.pid"}
    hint = f"e.g. `{kind}: {examples[kind]}`"
    if not isinstance(value, str) or not value:
        raise ValueError(f"must be a non-empty string, {hint}")
    if len(value.encode("utf-8")) > MAX_TARGET_BYTES or not value.isprintable():
        raise ValueError(f"must be at most {MAX_TARGET_BYTES} printable bytes, {hint}")
    if kind == "process" and "/" in value:
        raise ValueError(
            "is the process name as `ps -o comm` shows it, without a path, "
            f"e.g. `process: {os.path.basename(value) or 'nginx'}`"
        )
    if kind == "cmdline":
        try:
            re.compile(value)
        except re.error as exc:
            raise ValueError(
                f"is not a valid regular expression ({exc}); escape special characters, "
                r"e.g. `cmdline: 'python3 -m myapp\.server'`"
            ) from None
    if kind == "pidfile":
        _abs_path(kind, value, examples[kind])
    return value


def check_min_count(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_MIN_COUNT:
        raise ValueError(f"must be an integer >= 1 and <= {MAX_MIN_COUNT}, e.g. `min_count: 1`")
    return value


def check_grace(value: Any) -> float:
    return _number_in("grace", value, 0.0, MAX_GRACE, "3s")


@dataclasses.dataclass(frozen=True)
class CheckConfig:
    """One watched thing: processes (``process``, ``cmdline``, ``pidfile``) or a probe.

    ``process`` matches psutil's name() exactly (``ps -o comm``);
    ``cmdline`` is a Python regular expression searched (``re.search``) in
    the command line joined with single spaces; ``pidfile`` names a file
    holding one pid.  The probe kinds (``http``, ``tcp``, ``exec``,
    ``heartbeat``, ``file``) use the probe fields; see
    :mod:`guest_agent.probes.options`.  ``argv`` is the exec probe's command
    (its ``target`` is the same joined with spaces, for display).
    """

    name: str
    kind: str
    target: str
    min_count: int = 1
    grace: float = DEFAULT_GRACE
    argv: tuple[str, ...] = ()
    period: float = probe.DEFAULT_PERIOD
    timeout: Optional[float] = None  # None: the kind's default
    failures: int = probe.DEFAULT_FAILURES
    successes: int = probe.DEFAULT_SUCCESSES
    start_delay: float = probe.DEFAULT_START_DELAY
    status: tuple[int, ...] = ()  # http: healthy codes; () means 200-399
    user: str = ""
    max_age: float = 0.0

    def __post_init__(self) -> None:
        check_name(self.name)
        if self.kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}")
        if self.kind in PROBE_KINDS:
            self._check_probe()
            return
        check_target(self.kind, self.target)
        check_min_count(self.min_count)
        object.__setattr__(self, "grace", check_grace(self.grace))
        if self.kind == "pidfile" and self.min_count != 1:
            raise ValueError(
                "a pidfile names one process: remove min_count or write `min_count: 1`"
            )

    def _check_probe(self) -> None:
        if self.kind == "exec":
            object.__setattr__(self, "argv", probe.check_exec(self.argv))
        else:
            probe.TARGET_VALIDATORS[self.kind](self.target)
        timeout = probe.default_timeout(self.kind) if self.timeout is None else self.timeout
        object.__setattr__(self, "timeout", probe.check_timeout(timeout, self.kind))
        for key, check in probe.KEY_VALIDATORS.items():
            value = getattr(self, key)
            if value not in ((), "", 0.0) or key in ("period", "failures", "successes"):
                object.__setattr__(self, key, check(value))
        problem = probe_problem(self.kind, self.period, self.timeout, self.max_age)
        if problem:
            raise ValueError(problem)
        if self.kind in ("heartbeat", "file"):  # one overdue beat or stale stamp is a failure
            object.__setattr__(self, "failures", 1)
            object.__setattr__(self, "successes", 1)

    @property
    def is_probe(self) -> bool:
        return self.kind in PROBE_KINDS

    @property
    def label(self) -> str:
        """How failure reasons name this check's target, e.g. ``process nginx``."""
        return f"{self.kind} {self.target}"


def probe_problem(kind: str, period: float, timeout: float, max_age: float) -> str:
    """What is wrong between a probe's fields, or ''."""
    if kind in ("http", "tcp", "exec", "file") and timeout >= period:
        return (f"timeout ({timeout:g}s) must be less than period ({period:g}s): a probe "
                "never overlaps the next one; e.g. `period: 5s` with `timeout: 2s`")
    if kind == "file" and not max_age:
        return "a file check needs max_age, e.g. `max_age: 10m`"
    return ""


@dataclasses.dataclass(frozen=True)
class AgentConfig:
    port: str = DEFAULT_PORT
    heartbeat_interval: float = DEFAULT_HEARTBEAT_INTERVAL
    rescan_interval: float = DEFAULT_RESCAN_INTERVAL
    control_socket: str = DEFAULT_CONTROL_SOCKET
    notify_socket: str = DEFAULT_NOTIFY_SOCKET
    checks: tuple[CheckConfig, ...] = ()
    source: str = "<defaults>"

    def __post_init__(self) -> None:
        _abs_path("port", self.port, DEFAULT_PORT)
        _abs_path("control_socket", self.control_socket, DEFAULT_CONTROL_SOCKET)
        _abs_path("notify_socket", self.notify_socket, DEFAULT_NOTIFY_SOCKET)
        object.__setattr__(
            self,
            "heartbeat_interval",
            _number_in(
                "heartbeat_interval",
                self.heartbeat_interval,
                MIN_HEARTBEAT_INTERVAL,
                MAX_HEARTBEAT_INTERVAL,
                "1s",
            ),
        )
        object.__setattr__(
            self,
            "rescan_interval",
            _number_in(
                "rescan_interval",
                self.rescan_interval,
                MIN_RESCAN_INTERVAL,
                MAX_RESCAN_INTERVAL,
                "5s",
            ),
        )
        object.__setattr__(self, "checks", tuple(self.checks))
        if len(self.checks) > MAX_CHECKS:
            raise ValueError(f"at most {MAX_CHECKS} checks")
        names = [c.name for c in self.checks]
        if len(set(names)) != len(names):
            raise ValueError("check names must be unique")

    def check(self, name: str) -> Optional[CheckConfig]:
        for c in self.checks:
            if c.name == name:
                return c
        return None


def load_config(path: str) -> AgentConfig:
    """Read and validate ``path``; raise :class:`ConfigError` listing every problem."""
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError([f"{path}: cannot read the configuration: {exc}"]) from None
    return parse_config(text, path)


def parse_config(text: str, source: str = "<string>") -> AgentConfig:
    """Validate YAML ``text``; ``source`` names it in messages."""
    from guest_agent.config_parser import Parser  # the YAML walk, kept apart

    return Parser(source).parse(text)

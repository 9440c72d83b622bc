"""The keys of a probe check: defaults, bounds and validators, one place for each limit.

A probe check names exactly one of ``http``, ``tcp``, ``exec``, ``heartbeat``
or ``file``; which other keys it accepts depends on that kind
(:data:`KIND_KEYS`).  Every validator returns the clean value or raises
ValueError saying what to write instead; guest_agent.config reports it with
the file and line.  Parsing of targets (:func:`parse_http`,
:func:`parse_hostport`) is shared with the probes that use them.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import re
import urllib.parse
from typing import Any

from guest_agent.durations import duration_in
from iim_protocol.messages import MAX_NAME_BYTES, MAX_TEXT_BYTES

PROBE_KINDS = ("http", "tcp", "exec", "heartbeat", "file")
# Which keys each kind takes besides `name` and the kind itself.
PERIODIC = ("period", "timeout", "failures", "successes", "start_delay")
KIND_KEYS: dict[str, tuple[str, ...]] = {
    "http": (*PERIODIC, "status"),
    "tcp": PERIODIC,
    "exec": (*PERIODIC, "user"),
    "heartbeat": ("timeout", "start_delay", "user"),
    "file": ("max_age", "period", "timeout", "start_delay"),
}
PROBE_KEYS = ("period", "timeout", "failures", "successes", "start_delay", "status", "user",
              "max_age")

DEFAULT_PERIOD = 5.0
MIN_PERIOD = 0.1  # ten probes a second per check is already plenty
MAX_PERIOD = 3600.0
DEFAULT_TIMEOUT = 2.0
MIN_TIMEOUT = 0.01
MAX_TIMEOUT = 600.0  # a probe that needs longer is a batch job: use heartbeat or file
DEFAULT_HEARTBEAT_TIMEOUT = 30.0
MAX_HEARTBEAT_TIMEOUT = 86400.0  # a daily cron job still fits
DEFAULT_FAILURES = 3
DEFAULT_SUCCESSES = 1
MAX_THRESHOLD = 100
DEFAULT_START_DELAY = 0.0
MAX_START_DELAY = 3600.0
MIN_MAX_AGE = 0.1
MAX_MAX_AGE = 30 * 86400.0
MAX_STATUS_CODES = 16
MAX_EXEC_ARGS = 64
MAX_EXEC_BYTES = 4096  # the whole argument vector
MAX_USER_BYTES = 32  # useradd's limit
MAX_OUTPUT_BYTES = 4096  # kept of an exec probe's stdout and of its stderr (the tail)
# Probe targets end up in status and reasons, which are at most MAX_TEXT_BYTES.
MAX_TARGET_BYTES = MAX_TEXT_BYTES // 2
_USER = re.compile(r"^[A-Za-z_][A-Za-z0-9_.-]*\$?$")
_TOKEN = re.compile(r"^[A-Za-z0-9_.@:-]+$")


@dataclasses.dataclass(frozen=True)
class Endpoint:
    """Where a probe connects: ``host`` is an address or a name still to resolve."""

    host: str
    port: int
    path: str = "/"

    @property
    def numeric(self) -> bool:
        try:
            ipaddress.ip_address(self.host)
        except ValueError:
            return False
        return True

    @property
    def netloc(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"


def _text(key: str, value: Any, example: str) -> str:
    if not isinstance(value, str) or not value:
        raise ValueError(f"must be a non-empty string, e.g. `{key}: {example}`")
    if len(value.encode("utf-8")) > MAX_TARGET_BYTES or not value.isprintable():
        raise ValueError(f"must be at most {MAX_TARGET_BYTES} printable bytes, e.g. "
                         f"`{key}: {example}`")
    return value


def parse_hostport(value: str, default_port: int = 0) -> Endpoint:
    """``127.0.0.1:5432``, ``[::1]:5432`` or ``db.local:5432``; ValueError otherwise."""
    m = re.match(r"^\[([0-9A-Fa-f:.]+)\](?::(\d+))?$|^([^:\[\]/\s]+)(?::(\d+))?$", value)
    if not m:
        raise ValueError("not host:port")
    host = m.group(1) or m.group(3)
    port_text = m.group(2) or m.group(4)
    if m.group(1):
        ipaddress.IPv6Address(host)  # ValueError for a malformed address
    port = int(port_text) if port_text else default_port
    if not 1 <= port <= 65535:
        raise ValueError("port out of range")
    return Endpoint(host, port)


def parse_http(value: str) -> Endpoint:
    url = urllib.parse.urlsplit(value)
    if url.scheme != "http" or not url.netloc or "@" in url.netloc:
        raise ValueError("not an http URL")
    end = parse_hostport(url.netloc, 80)
    path = url.path or "/"
    if url.query:
        path += "?" + url.query
    return dataclasses.replace(end, path=path)


def check_http(value: Any) -> str:
    example = "http://127.0.0.1:8080/healthz"
    _text("http", value, example)
    if value.startswith("https:"):
        raise ValueError(
            "https is not probed (the agent carries no TLS client); probe the plain-HTTP "
            f"health port, or use `exec: [/usr/bin/curl, -fsS, {value}]`"
        )
    try:
        parse_http(value)
    except ValueError:
        raise ValueError(f"must be an http:// URL with a host, e.g. `http: {example}`") from None
    return value


def check_tcp(value: Any) -> str:
    example = "127.0.0.1:5432"
    if isinstance(value, int) and not isinstance(value, bool):
        raise ValueError(f"needs the host too, e.g. `tcp: 127.0.0.1:{value}`")
    _text("tcp", value, example)
    try:
        end = parse_hostport(value)
    except ValueError:
        end = None
    if end is None or end.port == 0:
        raise ValueError(
            f"must be host:port (IPv4, [IPv6]:port or a host name), e.g. `tcp: {example}`"
        )
    return value


def check_exec(value: Any) -> tuple[str, ...]:
    example = '["/usr/local/bin/queue-ok", "--quick"]'
    if isinstance(value, str):
        raise ValueError(f"must be a list: the program and its arguments, e.g. `exec: {example}`"
                         " (no shell: write `[/bin/sh, -c, '...']` for one)")
    if (
        not isinstance(value, (list, tuple))
        or not value
        or not all(isinstance(a, str) and "\0" not in a for a in value)
    ):
        raise ValueError(f"must be a non-empty list of strings, e.g. `exec: {example}`")
    if len(value) > MAX_EXEC_ARGS or sum(len(a.encode("utf-8")) for a in value) > MAX_EXEC_BYTES:
        raise ValueError(f"at most {MAX_EXEC_ARGS} arguments and {MAX_EXEC_BYTES} bytes; "
                         "put a long command in a script")
    if not value[0].startswith("/"):
        raise ValueError(f"the program must be an absolute path (no PATH search), e.g. "
                         f"`exec: [/usr/bin/{value[0] or 'true'}]`")
    return tuple(value)


def check_heartbeat(value: Any) -> str:
    if not isinstance(value, str) or not _TOKEN.match(value) or len(value) > MAX_NAME_BYTES:
        raise ValueError(
            f"must be the name senders use, at most {MAX_NAME_BYTES} of A-Z a-z 0-9 _ . @ : -, "
            "e.g. `heartbeat: worker`"
        )
    return value


def check_file(value: Any) -> str:
    example = "/var/lib/batch/stamp"
    _text("file", value, example)
    if not value.startswith("/"):
        raise ValueError(f"must be an absolute path, e.g. `file: {example}`")
    return value


def default_timeout(kind: str) -> float:
    return DEFAULT_HEARTBEAT_TIMEOUT if kind == "heartbeat" else DEFAULT_TIMEOUT


def check_period(value: Any) -> float:
    return duration_in("period", value, MIN_PERIOD, MAX_PERIOD, "5s")


def check_timeout(value: Any, kind: str = "http") -> float:
    if kind == "heartbeat":
        return duration_in("timeout", value, MIN_PERIOD, MAX_HEARTBEAT_TIMEOUT, "30s")
    return duration_in("timeout", value, MIN_TIMEOUT, MAX_TIMEOUT, "2s")


def _count(key: str, value: Any, example: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_THRESHOLD:
        raise ValueError(f"must be an integer from 1 to {MAX_THRESHOLD}, e.g. `{key}: {example}`")
    return value


def check_failures(value: Any) -> int:
    return _count("failures", value, DEFAULT_FAILURES)


def check_successes(value: Any) -> int:
    return _count("successes", value, DEFAULT_SUCCESSES)


def check_start_delay(value: Any) -> float:
    return duration_in("start_delay", value, 0.0, MAX_START_DELAY, "30s")


def check_max_age(value: Any) -> float:
    return duration_in("max_age", value, MIN_MAX_AGE, MAX_MAX_AGE, "10m")


def check_status(value: Any) -> tuple[int, ...]:
    example = "[200, 204]"
    codes = [value] if isinstance(value, int) and not isinstance(value, bool) else value
    if (
        not isinstance(codes, (list, tuple))
        or not codes
        or len(codes) > MAX_STATUS_CODES
        or not all(isinstance(c, int) and not isinstance(c, bool) and 100 <= c <= 599
                   for c in codes)
    ):
        raise ValueError(
            f"must be a list of 1 to {MAX_STATUS_CODES} HTTP status codes (100-599) that count "
            f"as healthy, e.g. `status: {example}`"
        )
    return tuple(sorted(set(codes)))


def check_user(value: Any) -> str:
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return str(value)
    if (
        not isinstance(value, str)
        or not _USER.match(value)
        or len(value.encode("utf-8")) > MAX_USER_BYTES
    ):
        raise ValueError(f"must be a user name or uid, e.g. `user: nobody` (at most "
                         f"{MAX_USER_BYTES} bytes)")
    return value


TARGET_VALIDATORS = {
    "http": check_http,
    "tcp": check_tcp,
    "exec": check_exec,
    "heartbeat": check_heartbeat,
    "file": check_file,
}
KEY_VALIDATORS = {
    "period": check_period,
    "failures": check_failures,
    "successes": check_successes,
    "start_delay": check_start_delay,
    "max_age": check_max_age,
    "status": check_status,
    "user": check_user,
}

"""Finding processes: a thin psutil adapter and the matchers of each check kind.

Everything above this module sees processes as :class:`ProcInfo` values keyed
by :data:`Identity` ``(pid, create_time)``, because pids are reused.  The
process source is injectable so the check logic can be tested without psutil.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import re
from collections.abc import Iterable, Sequence
from typing import Optional

import psutil

from guest_agent.config import CheckConfig

LOG = logging.getLogger(__name__)

Identity = tuple[int, float]  # (pid, create_time): a pid alone may be reused

# A pidfile holds one decimal pid; anything longer is not a pidfile.
MAX_PIDFILE_BYTES = 64
_GONE = (psutil.NoSuchProcess, psutil.ZombieProcess, psutil.AccessDenied, ProcessLookupError)


@dataclasses.dataclass(frozen=True)
class ProcInfo:
    pid: int
    create_time: float
    name: str = ""
    cmdline: tuple[str, ...] = ()

    @property
    def identity(self) -> Identity:
        return (self.pid, self.create_time)


class PsutilSource:
    """The real process table, read through psutil with only the attributes needed."""

    def __init__(self) -> None:
        self._own_pid = os.getpid()

    def scan(self, want_cmdline: bool) -> list[ProcInfo]:
        """Every live process except zombies and this agent."""
        attrs = ["pid", "create_time", "name", "status"]
        if want_cmdline:
            attrs.append("cmdline")
        out = []
        for proc in psutil.process_iter(attrs, ad_value=None):
            info = proc.info
            if info["pid"] == self._own_pid or info["create_time"] is None:
                continue
            if info["status"] in (psutil.STATUS_ZOMBIE, psutil.STATUS_DEAD):
                continue
            out.append(
                ProcInfo(
                    pid=info["pid"],
                    create_time=info["create_time"],
                    name=info["name"] or "",
                    cmdline=tuple(info.get("cmdline") or ()),
                )
            )
        return out

    def lookup(self, pid: int) -> Optional[ProcInfo]:
        """The live process with this pid, or None."""
        try:
            proc = psutil.Process(pid)
            with proc.oneshot():
                if proc.status() in (psutil.STATUS_ZOMBIE, psutil.STATUS_DEAD):
                    return None
                return ProcInfo(pid=pid, create_time=proc.create_time(), name=proc.name())
        except _GONE:
            return None

    def is_alive(self, identity: Identity) -> bool:
        """True while the process ``identity`` names runs (not a zombie, pid not reused)."""
        found = self.lookup(identity[0])
        return found is not None and found.create_time == identity[1]


class Matcher:
    """Turns a scan into the members of one check: {identity: description}."""

    def __init__(self, check: CheckConfig) -> None:
        self.check = check
        self._regex = re.compile(check.target) if check.kind == "cmdline" else None

    @property
    def needs_scan(self) -> bool:
        return self.check.kind != "pidfile"

    @property
    def needs_cmdline(self) -> bool:
        return self.check.kind == "cmdline"

    def match(self, procs: Iterable[ProcInfo]) -> dict[Identity, str]:
        kind, target = self.check.kind, self.check.target
        out = {}
        for p in procs:
            if kind == "process":
                ok = p.name == target
            else:
                assert self._regex is not None
                ok = bool(p.cmdline) and self._regex.search(" ".join(p.cmdline)) is not None
            if ok:
                out[p.identity] = p.name or str(p.pid)
        return out

    def match_pidfile(self, source: PsutilSource) -> tuple[dict[Identity, str], str]:
        """Members named by the pidfile, and why there are none if so."""
        pid, why = read_pidfile(self.check.target)
        if pid is None:
            return {}, why
        proc = source.lookup(pid)
        if proc is None:
            return {}, f"pid {pid} is not running"
        return {proc.identity: proc.name or str(pid)}, ""


def read_pidfile(path: str) -> tuple[Optional[int], str]:
    """The pid in ``path``, or (None, why not)."""
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_PIDFILE_BYTES + 1)
    except FileNotFoundError:
        return None, "no such file"
    except OSError as exc:
        return None, str(exc.strerror or exc)
    text = data.decode("ascii", "replace").strip()
    if len(data) > MAX_PIDFILE_BYTES or not text.isdigit() or int(text) <= 0:
        return None, "does not hold a pid"
    return int(text), ""


def scan_for(
    source: PsutilSource, matchers: Sequence[Matcher]
) -> dict[str, tuple[dict[Identity, str], str]]:
    """Run one scan for ``matchers``: {check name: (members, why none)}.

    One process_iter pass serves every scanning matcher; pidfile matchers
    read their file instead.
    """
    scanning = [m for m in matchers if m.needs_scan]
    procs: list[ProcInfo] = []
    if scanning:
        procs = source.scan(want_cmdline=any(m.needs_cmdline for m in scanning))
    out = {}
    for m in matchers:
        if m.needs_scan:
            out[m.check.name] = (m.match(procs), "no process matches")
        else:
            out[m.check.name] = m.match_pidfile(source)
    return out

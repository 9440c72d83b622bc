"""The exec probe: run a command in its own session; healthy when it exits 0 in time.

The command runs without a shell, stdin from /dev/null, in a new session so
its process group is its own: at the timeout the whole group is killed with
SIGKILL, and whatever it left in the group is killed when it exits.  Its
exit is seen through a pidfd (polled every :data:`EXIT_POLL_INTERVAL`
without one); a killed command that has not been reaped yet keeps the next
run from starting (the probe fails instead), so a command stuck in the
kernel cannot pile up copies.  Only the last
:data:`~guest_agent.probes.options.MAX_OUTPUT_BYTES` of its stdout and of its
stderr are kept; the last line of stderr (else stdout) goes into the reason.
"""

from __future__ import annotations

import logging
import os
import pwd
import signal
import subprocess
from typing import Any, Optional

from guest_agent.probes.options import MAX_OUTPUT_BYTES
from guest_agent.probes.runners import READ_CHUNK, Attempt
from guest_agent.probes.state import secs
from guest_agent.reactor import POLLIN

LOG = logging.getLogger(__name__)

EXIT_POLL_INTERVAL = 0.02  # without pidfds, how often a running exec probe is polled


def user_ids(user: str) -> tuple[int, int]:
    """(uid, gid) of a user name or numeric uid; KeyError when there is none."""
    entry = pwd.getpwuid(int(user)) if user.isdigit() else pwd.getpwnam(user)
    return entry.pw_uid, entry.pw_gid


def last_line(data: bytes) -> str:
    for line in reversed(data.decode("utf-8", "replace").splitlines()):
        text = "".join(ch if ch.isprintable() else " " for ch in line).strip()
        if text:
            return text
    return ""


class ExecAttempt(Attempt):
    """Run the command; healthy when it exits 0 within the timeout."""

    proc: Optional[subprocess.Popen] = None
    pidfd: Optional[int] = None
    killed = False

    def start(self) -> None:
        self.out = {"stdout": bytearray(), "stderr": bytearray()}
        self._pipes: dict[int, tuple[Any, bytearray]] = {}
        ids: dict[str, Any] = {}
        if self.config.user:
            try:
                uid, gid = user_ids(self.config.user)
            except KeyError:
                self.finish(False, f"user {self.config.user} does not exist")
                return
            if uid != os.geteuid():
                ids = {"user": uid, "group": gid, "extra_groups": []}
        try:
            self.proc = subprocess.Popen(
                list(self.config.argv), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                stderr=subprocess.PIPE, start_new_session=True, close_fds=True, cwd="/", **ids,
            )
        except (OSError, subprocess.SubprocessError) as exc:
            why = getattr(exc, "strerror", None) or str(exc)
            self.finish(False, f"cannot run {self.config.argv[0]}: {why}")
            return
        self.stage = f" (pid {self.proc.pid} killed)"
        for name in ("stdout", "stderr"):
            pipe = getattr(self.proc, name)
            os.set_blocking(pipe.fileno(), False)
            self._pipes[pipe.fileno()] = (pipe, self.out[name])
            self.reactor.add(pipe.fileno(), POLLIN, self._on_output)
        try:
            self.pidfd = os.pidfd_open(self.proc.pid)  # type: ignore[attr-defined]
        except (AttributeError, OSError):
            self.pidfd = None
        if self.pidfd is not None:
            self.reactor.add(self.pidfd, POLLIN, self._on_exit)

    def next_deadline(self) -> Optional[float]:
        if self.proc is None or self.pidfd is not None or self.proc.returncode is not None:
            return None
        return self.clock() + EXIT_POLL_INTERVAL

    def on_timer(self, now: float) -> None:
        if self.proc is not None and self.pidfd is None and self.proc.returncode is None:
            self._exited_maybe()

    def _on_output(self, fd: int, revents: int) -> None:
        pipe, buf = self._pipes[fd]
        try:
            data = os.read(fd, READ_CHUNK)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            self._close_pipe(fd)
            return
        buf += data
        del buf[:-MAX_OUTPUT_BYTES]

    def _close_pipe(self, fd: int) -> None:
        pipe, _ = self._pipes.pop(fd)
        self.reactor.remove(fd)
        pipe.close()

    def _on_exit(self, fd: int, revents: int) -> None:
        self._exited_maybe()

    def _exited_maybe(self) -> None:
        assert self.proc is not None
        # The leader is a zombie until reaped, so its pid cannot name another group yet.
        if os.waitid(os.P_PID, self.proc.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is None:
            return
        self._kill_group()
        rc = self.proc.wait()
        self._forget_process()
        if self.done:  # killed at the timeout; now reaped
            return
        for fd in list(self._pipes):  # what it wrote just before exiting
            self._on_output(fd, 0)
        if rc == 0:
            self.finish(True, f"exit 0 in {self.elapsed():.2f} s")
            return
        line = last_line(bytes(self.out["stderr"])) or last_line(bytes(self.out["stdout"]))
        if rc < 0:
            try:
                name = signal.Signals(-rc).name
            except ValueError:
                name = str(-rc)
            seen = f"killed by {name}"
        else:
            seen = f"exit {rc}"
        self.finish(False, f"{seen}: {line}" if line else seen)

    def _kill_group(self) -> None:
        assert self.proc is not None
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except OSError:
            pass

    def expire(self, now: float) -> None:
        if self.proc is not None and self.proc.returncode is None:
            self._kill_group()
            self.killed = True
        super().expire(now)

    def cancel(self) -> None:
        if self.proc is not None and self.proc.returncode is None:
            self._kill_group()
        super().cancel()

    @property
    def lingering(self) -> bool:
        return self.proc is not None and self.proc.returncode is None

    def linger_reason(self) -> str:
        assert self.proc is not None
        return (f"the previous run (pid {self.proc.pid}) has not exited "
                f"{secs(self.clock() - self.started)} s after SIGKILL")

    def cleanup(self) -> None:
        for fd in list(self._pipes if hasattr(self, "_pipes") else ()):
            self._close_pipe(fd)
        # A killed process keeps its pidfd until it is reaped (see _exited_maybe).

    def _forget_process(self) -> None:
        if self.pidfd is not None:
            self.reactor.remove(self.pidfd)
            os.close(self.pidfd)
            self.pidfd = None

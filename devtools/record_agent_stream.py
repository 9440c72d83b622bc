"""Record the bytes an iim-agent of any git revision writes to its port (a pty).

How tests/protocol/data/agent-0.1.0.hex was made::

    python -m devtools.record_agent_stream 3166765 tests/protocol/data/agent-0.1.0.hex

The revision's ``iim_protocol`` and ``guest_agent`` are extracted with
``git archive`` into a temporary directory and run from there (never the
working tree), with one check on a copy of ``sleep``: hello and heartbeats,
the process killed (failure), ``pause --for 10m``, ``resume``, the process
started again (recovered), SIGTERM (goodbye).  The output is hex, 32 bytes a
line, after ``#`` comment lines.
"""

from __future__ import annotations

import os
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import tty
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def record(revision: str, work: Path) -> bytes:
    tree = work / "tree"
    tree.mkdir()
    archive = subprocess.run(
        ["git", "-C", str(REPO), "archive", revision, "iim_protocol", "guest_agent"],
        capture_output=True, check=True,
    ).stdout
    subprocess.run(["tar", "-x", "-C", str(tree)], input=archive, check=True)
    master, slave = os.openpty()
    tty.setraw(slave)
    os.set_blocking(master, False)
    link = work / "port"
    os.symlink(os.ttyname(slave), link)
    exe = work / "iimrec-web"
    shutil.copy(shutil.which("sleep") or "/bin/sleep", exe)
    child = subprocess.Popen([str(exe), "1000"])
    cfg = work / "agent.yaml"
    cfg.write_text(
        f"port: {link}\ncontrol_socket: {work / 'ctl.sock'}\n"
        "heartbeat_interval: 0.5\nrescan_interval: 0.5\n"
        "checks:\n  - name: web\n    process: iimrec-web\n    grace: 0\n"
    )
    env = dict(os.environ, PYTHONPATH=str(tree))
    agent_cmd = [sys.executable, "-m", "guest_agent.cli"]
    agent = subprocess.Popen([*agent_cmd, "run", "-c", str(cfg)], env=env, cwd=str(tree))
    data = bytearray()

    def read_for(seconds: float) -> None:
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            if select.select([master], [], [], 0.05)[0]:
                try:
                    data.extend(os.read(master, 65536))
                except BlockingIOError:
                    pass

    def cli(*args: str) -> None:
        subprocess.run([*agent_cmd, *args, "-c", str(cfg)], env=env, cwd=str(tree),
                       check=True, capture_output=True)

    try:
        read_for(1.6)
        child.kill()
        child.wait()
        read_for(1.2)
        cli("pause", "--for", "10m", "--reason", "kernel update")
        read_for(1.2)
        cli("resume")
        read_for(0.6)
        child = subprocess.Popen([str(exe), "1000"])
        read_for(1.6)
        agent.send_signal(signal.SIGTERM)
        agent.wait(5)
        read_for(0.3)
    finally:
        for proc in (agent, child):
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        os.close(master)
        os.close(slave)
    return bytes(data)


def main() -> None:
    revision, out = sys.argv[1], Path(sys.argv[2])
    with tempfile.TemporaryDirectory(prefix="iim-record-") as tmp:
        data = record(revision, Path(tmp))
    text = data.hex()
    lines = [f"# Recorded by devtools/record_agent_stream.py from git {revision}."]
    lines += [text[i : i + 64] for i in range(0, len(text), 64)]
    out.write_text("\n".join(lines) + "\n", encoding="ascii")
    print(f"{len(data)} bytes -> {out}")


if __name__ == "__main__":
    main()

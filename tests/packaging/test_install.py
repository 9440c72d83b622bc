"""Install the built .deb packages on this machine with apt-get, run them, remove them.

Slow (apt resolves the dependencies from Debian's archive) and root only.  It
proves that the launchers work on the distribution's own Python and
libraries (/usr/bin/python3 with python3-click, -msgpack, -psutil, oslo.* ...
as Debian ships them), not only on the virtualenv's newer ones.  Teardown
purges the packages and then the dependencies that they alone pulled in, so
the machine is left as found.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest

from iim_protocol.messages import Goodbye
from tests.guest_agent.conftest import PtyHost, Targets
from tests.host_relay.relay_testing import listen, short_dir
from tests.packaging.conftest import VERSION, run

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]

APT_TIMEOUT = 600
APT = ["apt-get", "-y", "-q", "-o", "DPkg::Lock::Timeout=120"]
PACKAGES = ("iim-agent", "iim-relay")
# Installed paths that must not exist before (we would clobber them) nor after (purged).
OWNED = ("/usr/bin/iim-agent", "/usr/bin/iim-relay", "/usr/lib/iim-agent", "/usr/lib/iim-relay",
         "/etc/iim", "/var/lib/iim", "/usr/lib/systemd/system/iim-agent.service",
         "/usr/lib/systemd/system/iim-relay.service", "/usr/lib/udev/rules.d/60-iim-agent.rules")
UUID = "8a7b6c5d-4e3f-4a1b-9c8d-7e6f5a4b3c21"


def system_env(**extra: str) -> dict[str, str]:
    """The environment of a root shell: no virtualenv, no PYTHONPATH."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV", "NOTIFY_SOCKET",
                        "WATCHDOG_USEC", "WATCHDOG_PID")}
    env["PATH"] = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
    env.update(extra)
    return env


def sh(*cmd: str, timeout: float = 60, check: bool = True, **kw) -> subprocess.CompletedProcess:
    return run(*cmd, timeout=timeout, check=check, env=system_env(), cwd="/", **kw)


def installed_packages() -> set[str]:
    out = sh("dpkg-query", "-W", "-f", "${Package} ${Status}\n").stdout
    return {line.split()[0] for line in out.splitlines() if line.endswith(" installed")}


def pulled_in(before: set[str]) -> set[str]:
    """Packages installed since ``before`` as dependencies that can go without taking others.

    Only automatically installed ones (someone's explicit install is manual),
    and only if apt would remove nothing else with them.
    """
    auto = set(sh("apt-mark", "showauto").stdout.split())
    candidates = (installed_packages() - before) & auto
    if not candidates:
        return set()
    out = sh("apt-get", "-s", "purge", *sorted(candidates), timeout=APT_TIMEOUT).stdout
    removed = {line.split()[1] for line in out.splitlines() if line.startswith(("Purg ", "Remv "))}
    return candidates if removed <= candidates else set()


def apt(*args: str) -> subprocess.CompletedProcess:
    return run(*APT, *args, timeout=APT_TIMEOUT, cwd="/",
               env=system_env(DEBIAN_FRONTEND="noninteractive"))


@pytest.fixture(scope="module")
def installed(built):
    # Under CI=true these skips fail (tests/conftest.py): CI runs as root on Debian.
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        pytest.skip("installing packages needs root and apt-get")
    before = installed_packages()
    present = [p for p in OWNED if os.path.lexists(p)] + [p for p in PACKAGES if p in before]
    if present:
        pytest.skip(f"iim looks installed here already ({', '.join(present)}): not touching it")
    started = time.monotonic()
    apt("install", "--no-install-recommends", str(built.agent_deb), str(built.relay_deb))
    print(f"apt-get install took {time.monotonic() - started:.1f}s")
    try:
        yield
    finally:
        apt("purge", *PACKAGES)
        left = [p for p in OWNED if os.path.lexists(p)]
        extra = pulled_in(before)
        if extra:
            apt("purge", *sorted(extra))
        still = installed_packages() - before
        if still:
            print(f"left installed (another installed package may use them): {sorted(still)}")
        assert not left, f"purge left {left}"
        assert not set(PACKAGES) & installed_packages()


def test_agent_launcher_and_the_shipped_config(installed) -> None:
    assert sh("/usr/bin/iim-agent", "--version").stdout.strip() == f"iim-agent, version {VERSION}"
    result = sh("/usr/bin/iim-agent", "check-config", "-c", "/etc/iim/agent.yaml")
    assert result.stdout.startswith("OK: /etc/iim/agent.yaml: 0 checks")
    # Byte-compiled at install: the unit runs with a read-only /usr.
    assert list(Path("/usr/lib/iim-agent/guest_agent/__pycache__").glob("cli.*.pyc"))
    # No agent runs: status says so (exit 3), through the default config and socket.
    result = sh("/usr/bin/iim-agent", "status", check=False)
    assert result.returncode == 3, result.stderr


def test_agent_runs_on_the_distributions_python(installed, tmp_path) -> None:
    """The agent watches a process and writes frames, with Debian's psutil, msgpack, click."""
    host, targets = PtyHost(tmp_path / "port"), Targets(tmp_path)
    sock_dir = next(short_dir())
    agent = None
    try:
        host.open()
        targets.start("iimpkg-watched")
        config = tmp_path / "agent.yaml"
        control = os.path.join(sock_dir, "agent.sock")
        config.write_text(f"port: {host.link}\ncontrol_socket: {control}\n"
                          "heartbeat_interval: 0.2\nchecks:\n"
                          "  - name: w\n    process: iimpkg-watched\n")
        agent = subprocess.Popen(["/usr/bin/iim-agent", "run", "-c", str(config)],
                                 env=system_env(), cwd="/", stdout=subprocess.PIPE,
                                 stderr=subprocess.STDOUT, text=True)
        got = host.read_until(lambda ms: any(
            m.TYPE == "heartbeat" and dict(m.checks) == {"w": "ok"} for m in ms), timeout=20)
        assert got[0].TYPE == "hello" and got[0].checks == ("w",)
        status = None
        for _ in range(100):  # the control socket comes up with the agent's loop
            result = sh("/usr/bin/iim-agent", "status", "--json", "-c", str(config), check=False)
            if result.returncode == 0:
                status = json.loads(result.stdout)
                break
            time.sleep(0.1)
        assert status is not None, result.stderr
        assert "w" in json.dumps(status)
        agent.send_signal(signal.SIGTERM)
        assert isinstance(host.wait_for("goodbye", timeout=10), Goodbye)
        out, _ = agent.communicate(timeout=10)
        assert agent.returncode == 0, out
        assert "Traceback" not in out
    finally:
        if agent is not None and agent.poll() is None:
            agent.kill()
            agent.wait()
        targets.stop_all()
        host.close()
        shutil.rmtree(sock_dir, ignore_errors=True)


def test_relay_reads_etc_iim_relay_conf_by_default(installed) -> None:
    assert sh("/usr/bin/iim-relay", "--version").stdout.strip() == f"iim-relay, version {VERSION}"
    result = sh("/usr/bin/iim-relay", "status", check=False)
    assert result.returncode == 1
    assert result.stderr.strip() == ("iim-relay: no iim-relay is running (control socket "
                                     "/var/lib/iim/control.sock: No such file or directory)")
    # The same without flags after editing the installed file: it is the one read.
    conf = Path("/etc/iim/relay.conf")
    assert oct(conf.stat().st_mode & 0o777) == "0o640"
    with conf.open("a") as f:
        f.write("\n[DEFAULT]\nstate_path = /tmp/iim-pkgtest-state\n")
    result = sh("/usr/bin/iim-relay", "status", check=False)
    assert "control socket /tmp/iim-pkgtest-state/control.sock" in result.stderr, result.stderr


def test_relay_runs_on_the_distributions_python(installed, tmp_path) -> None:
    """Debian's oslo.config, oslo.log, keystoneauth1: ready, status, clean stop."""
    sock_dir = next(short_dir())
    proc = None
    try:
        os.makedirs(os.path.join(sock_dir, "ch"))
        guest = listen(os.path.join(sock_dir, "ch", f"{UUID}.sock"))
        conf = tmp_path / "relay.conf"
        conf.write_text(f"[DEFAULT]\nstate_path = {sock_dir}\nhost = pkgtest\nshutdown_grace = 1\n"
                        f"[channels]\nsocket_dir = {sock_dir}/ch\n"
                        "[libvirt]\nconnection_uri =\n"
                        "[masakari]\nauth_type = none\nendpoint = http://127.0.0.1:9\n")
        notify_path = os.path.join(sock_dir, "notify")
        sd = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        sd.bind(notify_path)
        sd.settimeout(30)
        proc = subprocess.Popen(["/usr/bin/iim-relay", "run", "--config-file", str(conf)],
                                env=system_env(NOTIFY_SOCKET=notify_path), cwd="/",
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        msg = b""
        for _ in range(10):
            msg = sd.recv(4096)
            if msg.startswith(b"READY=1"):
                break
        assert msg.decode() == f"READY=1\nSTATUS=watching 1 instance channels in {sock_dir}/ch"
        guest.settimeout(10)
        conn, _ = guest.accept()  # the relay connected to the instance's channel
        conn.close()
        result = sh("/usr/bin/iim-relay", "status", "--json", "--config-file", str(conf))
        assert UUID in json.loads(result.stdout)["instances"]
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=20)
        assert proc.returncode == 0, out
        assert "Traceback" not in out
        sd.close()
        guest.close()
    finally:
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait()
        shutil.rmtree(sock_dir, ignore_errors=True)


def test_installed_units_verify(installed) -> None:
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze not installed (package systemd, in scripts/apt-packages)")
    result = sh(analyze, "verify", "/usr/lib/systemd/system/iim-agent.service",
                "/usr/lib/systemd/system/iim-relay.service", check=False)
    assert result.returncode == 0 and not result.stderr.strip(), result.stderr


def test_man_pages_and_docs_are_installed(installed) -> None:
    """`man iim-relay` works once the .deb is installed, as on any Debian system."""
    for pkg in PACKAGES:
        page = sh("man", "-P", "cat", pkg, timeout=60,
                  check=False)  # man's own pager setting must not wait for a terminal
        assert page.returncode == 0, page.stderr
        text = page.stdout.replace("\b", "")
        assert f"{pkg.upper()}(8)" in text and "SYNOPSIS" in text and "COMMANDS" in text
        assert sh("man", "-w", pkg).stdout.strip() == f"/usr/share/man/man8/{pkg}.8.gz"
        assert os.path.isfile(f"/usr/share/doc/{pkg}/copyright")
        assert os.path.isfile(f"/usr/share/doc/{pkg}/changelog.Debian.gz")


def test_the_relay_refuses_the_packaged_config_with_one_message(installed) -> None:
    """As installed, /etc/iim/relay.conf has no [masakari]: exit 2 and what to write."""
    result = sh("/usr/bin/iim-relay", "run", check=False, timeout=60)
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith("iim-relay: configuration error: /etc/iim/relay.conf: [masakari] "
                           "auth_type = password (the default) needs auth_url, username and "
                           "password, so iim-relay cannot reach masakari-api"), line

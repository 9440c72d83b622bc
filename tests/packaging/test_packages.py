"""The packages packaging/build makes, inspected with dpkg-deb and rpm, and their code run.

Fast: nothing is installed.  tests/packaging/test_install.py installs them.
"""

from __future__ import annotations

import configparser
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.packaging.conftest import (
    AGENT_DEPENDS,
    RELAY_DEPENDS,
    RELEASE,
    REPO,
    VERSION,
    run,
    source_files,
)

AGENT_FILES = {
    "/usr/bin/iim-agent",
    "/usr/lib/systemd/system/iim-agent.service",
    "/usr/lib/udev/rules.d/60-iim-agent.rules",
    "/etc/iim/agent.yaml",
}
RELAY_FILES = {
    "/usr/bin/iim-relay",
    "/usr/lib/systemd/system/iim-relay.service",
    "/etc/iim/relay.conf",
}


def code_files(package: str, *modules: str) -> set[str]:
    return {f"/usr/lib/{package}/{path}" for path in source_files(*modules)}


def deb_files(deb: Path) -> dict[str, str]:
    """path -> the `dpkg-deb -c` line (mode and owner first)."""
    out = {}
    for line in run("dpkg-deb", "-c", str(deb)).stdout.splitlines():
        path = line.split()[-1]
        out[path[1:].rstrip("/") or "/"] = line
    return out


def unit(path: Path) -> configparser.ConfigParser:
    parser = configparser.ConfigParser(strict=True, interpolation=None)
    parser.optionxform = str  # systemd keys are case-sensitive
    parser.read_string(path.read_text())
    return parser


@pytest.fixture(scope="module")
def tree(built, tmp_path_factory) -> Path:
    """Both .deb packages unpacked into one directory, as they would be installed."""
    root = tmp_path_factory.mktemp("root")
    for deb in (built.agent_deb, built.relay_deb):
        run("dpkg-deb", "-x", str(deb), str(root))
    return root


# --- .deb --------------------------------------------------------------------------------------


@pytest.mark.parametrize("which", ["agent", "relay"])
def test_deb_control(built, which) -> None:
    deb = built.agent_deb if which == "agent" else built.relay_deb
    depends = AGENT_DEPENDS if which == "agent" else RELAY_DEPENDS
    fields = {}
    for name in ("Package", "Version", "Architecture", "Depends", "Maintainer", "Description"):
        fields[name] = run("dpkg-deb", "-f", str(deb), name).stdout.strip()
    assert fields["Package"] == f"iim-{which}"
    assert fields["Version"] == f"{VERSION}-{RELEASE}"
    assert fields["Architecture"] == "all"
    assert fields["Depends"] == ", ".join(deb_name for deb_name, _ in depends)
    assert fields["Maintainer"] and fields["Description"]
    info = run("dpkg-deb", "-I", str(deb)).stdout
    for script in ("postinst", "prerm", "postrm"):
        assert re.search(rf"\s{script}\s+#!/bin/sh", info), info


def test_agent_deb_contents(built) -> None:
    files = deb_files(built.agent_deb)
    code = code_files("iim-agent", "guest_agent", "iim_protocol")
    assert code and code <= set(files)
    assert AGENT_FILES <= set(files)
    # Nothing else: no host code, no bytecode, no tests.
    assert not [f for f in files if "host_relay" in f or f.endswith(".pyc") or "tests" in f]
    assert files["/usr/bin/iim-agent"].startswith("-rwxr-xr-x root/root")
    assert files["/etc/iim/agent.yaml"].startswith("-rw-r--r-- root/root")
    assert run("dpkg-deb", "-I", str(built.agent_deb), "conffiles").stdout.split() == [
        "/etc/iim/agent.yaml"]


def test_relay_deb_contents(built) -> None:
    files = deb_files(built.relay_deb)
    code = code_files("iim-relay", "host_relay", "iim_protocol")
    assert code and code <= set(files)
    assert RELAY_FILES <= set(files)
    assert not [f for f in files if "guest_agent" in f or f.endswith(".pyc") or "tests" in f]
    # The config holds the Keystone password.
    assert files["/etc/iim/relay.conf"].startswith("-rw-r----- root/root")
    assert files["/var/lib/iim"].startswith("drwxr-xr-x root/root")
    assert files["/var/lib/iim/channels"].startswith("drwxr-xr-x root/root")
    assert run("dpkg-deb", "-I", str(built.relay_deb), "conffiles").stdout.split() == [
        "/etc/iim/relay.conf"]


# --- .rpm --------------------------------------------------------------------------------------


def rpm_query(rpm: Path, *args: str) -> list[str]:
    return run("rpm", "-qp", *args, str(rpm)).stdout.splitlines()


@pytest.mark.parametrize("which", ["agent", "relay"])
def test_rpm_files_requirements_and_config(built, which) -> None:
    rpm = built.agent_rpm if which == "agent" else built.relay_rpm
    package, depends = (f"iim-{which}", AGENT_DEPENDS if which == "agent" else RELAY_DEPENDS)
    modules = ("guest_agent" if which == "agent" else "host_relay", "iim_protocol")
    assert rpm_query(rpm, "--qf", "%{NAME} %{VERSION} %{RELEASE} %{ARCH}\n") == [
        f"{package} {VERSION} {RELEASE} noarch"]

    files = set(rpm_query(rpm, "-l"))
    assert code_files(package, *modules) <= files
    assert (AGENT_FILES if which == "agent" else RELAY_FILES) <= files
    # The code directories belong to the package, so `rpm -e` removes them.
    assert {f"/usr/lib/{package}", f"/usr/lib/{package}/iim_protocol"} <= files

    requires = [r for r in rpm_query(rpm, "-R") if not r.startswith("rpmlib(")]
    assert requires == [rpm_name for _, rpm_name in depends]

    flags = dict(line.rsplit(" ", 1) for line in
                 rpm_query(rpm, "--qf", "[%{FILENAMES} %{FILEFLAGS:fflags}.\n]"))
    config = "/etc/iim/agent.yaml" if which == "agent" else "/etc/iim/relay.conf"
    assert flags[config] == "cn."  # %config(noreplace)
    assert flags[f"/usr/bin/iim-{which}"] == "."

    scripts = run("rpm", "-qp", "--scripts", str(rpm)).stdout
    for name in ("postinstall", "preuninstall", "postuninstall"):
        assert f"{name} scriptlet" in scripts
    assert f"systemctl disable --now iim-{which}.service" in scripts


# --- what is inside, run from the unpacked tree ------------------------------------------------


def launch(tree: Path, package: str, *args: str) -> subprocess.CompletedProcess:
    """Run the packaged launcher's code from the unpacked tree (with this Python's libraries)."""
    launcher = (tree / "usr/bin" / package).read_text()
    assert launcher.startswith("#!/usr/bin/python3\n")
    assert f'sys.path.insert(0, "/usr/lib/{package}")' in launcher
    code = launcher.replace(f"/usr/lib/{package}", str(tree / "usr/lib" / package))
    # -I: not this checkout, nor PYTHONPATH: only what the package ships.
    return subprocess.run([sys.executable, "-I", "-c", code, *args], capture_output=True,
                          text=True, timeout=60, cwd=str(tree))


def test_the_shipped_agent_config_passes_check_config_and_watches_nothing(tree) -> None:
    result = launch(tree, "iim-agent", "check-config", "-c", str(tree / "etc/iim/agent.yaml"))
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"OK: {tree}/etc/iim/agent.yaml: 0 checks, "
                                    "port /dev/virtio-ports/org.openstack.iim.0")
    text = (tree / "etc/iim/agent.yaml").read_text()
    assert "#port: /dev/ttyS1" in text and "#  - name: web" in text


def test_the_launchers_report_the_project_version(tree) -> None:
    agent = launch(tree, "iim-agent", "--version")
    assert agent.returncode == 0 and agent.stdout.strip() == f"iim-agent, version {VERSION}"
    relay = launch(tree, "iim-relay", "--version")
    assert relay.returncode == 0 and relay.stdout.strip() == f"iim-relay, version {VERSION}"


def test_the_shipped_relay_config_is_the_sample_and_loads(tree, tmp_path) -> None:
    shipped = (tree / "etc/iim/relay.conf").read_text()
    assert shipped.endswith((REPO / "etc/iim-relay.conf.sample").read_text())
    # Every option commented out: it loads, and status looks for the default state dir.
    state = tmp_path / "state"
    override = tmp_path / "override.conf"
    override.write_text(f"[DEFAULT]\nstate_path = {state}\n")
    result = launch(tree, "iim-relay", "status", "--config-file", str(tree / "etc/iim/relay.conf"),
                    "--config-file", str(override))
    assert result.returncode == 1
    assert result.stderr.strip() == (f"iim-relay: no iim-relay is running (control socket "
                                     f"{state}/control.sock: No such file or directory)")


# --- systemd units and the udev rule -----------------------------------------------------------


def test_agent_unit(tree) -> None:
    u = unit(tree / "usr/lib/systemd/system/iim-agent.service")
    s = u["Service"]
    assert s["ExecStart"] == "/usr/bin/iim-agent run"
    assert s["Restart"] == "always" and s["RestartSec"] == "2s"
    assert s["RuntimeDirectory"] == "iim-agent" and s["ProtectSystem"] == "strict"
    assert u["Install"]["WantedBy"] == "multi-user.target"
    # A tty agent must not be stopped for want of the virtio device.
    assert "BindsTo" not in u["Unit"] and "Requires" not in u["Unit"]
    # Nothing that would hide other users' processes or the port from the agent.
    for key in ("ProtectProc", "ProcSubset", "PrivateUsers", "PrivateDevices", "DeviceAllow",
                "DevicePolicy", "ProtectClock", "PrivateTmp", "User", "DynamicUser",
                "CapabilityBoundingSet"):
        assert key not in s, key
    text = (tree / "usr/lib/systemd/system/iim-agent.service").read_text()
    assert "systemctl enable --now iim-agent" in text  # the tty set-up, documented


def test_relay_unit(tree) -> None:
    s = unit(tree / "usr/lib/systemd/system/iim-relay.service")["Service"]
    assert s["Type"] == "notify" and s["NotifyAccess"] == "main"
    assert s["WatchdogSec"] == "30s" and s["Restart"] == "on-failure"
    assert s["ExecStart"] == "/usr/bin/iim-relay run --config-file /etc/iim/relay.conf"
    assert s["StateDirectory"] == "iim"
    # Pending writes of a broken state disk survive a relay restart (host_relay.fallback).
    assert s["RuntimeDirectory"] == "iim-relay" and s["RuntimeDirectoryPreserve"] == "restart"
    # The serial fallback opens /dev/pts/N: no device restrictions.
    for key in ("PrivateDevices", "DeviceAllow", "DevicePolicy", "ProtectClock"):
        assert key not in s, key


def test_udev_rule_starts_the_agent_for_the_iim_port(tree) -> None:
    path = tree / "usr/lib/udev/rules.d/60-iim-agent.rules"
    rule = " ".join(line.strip().rstrip("\\") for line in path.read_text().splitlines()
                    if line.strip() and not line.startswith("#"))
    keys = [k.strip() for k in rule.split(",")]
    assert keys == ['SUBSYSTEM=="virtio-ports"', 'ATTR{name}=="org.openstack.iim.0"',
                    'TAG+="systemd"', 'ENV{SYSTEMD_WANTS}="iim-agent.service"']
    udevadm = shutil.which("udevadm")
    if udevadm and "verify" in run(udevadm, "--help", check=False).stdout:
        run(udevadm, "verify", str(path))


def test_systemd_analyze_verify(tree) -> None:
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze not installed: unit files checked by content only")
    units = [str(tree / f"usr/lib/systemd/system/iim-{w}.service") for w in ("agent", "relay")]
    result = run(analyze, "verify", *units, check=False)
    # Unpacked, not installed: the launchers are not in /usr/bin.  Anything else is a fault.
    complaints = [line for line in result.stderr.splitlines() if line.strip()]
    allowed = {f"iim-{w}.service: Command /usr/bin/iim-{w} is not executable: "
               "No such file or directory" for w in ("agent", "relay")}
    for w in ("agent", "relay"):
        if os.access(f"/usr/bin/iim-{w}", os.X_OK):  # installed here meanwhile
            allowed.discard(next(a for a in allowed if a.startswith(f"iim-{w}")))
    assert set(complaints) <= allowed, result.stderr


def test_maintainer_scripts_are_valid_sh() -> None:
    scripts = sorted(p for d in ("agent", "relay") for p in (REPO / "packaging" / d).glob("*.sh"))
    assert len(scripts) == 6
    for script in scripts:
        run("sh", "-n", str(script))
        assert os.access(script, os.X_OK), script

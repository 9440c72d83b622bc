"""A Debian guest as Nova defines it, driven through its own qemu-guest-agent.

Shared by the ``vm`` tests and ``bench/side_by_side.py``.  The guest is the
cached image of devtools/vm_image.py booted with its own systemd (no
``init=``) under the private libvirtd, defined as Nova defines an instance of
an image with ``hw_qemu_guest_agent=yes``: an org.qemu.guest_agent.0 channel,
a VGA device, the serial console written to console.log, and no iim channel.
udev starts Debian's qemu-guest-agent when its port appears, and iim-agent
when the relay hot-plugs the iim port.  The host drives the guest through
qemu-ga's ``guest-exec``, so it needs no network and no keyboard.

With ``demo=True`` the disk also holds what iim-agent watches: ``iim-demo-app``
(a copy of sleep, started as a systemd unit at boot, no Restart=) and an
``/etc/iim/agent.yaml`` with a process check on it and 1 s heartbeats.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import time
from typing import Any, Callable, Optional
from xml.sax.saxutils import escape, quoteattr

import libvirt_qemu

from devtools.vm_image import make_disk
from tests.host_relay.libvirt_fixture import AGENT_CHANNEL, QEMU, LibvirtDaemon

CMDLINE = "console=ttyS0 root=/dev/vda rw panic=0"
DEMO_CMDLINE = "systemd.wants=iim-demo-app.service"
MEMORY_MIB = 512
BOOT_TIMEOUT = 300.0  # systemd to qemu-ga under TCG: ~30-60 s here, CI may be slower
DEMO_UNIT = b"""[Unit]
Description=the application iim-agent watches (a copy of sleep)
[Service]
ExecStart=/usr/local/bin/iim-demo-app 100000
"""
DEMO_AGENT_YAML = b"""heartbeat_interval: 1s
checks:
  - name: demo
    process: iim-demo-app
"""  # the check's default grace (3 s)


def nova_domain_xml(name: str, uuid: str, vmdir: str, agent_socket: str,
                    extra_cmdline: str = "") -> str:
    """What Nova defines for an image with hw_qemu_guest_agent=yes (minus NICs), kernel boot."""
    def path(p: str) -> str:
        return quoteattr(os.path.join(vmdir, p))

    return f"""<domain type='qemu'>
  <name>{name}</name>
  <uuid>{uuid}</uuid>
  <memory unit='MiB'>{MEMORY_MIB}</memory>
  <vcpu>1</vcpu>
  <os>
    <type arch='x86_64' machine='q35'>hvm</type>
    <kernel>{escape(os.path.join(vmdir, 'vmlinuz'))}</kernel>
    <initrd>{escape(os.path.join(vmdir, 'initrd.img'))}</initrd>
    <cmdline>{escape((CMDLINE + " " + extra_cmdline).strip())}</cmdline>
  </os>
  <features><acpi/></features>
  <clock offset='utc'/>
  <on_poweroff>destroy</on_poweroff>
  <on_reboot>restart</on_reboot>
  <on_crash>destroy</on_crash>
  <devices>
    <emulator>{QEMU}</emulator>
    <disk type='file' device='disk'><driver name='qemu' type='raw'/>
      <source file={path('disk.img')}/><target dev='vda' bus='virtio'/></disk>
    <channel type='unix'><source mode='bind' path={quoteattr(agent_socket)}/>
      <target type='virtio' name='{AGENT_CHANNEL}'/></channel>
    <serial type='file'><source path={path('console.log')}/><target port='0'/></serial>
    <video><model type='vga'/></video>
    <memballoon model='none'/>
  </devices>
</domain>
"""


def prepare(daemon: LibvirtDaemon, base, deb: str, demo: bool = False) -> str:
    """A directory QEMU (nobody) can use: kernel, initrd and a fresh disk with ``deb``."""
    vmdir = daemon.socket_dir("vm")
    for src, dst in ((base.kernel, "vmlinuz"), (base.initrd, "initrd.img")):
        shutil.copy(src, os.path.join(vmdir, dst))
    files = {}
    if demo:
        with open(os.path.join(base.rootfs, "usr", "bin", "sleep"), "rb") as f:
            sleep = f.read()
        files = {"/etc/iim/agent.yaml": (DEMO_AGENT_YAML, 0o644),
                 "/usr/local/bin/iim-demo-app": (sleep, 0o755),
                 "/etc/systemd/system/iim-demo-app.service": (DEMO_UNIT, 0o644)}
    disk = make_disk(base, deb, files, os.path.join(vmdir, "disk.img"))
    os.chown(disk, daemon.uid, daemon.gid)
    return vmdir


def agent_cmd(dom, command: str, arguments: Optional[dict] = None, timeout: int = 10) -> dict:
    """One qemu-ga command through libvirt; its decoded answer."""
    msg = {"execute": command, **({"arguments": arguments} if arguments else {})}
    return json.loads(libvirt_qemu.qemuAgentCommand(dom, json.dumps(msg), timeout, 0))


def guest_spawn(dom, script: str) -> int:
    """Start ``script`` in the guest through guest-exec; its pid, not waited for."""
    return agent_cmd(dom, "guest-exec", {"path": "/bin/sh", "arg": ["-c", script]})["return"]["pid"]


def guest_run(dom, script: str, timeout: float = 60.0) -> tuple[int, str]:
    """Run ``script`` in the guest through guest-exec; (exit code, stdout + stderr)."""
    pid = agent_cmd(dom, "guest-exec", {"path": "/bin/sh", "arg": ["-c", script],
                                        "capture-output": True})["return"]["pid"]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        st = agent_cmd(dom, "guest-exec-status", {"pid": pid})["return"]
        if st.get("exited"):
            out = (base64.b64decode(st.get("out-data", "")) +
                   base64.b64decode(st.get("err-data", ""))).decode(errors="replace")
            return st.get("exitcode", -1), out
        time.sleep(0.2)
    raise AssertionError(f"guest-exec {script!r} did not finish in {timeout:.0f} s")


def guest_sh(dom, script: str, timeout: float = 60.0) -> str:
    """Run ``script`` in the guest; its output."""
    return guest_run(dom, script, timeout)[1]


def pings(dom, timeout: int = 2) -> bool:
    """Whether the guest's qemu-ga answers a guest-ping now."""
    try:
        agent_cmd(dom, "guest-ping", timeout=timeout)
        return True
    except Exception:  # noqa: BLE001 - libvirtError of any kind: not answering
        return False


def wait_until(what: str, predicate: Callable[[], Any], timeout: float, step: float = 0.5,
               detail: Callable[[], str] = lambda: ""):
    """Poll ``predicate`` until it returns something truthy (returned); bounded by ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        got = predicate()
        if got:
            return got
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout:.0f} s{detail()}")
        time.sleep(step)


def console_text(vmdir: str, tail: int = 4000) -> str:
    try:
        with open(os.path.join(vmdir, "console.log"), errors="replace") as f:
            return f.read()[-tail:]
    except OSError as exc:
        return f"(no console: {exc})"


def wait_console(vmdir: str, needle: str, timeout: float) -> Optional[float]:
    """The time.time() at which ``needle`` was first seen on the console, or None."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if needle in console_text(vmdir, tail=1 << 20):
            return time.time()
        time.sleep(0.05)
    return None

"""A private libvirtd with QEMU (TCG) for the hot-plug tests, run as an unprivileged user.

The relay finds instances through libvirt and hot-plugs its channel with
``virDomainAttachDeviceFlags``; libvirt's test driver cannot attach devices,
so these tests need the real QEMU driver.  Here (and in CI) that means:

- ``/usr/sbin/libvirtd`` (Debian 12 ships the monolithic daemon in
  ``libvirt-daemon``; there is no virtqemud) started as ``nobody`` through
  ``setpriv``, with its own HOME and XDG_RUNTIME_DIR under a short directory
  in /tmp, for ``qemu:///session``.  The tests run as root and reach that
  daemon with ``qemu:///session?socket=<XDG_RUNTIME_DIR>/libvirt/libvirt-sock``.
- QEMU runs as ``nobody`` too, TCG only (/dev/kvm is not usable here), q35,
  64 MiB, no disk: it sits in the firmware ("No bootable device"), which is
  all a chardev needs.
- Every directory QEMU creates a socket in must be writable by ``nobody``:
  :meth:`LibvirtDaemon.socket_dir` makes one.

Paths are short on purpose: QEMU's monitor socket lives under
``HOME/.config/libvirt/qemu/lib/domain-N-NAME/`` and AF_UNIX paths stop at
107 bytes, so pytest's long tmp_path cannot be used.

Only a C daemon and QEMU run as ``nobody``; no Python does (a Python installed
under root's home cannot be executed by ``nobody``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import time
from xml.sax.saxutils import quoteattr

import libvirt

LIBVIRTD = "/usr/sbin/libvirtd"
QEMU = "/usr/bin/qemu-system-x86_64"
QEMU_USER = "nobody"
# The socket appears within ~0.1 s; the first connection probes QEMU's
# capabilities (a few seconds under TCG on a loaded machine): leave room.
START_TIMEOUT = 60.0
STOP_TIMEOUT = 10.0  # SIGTERM, then SIGKILL
POLL_STEP = 0.05
IIM_CHANNEL = "org.openstack.iim.0"
AGENT_CHANNEL = "org.qemu.guest_agent.0"


class LibvirtUnavailable(RuntimeError):
    """The daemon cannot run here; the message says why and what to install."""


@dataclasses.dataclass(frozen=True)
class DomainSpec:
    """What a test domain looks like, as Nova would build it (minus disks and NICs).

    ``agent_channel`` mimics ``hw_qemu_guest_agent=yes``: a unix channel named
    org.qemu.guest_agent.0, which makes libvirt add the virtio-serial
    controller the hot-plug needs.  ``serial_ports`` mimics
    ``hw_serial_port_count`` with ``<serial type='pty'>`` devices.  ``disk``
    is a raw image to boot from (see serial_guest.py); without one, SeaBIOS
    finds nothing to boot and the vCPU idles.
    """

    name: str
    uuid: str
    agent_channel: bool = True
    serial_ports: int = 0
    memory_mib: int = 64
    disk: str | None = None
    video: bool = False  # a VGA device, as Nova gives every instance: screenshots need one
    console_log: str | None = None  # serial port 0 written to this file, as Nova's console.log
    panic: bool = False  # a pvpanic ISA device at 0x505: a guest panic becomes a CRASHED event

    def __post_init__(self) -> None:
        if not 32 <= self.memory_mib <= 512:
            raise ValueError(f"memory_mib {self.memory_mib}: 32..512 is plenty without a guest OS")
        if not 0 <= self.serial_ports <= 4:
            raise ValueError(f"serial_ports {self.serial_ports}: Nova allows 0..4 here")
        if self.console_log is not None and self.serial_ports:
            raise ValueError("console_log takes serial port 0: use it without serial_ports")


def domain_xml(spec: DomainSpec, agent_dir: str) -> str:
    """The persistent XML for ``spec``; the agent socket goes into ``agent_dir``."""
    devices = [f"<emulator>{QEMU}</emulator>"]
    if spec.agent_channel:
        path = os.path.join(agent_dir, f"{spec.name}.agent.sock")
        devices.append(
            f"<channel type='unix'><source mode='bind' path={quoteattr(path)}/>"
            f"<target type='virtio' name='{AGENT_CHANNEL}'/></channel>"
        )
    if spec.disk is not None:
        devices.append(
            "<disk type='file' device='disk'><driver name='qemu' type='raw'/>"
            f"<source file={quoteattr(spec.disk)}/><target dev='sda' bus='sata'/></disk>"
        )
    if spec.console_log is not None:
        devices.append(f"<serial type='file'><source path={quoteattr(spec.console_log)}/>"
                       "<target port='0'/></serial>")
    for port in range(spec.serial_ports):
        devices.append(f"<serial type='pty'><target port='{port}'/></serial>")
    if spec.video:
        devices.append("<video><model type='vga'/></video>")
    if spec.panic:
        devices.append("<panic model='isa'><address type='isa' iobase='0x505'/></panic>")
    devices.append("<memballoon model='none'/>")
    body = "\n    ".join(devices)
    return f"""<domain type='qemu'>
  <name>{spec.name}</name>
  <uuid>{spec.uuid}</uuid>
  <memory unit='MiB'>{spec.memory_mib}</memory>
  <vcpu>1</vcpu>
  <os><type arch='x86_64' machine='q35'>hvm</type></os>
  <features><acpi/></features>
  <on_poweroff>destroy</on_poweroff>
  <on_reboot>restart</on_reboot>
  <on_crash>destroy</on_crash>
  <devices>
    {body}
  </devices>
</domain>
"""


def channel_xml(path: str, name: str = IIM_CHANNEL) -> str:
    """The device XML the relay hot-plugs: QEMU listens on ``path``."""
    return (
        f"<channel type='unix'><source mode='bind' path={quoteattr(path)}/>"
        f"<target type='virtio' name='{name}'/></channel>"
    )


def _owned_dir(parent: str, name: str, uid: int, gid: int, mode: int = 0o755) -> str:
    path = os.path.join(parent, name)
    os.mkdir(path)
    os.chown(path, uid, gid)
    os.chmod(path, mode)
    return path


class LibvirtDaemon:
    """One private libvirtd (session mode) run as :data:`QEMU_USER`."""

    def __init__(self, base: str) -> None:
        self.base = base
        self.proc: subprocess.Popen | None = None
        self.started_in: float | None = None  # seconds until the first connection worked
        self._conn: libvirt.virConnect | None = None
        self._counter = 0
        try:
            user = pwd.getpwnam(QEMU_USER)
        except KeyError:
            raise LibvirtUnavailable(f"user {QEMU_USER!r} does not exist") from None
        self.uid, self.gid = user.pw_uid, user.pw_gid
        self.home = os.path.join(base, "home")
        self.runtime = os.path.join(base, "run")
        self.log_path = os.path.join(base, "libvirtd.log")

    @property
    def socket(self) -> str:
        return os.path.join(self.runtime, "libvirt", "libvirt-sock")

    @property
    def uri(self) -> str:
        """What root passes to libvirt.open() (or [libvirt] connection_uri)."""
        return f"qemu:///session?socket={self.socket}"

    # -- life cycle ---------------------------------------------------------

    def start(self) -> LibvirtDaemon:
        for path in (LIBVIRTD, QEMU):
            if not os.access(path, os.X_OK):
                raise LibvirtUnavailable(
                    f"{path} is missing: install libvirt-daemon, libvirt-daemon-driver-qemu "
                    "and qemu-system-x86 (scripts/apt-packages lists them)")
        if os.geteuid() != 0:
            raise LibvirtUnavailable("the libvirt tests run as root (they start libvirtd as "
                                     f"{QEMU_USER} and create directories owned by it)")
        os.chmod(self.base, 0o755)  # nobody must traverse it
        _owned_dir(self.base, "home", self.uid, self.gid, 0o700)
        _owned_dir(self.base, "run", self.uid, self.gid, 0o700)
        env = {
            "HOME": self.home,
            "XDG_RUNTIME_DIR": self.runtime,
            "PATH": "/usr/sbin:/usr/bin:/sbin:/bin",
            "LC_ALL": "C",
        }
        started = time.monotonic()
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                ["setpriv", f"--reuid={self.uid}", f"--regid={self.gid}", "--clear-groups",
                 LIBVIRTD],
                env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                cwd=self.base, start_new_session=True,
            )
        try:
            self._wait_ready(started)
        except BaseException:
            self.stop()
            raise
        self.started_in = time.monotonic() - started
        return self

    def _wait_ready(self, started: float) -> None:
        last = "socket not created"
        while time.monotonic() - started < START_TIMEOUT:
            if self.proc.poll() is not None:
                raise LibvirtUnavailable(
                    f"libvirtd exited with {self.proc.returncode}; its log:\n{self.log_tail()}")
            if os.path.exists(self.socket):
                try:
                    conn = libvirt.open(self.uri)
                    conn.getCapabilities()  # the QEMU driver answers, not just the socket
                except libvirt.libvirtError as exc:
                    last = str(exc)
                else:
                    self._conn = conn
                    return
            time.sleep(POLL_STEP)
        raise LibvirtUnavailable(
            f"libvirtd did not answer on {self.socket} within {START_TIMEOUT:.0f}s "
            f"(last: {last}); its log:\n{self.log_tail()}")

    def log_tail(self, lines: int = 30) -> str:
        try:
            with open(self.log_path, errors="replace") as f:
                return "".join(f.readlines()[-lines:])
        except OSError as exc:
            return f"(no log: {exc})"

    def stop(self) -> None:
        """Destroy every domain, stop the daemon, kill any QEMU it left behind."""
        if self._conn is not None:
            with contextlib.suppress(libvirt.libvirtError):
                for dom in self._conn.listAllDomains():
                    with contextlib.suppress(libvirt.libvirtError):
                        if dom.isActive():
                            dom.destroy()
            with contextlib.suppress(libvirt.libvirtError):
                self._conn.close()
            self._conn = None
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(STOP_TIMEOUT)
        for pid in self.qemu_pids():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)

    def qemu_pids(self) -> list[int]:
        """QEMU processes of this daemon: their command line names a file under its HOME."""
        marker = self.home.encode()
        pids = []
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            try:
                with open(f"/proc/{entry}/cmdline", "rb") as f:
                    cmdline = f.read()
            except OSError:
                continue
            if cmdline.startswith(QEMU.encode()) and marker in cmdline:
                pids.append(int(entry))
        return pids

    # -- helpers for tests --------------------------------------------------

    @property
    def conn(self) -> libvirt.virConnect:
        assert self._conn is not None, "daemon not started"
        return self._conn

    def socket_dir(self, prefix: str = "ch") -> str:
        """A new, short directory QEMU (as nobody) can create sockets in."""
        self._counter += 1
        return _owned_dir(self.base, f"{prefix}{self._counter}", self.uid, self.gid)

    def own_file(self, path: str, data: bytes) -> str:
        """Write ``data`` to ``path`` (under :attr:`base`) as a file QEMU can open read-write."""
        with open(path, "wb") as f:
            f.write(data)
        os.chown(path, self.uid, self.gid)
        return path

    def define(self, spec: DomainSpec, agent_dir: str | None = None) -> libvirt.virDomain:
        """Define ``spec`` (persistent, not started); the agent socket dir defaults to a new one."""
        if agent_dir is None:
            agent_dir = self.socket_dir("ga")
        return self.conn.defineXML(domain_xml(spec, agent_dir))

    def start_domain(self, spec: DomainSpec, agent_dir: str | None = None) -> libvirt.virDomain:
        dom = self.define(spec, agent_dir)
        dom.create()
        return dom

    def remove(self, dom: libvirt.virDomain) -> None:
        """Destroy (if running) and undefine ``dom``; ignores a domain already gone."""
        with contextlib.suppress(libvirt.libvirtError):
            if dom.isActive():
                dom.destroy()
        with contextlib.suppress(libvirt.libvirtError):
            dom.undefine()


def start_daemon() -> LibvirtDaemon:
    """Start a daemon in a fresh short directory (removed by :func:`stop_daemon`)."""
    base = tempfile.mkdtemp(prefix="lv-", dir="/tmp")
    try:
        return LibvirtDaemon(base).start()
    except BaseException:
        shutil.rmtree(base, ignore_errors=True)
        raise


def stop_daemon(daemon: LibvirtDaemon) -> None:
    daemon.stop()
    shutil.rmtree(daemon.base, ignore_errors=True)

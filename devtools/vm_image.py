"""A real Debian 12 guest for tests: a cached base rootfs, and per-run disks with the current agent.

The base (built once, cached) is a ``mmdebstrap --variant=minbase`` rootfs
with the agent's Python dependencies, Debian's kernel and an initrd holding
only virtio_pci, virtio_blk and ext4 (``MODULES=list``), pruned of every kernel
module a virtio guest does not load.  It lives in
``$IIM_VM_CACHE`` (default ``${IIM_CACHE:-~/.cache/iim}/vm``) under a hash of
:data:`RECIPE`, so it is rebuilt only when the recipe changes; the kernel and
initrd sit next to the rootfs for direct kernel boot.  No systemd and no udev:
tests boot it with a shell-script init (``init=``), about 7-8 s to init under
QEMU TCG.

Each run then makes a disk with :func:`make_disk`: a copy of the base rootfs,
the freshly built ``iim-agent`` .deb installed with ``dpkg --root`` (its
postinst runs chrooted), the test's files (its init script), turned into an
ext4 image by ``mke2fs -d`` (about 1 s), so the guest runs exactly what we
ship.

Needs root (mmdebstrap --mode=root, chroot, files owned by root in the image),
``mmdebstrap`` and ``mke2fs`` (Debian packages mmdebstrap and e2fsprogs, in
scripts/apt-packages) and the Debian mirror the machine's apt uses.

Usage::

    python -m devtools.vm_image build          # build (or find) the base; print its paths
    python -m devtools.vm_image disk --deb dist/iim-agent_0.1.0-1_all.deb \\
        --file /sbin/init=my-init.sh -o /tmp/guest.img
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import fcntl
import hashlib
import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping
from typing import Optional

LOG = logging.getLogger(__name__)

# Everything that decides the base image's content: its hash names the cache entry.
# Bump "version" when the build steps below change in a way the lists do not show.
RECIPE = {
    "version": 2,
    "suite": "bookworm",
    "variant": "minbase",
    "packages": [
        "python3", "python3-psutil", "python3-msgpack", "python3-serial", "python3-click",
        "python3-yaml", "linux-image-amd64", "initramfs-tools", "mount", "kmod",
        # A guest as Nova's images have it: systemd, udev and the distribution's
        # qemu-guest-agent (the witness the relay pings); tests may still boot init=.
        "systemd-sysv", "udev", "qemu-guest-agent", "procps",
    ],
    # In the initrd, to find and mount the root disk.
    "initrd_modules": ["virtio_pci", "virtio_blk", "ext4"],
    # Kept under /lib/modules/<version>/ (the rest, ~300 MB, is deleted).
    "keep_modules": [
        "kernel/drivers/virtio", "kernel/drivers/block/virtio_blk",
        "kernel/drivers/char/virtio_console", "kernel/drivers/misc/pvpanic",
        "kernel/fs/ext4", "kernel/fs/jbd2", "kernel/fs/mbcache", "kernel/lib",
        "kernel/crypto", "kernel/arch",
    ],
    "dpkg_exclude": ["/usr/share/doc/*", "/usr/share/man/*", "/usr/share/locale/*",
                     "/usr/share/info/*"],
}
# Measured here: ~35-50 s from deb.debian.org; a slow mirror gets 15 minutes.
BUILD_TIMEOUT = 900.0
STEP_TIMEOUT = 120.0  # cp, dpkg, mke2fs, depmod: seconds each
DISK_SIZE = "512M"  # the pruned rootfs is ~250 MB
HOST_SOURCES = "/etc/apt/sources.list.d/debian.sources"  # a bookworm host's deb822 sources


class VmImageUnavailable(RuntimeError):
    """The image cannot be built here; the message says why and what to do."""


@dataclasses.dataclass(frozen=True)
class BaseImage:
    """A finished, cached base: rootfs directory, kernel and initrd for direct boot."""

    key: str
    rootfs: str
    kernel: str
    initrd: str
    build_seconds: Optional[float] = None  # None when it came from the cache

    def __post_init__(self) -> None:
        for path in (self.rootfs, self.kernel, self.initrd):
            if not os.path.exists(path):
                raise ValueError(f"{path} is missing: remove {os.path.dirname(self.rootfs)} "
                                 "and build again")


def recipe_key(recipe: Mapping = RECIPE) -> str:
    return hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()[:16]


def cache_root() -> str:
    explicit = os.environ.get("IIM_VM_CACHE")
    if explicit:
        return explicit
    base = os.environ.get("IIM_CACHE") or os.path.expanduser("~/.cache/iim")
    return os.path.join(base, "vm")


def _require_tools() -> None:
    if os.geteuid() != 0:
        raise VmImageUnavailable("building the VM image needs root (mmdebstrap --mode=root, "
                                 "chroot); the tests run as root in CI")
    for tool, package in (("mmdebstrap", "mmdebstrap"), ("mke2fs", "e2fsprogs"),
                          ("dpkg", "dpkg"), ("chroot", "coreutils")):
        if shutil.which(tool) is None:
            raise VmImageUnavailable(f"{tool} not found: apt-get install {package} "
                                     "(scripts/apt-packages lists it)")


def _run(argv: list[str], timeout: float = STEP_TIMEOUT, log: Optional[str] = None) -> None:
    """Run ``argv``; raise VmImageUnavailable with its output (or log tail) if it fails."""
    try:
        if log is None:
            proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout,
                                  stdin=subprocess.DEVNULL)
            out = proc.stdout + proc.stderr
        else:
            with open(log, "w") as f:
                proc = subprocess.run(argv, stdout=f, stderr=subprocess.STDOUT, timeout=timeout,
                                      stdin=subprocess.DEVNULL)
            out = _tail(log)
    except subprocess.TimeoutExpired:
        raise VmImageUnavailable(f"{argv[0]} did not finish within {timeout:.0f}s"
                                 + (f"; its log:\n{_tail(log)}" if log else "")) from None
    if proc.returncode != 0:
        raise VmImageUnavailable(f"{' '.join(argv[:3])} ... failed ({proc.returncode}):\n{out}")


def _tail(path: str, lines: int = 25) -> str:
    try:
        with open(path, errors="replace") as f:
            return "".join(f.readlines()[-lines:])
    except OSError as exc:
        return f"(no log: {exc})"


@contextlib.contextmanager
def _locked(path: str) -> Iterator[None]:
    """One builder per cache entry, also across test sessions running at once."""
    with open(path, "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _entry(directory: str, key: str, seconds: Optional[float]) -> BaseImage:
    return BaseImage(key=key, rootfs=os.path.join(directory, "rootfs"),
                     kernel=os.path.join(directory, "vmlinuz"),
                     initrd=os.path.join(directory, "initrd.img"), build_seconds=seconds)


def ensure_base(cache: Optional[str] = None) -> BaseImage:
    """The cached base for :data:`RECIPE`, built first if missing (or half-built)."""
    _require_tools()
    cache = cache or cache_root()
    os.makedirs(cache, exist_ok=True)
    key = recipe_key()
    final = os.path.join(cache, key)
    with _locked(os.path.join(cache, f".{key}.lock")):
        if os.path.exists(os.path.join(final, "done")):
            return _entry(final, key, None)
        started = time.monotonic()
        work = os.path.join(cache, f"{key}.build")
        shutil.rmtree(work, ignore_errors=True)
        shutil.rmtree(final, ignore_errors=True)
        os.makedirs(work)
        try:
            _build(work)
        except BaseException:
            shutil.rmtree(work, ignore_errors=True)  # a half-built rootfs is ~600 MB
            raise
        with open(os.path.join(work, "recipe.json"), "w") as f:
            json.dump(RECIPE, f, indent=2, sort_keys=True)
        os.rename(work, final)
        seconds = time.monotonic() - started
        with open(os.path.join(final, "done"), "w") as f:
            f.write(f"{seconds:.1f}\n")
        _drop_other_entries(cache, key)
        LOG.info("built the VM base image %s in %.0fs", final, seconds)
        return _entry(final, key, seconds)


def _build(work: str) -> None:
    rootfs = os.path.join(work, "rootfs")
    mods = "\\n".join(RECIPE["initrd_modules"])
    # Before the kernel's postinst makes the initrd: only the modules a virtio root needs.
    setup = ('mkdir -p "$1/etc/initramfs-tools/conf.d" "$1/usr/share/initramfs-tools/modules.d"'
             ' && printf "MODULES=list\\n" > "$1/etc/initramfs-tools/conf.d/iim.conf"'
             f' && printf "{mods}\\n" > "$1/usr/share/initramfs-tools/modules.d/iim"')
    argv = ["mmdebstrap", "--mode=root", f"--variant={RECIPE['variant']}",
            "--include=" + ",".join(RECIPE["packages"]), f"--setup-hook={setup}"]
    argv += [f"--dpkgopt=path-exclude={p}" for p in RECIPE["dpkg_exclude"]]
    argv += [RECIPE["suite"], rootfs]
    if _host_is(RECIPE["suite"]) and os.path.exists(HOST_SOURCES):
        argv.append(HOST_SOURCES)  # the machine's own mirror (a proxy or local mirror in CI)
    log = os.path.join(work, "mmdebstrap.log")
    try:
        _run(argv, BUILD_TIMEOUT, log)
    except VmImageUnavailable as exc:
        raise VmImageUnavailable(
            f"mmdebstrap could not build the {RECIPE['suite']} rootfs (is the Debian mirror "
            f"reachable?): {exc}") from None
    version = _prune_modules(rootfs)
    boot = os.path.join(rootfs, "boot")
    shutil.copy(os.path.join(boot, f"vmlinuz-{version}"), os.path.join(work, "vmlinuz"))
    shutil.copy(os.path.join(boot, f"initrd.img-{version}"), os.path.join(work, "initrd.img"))
    for name in os.listdir(boot):  # booted from outside: not needed in the disk
        os.unlink(os.path.join(boot, name))


def _host_is(suite: str) -> bool:
    try:
        with open("/etc/os-release") as f:
            return f"VERSION_CODENAME={suite}\n" in f.read()
    except OSError:
        return False


def _prune_modules(rootfs: str) -> str:
    """Delete the kernel modules RECIPE does not keep, run depmod; return the kernel version."""
    versions = os.listdir(os.path.join(rootfs, "lib", "modules"))
    if len(versions) != 1:
        raise VmImageUnavailable(f"expected one kernel in {rootfs}/lib/modules, got {versions}")
    version = versions[0]
    top = os.path.join(rootfs, "lib", "modules", version)
    keep = RECIPE["keep_modules"]
    kernel_dir = os.path.join(top, "kernel")
    for dirpath, _dirs, files in os.walk(kernel_dir):
        for name in files:
            rel = os.path.relpath(os.path.join(dirpath, name), top)
            if not any(rel.startswith(k + "/") or rel.startswith(k + ".ko") for k in keep):
                os.unlink(os.path.join(dirpath, name))
    for dirpath, _dirs, _files in sorted(os.walk(kernel_dir), key=lambda w: -len(w[0])):
        if not os.listdir(dirpath):
            os.rmdir(dirpath)
    _run(["chroot", rootfs, "depmod", version])
    return version


def _drop_other_entries(cache: str, key: str) -> None:
    """Older recipes' images are ~250 MB each: keep only the current one."""
    for name in os.listdir(cache):
        path = os.path.join(cache, name)
        if len(name) == len(key) and name != key and os.path.isdir(path):
            LOG.info("removing the outdated VM base image %s", path)
            shutil.rmtree(path, ignore_errors=True)


def make_disk(base: BaseImage, deb: str, files: Mapping[str, tuple[bytes, int]], out: str,
              size: str = DISK_SIZE) -> str:
    """An ext4 image at ``out``: the base rootfs + ``deb`` installed + ``files``.

    ``files`` maps absolute guest paths to (content, mode).  The base is never
    modified: the work happens in a copy next to ``out``, removed afterwards.
    """
    _require_tools()
    if not os.path.isfile(deb):
        raise VmImageUnavailable(f"{deb} not found: build it with packaging/build")
    work = tempfile.mkdtemp(prefix="vmroot-", dir=os.path.dirname(os.path.abspath(out)))
    try:
        root = os.path.join(work, "root")
        _run(["cp", "-a", base.rootfs, root])
        # dpkg runs the package's maintainer scripts chrooted, as on a real install.
        _run(["dpkg", f"--root={root}", "--force-unsafe-io", "-i", deb])
        for path, (content, mode) in files.items():
            if not path.startswith("/"):
                raise ValueError(f"guest path {path!r} must be absolute")
            target = os.path.join(root, path.lstrip("/"))
            os.makedirs(os.path.dirname(target), exist_ok=True)
            if os.path.lexists(target):
                os.unlink(target)
            with open(target, "wb") as f:
                f.write(content)
            os.chmod(target, mode)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(out)
        _run(["mke2fs", "-q", "-F", "-t", "ext4", "-d", root, out, size])
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return out


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m devtools.vm_image",
        description="Build the cached Debian 12 test guest (build), or a disk with an agent "
                    "package and files in it (disk).  Needs root, mmdebstrap and mke2fs.",
        epilog="Example: python -m devtools.vm_image disk --deb dist/iim-agent_0.1.0-1_all.deb "
               "--file /sbin/iim-test-init=init.sh -o /tmp/guest.img")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("build", help="build the base image unless cached; print its paths as JSON")
    disk = sub.add_parser("disk", help="make an ext4 disk from the base with a .deb installed")
    disk.add_argument("--deb", required=True, help="the iim-agent .deb to install")
    disk.add_argument("--file", action="append", default=[], metavar="GUEST_PATH=LOCAL_FILE",
                      help="copy LOCAL_FILE to GUEST_PATH (mode 0755); repeatable")
    disk.add_argument("-o", "--output", required=True, help="the image file to write")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        base = ensure_base()
        if args.command == "build":
            print(json.dumps(dataclasses.asdict(base), indent=2))
            return 0
        files = {}
        for spec in args.file:
            guest, sep, local = spec.partition("=")
            if not sep:
                parser.error(f"--file {spec!r}: write GUEST_PATH=LOCAL_FILE")
            with open(local, "rb") as f:
                files[guest] = (f.read(), 0o755)
        print(make_disk(base, args.deb, files, args.output))
        return 0
    except VmImageUnavailable as exc:
        print(f"vm_image: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())

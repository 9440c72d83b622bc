"""File systems that fail on purpose, for the outbox fault tests (root only).

- :func:`full_tmpfs`: a 1 MiB tmpfs; ``fill()`` takes every free byte, ``free()`` gives
  them back (ENOSPC, then recovery).
- :func:`loop_ext4`: an ext4 image on a loop device, mounted.  Its backing file
  lives on a small tmpfs of its own: ``break_io()`` fills that tmpfs, so the loop
  device fails writes and the file system returns EIO on fsync (device-mapper's
  ``error`` target is not available in this kernel); ``fix_io()`` frees it.
  ``remount_ro()``/``remount_rw()`` (EROFS) and ``freeze()``/``thaw()`` (fsfreeze)
  act on the same mount.

A process blocked on a frozen file system cannot be killed until it thaws: a
test that freezes must thaw in a ``finally`` before it stops its processes.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import tempfile

import pytest

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="mounts file systems: needs root")


def _run(*cmd: str) -> str:
    return subprocess.run(cmd, check=True, capture_output=True, text=True, timeout=30).stdout


class Mount:
    def __init__(self, path: str) -> None:
        self.path = path
        self._filler = os.path.join(path, ".filler")

    def fill(self) -> None:
        """Take all free space (ENOSPC for everyone else)."""
        with open(self._filler, "ab") as f:
            chunk = b"\0" * 65536
            with contextlib.suppress(OSError):
                while True:
                    f.write(chunk)
                    f.flush()
        with contextlib.suppress(OSError), open(self._filler + "2", "ab") as f:
            while True:  # the last few bytes, below a chunk
                f.write(b"\0" * 512)
                f.flush()

    def free(self) -> None:
        for name in (self._filler, self._filler + "2"):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(name)


@contextlib.contextmanager
def full_tmpfs(size: str = "1m"):
    path = tempfile.mkdtemp(prefix="iim-full-", dir="/tmp")
    _run("mount", "-t", "tmpfs", "-o", f"size={size},mode=0700", "tmpfs", path)
    try:
        yield Mount(path)
    finally:
        subprocess.run(["umount", "-l", path], capture_output=True, timeout=30)
        shutil.rmtree(path, ignore_errors=True)


class LoopExt4(Mount):
    def __init__(self, path: str, backing: Mount, device: str) -> None:
        super().__init__(path)
        self.backing = backing
        self.device = device
        self.frozen = False

    def break_io(self, sqlite_files: tuple[str, ...] = ()) -> None:
        """Writes to new blocks fail with EIO from now on.

        sqlite reuses its WAL from the start after a checkpoint, and overwriting a
        block whose backing page exists needs no space: so each database in
        ``sqlite_files`` is checkpointed with its WAL truncated first; with
        ``discard`` the freed blocks give their backing pages back, and the next
        commit must take new ones, which the full backing tmpfs refuses.
        """
        import sqlite3

        for path in sqlite_files:
            db = sqlite3.connect(path)
            try:
                db.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()
            finally:
                db.close()
        _run("sync", "-f", self.path)
        _run("fstrim", self.path)
        self.backing.fill()

    def fix_io(self) -> None:
        self.backing.free()

    def error_ro(self) -> None:
        """An ext4 error (as a failing disk causes one): errors=remount-ro makes it read-only.

        ``mount -o remount,ro`` is refused (EBUSY) while the relay holds the outbox
        open for writing, so the kernel's own error path is used.  It sticks until
        the file system is unmounted (fsck, then mount): a relay restart.
        """
        dev = os.path.basename(self.device)
        with open(f"/sys/fs/ext4/{dev}/trigger_fs_error", "w") as f:
            f.write("iim test: outbox disk turned read-only")

    def repair(self) -> None:
        """What the operator does once nothing holds the file system open."""
        self.thaw()
        opts = _mount_options(self.path)
        _run("umount", self.path)
        subprocess.run(["e2fsck", "-fy", self.device], capture_output=True, timeout=60)
        _run("mount", "-o", opts, self.device, self.path)

    def freeze(self) -> None:
        _run("fsfreeze", "--freeze", self.path)
        self.frozen = True

    def thaw(self) -> None:
        if self.frozen:
            _run("fsfreeze", "--unfreeze", self.path)
            self.frozen = False


def _mount_options(path: str) -> str:
    with open("/proc/mounts") as f:
        for line in f:
            fields = line.split()
            if fields[1] == path:
                keep = [o for o in fields[3].split(",") if o.startswith(("errors=", "discard"))]
                return ",".join(["rw"] + keep)
    raise RuntimeError(f"{path} is not mounted")


@contextlib.contextmanager
def loop_ext4(size_mb: int = 32, backing_size: str = "8m", errors: str = "continue"):
    """An ext4 (no journal, errors=continue) on a loop device whose file sits on a tmpfs."""
    with full_tmpfs(backing_size) as backing:
        image = os.path.join(backing.path, "disk.img")
        _run("truncate", "-s", f"{size_mb}M", image)
        # 4 KiB blocks: one tmpfs page each, so a new block always needs new backing space
        _run("mkfs.ext4", "-q", "-b", "4096", "-O", "^has_journal", image)
        device = _run("losetup", "--find", "--show", image).strip()
        path = tempfile.mkdtemp(prefix="iim-ext4-", dir="/tmp")
        try:
            _run("mount", "-o", f"errors={errors},discard", device, path)
            fs = LoopExt4(path, backing, device)
            try:
                yield fs
            finally:
                with contextlib.suppress(subprocess.CalledProcessError):
                    fs.thaw()
                backing.free()
                subprocess.run(["umount", "-l", path], capture_output=True, timeout=30)
        finally:
            subprocess.run(["losetup", "-d", device], capture_output=True, timeout=30)
            shutil.rmtree(path, ignore_errors=True)

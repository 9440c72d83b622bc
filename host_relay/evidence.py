"""Evidence kept before a hang is reported: a console screenshot and the console log's tail.

Masakari's recovery destroys what a hung guest shows; vSphere keeps a
screenshot, no Masakari monitor keeps anything.  Before a hang notification
is queued the relay saves, under ``state_path/evidence/<uuid>/<time>/``:

- ``screen.png``: ``virDomainScreenshot`` through a libvirt stream (libvirt
  with QEMU 7.1+ sends PNG; an older one's PPM is converted here);
- ``console.log``: the last lines of the guest console log, where the domain
  XML names one (Nova's ``console.log``);
- ``evidence.txt``: what was collected, what was not and why.

Bounded: at most ``max_per_instance`` directories per instance and
``max_total_bytes`` in all (the oldest go first), a screenshot of at most
:data:`MAX_SCREENSHOT_BYTES`, a console tail of at most
:data:`MAX_CONSOLE_BYTES`.  Every step may fail (no display, a libvirt that
refuses screenshots, an unreadable log); the others still run and the
failure is written down.  All of it blocks (libvirt, disk): the relay runs
:func:`collect` off the event loop.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import shutil
import struct
import time
import zlib
from collections.abc import Callable
from typing import Any, Optional

from host_relay.witness_libvirt import console_log_path

LOG = logging.getLogger(__name__)

MAX_SCREENSHOT_BYTES = 16 * 1024 * 1024  # a 4K PPM is 25 MB; consoles are far smaller
MAX_CONSOLE_BYTES = 256 * 1024  # the tail is read from at most this many bytes
SCREEN, CONSOLE, NOTE = "screen.png", "console.log", "evidence.txt"


class EvidenceError(Exception):
    """One piece of evidence could not be taken; the message says why."""


@dataclasses.dataclass(frozen=True)
class Evidence:
    """What was saved for one hang (``path`` None: nothing could be saved)."""

    path: Optional[str]
    files: tuple[str, ...]
    problems: tuple[str, ...]
    nmi_injected: bool = False

    def describe(self) -> str:
        where = self.path or "nothing saved"
        saved = ", ".join(self.files) or "no files"
        extra = f"; {'; '.join(self.problems)}" if self.problems else ""
        return f"{where} ({saved}{extra})"


# -- image and log helpers (sans-I/O) -------------------------------------------------------------

def ppm_to_png(data: bytes) -> bytes:
    """A binary PPM (P6, maxval 255) as a PNG; ValueError for anything else."""
    parts, pos = [], 0
    while len(parts) < 4:
        while pos < len(data) and (data[pos:pos + 1].isspace() or data[pos:pos + 1] == b"#"):
            if data[pos:pos + 1] == b"#":
                end = data.find(b"\n", pos)
                pos = len(data) if end < 0 else end
            pos += 1
        start = pos
        while pos < len(data) and not data[pos:pos + 1].isspace():
            pos += 1
        if start == pos:
            raise ValueError("truncated PPM header")
        parts.append(data[start:pos])
    pos += 1  # the single whitespace byte after maxval
    if parts[0] != b"P6" or parts[3] != b"255":
        raise ValueError(f"not an 8-bit binary PPM ({parts[0]!r}, maxval {parts[3]!r})")
    width, height = int(parts[1]), int(parts[2])
    row = width * 3
    pixels = data[pos:pos + row * height]
    if width <= 0 or height <= 0 or len(pixels) != row * height:
        raise ValueError(f"PPM {width}x{height} with {len(pixels)} bytes of pixels")
    raw = b"".join(b"\x00" + pixels[y * row:(y + 1) * row] for y in range(height))

    def chunk(kind: bytes, body: bytes) -> bytes:
        return (struct.pack(">I", len(body)) + kind + body
                + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header)
            + chunk(b"IDAT", zlib.compress(raw, 6)) + chunk(b"IEND", b""))


def tail_lines(data: bytes, lines: int) -> bytes:
    """The last ``lines`` lines of ``data`` (a first partial line dropped if cut)."""
    if lines <= 0:
        return b""
    parts = data.split(b"\n")
    if data.endswith(b"\n"):
        parts.pop()
    return b"\n".join(parts[-lines:]) + (b"\n" if parts else b"")


def read_tail(path: str, lines: int, max_bytes: int = MAX_CONSOLE_BYTES) -> bytes:
    """The last ``lines`` lines of the file at ``path``, reading at most ``max_bytes``."""
    with open(path, "rb") as f:
        size = f.seek(0, os.SEEK_END)
        start = max(0, size - max_bytes)
        f.seek(start)
        data = f.read(max_bytes)
    if start > 0:  # the first line is cut: drop it
        cut = data.find(b"\n")
        data = data[cut + 1:] if cut >= 0 else b""
    return tail_lines(data, lines)


# -- libvirt -------------------------------------------------------------------------------------

def screenshot(conn: Any, dom: Any, max_bytes: int = MAX_SCREENSHOT_BYTES) -> bytes:
    """The domain's first screen as PNG bytes. Blocks; EvidenceError when it cannot be had."""
    import libvirt

    try:
        stream = conn.newStream(0)
    except libvirt.libvirtError as exc:
        raise EvidenceError(f"no screenshot: {exc}") from None
    buf = bytearray()

    def sink(_stream: Any, data: bytes, _opaque: Any) -> int:
        if len(buf) + len(data) > max_bytes:
            return -1  # recvAll aborts the stream and raises RuntimeError
        buf.extend(data)
        return 0

    try:
        mime = dom.screenshot(stream, 0, 0)
        stream.recvAll(sink, None)
        stream.finish()
    except RuntimeError:
        raise EvidenceError(f"no screenshot: larger than {max_bytes} bytes") from None
    except libvirt.libvirtError as exc:
        with _quiet():
            stream.abort()
        raise EvidenceError(f"no screenshot: {exc}") from None
    if mime == "image/png":
        return bytes(buf)
    if mime in ("image/x-portable-pixmap", "image/x-portable-anymap"):
        try:
            return ppm_to_png(bytes(buf))
        except ValueError as exc:
            raise EvidenceError(f"no screenshot: {exc}") from None
    raise EvidenceError(f"no screenshot: libvirt sent {mime}, not PNG or PPM")


class _quiet:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: Any) -> bool:
        return True


# -- the store -----------------------------------------------------------------------------------

class EvidenceStore:
    """``root/<uuid>/<time>/`` directories, bounded per instance and in total."""

    def __init__(self, root: str, max_per_instance: int, max_total_bytes: int) -> None:
        self.root = root
        self.max_per_instance = max_per_instance
        self.max_total_bytes = max_total_bytes

    def save(self, uuid: str, wall: float, files: dict[str, bytes], problems: list[str]
             ) -> Evidence:
        """Write ``files`` (and the note) into a new directory, then prune. Blocks."""
        if self.max_per_instance == 0:
            return Evidence(None, (), ("evidence disabled (max_per_instance = 0)",))
        if "/" in uuid or uuid in ("", ".", ".."):
            raise ValueError(f"bad instance uuid {uuid!r}")
        stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime(wall)) + f".{int(wall % 1 * 1000):03d}Z"
        path = os.path.join(self.root, uuid, stamp)
        try:
            os.makedirs(path, mode=0o700, exist_ok=True)
            note = [f"instance {uuid}", f"taken {stamp}"]
            note += [f"saved {name}: {len(data)} bytes" for name, data in files.items()]
            note += [f"missing: {p}" for p in problems]
            for name, data in {**files, NOTE: ("\n".join(note) + "\n").encode()}.items():
                with open(os.path.join(path, name), "wb") as f:
                    f.write(data)
        except OSError as exc:
            shutil.rmtree(path, ignore_errors=True)
            return Evidence(None, (), (*problems, f"could not write evidence: {exc}"))
        self.prune(uuid)
        return Evidence(path, tuple(files), tuple(problems))

    def prune(self, uuid: str) -> None:
        """Oldest first: beyond max_per_instance for ``uuid``, then beyond max_total_bytes."""
        mine = self._dirs(os.path.join(self.root, uuid))
        for old in mine[:max(0, len(mine) - self.max_per_instance)]:
            shutil.rmtree(old, ignore_errors=True)
        every = []
        try:
            instances = os.listdir(self.root)
        except OSError:
            return
        for name in instances:
            for d in self._dirs(os.path.join(self.root, name)):
                every.append((os.path.basename(d), d, _size(d)))
        every.sort()
        total = sum(size for _, _, size in every)
        for _, d, size in every:
            if total <= self.max_total_bytes:
                break
            shutil.rmtree(d, ignore_errors=True)
            total -= size

    def list(self, uuid: str) -> list[str]:
        """Saved evidence directories of ``uuid``, oldest first."""
        return self._dirs(os.path.join(self.root, uuid))

    @staticmethod
    def _dirs(parent: str) -> list[str]:
        try:
            names = sorted(os.listdir(parent))
        except OSError:
            return []
        return [os.path.join(parent, n) for n in names if os.path.isdir(os.path.join(parent, n))]


def _size(path: str) -> int:
    total = 0
    for dirpath, _dirs, files in os.walk(path):
        for name in files:
            try:
                total += os.path.getsize(os.path.join(dirpath, name))
            except OSError:
                pass
    return total


def collect(store: EvidenceStore, conn: Any, dom: Any, uuid: str, *, console_lines: int,
            inject_nmi: bool = False, wall: Callable[[], float] = time.time) -> Evidence:
    """Screenshot, console tail, optional NMI: each step independent. Blocks."""
    import libvirt

    files: dict[str, bytes] = {}
    problems: list[str] = []
    try:
        files[SCREEN] = screenshot(conn, dom)
    except EvidenceError as exc:
        problems.append(str(exc))
    if console_lines > 0:
        try:
            log = console_log_path(dom.XMLDesc(0))
        except libvirt.libvirtError as exc:
            log = None
            problems.append(f"no console log: {exc}")
        else:
            if log is None:
                problems.append("no console log: the domain XML names none")
        if log is not None:
            try:
                files[CONSOLE] = read_tail(log, console_lines)
            except OSError as exc:
                problems.append(f"no console log: {exc}")
    evidence = store.save(uuid, wall(), files, problems)
    if inject_nmi:  # after the screenshot, so the screen shows the hang, not kdump
        try:
            dom.injectNMI(0)
        except libvirt.libvirtError as exc:
            LOG.warning("instance %s: NMI not injected: %s", uuid, exc)
            return dataclasses.replace(evidence, problems=(*evidence.problems,
                                                           f"NMI not injected: {exc}"))
        return dataclasses.replace(evidence, nmi_injected=True)
    return evidence

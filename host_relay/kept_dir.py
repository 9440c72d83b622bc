"""A directory the relay keeps: re-created as it was when it goes away while the relay runs.

The channel directory can be removed under a running relay (an operator's
``rm -rf``, a package script, a tmpfiles clean-up).  Nothing in it works any
more: QEMU cannot create hot-plugged sockets there and the relay cannot
reconnect to the ones it knew.  :class:`KeptDir` remembers the directory's
identity (device, inode) and its owner and mode as first seen (after the
relay gave it to the QEMU user, see :mod:`host_relay.socket_dir`), tells
whether the path still names that directory, and re-creates it with the same
owner and mode.
"""

from __future__ import annotations

import dataclasses
import os
import stat
from typing import Optional

DEFAULT_MODE = 0o755


@dataclasses.dataclass(frozen=True)
class Shape:
    """Who owns the directory and its mode: what a re-created one gets back."""

    uid: int
    gid: int
    mode: int

    def __str__(self) -> str:
        return f"uid {self.uid}, gid {self.gid}, mode {self.mode:o}"


class KeptDir:
    """``path``: its identity as last seen, and the shape it is re-created with."""

    def __init__(self, path: str) -> None:
        self.path = os.path.abspath(path)
        self.parent, self.name = os.path.split(self.path)
        self.shape: Optional[Shape] = None
        # (device, inode): a removed directory's inode number may be reused, but not while
        # the directory is still alive, and the caller's watch says when it is freed.
        self.identity: Optional[tuple[int, int]] = None

    def ensure(self) -> tuple[bool, Optional[str]]:
        """Make sure the directory exists with its shape; (created, problem).

        Raises OSError if it cannot be created or is not a directory.
        """
        created = False
        try:
            os.mkdir(self.path, DEFAULT_MODE)
            created = True
        except FileExistsError:
            pass
        except FileNotFoundError:
            os.makedirs(self.path, DEFAULT_MODE, exist_ok=True)
            created = True
        st = os.stat(self.path)
        if not stat.S_ISDIR(st.st_mode):
            raise NotADirectoryError(f"{self.path} is not a directory")
        problem = None
        found = Shape(st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode))
        if self.shape is None:
            self.shape = found
        elif found != self.shape:
            problem = self._restore()
        self.identity = (st.st_dev, st.st_ino)
        return created, problem

    def _restore(self) -> Optional[str]:
        assert self.shape is not None
        try:
            os.chown(self.path, self.shape.uid, self.shape.gid)
            os.chmod(self.path, self.shape.mode)
        except OSError as exc:
            return f"cannot give it back {self.shape}: {exc.strerror}"
        return None

    def replaced(self) -> bool:
        """True if the path no longer names the directory last seen (gone, or a new one)."""
        try:
            st = os.stat(self.path)
        except OSError:
            return True
        return not stat.S_ISDIR(st.st_mode) or (st.st_dev, st.st_ino) != self.identity

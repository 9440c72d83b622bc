"""What the writer could not put on disk, kept where the next relay finds it.

While the outbox cannot be written, the relay may still be stopped: a package
upgrade, or an operator repairing the disk (an ext4 turned read-only by an
error stays so until it is unmounted, which needs the relay stopped).  What
it decided and could not write would then be lost, and a notification it sent
straight to Masakari meanwhile would be sent a second time after the restart
(the agent still reports the failure, and the detector would not remember).

So the writer keeps a copy of what is pending - notifications, with the
answer of a direct send, and detector records - in one small JSON file in the
relay's runtime directory (systemd's ``RuntimeDirectory=iim-relay`` with
``RuntimeDirectoryPreserve=restart``: ``/run/iim-relay``, a tmpfs on another
file system than ``state_path``; it outlives a restart of the relay, not a
reboot of the host).  At start the relay hands that file's contents to the
writer, which commits them (the notifications' tokens make that exactly
once) and then removes the file.  The file is replaced atomically (write,
fsync, rename); one that cannot be read is logged and left for the operator.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
from typing import Any, Optional

from host_relay.outbox import NewEntry

LOG = logging.getLogger(__name__)

FILE_NAME = "pending-writes.json"
VERSION = 1
MAX_BYTES = 16 * 1024 * 1024  # a file larger than this is not ours


def path_in(runtime_dir: Optional[str]) -> Optional[str]:
    return None if not runtime_dir else os.path.join(runtime_dir, FILE_NAME)


def runtime_dir_from_env() -> Optional[str]:
    """systemd's RuntimeDirectory (the first one named), or None outside systemd."""
    value = os.environ.get("RUNTIME_DIRECTORY", "")
    return value.split(":")[0] or None


def save(path: str, entries: list[NewEntry], records: dict[str, Optional[dict]]) -> None:
    """Replace the file with ``entries`` and ``records`` (None: a record to delete)."""
    doc = {"v": VERSION,
           "entries": [dataclasses.asdict(e) for e in entries],
           "records": records}
    tmp = f"{path}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, json.dumps(doc, sort_keys=True).encode())
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)


def clear(path: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)


def load(path: str) -> tuple[list[NewEntry], dict[str, Optional[dict]]]:
    """The saved entries and records; ([], {}) when there is no file.

    Raises ValueError for a file that is not one this relay wrote.
    """
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_BYTES + 1)
    except FileNotFoundError:
        return [], {}
    if len(data) > MAX_BYTES:
        raise ValueError(f"{path} is larger than {MAX_BYTES} bytes")
    doc = json.loads(data)
    if not isinstance(doc, dict) or doc.get("v") != VERSION:
        raise ValueError(f"{path} is not a version {VERSION} pending-writes file")
    entries = []
    for item in doc.get("entries") or []:
        outcome = item.get("outcome")
        entries.append(NewEntry(
            token=str(item["token"]), instance_uuid=str(item["instance_uuid"]),
            hostname=str(item["hostname"]), kind=str(item["kind"]),
            reason=str(item.get("reason") or ""), created_at=float(item["created_at"]),
            outcome=None if outcome is None else tuple(outcome)))
    records = doc.get("records") or {}
    if not isinstance(records, dict):
        raise ValueError(f"{path}: records must be an object")
    return entries, {str(k): (v if isinstance(v, dict) else None) for k, v in records.items()}


def describe(entries: list[NewEntry], records: dict[str, Any]) -> str:
    sent = sum(1 for e in entries if e.outcome is not None)
    return (f"{len(entries)} notifications ({sent} already sent to Masakari) and "
            f"{len(records)} detector records")

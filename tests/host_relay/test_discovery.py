"""Discovery follows the socket directory with inotify: no restart, no polling."""

from __future__ import annotations

import asyncio
import contextlib
import os
import pathlib

import pytest

from host_relay.discovery import Discovery, instance_uuid_from_name
from tests.host_relay.relay_testing import listen as _listen
from tests.host_relay.relay_testing import short_dir

UUID_A = "0b6f3b8e-8f59-4a43-9a8e-7a0e4f6c1a01"
UUID_B = "0b6f3b8e-8f59-4a43-9a8e-7a0e4f6c1a02"


@pytest.fixture
def sock_dir():
    yield from short_dir()


class _Recorder:
    def __init__(self) -> None:
        self.events: list = []
        self.changed = asyncio.Event()

    def added(self, uuid: str, path: str) -> None:
        self.events.append(("added", uuid, path))
        self.changed.set()

    def removed(self, uuid: str) -> None:
        self.events.append(("removed", uuid))
        self.changed.set()

    async def wait_for(self, event: tuple, timeout: float = 2.0) -> None:
        async def _wait() -> None:
            while not any(e[: len(event)] == event for e in self.events):
                self.changed.clear()
                await self.changed.wait()

        await asyncio.wait_for(_wait(), timeout)


def test_uuid_from_name() -> None:
    assert instance_uuid_from_name(f"{UUID_A}.sock") == UUID_A
    assert instance_uuid_from_name(UUID_A) is None
    assert instance_uuid_from_name("not-a-uuid.sock") is None
    assert instance_uuid_from_name(f"{UUID_A.upper()}.sock") is None
    assert instance_uuid_from_name(f"../{UUID_A}.sock") is None


def test_initial_scan_then_added_and_removed_without_restart(sock_dir) -> None:
    tmp_path = pathlib.Path(sock_dir)
    sock_dir = tmp_path / "channels"  # missing: discovery creates it

    async def main() -> None:
        rec = _Recorder()
        disc = Discovery(str(sock_dir), rec.added, rec.removed)
        # One socket exists before the watch starts.
        sock_dir.mkdir()
        first = _listen(str(sock_dir / f"{UUID_A}.sock"))
        task = asyncio.create_task(disc.run())
        try:
            await rec.wait_for(("added", UUID_A))
            second = _listen(str(sock_dir / f"{UUID_B}.sock"))
            await rec.wait_for(("added", UUID_B))
            os.unlink(sock_dir / f"{UUID_A}.sock")
            await rec.wait_for(("removed", UUID_A))
            assert set(disc.known) == {UUID_B}
            # A rename out of the directory counts as removal too.
            os.rename(sock_dir / f"{UUID_B}.sock", tmp_path / "elsewhere.sock")
            await rec.wait_for(("removed", UUID_B))
            assert disc.known == {}
            first.close()
            second.close()
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    asyncio.run(main())
    assert sock_dir.is_dir()


def test_non_uuid_names_and_non_sockets_are_ignored_once(sock_dir, caplog) -> None:
    tmp_path = pathlib.Path(sock_dir)

    async def main() -> None:
        rec = _Recorder()
        disc = Discovery(str(tmp_path), rec.added, rec.removed)
        (tmp_path / "README").write_text("x")
        task = asyncio.create_task(disc.run())
        try:
            bad = _listen(str(tmp_path / "not-a-uuid.sock"))
            (tmp_path / f"{UUID_B}.sock").write_text("a regular file, not a socket")
            good = _listen(str(tmp_path / f"{UUID_A}.sock"))
            await rec.wait_for(("added", UUID_A))
            disc.scan()  # a rescan does not log the same names again
            assert rec.events == [("added", UUID_A, str(tmp_path / f"{UUID_A}.sock"))]
            assert disc.ignored == {"README", "not-a-uuid.sock", f"{UUID_B}.sock"}
            bad.close()
            good.close()
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    with caplog.at_level("WARNING", logger="host_relay.discovery"):
        asyncio.run(main())
    warnings = [r for r in caplog.records if "Ignoring" in r.getMessage()]
    assert len(warnings) == 3

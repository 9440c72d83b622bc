"""The channel directory removed or replaced under discovery: noticed, re-created, watched again.

The faults are made for real: ``rm -rf`` of the directory while a listening
socket is still bound in it (which keeps the removed directory alive, so its
own inotify watch never says IN_DELETE_SELF), a rename, a re-creation by
someone else with another owner and mode, a file where the directory was.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import pathlib
import shutil
import stat

import pytest

from host_relay.discovery import Discovery
from tests.host_relay.relay_testing import listen, short_dir

UUID_A = "0b6f3b8e-8f59-4a43-9a8e-7a0e4f6c1a01"
UUID_B = "0b6f3b8e-8f59-4a43-9a8e-7a0e4f6c1a02"
WAIT = 3.0


@pytest.fixture
def sock_dir():
    yield from short_dir()


async def until(predicate, timeout: float = WAIT) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not predicate():
        assert asyncio.get_running_loop().time() < deadline, f"not within {timeout}s"
        await asyncio.sleep(0.01)


def dir_lines(caplog) -> list[logging.LogRecord]:
    return [r for r in caplog.records
            if r.name == "host_relay.discovery" and "Channel directory" in r.getMessage()]


def run_discovery(path: pathlib.Path, scenario, recheck: float = 10.0) -> Discovery:
    added: list = []

    async def main() -> Discovery:
        disc = Discovery(str(path), lambda u, p: added.append(u), lambda u: None,
                         recheck_interval=recheck)
        task = asyncio.create_task(disc.run())
        try:
            await until(lambda: disc.dir.identity is not None)
            await scenario(disc)
            assert not task.done(), task
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        return disc

    return asyncio.run(main())


def test_rm_rf_with_a_listener_still_bound_is_noticed_and_the_new_directory_watched(
        sock_dir, caplog) -> None:
    path = pathlib.Path(sock_dir) / "ch"

    async def scenario(disc: Discovery) -> None:
        old = listen(str(path / f"{UUID_A}.sock"))  # QEMU keeps listening: the dir stays alive
        await until(lambda: UUID_A in disc.known)
        first = disc.dir.identity
        shutil.rmtree(path)
        await until(lambda: disc.dir.identity not in (None, first))
        assert path.is_dir()
        new = listen(str(path / f"{UUID_B}.sock"))
        await until(lambda: UUID_B in disc.known)
        assert set(disc.known) == {UUID_B}
        old.close()
        new.close()
        await asyncio.sleep(0.1)  # the old directory's late IN_DELETE_SELF changes nothing
        assert set(disc.known) == {UUID_B}

    with caplog.at_level(logging.INFO, logger="host_relay.discovery"):
        disc = run_discovery(path, scenario)
    lines = dir_lines(caplog)
    assert len(lines) == 1, [r.getMessage() for r in lines]
    assert lines[0].levelno == logging.WARNING
    assert "was removed" in lines[0].getMessage() and "re-created it" in lines[0].getMessage()
    assert disc.dir_recreated == 1


def test_a_rename_and_a_re_creation_by_someone_else_get_the_first_owner_and_mode(
        sock_dir, caplog) -> None:
    path = pathlib.Path(sock_dir) / "ch"
    path.mkdir()
    # As socket_dir.prepare() leaves it with libvirt: the QEMU user's, mode 0770.
    shutil.chown(path, "nobody", "nogroup")
    path.chmod(0o770)

    async def scenario(disc: Discovery) -> None:
        s = listen(str(path / f"{UUID_A}.sock"))
        await until(lambda: UUID_A in disc.known)
        first = disc.dir.identity
        # Moved away and replaced at once by root with the default mode (an operator's mkdir).
        os.rename(path, pathlib.Path(sock_dir) / "ch.old")
        path.mkdir(mode=0o755)
        await until(lambda: disc.dir.identity not in (None, first))
        assert disc.known == {}  # the old socket lives in ch.old now
        s.close()

    with caplog.at_level(logging.INFO, logger="host_relay.discovery"):
        run_discovery(path, scenario)
    st = path.stat()
    assert (st.st_uid, st.st_gid) == (shutil._get_uid("nobody"), shutil._get_gid("nogroup"))
    assert stat.S_IMODE(st.st_mode) == 0o770
    lines = dir_lines(caplog)
    assert len(lines) == 1, [r.getMessage() for r in lines]
    assert "mode 770" in lines[0].getMessage()


def test_a_directory_that_cannot_be_made_again_is_one_error_then_checked_until_it_can(
        sock_dir, caplog) -> None:
    path = pathlib.Path(sock_dir) / "ch"

    async def scenario(disc: Discovery) -> None:
        path.rmdir()
        path.write_text("a file where the directory was")  # mkdir fails: EEXIST, not a dir
        await until(lambda: disc.dir_recreated == 1)
        await asyncio.sleep(0.5)  # several periodic checks fail meanwhile: still one line
        path.unlink()
        await until(lambda: path.is_dir() and disc.dir.identity is not None
                    and not disc.dir.replaced())
        s = listen(str(path / f"{UUID_A}.sock"))
        await until(lambda: UUID_A in disc.known)
        s.close()

    with caplog.at_level(logging.INFO, logger="host_relay.discovery"):
        disc = run_discovery(path, scenario, recheck=0.1)
    lines = [r.getMessage() for r in dir_lines(caplog)]
    assert len(lines) == 2, lines
    assert "cannot be made again" in lines[0] and "not a directory" in lines[0]
    assert "re-created it" in lines[1]
    assert disc.dir_recreated == 1



def test_a_file_system_mounted_over_the_directory_is_found_by_the_periodic_check(
        sock_dir, caplog) -> None:
    """A mount makes no inotify event at all: the identity check every interval finds it."""
    import subprocess

    path = pathlib.Path(sock_dir) / "ch"

    async def scenario(disc: Discovery) -> None:
        first = disc.dir.identity
        subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(path)], check=True)
        try:
            await until(lambda: disc.dir.identity not in (None, first))
            s = listen(str(path / f"{UUID_A}.sock"))
            await until(lambda: UUID_A in disc.known)
            s.close()
        finally:
            subprocess.run(["umount", "-l", str(path)], check=False)

    with caplog.at_level(logging.INFO, logger="host_relay.discovery"):
        disc = run_discovery(path, scenario, recheck=0.1)
    lines = [r.getMessage() for r in dir_lines(caplog)]
    assert len(lines) >= 1 and "is no longer the directory watched" in lines[0], lines
    assert "a new one is there" in lines[0]
    assert disc.dir_recreated >= 1


# -- the real relay ---------------------------------------------------------------------------

def _status(state_dir: str) -> dict:
    from host_relay import control

    try:
        return control.request(os.path.join(state_dir, "control.sock"), {"cmd": "status"}, 2.0)
    except control.ControlError:
        return {}


def _wait(what: str, predicate, timeout: float = 15.0):
    import time

    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        assert time.monotonic() < deadline, f"{what}: not within {timeout}s"
        time.sleep(0.05)


def test_relay_process_follows_its_channel_directory_through_rm_rf(tmp_path, sock_dir) -> None:
    import subprocess
    import sys

    ch = pathlib.Path(sock_dir) / "ch"
    conf = tmp_path / "relay.conf"
    conf.write_text(
        f"[DEFAULT]\nstate_path = {sock_dir}\nhost = compute-dir\nshutdown_grace = 2\n"
        f"[channels]\nsocket_dir = {ch}\nreconnect_initial = 0.1\n"
        "[libvirt]\nconnection_uri =\n"
        "[masakari]\nauth_type = none\nendpoint = http://127.0.0.1:9\n")
    log_path = tmp_path / "relay.log"
    with open(log_path, "ab") as log:
        relay = subprocess.Popen([sys.executable, "-m", "host_relay.cli", "run",
                                  "--config-file", str(conf)],
                                 stdout=log, stderr=subprocess.STDOUT)
    try:
        _wait("relay answering", lambda: _status(sock_dir))
        old = listen(str(ch / f"{UUID_A}.sock"))
        _wait("first channel", lambda: _connected(sock_dir, UUID_A))
        shutil.rmtree(ch)  # QEMU's listener stays bound in the removed directory
        os.makedirs(ch, exist_ok=True)  # re-created (by the relay, or here first)
        new = listen(str(ch / f"{UUID_B}.sock"))
        snap = _wait("the channel in the re-created directory",
                     lambda: _connected(sock_dir, UUID_B))
        assert set(snap["instances"]) == {UUID_B}
        assert snap["restarts"] == {}  # no part crashed for it
    finally:
        relay.terminate()
        relay.wait(15)
    old.close()  # after the relay: a listener closed under a connecting relay is a reset
    new.close()
    text = log_path.read_text()
    lines = [line for line in text.splitlines() if "Channel directory" in line]
    assert len(lines) == 1, text
    assert " WARNING " in lines[0] and str(ch) in lines[0], lines
    assert "Traceback" not in text
    assert relay.returncode == 0, text


def _connected(state_dir: str, uuid: str):
    snap = _status(state_dir)
    inst = snap.get("instances", {}).get(uuid) or {}
    return snap if (inst.get("channel") or {}).get("state") == "connected" else None

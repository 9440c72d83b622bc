"""With libvirt, the channel directory removed under the relay comes back as QEMU needs it.

The relay prepares the directory for the QEMU user (static and serial-fallback
channels are made there), so a re-created one must belong to that user again.
Hot-plugged channels now live in libvirt's own channel directory, so the first
domain's connection is untouched by the removal and a later hot-plug still works.
"""

from __future__ import annotations

import os
import shutil
import stat

import pytest

from tests.host_relay.test_libvirt_relay import (  # noqa: F401 - relays is a fixture
    hotplugged_and_connected,
    new_spec,
    relays,
    wait_for,
)

pytestmark = pytest.mark.libvirt


def test_removed_channel_directory_is_re_created_for_qemu_and_hot_plug_works_again(
        libvirt_domains, relays) -> None:  # noqa: F811
    daemon, domains = libvirt_domains
    first, second = new_spec(), new_spec()
    domains.append(daemon.start_domain(first))
    relay = relays().start()
    relay.wait_instance(first.uuid, hotplugged_and_connected, "first hot-plug")
    before = os.stat(relay.socket_dir)

    shutil.rmtree(relay.socket_dir)  # QEMU of the first domain still listens in it

    # Once rmtree has returned, any directory at the path is a new one. Its inode
    # number says nothing: the file system may hand the freed number straight back.
    wait_for(lambda: os.path.isdir(relay.socket_dir), 10.0,
             lambda: f"directory not re-created\n{relay.log()}")
    st = os.stat(relay.socket_dir)
    assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == (
        before.st_uid, before.st_gid, 0o770)
    assert st.st_uid != 0  # the QEMU user's (nobody in the fixture), as prepare() made it

    domains.append(daemon.start_domain(second))
    entry = relay.wait_instance(second.uuid, hotplugged_and_connected, "hot-plug after")
    assert entry["channel"]["state"] == "connected"
    # The first channel's connection was made before: removing the path does not end it.
    assert hotplugged_and_connected(relay.instance(first.uuid))
    log = relay.stop()
    lines = [line for line in log.splitlines() if "discovery [-] Channel directory" in line]
    assert len(lines) == 1 and " WARNING " in lines[0], lines
    assert "Traceback" not in log

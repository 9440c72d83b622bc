"""Fixtures for the relay's tests: a real masakari-api (see masakari_fixture.py).

- ``masakari_server`` (session): one masakari-api for the whole run, with a failover
  segment; fails with a clear message when masakari's virtualenv is missing.
- ``masakari`` (function): the same server, started again if a previous test stopped
  it (tests may ``stop()``/``start()`` it to simulate an outage).
- ``masakari_host`` (function): a compute host name registered in the segment, fresh
  for each test, so notifications and 409 duplicates never leak between tests.
- ``libvirtd`` (session): a private libvirtd + QEMU (TCG) run as ``nobody`` for
  ``qemu:///session`` (see libvirt_fixture.py); fails with the reason when it cannot run.
- ``libvirt_domains`` (function): that daemon, plus a list of domains removed after the test.
"""

from __future__ import annotations

import uuid

import pytest

from devtools.masakari_server import MasakariServer, MasakariUnavailable, start_server
from tests.host_relay.libvirt_fixture import (
    LibvirtDaemon,
    LibvirtUnavailable,
    start_daemon,
    stop_daemon,
)


@pytest.fixture(scope="session")
def masakari_server(tmp_path_factory) -> MasakariServer:
    try:
        server = start_server(tmp_path_factory.mktemp("masakari"))
    except MasakariUnavailable as exc:
        problem = str(exc)
    else:
        problem = None
    if problem is not None:  # outside the except: no chained traceback, just the message
        pytest.fail(f"cannot run a real masakari-api: {problem}", pytrace=False)
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def masakari(masakari_server: MasakariServer) -> MasakariServer:
    masakari_server.start()
    yield masakari_server
    masakari_server.start()  # leave it running for the next test


@pytest.fixture
def masakari_host(masakari: MasakariServer) -> str:
    name = f"compute-{uuid.uuid4().hex[:8]}"
    masakari.create_host(name)
    return name


@pytest.fixture(scope="session")
def libvirtd() -> LibvirtDaemon:
    try:
        daemon = start_daemon()
    except LibvirtUnavailable as exc:
        problem = str(exc)
    else:
        problem = None
    if problem is not None:  # a clear failure, never a silent skip
        pytest.fail(f"cannot run a private libvirtd: {problem}", pytrace=False)
    try:
        yield daemon
    finally:
        stop_daemon(daemon)


@pytest.fixture
def libvirt_domains(libvirtd: LibvirtDaemon):
    """``(daemon, domains)``: append every domain you create; they are removed afterwards."""
    domains: list = []
    yield libvirtd, domains
    for dom in domains:
        libvirtd.remove(dom)

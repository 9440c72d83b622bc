"""Delivery against a real masakari-api (see masakari_fixture.py and conftest.py)."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import textwrap
import time
import uuid
from pathlib import Path

import pytest
from keystoneauth1 import noauth, session
from oslo_config import cfg

from host_relay import conf as relay_conf
from host_relay import masakari_client
from host_relay.masakari_client import MasakariClient
from host_relay.outbox import Outbox
from host_relay.sender import Sender

pytestmark = pytest.mark.masakari

ROOT = Path(__file__).resolve().parents[2]
WAIT = 20.0


def make_client(url: str) -> MasakariClient:
    return MasakariClient(session.Session(auth=noauth.NoAuth(endpoint=url)),
                          connect_timeout=2.0, read_timeout=10.0)


@pytest.fixture
def outbox(tmp_path):
    ob = Outbox(str(tmp_path / "outbox.sqlite"))
    yield ob
    ob.close()


def new_uuid() -> str:
    return str(uuid.uuid4())


async def until(predicate, timeout=WAIT):
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"not true within {timeout} s")
        await asyncio.sleep(0.02)


def deliver(outbox, client, predicate, timeout=WAIT, during=None, **kwargs):
    """Run a Sender until predicate(outbox) holds (bounded); returns the sender."""
    kwargs.setdefault("backoff_initial", 0.05)
    kwargs.setdefault("backoff_max", 0.5)

    async def main():
        sender = Sender(outbox, client, **kwargs)
        stop = asyncio.Event()
        task = asyncio.create_task(sender.run(stop))
        try:
            if during is not None:
                await during(sender)
            await until(lambda: predicate(outbox), timeout)
        finally:
            stop.set()
            await asyncio.wait_for(task, 10)
        return sender

    return asyncio.run(main())


def no_queue(ob):
    return ob.stats(time.time())["depth"] == 0


def test_delivered_with_the_exact_notification(masakari, masakari_host, outbox):
    inst = new_uuid()
    entry = outbox.put(inst, masakari_host, "process", "sshd exited", time.time())
    sender = deliver(outbox, make_client(masakari.url), no_queue)

    got = outbox.get(entry.id)
    assert got.state == "delivered" and got.last_status == 202 and got.attempts == 1
    (n,) = masakari.notifications_for(inst)
    assert n["notification_uuid"] == got.notification_uuid
    assert n["type"] == "VM" and n["status"] == "new"
    assert n["payload"] == {"event": "LIFECYCLE", "instance_uuid": inst,
                            "vir_domain_event": "STOPPED_FAILED"}
    assert n["source_host_uuid"] == masakari.hosts[masakari_host]
    assert n["generated_time"] == entry.generated_time
    assert sender.counters.delivered == 1 and sender.counters.duplicates == 0


def test_session_from_conf_with_auth_type_none(masakari, masakari_host, outbox, tmp_path):
    """The operator's path: [masakari] auth_type = none + endpoint, through oslo.config."""
    conf_file = tmp_path / "relay.conf"
    conf_file.write_text(f"[masakari]\nauth_type = none\nendpoint = {masakari.url}\n")
    conf = cfg.ConfigOpts()
    relay_conf.register_opts(conf)  # the one registration of [masakari]
    conf(args=[], default_config_files=[str(conf_file)])
    client = masakari_client.client_from_conf(conf, "masakari", read_timeout=10.0)
    assert client.is_noauth and client.noauth_token == "admin:admin"
    assert client.endpoint() == masakari.url

    inst = new_uuid()
    outbox.put(inst, masakari_host, "heartbeat", "silent", time.time())
    deliver(outbox, client, no_queue)
    assert len(masakari.notifications_for(inst)) == 1


def test_duplicate_409_counts_as_delivered(masakari, masakari_host, outbox):
    inst = new_uuid()
    a = outbox.put(inst, masakari_host, "process", "first", time.time())
    b = outbox.put(inst, masakari_host, "heartbeat", "second", time.time())
    sender = deliver(outbox, make_client(masakari.url), no_queue)

    ga, gb = outbox.get(a.id), outbox.get(b.id)
    assert (ga.state, ga.last_status) == ("delivered", 202)
    assert (gb.state, gb.last_status, gb.notification_uuid) == ("delivered", 409, None)
    assert (sender.counters.delivered, sender.counters.duplicates) == (2, 1)
    assert len(masakari.notifications_for(inst)) == 1


def test_unknown_host_400_is_dead_lettered(masakari, outbox):
    inst = new_uuid()
    e = outbox.put(inst, "no-such-compute", "process", "x", time.time())
    sender = deliver(outbox, make_client(masakari.url), no_queue)

    got = outbox.get(e.id)
    assert (got.state, got.last_status, got.attempts) == ("dead", 400, 1)
    assert "host no-such-compute is not registered" in got.last_error
    assert "openstack segment host create" in got.last_error
    stats = outbox.stats(time.time())
    assert stats["dead"] == 1 and stats["depth"] == 0
    assert outbox.recent(1)[0].id == e.id and outbox.latest_for(inst).state == "dead"
    assert sender.counters.dead == 1
    assert masakari.notifications_for(inst) == []


def test_maintenance_409_is_dead_lettered_then_requeued(masakari, outbox):
    host = f"compute-maint-{uuid.uuid4().hex[:6]}"
    masakari.create_host(host, on_maintenance=True)
    inst = new_uuid()
    e = outbox.put(inst, host, "process", "x", time.time())
    client = make_client(masakari.url)
    sender = deliver(outbox, client, no_queue)

    got = outbox.get(e.id)
    assert (got.state, got.last_status) == ("dead", 409)
    assert f"host {host} is on maintenance in Masakari" in got.last_error
    assert outbox.stats(time.time())["dead"] == 1 and sender.counters.dead == 1
    assert masakari.notifications_for(inst) == []

    # The operator takes the host out of maintenance and re-queues the entry.
    masakari.set_maintenance(host, False)
    assert outbox.requeue(e.id, time.time())
    deliver(outbox, client, no_queue)
    assert outbox.get(e.id).state == "delivered"
    assert len(masakari.notifications_for(inst)) == 1


def test_api_down_then_up_loses_nothing_and_delivers_once(masakari, masakari_host, outbox):
    masakari.stop()
    insts = [new_uuid() for _ in range(3)]
    client = make_client(masakari.url)

    async def outage(sender):
        for inst in insts:
            outbox.put(inst, masakari_host, "process", "x", time.time())
            sender.wake()
        # every entry retried at least twice while the API is down
        await until(lambda: all(e.attempts >= 2 for e in outbox.due(time.time() + 60)))
        assert outbox.stats(time.time())["depth"] == 3
        await asyncio.to_thread(masakari.start)

    sender = deliver(outbox, client, no_queue, during=outage,
                     backoff_initial=0.1, backoff_max=0.5)
    assert sender.counters.retries >= 6
    assert sender.counters.delivered == 3 and sender.counters.dead == 0
    for inst in insts:
        assert len(masakari.notifications_for(inst)) == 1, inst
        e = outbox.latest_for(inst)
        assert e.state == "delivered" and e.last_status == 202 and e.attempts >= 3


_WRITER = textwrap.dedent("""
    import sys, time
    from host_relay.outbox import Outbox
    ob = Outbox(sys.argv[1])
    e = ob.put(sys.argv[2], sys.argv[3], "process", "sshd exited", time.time())
    print(e.id, flush=True)
    time.sleep(60)  # killed with SIGKILL before it could do anything else
""")


def test_put_survives_sigkill_and_restarted_sender_delivers_once(masakari, masakari_host,
                                                                 tmp_path):
    path = str(tmp_path / "killed.sqlite")
    inst = new_uuid()
    proc = subprocess.Popen([sys.executable, "-c", _WRITER, path, inst, masakari_host],
                            stdout=subprocess.PIPE, text=True, cwd=ROOT,
                            env={**os.environ, "PYTHONPATH": str(ROOT)})
    try:
        line = proc.stdout.readline()  # put() has returned: the failure is reported
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
    finally:
        proc.kill()
        proc.stdout.close()
    assert proc.returncode == -signal.SIGKILL
    entry_id = int(line)

    ob = Outbox(path)  # the restarted relay
    try:
        assert ob.get(entry_id).state == "queued"
        deliver(ob, make_client(masakari.url), no_queue)
        assert ob.get(entry_id).state == "delivered"
    finally:
        ob.close()
    (n,) = masakari.notifications_for(inst)
    assert n["source_host_uuid"] == masakari.hosts[masakari_host]

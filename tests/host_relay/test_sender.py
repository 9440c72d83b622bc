"""classify() for every answer class, and the Sender loop against a fake client."""

from __future__ import annotations

import asyncio
import http.server
import json
import logging
import random
import socket
import threading
import time

import pytest

from host_relay.masakari_client import (
    MasakariClient,
    Result,
    notification_body,
    notifications_url,
)
from host_relay.outbox import Outbox
from host_relay.sender import Action, Sender, classify

WAIT = 5.0  # bound for every wait on the sender


# -- classify ---------------------------------------------------------------------------

DUP = ('{"conflictingRequest": {"code": 409, "message": "Notification received from host '
       'c1 of type VM is duplicate."}}')
MAINT = ("Notification received from host c1 of type 'VM' is ignored as the host is "
         "already under maintenance.")


def test_202_is_delivered():
    v = classify(Result(202, "{}", "n-uuid", ""), "c1")
    assert v.action is Action.DELIVERED and not v.duplicate and v.delivered


def test_409_duplicate_counts_as_delivered():
    v = classify(Result(409, DUP, None, "Notification ... is duplicate."), "c1")
    assert v.action is Action.DELIVERED and v.duplicate
    # the body alone is enough
    assert classify(Result(409, DUP, None, ""), "c1").duplicate


def test_409_maintenance_is_dead_with_the_fix():
    v = classify(Result(409, "", None, MAINT), "c1")
    assert v.action is Action.DEAD
    assert v.message.startswith("host c1 is on maintenance in Masakari")
    assert "--on_maintenance False" in v.message and MAINT in v.message


def test_other_409_is_retried():
    assert classify(Result(409, "", None, "something else"), "c1").action is Action.RETRY


def test_400_unknown_host_is_dead_with_the_fix():
    v = classify(Result(400, "", None, "Host with name c9 could not be found."), "c1")
    assert v.action is Action.DEAD
    assert v.message.startswith("host c9 is not registered in any Masakari failover segment")
    assert "openstack segment host create" in v.message and "[DEFAULT] host" in v.message


def test_400_schema_error_is_dead_as_our_bug():
    err = "Invalid input for field/attribute payload. Additional properties are not allowed"
    v = classify(Result(400, "", None, err), "c1")
    assert v.action is Action.DEAD and "bug in iim-relay" in v.message and err in v.message


@pytest.mark.parametrize("status", [500, 502, 503, 504, 401, 403, 404, 429, 418])
def test_5xx_and_other_statuses_are_retried(status):
    v = classify(Result(status, "oops", None, "oops"), "c1")
    assert v.action is Action.RETRY and str(status) in v.message


@pytest.mark.parametrize("error", [
    "ConnectFailure: Unable to establish connection: Connection refused",
    "ConnectTimeout: Request to http://x timed out",
    "endpoint lookup failed: EndpointNotFound",
])
def test_no_answer_is_retried(error):
    v = classify(Result(None, "", None, error))
    assert v.action is Action.RETRY and error in v.message


# -- client helpers -----------------------------------------------------------------------

@pytest.mark.parametrize("endpoint, url", [
    ("http://h:15868", "http://h:15868/v1/notifications"),
    ("http://h:15868/", "http://h:15868/v1/notifications"),
    ("http://h:15868/v1", "http://h:15868/v1/notifications"),
    ("http://h:15868/v1/", "http://h:15868/v1/notifications"),
    ("http://h:15868/v1/0123abcd", "http://h:15868/v1/0123abcd/notifications"),
    ("https://cloud/instance-ha", "https://cloud/instance-ha/v1/notifications"),
    ("https://cloud/instance-ha/v1/p1", "https://cloud/instance-ha/v1/p1/notifications"),
])
def test_notifications_url(endpoint, url):
    assert notifications_url(endpoint) == url


def test_notification_body_is_exactly_masakaris_schema(tmp_path):
    ob = Outbox(str(tmp_path / "o.sqlite"))
    try:
        e = ob.put("u-1", "compute-7", "process", "reason stays local", 1_800_000_000.0)
    finally:
        ob.close()
    assert notification_body(e) == {"notification": {
        "type": "VM", "hostname": "compute-7", "generated_time": "2027-01-15T08:00:00.000000",
        "payload": {"event": "LIFECYCLE", "instance_uuid": "u-1",
                    "vir_domain_event": "STOPPED_FAILED"}}}


# -- backoff ------------------------------------------------------------------------------

def test_backoff_is_exponential_capped_and_jittered(tmp_path):
    s = Sender(None, None, backoff_initial=1.0, backoff_max=60.0, jitter=0.0)
    assert [s.backoff(n) for n in range(1, 9)] == [1, 2, 4, 8, 16, 32, 60, 60]
    s = Sender(None, None, backoff_initial=1.0, backoff_max=60.0, jitter=0.2,
               rng=random.Random(7))
    for n, base in [(1, 1.0), (3, 4.0), (20, 60.0)]:
        values = [s.backoff(n) for _ in range(200)]
        assert all(base * 0.8 <= v <= base * 1.2 for v in values)
        assert max(values) - min(values) > base * 0.2  # really jittered


# -- the Sender loop against a fake client --------------------------------------------------

ACCEPTED = Result(202, "{}", "n", "")


class FakeClient:
    """Answers from a script (then the default); records what was posted, in order."""

    def __init__(self, default=ACCEPTED):
        self.default = default
        self.script: list = []
        self.posted: list = []
        self.lock = threading.Lock()

    def post_notification(self, entry):
        with self.lock:
            self.posted.append(entry.id)
            answer = self.script.pop(0) if self.script else self.default
        if isinstance(answer, Exception):
            raise answer
        return answer


class CountingOutbox(Outbox):
    def __init__(self, path):
        super().__init__(path)
        self.due_calls = 0

    def due(self, now, limit=50):
        self.due_calls += 1
        return super().due(now, limit)


@pytest.fixture
def outbox(tmp_path):
    ob = CountingOutbox(str(tmp_path / "o.sqlite"))
    yield ob
    ob.close()


async def until(predicate, timeout=WAIT):
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"not true within {timeout} s")
        await asyncio.sleep(0.01)


class Running:
    """Runs a Sender as a task for the duration of an `async with`."""

    def __init__(self, sender):
        self.sender = sender
        self.stop = asyncio.Event()

    async def __aenter__(self):
        self.task = asyncio.create_task(self.sender.run(self.stop))
        return self

    async def __aexit__(self, *exc):
        self.stop.set()
        await asyncio.wait_for(self.task, WAIT)


def state(ob, entry_id):
    return ob.get(entry_id).state


def test_wake_delivers_at_once_and_logs_latency(outbox, caplog):
    caplog.set_level(logging.INFO, logger="host_relay.sender")
    client = FakeClient(Result(202, "{}", "n-1", ""))

    async def main():
        sender = Sender(outbox, client)
        async with Running(sender):
            await asyncio.sleep(0.05)
            t = time.monotonic()
            e = outbox.put("u1", "c1", "process", "sshd", time.time())
            sender.wake()
            await until(lambda: state(outbox, e.id) == "delivered")
            assert time.monotonic() - t < 0.5
        return e, sender

    e, sender = asyncio.run(main())
    got = outbox.get(e.id)
    assert (got.last_status, got.notification_uuid, got.attempts) == (202, "n-1", 1)
    assert sender.counters.as_dict() == {
        "delivered": 1, "duplicates": 0, "dead": 0, "retries": 0, "errors": 0}
    assert any("delivered failure of instance u1" in r.getMessage()
               and "after it was reported" in r.getMessage() for r in caplog.records)


def test_entries_queued_before_start_are_sent_oldest_first(outbox):
    entries = [outbox.put(f"u{i}", "c1", "process", "x", time.time()) for i in range(5)]
    client = FakeClient()

    async def main():
        sender = Sender(outbox, client)
        async with Running(sender):
            await until(lambda: outbox.stats(time.time())["depth"] == 0)

    asyncio.run(main())
    assert client.posted == [e.id for e in entries]


def test_idle_sender_does_not_poll(outbox):
    async def main():
        sender = Sender(outbox, FakeClient())
        async with Running(sender):
            await asyncio.sleep(0.5)
            calls_idle = outbox.due_calls
            e = outbox.put("u1", "c1", "process", "x", time.time())
            sender.wake()
            await until(lambda: state(outbox, e.id) == "delivered")
        return calls_idle

    assert asyncio.run(main()) == 1  # one look at start, then asleep until woken


def test_transient_failures_are_retried_with_backoff_until_delivered(outbox, caplog):
    caplog.set_level(logging.INFO, logger="host_relay.sender")
    client = FakeClient()
    client.script = [Result(None, "", None, "ConnectFailure: refused"),
                     Result(503, "down", None, "down"),
                     RuntimeError("client bug")]

    async def main():
        sender = Sender(outbox, client, backoff_initial=0.05, backoff_max=0.2, jitter=0.2)
        e = outbox.put("u1", "c1", "process", "x", time.time())
        t = time.monotonic()
        async with Running(sender):
            await until(lambda: state(outbox, e.id) == "delivered")
        return e, sender, time.monotonic() - t

    e, sender, took = asyncio.run(main())
    assert outbox.get(e.id).attempts == 4
    assert sender.counters.retries == 3 and sender.counters.delivered == 1
    assert took >= (0.05 + 0.1 + 0.2) * 0.8  # it waited out each backoff
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 3
    assert "(attempt 1)" in warnings[0].getMessage()
    assert "(attempt 3)" in warnings[2].getMessage() and "next try in" in warnings[2].getMessage()


def test_dead_letters_are_kept_visible_and_logged_as_errors(outbox, caplog):
    client = FakeClient()
    client.script = [Result(400, "", None, "Host with name c9 could not be found."),
                     Result(409, "", None, MAINT)]

    async def main():
        sender = Sender(outbox, client)
        a = outbox.put("u1", "c9", "process", "x", time.time())
        b = outbox.put("u2", "c1", "heartbeat", "y", time.time())
        async with Running(sender):
            await until(lambda: outbox.stats(time.time())["dead"] == 2)
        return a, b, sender

    a, b, sender = asyncio.run(main())
    assert sender.counters.dead == 2 and sender.counters.retries == 0
    assert outbox.stats(time.time())["depth"] == 0
    ga, gb = outbox.get(a.id), outbox.get(b.id)
    assert ga.last_status == 400 and "openstack segment host create" in ga.last_error
    assert gb.last_status == 409 and "on maintenance" in gb.last_error
    errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 2 and "dead-lettered" in errors[0] and "c9" in errors[0]


def test_duplicate_counts_as_delivered(outbox):
    client = FakeClient()
    client.script = [Result(202, "{}", "n1", ""), Result(409, DUP, None, "... is duplicate.")]

    async def main():
        sender = Sender(outbox, client)
        for _ in range(2):
            outbox.put("u1", "c1", "process", "x", time.time())
        async with Running(sender):
            await until(lambda: outbox.stats(time.time())["delivered"] == 2)
        return sender

    sender = asyncio.run(main())
    assert (sender.counters.delivered, sender.counters.duplicates) == (2, 1)


def test_recovery_brings_backed_off_entries_forward(outbox):
    """After an outage, the first success retries everything at once, not after 60 s."""
    client = FakeClient()
    client.script = [Result(None, "", None, "refused")] * 2

    async def main():
        sender = Sender(outbox, client, backoff_initial=30.0, backoff_max=60.0)
        a = outbox.put("u1", "c1", "process", "x", time.time())
        b = outbox.put("u2", "c1", "process", "x", time.time())
        async with Running(sender):
            await until(lambda: outbox.stats(time.time())["retrying"] == 2)
            c = outbox.put("u3", "c1", "process", "x", time.time())
            sender.wake()
            await until(lambda: outbox.stats(time.time())["delivered"] == 3, timeout=2.0)
        return a, b, c

    a, b, c = asyncio.run(main())
    assert client.posted == [a.id, b.id, c.id, a.id, b.id]


def test_stop_event_ends_run_promptly_even_with_a_far_due_time(outbox):
    client = FakeClient(Result(None, "", None, "refused"))

    async def main():
        sender = Sender(outbox, client, backoff_initial=3600, backoff_max=3600)
        outbox.put("u1", "c1", "process", "x", time.time())
        stop = asyncio.Event()
        task = asyncio.create_task(sender.run(stop))
        await until(lambda: sender.counters.retries == 1)
        t = time.monotonic()
        stop.set()
        await asyncio.wait_for(task, WAIT)
        return time.monotonic() - t

    assert asyncio.run(main()) < 0.5


# -- which X-Auth-Token the client sends --------------------------------------------------

class _Capture(http.server.BaseHTTPRequestHandler):
    seen: list = []

    def do_POST(self):  # noqa: N802 - http.server's naming
        length = int(self.headers.get("Content-Length", 0))
        _Capture.seen.append((self.path, self.headers.get("X-Auth-Token"),
                              json.loads(self.rfile.read(length))))
        body = b'{"notification": {"notification_uuid": "n-9"}}'
        self.send_response(202)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture
def capture_server():
    _Capture.seen = []
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Capture)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()
    thread.join(timeout=5)


def _entry(tmp_path):
    ob = Outbox(str(tmp_path / "o.sqlite"))
    try:
        return ob.put("u-1", "compute-7", "process", "r", 1_800_000_000.0)
    finally:
        ob.close()


def test_noauth_sends_the_configured_token(capture_server, tmp_path):
    from keystoneauth1 import noauth, session

    client = MasakariClient(session.Session(auth=noauth.NoAuth(endpoint=capture_server)),
                            noauth_token="ops:proj")
    result = client.post_notification(_entry(tmp_path))
    assert result == Result(202, result.body, "n-9", "")
    ((path, token, body),) = _Capture.seen
    assert (path, token) == ("/v1/notifications", "ops:proj")
    assert body == notification_body(_entry(tmp_path))


def test_real_auth_sends_its_own_token_not_noauth_token(capture_server, tmp_path):
    from keystoneauth1 import session, token_endpoint

    auth = token_endpoint.Token(capture_server + "/v1/p1", "keystone-token")
    client = MasakariClient(session.Session(auth=auth), noauth_token="admin:admin")
    assert client.post_notification(_entry(tmp_path)).status == 202
    ((path, token, _),) = _Capture.seen
    assert (path, token) == ("/v1/p1/notifications", "keystone-token")


def test_connection_refused_is_a_result_not_an_exception(tmp_path):
    from keystoneauth1 import noauth, session

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again: nothing listens there
    client = MasakariClient(
        session.Session(auth=noauth.NoAuth(endpoint=f"http://127.0.0.1:{port}")),
        connect_timeout=1.0)
    result = client.post_notification(_entry(tmp_path))
    assert result.status is None and "ConnectFailure" in result.error
    assert classify(result).action is Action.RETRY

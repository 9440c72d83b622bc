"""Helpers for the running-relay tests: short socket dirs, a QEMU stand-in, a fake sender.

AF_UNIX paths are limited to 107 bytes and pytest's tmp_path plus
``<uuid>.sock`` is longer than that, so socket directories live in a short
temporary directory under /tmp (removed after the test); everything else
(outbox, config files) stays in tmp_path.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import tempfile
import time

from iim_protocol.codec import encode


def short_dir():
    """Generator for a ``sock_dir`` fixture: a short directory under /tmp."""
    path = tempfile.mkdtemp(prefix="iim-", dir="/tmp")
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def listen(path: str) -> socket.socket:
    """A listening UNIX socket at ``path``, as QEMU's chardev server is."""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.bind(path)
    s.listen(1)
    return s


class FakeGuest:
    """Plays QEMU for one instance: listens on ``<dir>/<uuid>.sock`` and writes frames."""

    def __init__(self, sock_dir: str, uuid: str) -> None:
        self.path = os.path.join(sock_dir, f"{uuid}.sock")
        self.server: asyncio.AbstractServer | None = None
        self.writer: asyncio.StreamWriter | None = None
        self.connected = asyncio.Event()
        self.connections = 0
        self.received = bytearray()  # what the relay wrote (its sync requests), bounded

    async def start(self) -> FakeGuest:
        self.server = await asyncio.start_unix_server(self._on_client, path=self.path)
        return self

    async def _on_client(self, reader, writer) -> None:
        self.connections += 1
        self.writer = writer
        self.connected.set()
        try:
            while len(self.received) < 65536:  # the relay writes a sync per connect
                data = await reader.read(4096)
                if not data:
                    break
                self.received += data
        except (ConnectionError, asyncio.CancelledError):
            pass  # the test is over

    async def wait_connected(self, timeout: float = 3.0) -> None:
        await asyncio.wait_for(self.connected.wait(), timeout)

    async def send(self, *messages) -> None:
        assert self.writer is not None
        self.writer.write(b"".join(encode(m) for m in messages))
        await self.writer.drain()

    async def send_raw(self, data: bytes) -> None:
        assert self.writer is not None
        self.writer.write(data)
        await self.writer.drain()

    async def drop(self) -> None:
        """Close the current connection (the guest side hangs up)."""
        if self.writer is not None:
            self.writer.close()
            self.writer = None
        self.connected.clear()

    async def stop(self, unlink: bool = True) -> None:
        await self.drop()
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()
        if unlink and os.path.exists(self.path):
            os.unlink(self.path)


class FakeSender:
    """Stands in for host_relay.sender.Sender where Masakari is not the point."""

    def __init__(self) -> None:
        self.wakes = 0
        self.counters = {"sent": 0}
        self.stopped_at: float | None = None

    def wake(self) -> None:
        self.wakes += 1

    async def run(self, stop_event: asyncio.Event) -> None:
        await stop_event.wait()
        self.stopped_at = time.monotonic()


async def wait_until(predicate, timeout: float, step: float = 0.01) -> float:
    """Wait for ``predicate()`` (a test-side check); returns the seconds it took."""
    start = time.monotonic()
    while not predicate():
        if time.monotonic() - start > timeout:
            raise AssertionError(f"condition not met within {timeout}s")
        await asyncio.sleep(step)
    return time.monotonic() - start


class CountingProxy:
    """An HTTP proxy on 127.0.0.1 in front of masakari-api that counts the POSTs it forwards.

    Masakari answers a repeated notification with 409 and records it once, so its own
    list cannot show a second POST; this count can.  ``posts[instance_uuid]``.
    """

    def __init__(self, target: str) -> None:
        import http.server
        import json
        import threading
        import urllib.error
        import urllib.request

        self.target = target.rstrip("/")
        self.posts: dict[str, int] = {}
        self.statuses: list[int] = []
        # (instance_uuid, status, time.time() the POST arrived, answer reached the client)
        self.answers: list[tuple[str, int, float, bool]] = []
        proxy = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:  # quiet
                pass

            def _forward(self, method: str) -> None:
                arrived = time.time()
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else None
                inst = None
                if method == "POST" and self.path.endswith("/notifications") and body:
                    inst = json.loads(body)["notification"]["payload"]["instance_uuid"]
                    proxy.posts[inst] = proxy.posts.get(inst, 0) + 1
                req = urllib.request.Request(proxy.target + self.path, data=body, method=method,
                                             headers={k: v for k, v in self.headers.items()
                                                      if k.lower() != "host"})
                try:
                    with urllib.request.urlopen(req, timeout=10) as resp:  # noqa: S310
                        status, data = resp.status, resp.read()
                except urllib.error.HTTPError as exc:
                    status, data = exc.code, exc.read()
                except OSError:
                    status, data = 502, b'{"error": "masakari-api unreachable"}'
                proxy.statuses.append(status)
                answered = False
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                    self.wfile.flush()
                    answered = True
                finally:  # a client killed meanwhile never read the answer
                    if inst is not None:
                        proxy.answers.append((inst, status, arrived, answered))

            def do_POST(self) -> None:  # noqa: N802 - http.server's naming
                self._forward("POST")

            def do_GET(self) -> None:  # noqa: N802
                self._forward("GET")

        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()


class LevelAgent:
    """A protocol 0.2 guest agent behind a socket where QEMU would listen (a thread).

    On each connection from the relay it reads the relay's ``sync`` requests and
    answers them as iim-agent does (hello, a heartbeat with its whole state, a
    failure frame per failed check), then sends a heartbeat every ``interval`` and
    a hello every 30 heartbeats.  Like iim-agent on a virtio port it also sends
    that whole state when it sees the host connect (``sees_host``; an agent on a
    serial port cannot).  ``hang()`` stops it sending anything (a hung guest still
    holds the port open); ``fail(check, reason)`` fails a check and sends the
    failure frame (the fast path).  ``answer_sync=False, sees_host=False`` plays a
    guest whose failure frame went out while nobody read: only heartbeats tell.
    """

    def __init__(self, sock_dir: str, uuid: str, interval: float, *,
                 checks: dict[str, str], answer_sync: bool = True,
                 sees_host: bool = True) -> None:
        import threading

        from iim_protocol.codec import Decoder

        self.path = os.path.join(sock_dir, f"{uuid}.sock")
        os.makedirs(sock_dir, exist_ok=True)
        self.interval = interval
        self.checks = dict(checks)
        self.reasons: dict[str, str] = {}
        self.answer_sync = answer_sync
        self.sees_host = sees_host
        self.boot_id = "boot-" + uuid[:8]
        self.start_id = os.urandom(8).hex()
        self.connections = 0
        self.syncs = 0
        self.hellos = 0
        self.hung = False
        self._seq = 0
        self._lock = threading.Lock()
        self._conn: socket.socket | None = None
        self._stop = threading.Event()
        self._decoder_type = Decoder
        self._listener = listen(self.path)
        self._listener.settimeout(0.2)
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    # -- what the test does ----------------------------------------------------

    def hang(self) -> None:
        self.hung = True

    def fail(self, check: str, reason: str) -> None:
        from iim_protocol.messages import Failure

        with self._lock:
            self.checks[check] = "failed"
            self.reasons[check] = reason
            self._seq += 1
            self._send(Failure(seq=self._seq, check=check, reason=reason))

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self._listener.close()
        if self._conn is not None:
            self._conn.close()
        if os.path.exists(self.path):
            os.unlink(self.path)

    # -- the agent ---------------------------------------------------------------

    def _hello(self):
        from iim_protocol.messages import Hello

        self.hellos += 1
        return Hello(protocol_version=1, agent_version="0.2-test", boot_id=self.boot_id,
                     heartbeat_interval=self.interval, checks=tuple(self.checks),
                     start_id=self.start_id, pause=None, pause_known=True)

    def _heartbeat(self):
        from iim_protocol.messages import Heartbeat

        self._seq += 1
        return Heartbeat(seq=self._seq, checks=tuple(sorted(self.checks.items())),
                         interval=self.interval, boot_id=self.boot_id,
                         start_id=self.start_id, pause=None, pause_known=True)

    def _send(self, *messages) -> None:
        if self._conn is None or self.hung:
            return
        try:
            self._conn.sendall(b"".join(encode(m) for m in messages))
        except OSError:
            self._conn.close()
            self._conn = None

    def _answer_sync(self) -> None:
        self.syncs += 1
        if self.answer_sync:
            self._whole_state()

    def _whole_state(self) -> None:
        from iim_protocol.messages import Failure

        frames = [self._hello(), self._heartbeat()]
        for check, state in sorted(self.checks.items()):
            if state == "failed":
                self._seq += 1
                frames.append(Failure(seq=self._seq, check=check,
                                      reason=self.reasons.get(check, "failed")))
        self._send(*frames)

    def _serve(self) -> None:
        from iim_protocol.messages import Sync

        next_beat = time.monotonic()
        beats = 0
        decoder = self._decoder_type()
        while not self._stop.is_set():
            if self._conn is None:
                try:
                    conn, _ = self._listener.accept()
                except (TimeoutError, socket.timeout):
                    continue
                except OSError:
                    return
                conn.settimeout(0.05)
                with self._lock:
                    self._conn = conn
                    self.connections += 1
                    decoder = self._decoder_type()
                    if self.sees_host:
                        self._whole_state()
                continue
            try:
                data = self._conn.recv(4096)
                if not data:
                    with self._lock:
                        self._conn.close()
                        self._conn = None
                    continue
                with self._lock:
                    for msg in decoder.feed(data):
                        if isinstance(msg, Sync):
                            self._answer_sync()
            except (TimeoutError, socket.timeout):
                pass
            except OSError:
                with self._lock:
                    if self._conn is not None:
                        self._conn.close()
                    self._conn = None
                continue
            if time.monotonic() >= next_beat:
                next_beat = time.monotonic() + self.interval
                beats += 1
                with self._lock:
                    if beats % 30 == 1:
                        self._send(self._hello(), self._heartbeat())
                    else:
                        self._send(self._heartbeat())

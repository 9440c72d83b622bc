"""The relay's control socket: one JSON request line in, one JSON response line out.

The socket (``<state_path>/control.sock``) is created mode 0600 and every peer
is checked with SO_PEERCRED: only root or the relay's own user may talk to it.
``{"cmd": "status"}`` answers with the relay's snapshot; an error answers
``{"error": "..."}``.  ``pause``, ``resume`` and ``instance`` (one instance in
detail) are answered by host_relay.maintenance; a refusal there is an answer
with ``refused``, not an error.  :func:`request` is the client the CLI uses.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import logging
import os
import socket
import struct
from typing import Any, Callable, Optional

LOG = logging.getLogger(__name__)

MAX_REQUEST = 64 * 1024
_UCRED = struct.Struct("3i")  # pid, uid, gid
_CLIENT_TIMEOUT = 10.0

# A handler answers at once or is a coroutine function (the relay's: status reads the
# outbox in a thread with a deadline, so the loop never waits for the disk).
Handler = Callable[[dict[str, Any]], Any]


class ControlError(RuntimeError):
    """The relay could not be asked, or it answered with an error."""


class RelayNotRunning(ControlError):
    """Nothing listens on the control socket."""


class AlreadyRunning(ControlError):
    """Another relay answers on the control socket."""


def peer_uid(sock: socket.socket) -> int:
    _, uid, _ = _UCRED.unpack(sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _UCRED.size))
    return uid


def _bind(path: str) -> socket.socket:
    """A listening socket at ``path``, mode 0600 from the start; clears a stale one."""
    if os.path.exists(path):
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            probe.connect(path)
        except OSError:
            os.unlink(path)  # left over from a relay that died
        else:
            raise AlreadyRunning(f"another iim-relay is running (control socket {path} answers)")
        finally:
            probe.close()
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old = os.umask(0o177)
    try:
        sock.bind(path)
    except OSError:
        sock.close()
        raise
    finally:
        os.umask(old)
    os.chmod(path, 0o600)
    sock.listen(16)
    sock.setblocking(False)
    return sock


class ControlServer:
    """Serves ``handler(request) -> response`` on a UNIX socket."""

    def __init__(self, path: str, handler: Handler) -> None:
        self.path = path
        self._handler = handler
        self._sock: Optional[socket.socket] = None
        self.allowed_uids = {0, os.getuid()}

    def bind(self) -> None:
        """Create the socket now, so a second relay fails at start-up."""
        self._sock = _bind(self.path)

    async def serve(self) -> None:
        """Serve until cancelled; then close and remove the socket."""
        if self._sock is None:
            self.bind()
        server = await asyncio.start_unix_server(self._client, sock=self._sock,
                                                 limit=MAX_REQUEST)
        LOG.info("Control socket listening at %s", self.path)
        try:
            await asyncio.Event().wait()
        finally:
            server.close()
            self._sock = None
            try:
                os.unlink(self.path)
            except FileNotFoundError:
                pass
            except OSError as exc:  # a read-only state_path: the next relay replaces it
                LOG.warning("Cannot remove the control socket %s: %s", self.path, exc)

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            sock = writer.get_extra_info("socket")
            uid = peer_uid(sock)
            if uid not in self.allowed_uids:
                LOG.warning("Control socket: refused a peer with uid %d", uid)
                response: dict[str, Any] = {"error": "permission denied"}
            else:
                response = await self._answer(reader)
            writer.write(json.dumps(response, default=str).encode() + b"\n")
            await asyncio.wait_for(writer.drain(), _CLIENT_TIMEOUT)
        except (ConnectionError, asyncio.TimeoutError) as exc:
            LOG.debug("Control socket: client went away: %s", exc)
        except Exception:  # noqa: BLE001 - a bad client never harms the relay
            LOG.exception("Control socket: client failed")
        finally:
            writer.close()

    async def _answer(self, reader: asyncio.StreamReader) -> dict[str, Any]:
        try:
            line = await asyncio.wait_for(reader.readline(), _CLIENT_TIMEOUT)
            if not line:
                raise ConnectionResetError("closed without a request")
            request = json.loads(line)
        except (ValueError, asyncio.LimitOverrunError, asyncio.TimeoutError) as exc:
            return {"error": f"bad request: {exc}"}
        if not isinstance(request, dict):
            return {"error": "bad request: not a JSON object"}
        try:
            answer = self._handler(request)
            if inspect.isawaitable(answer):
                answer = await answer
            return answer
        except Exception as exc:  # noqa: BLE001 - reported to the client and logged
            LOG.exception("Control request %r failed", request.get("cmd"))
            return {"error": f"{type(exc).__name__}: {exc}"}


def request(path: str, payload: dict[str, Any], timeout: float = _CLIENT_TIMEOUT) -> dict[str, Any]:
    """Send one request to the relay at ``path`` and return its answer."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    try:
        try:
            sock.connect(path)
        except (FileNotFoundError, ConnectionRefusedError) as exc:
            raise RelayNotRunning(
                f"no iim-relay is running (control socket {path}: {exc.strerror})"
            ) from None
        except OSError as exc:
            raise ControlError(f"cannot reach iim-relay at {path}: {exc.strerror or exc}") from None
        try:
            sock.sendall(json.dumps(payload).encode() + b"\n")
        except (BrokenPipeError, ConnectionResetError):
            pass  # it answered (a refusal) and closed before reading: the answer is queued
        chunks = []
        while True:
            data = sock.recv(65536)
            if not data:
                break
            chunks.append(data)
            if data.endswith(b"\n"):
                break
    except socket.timeout:
        raise ControlError(f"iim-relay at {path} did not answer within {timeout:g}s") from None
    finally:
        sock.close()
    try:
        response = json.loads(b"".join(chunks))
    except ValueError:
        raise ControlError(f"iim-relay at {path} sent an unreadable answer") from None
    if isinstance(response, dict) and "error" in response:
        raise ControlError(f"iim-relay: {response['error']}")
    return response

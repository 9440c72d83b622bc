"""A pty <-> UNIX socket bridge that stands in for QEMU's virtio-serial chardev.

QEMU, given ``-chardev socket,path=SOCK,server=on,wait=off``, listens on SOCK
and copies bytes between the one connected host client and the guest's port.
This bridge does the same with a pty: the guest agent opens the pty's slave
(through a stable symlink, like udev's /dev/virtio-ports/<name>), and the host
relay connects to the socket.  Like a virtio-serial port with no host
connected, bytes written while no client is connected are dropped.

Run: ``python -m devtools.ptybridge --socket DIR/UUID.sock --link PORT``.
"""

from __future__ import annotations

import argparse
import errno
import logging
import os
import selectors
import signal
import socket
import sys
import tty
from typing import Optional

LOG = logging.getLogger(__name__)
READ_SIZE = 65536


class PtyBridge:
    """Copies bytes between a pty master and at most one UNIX-socket client."""

    def __init__(self, socket_path: str, link_path: str) -> None:
        self.socket_path = socket_path
        self.link_path = link_path
        self.master, self._slave = os.openpty()
        tty.setraw(self._slave)  # no echo, no line discipline: a byte pipe
        os.set_blocking(self.master, False)
        self.slave_name = os.ttyname(self._slave)
        if os.path.lexists(link_path):
            os.unlink(link_path)
        os.symlink(self.slave_name, link_path)
        if os.path.exists(socket_path):
            os.unlink(socket_path)
        self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.listener.bind(socket_path)
        self.listener.listen(1)
        self.listener.setblocking(False)
        self.client: Optional[socket.socket] = None
        self.dropped = 0
        self._sel = selectors.DefaultSelector()
        self._sel.register(self.listener, selectors.EVENT_READ, "accept")
        self._sel.register(self.master, selectors.EVENT_READ, "guest")
        self._stop_r, self._stop_w = os.pipe()
        self._sel.register(self._stop_r, selectors.EVENT_READ, "stop")

    def stop(self) -> None:
        os.write(self._stop_w, b"x")

    def serve(self) -> None:
        while True:
            for key, _ in self._sel.select():
                if key.data == "stop":
                    self.close()
                    return
                getattr(self, "_on_" + key.data)()

    def _on_accept(self) -> None:
        conn, _ = self.listener.accept()
        if self.client is not None:
            conn.close()  # QEMU's chardev takes one client at a time
            return
        conn.setblocking(True)
        self.client = conn
        self._sel.register(conn, selectors.EVENT_READ, "host")
        LOG.info("host connected to %s", self.socket_path)

    def _on_guest(self) -> None:
        try:
            data = os.read(self.master, READ_SIZE)
        except OSError as exc:
            if exc.errno in (errno.EAGAIN, errno.EIO):
                return
            raise
        if self.client is None:
            self.dropped += len(data)
            return
        try:
            self.client.sendall(data)
        except OSError:
            self._drop_client()

    def _on_host(self) -> None:
        assert self.client is not None
        try:
            data = self.client.recv(READ_SIZE)
        except OSError:
            data = b""
        if not data:
            self._drop_client()
            return
        try:
            os.write(self.master, data)
        except BlockingIOError:
            pass  # the guest is not reading: drop, as a full virtqueue would

    def _drop_client(self) -> None:
        if self.client is not None:
            self._sel.unregister(self.client)
            self.client.close()
            self.client = None
            LOG.info("host disconnected from %s", self.socket_path)

    def close(self) -> None:
        self._drop_client()
        for path in (self.socket_path, self.link_path):
            try:
                os.unlink(path)
            except FileNotFoundError:
                pass
        self._sel.close()
        self.listener.close()
        for fd in (self.master, self._slave, self._stop_r, self._stop_w):
            os.close(fd)


def main(argv: Optional[list] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--socket", required=True, help="UNIX socket the host relay connects to")
    parser.add_argument("--link", required=True, help="symlink to the pty the agent opens")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="ptybridge: %(message)s")
    bridge = PtyBridge(args.socket, args.link)
    signal.signal(signal.SIGTERM, lambda *_: bridge.stop())
    signal.signal(signal.SIGINT, lambda *_: bridge.stop())
    print(bridge.slave_name, flush=True)
    bridge.serve()
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Endpoint: the fd stays registered between waits, and leaves the loop when nobody waits.

Real socketpairs and a real event loop; the loop's add_reader/remove_reader are
counted, since what is pinned is how often the relay asks epoll to change.
``readable()`` is awaited directly, as the channel's read loop does (wrapped in
wait_for it would run in a task of its own, and the extra loop turn before the
read is one more wake-up without a waiter); pytest-timeout bounds each test.
"""

from __future__ import annotations

import asyncio
import os
import socket

from host_relay.transports import Endpoint


class CountingLoop:
    """Counts add_reader/remove_reader calls on the running loop (real calls go through)."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.adds = self.removes = 0
        add, remove = loop.add_reader, loop.remove_reader

        def add_reader(fd, cb, *args):
            self.adds += 1
            return add(fd, cb, *args)

        def remove_reader(fd):
            self.removes += 1
            return remove(fd)

        loop.add_reader, loop.remove_reader = add_reader, remove_reader  # type: ignore[method-assign]


def pair() -> tuple[Endpoint, socket.socket, socket.socket]:
    ours, guest = socket.socketpair()
    ours.setblocking(False)
    return Endpoint(ours.fileno(), ours), ours, guest


def test_a_steady_reader_registers_its_fd_once() -> None:
    async def main() -> None:
        counts = CountingLoop(asyncio.get_running_loop())
        endpoint, _, guest = pair()
        got = b""
        try:
            for i in range(50):  # 50 heartbeats, each read as soon as it is there
                asyncio.get_running_loop().call_later(0.001, guest.send, b"%02d" % i)
                await endpoint.readable()
                got += endpoint.read(4096)
            assert got == b"".join(b"%02d" % i for i in range(50))
            assert (counts.adds, counts.removes) == (1, 0)
        finally:
            endpoint.close()
            guest.close()
        assert counts.removes == 1  # close() takes the fd out of the loop before closing it

    asyncio.run(main())


def test_unread_data_with_nobody_waiting_unregisters_instead_of_spinning() -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        counts = CountingLoop(loop)
        endpoint, _, guest = pair()
        try:
            guest.send(b"x")
            await endpoint.readable()
            # Held back by a budget: the data stays unread while the channel sleeps.
            # epoll is level-triggered; without the removal the callback would run on
            # every loop turn of the sleep.
            await asyncio.sleep(0.05)
            assert counts.removes == 1
            assert endpoint.read(10) == b"x"  # nothing was lost
            guest.send(b"y")
            await endpoint.readable()  # registered again
            assert counts.adds == 2 and endpoint.read(10) == b"y"
        finally:
            endpoint.close()
            guest.close()

    asyncio.run(main())


def test_a_closed_endpoint_leaves_no_fd_in_the_loop_for_the_next_file() -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        endpoint, ours, guest = pair()
        fd = ours.fileno()
        waiter = asyncio.ensure_future(endpoint.readable())
        await asyncio.sleep(0)
        waiter.cancel()
        endpoint.close()
        # The fd number is free again; whatever gets it next must be watchable.
        r, w = os.pipe()
        try:
            assert not loop.remove_reader(fd)  # nothing left registered under that number
            if r == fd:
                woke = loop.create_future()
                loop.add_reader(r, woke.set_result, None)
                os.write(w, b"z")
                await asyncio.wait_for(woke, 5)
                loop.remove_reader(r)
        finally:
            os.close(r)
            os.close(w)
            guest.close()

    asyncio.run(main())

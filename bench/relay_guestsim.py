"""Many simulated guests in one asyncio process, for bench/relay_scale.py.

For each instance it listens on ``<socket_dir>/<uuid>.sock`` the way QEMU's
virtio-serial chardev does (``server=on,wait=off``, one client at a time),
and once the relay has connected writes a ``hello`` (heartbeat interval 1 s,
one check) and then a ``heartbeat`` every second, at a random phase per
instance.  Both carry the whole state, as the current iim-agent sends them
(interval, boot and start ids, the pause known to be none), so the relay works
through the same level-triggered path as with real guests, not the 0.1.0
compatibility one.  Commands, one per line on stdin; answers on stdout:

    fail UUID     -> "failed UUID T"  a failure frame was written at wall time T
                                      (time.time() right before the write)
    add           -> "added UUID"     a fresh instance (new socket)
    remove UUID   -> "removed UUID"
    stats         -> "stats HEARTBEATS CONNECTED MAX_LAG_MS CPU_S"
    quit          -> exits after removing its sockets

At start it prints "ready N", then one line with every uuid ("uuids U1 U2 ...").
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import sys
import time
import uuid
from pathlib import Path
from typing import Optional

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from iim_protocol.codec import encode  # noqa: E402
from iim_protocol.messages import (  # noqa: E402
    PROTOCOL_VERSION,
    Failure,
    Heartbeat,
    Hello,
    Recovered,
)

CHECK = "app"
INTERVAL = 1.0


class Guest:
    def __init__(self, sim: Simulator, socket_dir: Path, rng: random.Random) -> None:
        self.sim = sim
        self.uuid = str(uuid.uuid4())  # never reused: Masakari refuses duplicates for 180 s
        self.path = socket_dir / f"{self.uuid}.sock"
        self.phase = rng.random() * INTERVAL
        self.server: Optional[asyncio.AbstractServer] = None
        self.writer: Optional[asyncio.StreamWriter] = None
        self.task: Optional[asyncio.Task] = None
        self.seq = 0
        self.state = "ok"
        self.boot_id = self.uuid[:8]
        self.start_id = uuid.uuid4().hex[:8]

    async def listen(self) -> None:
        self.server = await asyncio.start_unix_server(self._client, path=str(self.path),
                                                      backlog=1)

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.writer is not None:  # QEMU's chardev takes one client at a time
            writer.close()
            return
        self.writer = writer
        hello = Hello(protocol_version=PROTOCOL_VERSION, agent_version="guestsim",
                      boot_id=self.boot_id, heartbeat_interval=INTERVAL, checks=(CHECK,),
                      start_id=self.start_id, pause=None, pause_known=True)
        self._write(encode(hello))
        self.task = asyncio.ensure_future(self._heartbeats())
        try:
            while await reader.read(4096):  # the relay sends nothing; notice a close
                pass
        finally:
            if self.task is not None:
                self.task.cancel()
            self.writer = None
            writer.close()

    async def _heartbeats(self) -> None:
        loop = asyncio.get_running_loop()
        due = loop.time() + self.phase
        while True:
            await asyncio.sleep(max(0.0, due - loop.time()))
            self.sim.max_lag = max(self.sim.max_lag, loop.time() - due)
            self.seq += 1
            self._write(encode(Heartbeat(
                seq=self.seq, checks=((CHECK, self.state),), interval=INTERVAL,
                boot_id=self.boot_id, start_id=self.start_id, pause=None, pause_known=True)))
            self.sim.heartbeats += 1
            due += INTERVAL

    def _write(self, frame: bytes) -> float:
        t = time.time()
        if self.writer is not None:
            self.writer.write(frame)
        return t

    def fail(self) -> Optional[float]:
        if self.writer is None:
            return None
        self.seq += 1
        self.state = "failed"
        return self._write(encode(Failure(seq=self.seq, check=CHECK, reason="benchmark")))

    def recover(self) -> None:
        self.seq += 1
        self.state = "ok"
        self._write(encode(Recovered(seq=self.seq, check=CHECK)))

    async def close(self) -> None:
        if self.task is not None:
            self.task.cancel()
        if self.writer is not None:
            self.writer.close()
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass


class Simulator:
    def __init__(self, socket_dir: Path, seed: int) -> None:
        self.socket_dir = socket_dir
        self.rng = random.Random(seed)
        self.guests: dict[str, Guest] = {}
        self.heartbeats = 0
        self.max_lag = 0.0

    async def add(self) -> Guest:
        guest = Guest(self, self.socket_dir, self.rng)
        await guest.listen()
        self.guests[guest.uuid] = guest
        return guest

    async def run(self, n: int) -> None:
        for _ in range(n):
            await self.add()
        out = sys.stdout
        out.write(f"ready {len(self.guests)}\nuuids {' '.join(self.guests)}\n")
        out.flush()
        loop = asyncio.get_running_loop()
        reader = asyncio.StreamReader()
        await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
        try:
            while True:
                line = (await reader.readline()).decode().split()
                if not line or line[0] == "quit":
                    break
                out.write(await self.command(line) + "\n")
                out.flush()
        finally:
            for guest in list(self.guests.values()):
                await guest.close()

    async def command(self, words: list[str]) -> str:
        cmd, args = words[0], words[1:]
        if cmd == "fail":
            t = self.guests[args[0]].fail()
            return f"failed {args[0]} {'none' if t is None else repr(t)}"
        if cmd == "add":
            return f"added {(await self.add()).uuid}"
        if cmd == "remove":
            guest = self.guests.pop(args[0])
            await guest.close()
            return f"removed {args[0]}"
        if cmd == "stats":
            connected = sum(1 for g in self.guests.values() if g.writer is not None)
            cpu = sum(os.times()[:2])
            return f"stats {self.heartbeats} {connected} {self.max_lag * 1000:.1f} {cpu:.2f}"
        return f"error unknown command {cmd!r}"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--socket-dir", required=True, type=Path)
    ap.add_argument("--instances", type=int, default=2000)
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args()
    asyncio.run(Simulator(args.socket_dir, args.seed).run(args.instances))
    return 0


if __name__ == "__main__":
    sys.exit(main())

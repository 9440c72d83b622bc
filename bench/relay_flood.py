"""Hostile guests flooding their channels: a healthy instance's kill -> 202 and the relay's CPU.

One run, side by side: the same relay, masakari-api and kind of healthy
instance (a real ``iim-agent`` behind ``devtools.ptybridge``, watching a copy
of ``sleep``, as bench/relay_kill_to_202.py) measured

1. quiet: no other channel;
2. random: ``--channels`` more channels, each writing random bytes as fast
   as the relay reads them;
3. bombs: as many channels writing valid-CRC frames whose msgpack bodies are
   4096-deep nested arrays and 4 G declared str/bin/array/map lengths.

In each phase ``--kills`` fresh healthy instances (Masakari refuses a
duplicate for 180 s) are armed, then their watched process is killed one at
a time: kill -> 202 = the outbox row's finished_at minus time.time() right
before os.kill.  The relay's CPU (utime+stime of all its threads from
/proc/PID/stat) is measured over the kills of each phase.  The flooding
channels are served by a separate process (``--flood-worker``).

    python bench/relay_flood.py                   # 60 channels, 10 kills per phase
    python bench/relay_flood.py --channels 20 --kills 5

Goal (issue 10): in a flood, kill -> 202 p50 within 2x the quiet p50, and the
relay under 50 % of one core.  Bounded by --max-seconds; reports and exits 0.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import time
import traceback
import uuid
import zlib
from pathlib import Path
from typing import Optional

import relay_common as rc
from relay_kill_to_202 import Instance, prepare

RATIO_TARGET = 2.0
CPU_TARGET = 50.0  # % of one core
MODES = ("random", "bombs")


# -- the flooding guests (a separate process) -------------------------------------


def bomb_frames() -> bytes:
    """Valid-CRC frames (iim_protocol.codec layout) with hostile msgpack bodies."""
    from iim_protocol.codec import FRAME_VERSION, HEADER, MAGIC, MAX_BODY, TRAILER

    bodies = [
        b"\x91" * (MAX_BODY - 1) + b"\xc0",  # 4095 nested one-element arrays
        b"\xdd" + struct.pack(">I", 0xFFFFFFFF) + b"\xc0" * 64,  # array32 of 4 G items
        b"\xdf" + struct.pack(">I", 0xFFFFFFFF) + b"\xc0" * 64,  # map32 of 4 G pairs
        b"\xdb" + struct.pack(">I", 0xFFFFFFFF) + b"x" * 64,  # str32 of 4 G bytes
        b"\xc6" + struct.pack(">I", 0xFFFFFFFF) + b"x" * 64,  # bin32 of 4 G bytes
        b"\x81\xa1t\xdd" + struct.pack(">I", 0xFFFFFFFF),  # {"t": array32 of 4 G}
    ]
    out = []
    for body in bodies:
        header = HEADER.pack(MAGIC, FRAME_VERSION, len(body))
        out.append(header + body + TRAILER.pack(zlib.crc32(header[2:] + body)))
    return b"".join(out)


async def flood_worker(socket_dir: Path, mode: str, uuids: list[str]) -> None:
    payload = os.urandom(1 << 16) if mode == "random" else bomb_frames() * 16
    sent = [0]

    async def client(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                writer.write(payload)
                await writer.drain()  # blocks while the relay is not reading this channel
                sent[0] += len(payload)
        except (ConnectionError, OSError):
            writer.close()

    servers = [await asyncio.start_unix_server(client, path=str(socket_dir / f"{u}.sock"))
               for u in uuids]
    print("listening", flush=True)
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    for s in servers:
        s.close()
    for u in uuids:
        with _suppress():
            os.unlink(socket_dir / f"{u}.sock")
    print(f"sent {sent[0]}", flush=True)


class _suppress:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> bool:
        return exc[0] is not None and issubclass(exc[0], OSError)  # type: ignore[arg-type]


class Flood:
    """``--channels`` flooding guests in a subprocess, until stopped."""

    def __init__(self, socket_dir: Path, mode: str, channels: int, log: Path) -> None:
        self.uuids = [str(uuid.uuid4()) for _ in range(channels)]
        with open(log, "ab") as err:
            self.proc = subprocess.Popen(
                [sys.executable, __file__, "--flood-worker", str(socket_dir), mode, *self.uuids],
                stdout=subprocess.PIPE, stderr=err, text=True, env=rc.env())
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if line.strip() != "listening":
            raise RuntimeError(f"flood worker did not start: {line!r}")

    def stop(self) -> int:
        self.proc.send_signal(signal.SIGTERM)
        try:
            out, _ = self.proc.communicate(timeout=15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            out, _ = self.proc.communicate(timeout=15)
        for line in (out or "").splitlines():
            if line.startswith("sent "):
                return int(line.split()[1])
        return 0


# -- the phases -------------------------------------------------------------------


def connected(relay: rc.RelayProcess, uuids: list[str]) -> int:
    insts = relay.status().get("instances", {})
    return sum(1 for u in uuids
               if ((insts.get(u) or {}).get("channel") or {}).get("state") == "connected")


def kill_phase(relay: rc.RelayProcess, workdir: Path, first: int, args: argparse.Namespace,
               rng: random.Random) -> dict:
    """Arm ``--kills`` fresh instances, kill their process one by one; CPU over the kills."""
    pool = [Instance(workdir, relay.socket_dir, first + k) for k in range(args.kills)]
    out: dict = {"ms": [], "misses": 0, "not_armed": 0}
    try:
        ready = prepare(relay, pool, args.arm_timeout)
        out["not_armed"] = len(pool) - len(ready)
        cpu0, t0 = rc.cpu_seconds(relay.pid), time.monotonic()
        for inst in ready:
            time.sleep(args.gap + rng.random())
            assert inst.victim is not None
            start = time.time()
            os.kill(inst.victim.pid, signal.SIGKILL)
            row = relay.wait_finished(inst.uuid, args.kill_timeout)
            if row is None or row["state"] != "delivered":
                out["misses"] += 1
                continue
            out["ms"].append((row["finished_at"] - start) * 1000)
        span = time.monotonic() - t0
        out["cpu"] = 100.0 * (rc.cpu_seconds(relay.pid) - cpu0) / span if span > 0 else 0.0
        out["load"] = rc.load()
    finally:
        for inst in pool:
            inst.stop()
    return out


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == "--flood-worker":
        asyncio.run(flood_worker(Path(sys.argv[2]), sys.argv[3], sys.argv[4:]))
        return 0
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--channels", type=int, default=60, help="flooding channels (default 60)")
    ap.add_argument("--kills", type=int, default=10, help="kills per phase (default 10)")
    ap.add_argument("--modes", default=",".join(MODES),
                    help=f"flood phases, comma-separated (default {','.join(MODES)})")
    ap.add_argument("--settle", type=float, default=3.0,
                    help="seconds of flood before the phase's instances start (default 3)")
    ap.add_argument("--gap", type=float, default=0.3,
                    help="quiet time before each kill, s; a random 0-1 s is added (default 0.3)")
    ap.add_argument("--kill-timeout", type=float, default=10.0)
    ap.add_argument("--arm-timeout", type=float, default=60.0)
    ap.add_argument("--max-seconds", type=float, default=900.0)
    ap.add_argument("--open-channels", action="store_true",
                    help="per-channel byte and frame budgets at their maxima (16 MiB/s, "
                         "10,000 frames/s): only [channels] decode_budget holds the flood")
    ap.add_argument("--decode-budget", type=float, default=None,
                    help="[channels] decode_budget for the relay (default: the option's)")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--keep", action="store_true", help="keep the work directory")
    ap.add_argument("--profile", type=Path, default=None,
                    help="write a cProfile of the relay to this file")
    args = ap.parse_args()
    modes = [m for m in args.modes.split(",") if m]
    unknown = set(modes) - set(MODES)
    if unknown:
        ap.error(f"unknown modes: {', '.join(sorted(unknown))} (known: {', '.join(MODES)})")
    rc.bound_run(args.max_seconds)
    rng = random.Random(args.seed)
    workdir = Path(tempfile.mkdtemp(prefix="iimbench-flood-"))
    server = relay = None
    flood: Optional[Flood] = None
    results: dict[str, dict] = {}
    extra: dict[str, dict] = {}
    aborted = ""
    channels: dict = {}
    started = time.monotonic()
    info = rc.machine() + [("load average at start (1/5/15)", rc.load())]
    try:
        server = rc.start_masakari(workdir / "masakari")
        if args.open_channels:
            channels.update(max_bytes_per_second=16 * 1024 * 1024, max_frames_per_second=10000)
        if args.decode_budget is not None:
            channels["decode_budget"] = args.decode_budget
        relay = rc.RelayProcess(workdir / "relay", server.url, detector={"min_uptime": 2},
                                channels=channels, profile=args.profile)
        relay.start()
        info.append(("relay pid", str(relay.pid)))
        results["quiet"] = kill_phase(relay, workdir, 0, args, rng)
        for n, mode in enumerate(modes, start=1):
            flood = Flood(relay.socket_dir, mode, args.channels, workdir / f"flood-{mode}.log")
            rc.wait_for(f"the relay to connect to the {mode} channels",
                        lambda f=flood: connected(relay, f.uuids) >= len(f.uuids), 60, 0.5)
            time.sleep(args.settle)
            results[mode] = kill_phase(relay, workdir, n * 1000, args, rng)
            insts = relay.status().get("instances", {})
            extra[mode] = {
                "throttled": sum(sum(v for k, v in ((insts.get(u) or {}).get("throttle") or {})
                                     .items() if k in ("bytes", "frames", "cpu"))
                                 for u in flood.uuids),
                "decode_cpu": sum(((insts.get(u) or {}).get("throttle") or {})
                                  .get("cpu_seconds", 0.0) for u in flood.uuids),
                "read": sum(((insts.get(u) or {}).get("decoder") or {}).get("bytes_received", 0)
                            for u in flood.uuids),
                "rejected": sum(((insts.get(u) or {}).get("decoder") or {})
                                .get("frames_rejected", 0) for u in flood.uuids),
            }
            extra[mode]["sent"] = flood.stop()
            flood = None
    except (rc.BenchTimeout, KeyboardInterrupt, TimeoutError) as exc:
        aborted = f"{type(exc).__name__}: {exc}"
    except Exception:  # noqa: BLE001 - report what was measured, then the error
        aborted = traceback.format_exc()
    finally:
        signal.alarm(0)
        if flood is not None:
            flood.stop()
        if relay is not None:
            relay.stop()
        if server is not None:
            server.stop()
        info.append(("load average at end (1/5/15)", rc.load()))

    print("iim-relay: a healthy instance's kill -> 202 while other channels flood")
    rc.print_info(info + [
        ("masakari", "notification_delay_max = 0 (default 5 adds 0-5 s)"),
        ("flooding channels / kills per phase", f"{args.channels} / {args.kills}"),
        ("relay [channels] options", ", ".join(f"{k} = {v}" for k, v in channels.items())
         or "defaults"),
        ("run time (s)", f"{time.monotonic() - started:.0f}"),
    ])
    quiet = rc.percentile(sorted((results.get("quiet") or {}).get("ms", [])), 50)
    for phase, res in results.items():
        rows = [
            ("n (202 recorded)", float(len(res["ms"])), ".0f", "", None),
            ("misses (no 202 in time)", float(res["misses"]), ".0f", "0", res["misses"] == 0),
            ("not armed in time (skipped)", float(res["not_armed"]), ".0f", "0",
             res["not_armed"] == 0),
            *rc.latency_rows("kill->202", res["ms"]),
        ]
        if "cpu" in res:
            target = None if phase == "quiet" else res["cpu"] < CPU_TARGET
            rows.append(("relay CPU (% of one core)", res["cpu"], ".1f",
                         "" if phase == "quiet" else f"< {CPU_TARGET:g}", target))
        if phase != "quiet" and res["ms"]:
            ratio = rc.percentile(sorted(res["ms"]), 50) / quiet
            rows.append(("p50 / quiet p50", ratio, ".2f", f"<= {RATIO_TARGET:g}",
                         ratio <= RATIO_TARGET))
        if phase in extra:
            e = extra[phase]
            rows += [
                ("flood MB taken by the kernel", e["sent"] / 1e6, ".1f", "", None),
                ("flood MB read by the relay", e["read"] / 1e6, ".1f", "", None),
                ("flood frames rejected", float(e["rejected"]), ".0f", "", None),
                ("flood decode CPU (s, measured)", e["decode_cpu"], ".2f", "", None),
                ("flood channel pauses", float(e["throttled"]), ".0f", "", None),
            ]
        rc.print_figures(rows, f"{phase} (load 1/5/15 after: {res.get('load', '?')})")
    print(rc.DELAY_NOTE)
    if aborted:
        print(f"run stopped early: {aborted}")
    if args.keep or aborted:
        print(f"work directory kept: {workdir}")
    else:
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

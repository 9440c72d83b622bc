"""atheris (libFuzzer) entry point for the decoder -> detector fuzz target.

Run by tests/host_relay/test_fuzz_decoder_detector.py (the ``reliability``
marker) as ``python -m tests.host_relay.fuzz_atheris CORPUS -max_total_time=N``;
libFuzzer prints executions and coverage (``cov:`` edges, ``ft:`` features) and
writes any crashing input next to ``-artifact_prefix``.  ``--replay CORPUS``
runs the corpus once without instrumentation, for coverage.py's line coverage.
"""

from __future__ import annotations

import os
import sys

import atheris

REPLAY = len(sys.argv) > 1 and sys.argv[1] == "--replay"
if REPLAY:  # plain imports: coverage.py measures lines
    from tests.host_relay import fuzz_target
else:
    with atheris.instrument_imports(include=["iim_protocol", "host_relay"]):
        from tests.host_relay import fuzz_target


def ops_from(data: bytes) -> list[tuple[str, object]]:
    fdp = atheris.FuzzedDataProvider(data)
    ops: list[tuple[str, object]] = []
    while fdp.remaining_bytes() and len(ops) < 64:
        kind = fdp.ConsumeIntInRange(0, 7)
        if kind <= 2:
            ops.append(("feed", fdp.ConsumeBytes(fdp.ConsumeIntInRange(1, 2048))))
        elif kind == 3:
            base = fuzz_target.FRAMES[fdp.ConsumeIntInRange(0, len(fuzz_target.FRAMES) - 1)]
            body = bytearray(base[5:-4])
            for _ in range(fdp.ConsumeIntInRange(0, 4)):
                if body:
                    body[fdp.ConsumeIntInRange(0, len(body) - 1)] = fdp.ConsumeIntInRange(0, 255)
            if fdp.ConsumeBool():  # a good CRC around it: the body reaches msgpack
                ops.append(("feed", fuzz_target.frame(bytes(body))))
            else:  # the old CRC: the decoder must resynchronise
                raw = base[:5] + bytes(body) + base[-4:]
                ops.append(("feed", raw[:fdp.ConsumeIntInRange(0, len(raw))]))
        elif kind == 4:
            ops.append(("feed", fuzz_target.BOMBS[
                fdp.ConsumeIntInRange(0, len(fuzz_target.BOMBS) - 1)]))
        elif kind == 5:
            ops.append(("feed", fuzz_target.FRAMES[
                fdp.ConsumeIntInRange(0, len(fuzz_target.FRAMES) - 1)]))
        elif kind == 6:
            ops.append(("advance", fdp.ConsumeIntInRange(0, 3000) / 100.0))
        else:
            ops.append(("close" if fdp.ConsumeBool() else "connect", None))
    return ops


def test_one_input(data: bytes) -> None:
    fuzz_target.run_ops(ops_from(data))


def replay(corpus: str) -> int:
    """Run every input of ``corpus`` once (for coverage.py); returns how many."""
    names = sorted(os.listdir(corpus))
    for name in names:
        with open(os.path.join(corpus, name), "rb") as f:
            test_one_input(f.read())
    return len(names)


def main() -> None:
    if REPLAY:
        print(f"replayed {replay(sys.argv[2])} inputs")
        return
    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()

"""Evidence files: PPM to PNG, console tails, and the store's bounds (no libvirt here)."""

from __future__ import annotations

import os
import struct
import zlib

from host_relay.evidence import EvidenceStore, ppm_to_png, read_tail, tail_lines


def test_ppm_becomes_a_png_with_the_same_pixels():
    pixels = bytes(range(2 * 3 * 3))
    png = ppm_to_png(b"P6\n# a comment\n3 2\n255\n" + pixels)
    assert png.startswith(b"\x89PNG\r\n\x1a\n")
    width, height = struct.unpack(">II", png[16:24])
    assert (width, height) == (3, 2)
    idat_len = struct.unpack(">I", png[33:37])[0]
    raw = zlib.decompress(png[41:41 + idat_len])
    assert raw == b"\x00" + pixels[:9] + b"\x00" + pixels[9:]
    for bad in (b"P5\n3 2\n255\n" + pixels, b"P6\n3 2\n65535\n" + pixels, b"P6\n3 2\n255\n"):
        try:
            ppm_to_png(bad)
        except ValueError:
            continue
        raise AssertionError(f"{bad[:12]!r} accepted")


def test_console_tail_reads_a_bounded_end(tmp_path):
    assert tail_lines(b"a\nb\nc\n", 2) == b"b\nc\n"
    assert tail_lines(b"a\nb\nc", 1) == b"c\n"
    log = tmp_path / "console.log"
    log.write_bytes(b"".join(b"line %d\n" % i for i in range(100000)))
    tail = read_tail(str(log), 3, max_bytes=4096)
    assert tail == b"line 99997\nline 99998\nline 99999\n"
    many = read_tail(str(log), 10000, max_bytes=4096)
    assert len(many) <= 4096 and many.startswith(b"line ") and many.endswith(b"line 99999\n")


def test_store_keeps_count_per_instance_and_total_size(tmp_path):
    store = EvidenceStore(str(tmp_path / "evidence"), max_per_instance=2, max_total_bytes=5000)
    paths = [store.save("u1", 1000.0 + i, {"screen.png": b"x" * 1000}, []).path
             for i in range(4)]
    assert [os.path.basename(p) for p in store.list("u1")] == [
        os.path.basename(p) for p in paths[2:]]
    assert os.path.basename(paths[0]) == "19700101T001640.000Z"
    saved = store.save("u2", 2000.0, {"screen.png": b"y" * 1000}, ["no console log: none"])
    note = open(os.path.join(saved.path, "evidence.txt")).read()
    assert "missing: no console log: none" in note and "screen.png: 1000 bytes" in note
    # 3 directories of ~1.1 kB fit in 5000 bytes; a big one pushes out the oldest.
    store.save("u2", 3000.0, {"screen.png": b"z" * 2500}, [])
    remaining = store.list("u1") + store.list("u2")
    total = sum(os.path.getsize(os.path.join(d, f)) for d in remaining for f in os.listdir(d))
    assert total <= 5000
    assert store.list("u2")[-1].endswith("19700101T005000.000Z")
    assert len(store.list("u1")) < 2  # the oldest (u1's) went first
    off = EvidenceStore(str(tmp_path / "off"), max_per_instance=0, max_total_bytes=5000)
    assert off.save("u1", 1.0, {"screen.png": b"x"}, []).path is None
    assert not os.path.exists(tmp_path / "off")


def test_store_that_cannot_write_says_so_and_raises_nothing(tmp_path):
    blocker = tmp_path / "evidence"
    blocker.write_text("a file where the directory should be")
    got = EvidenceStore(str(blocker), 2, 5000).save("u1", 1.0, {"screen.png": b"x"}, [])
    assert got.path is None and "could not write evidence" in got.problems[-1]

"""docs/protocol.md's table of rejection reasons is the codec's set of reasons.

The reasons are read from the code of iim_protocol itself (its ``REJECT_*``
constants and every ``InvalidMessage(reason, ...)`` it raises), not from a
list kept here, and compared with the table both ways.  The table's "Bytes"
column follows from where the decoder rejects: a reason counted while
decoding a frame's body (``Decoder._decode_body``, the ``InvalidMessage``
reasons included) had a good frame boundary, so its bytes are consumed;
every other reason is found while looking for a frame, and its bytes are
skipped.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import iim_protocol
from iim_protocol import codec
from iim_protocol.codec import Decoder
from tests.protocol.samples import GOOD_FRAME, frame_body, frame_obj

DOC = Path(__file__).resolve().parents[2] / "docs" / "protocol.md"
PACKAGE = Path(iim_protocol.__file__).parent


def _constants(tree: ast.Module) -> dict[str, str]:
    """Module-level ``NAME = "text"`` assignments."""
    found = {}
    for node in tree.body:
        if (isinstance(node, ast.Assign) and isinstance(node.value, ast.Constant)
                and isinstance(node.value.value, str)):
            for target in node.targets:
                if isinstance(target, ast.Name):
                    found[target.id] = node.value.value
    return found


def _trees() -> dict[str, ast.Module]:
    return {p.name: ast.parse(p.read_text(encoding="utf-8")) for p in PACKAGE.glob("*.py")}


def invalid_message_reasons() -> set[str]:
    """The first argument of every ``InvalidMessage(...)`` raised in iim_protocol."""
    reasons = set()
    for tree in _trees().values():
        constants = _constants(tree)
        for node in ast.walk(tree):
            if (isinstance(node, ast.Call) and isinstance(node.func, ast.Name)
                    and node.func.id == "InvalidMessage" and node.args):
                arg = node.args[0]
                if isinstance(arg, ast.Constant):
                    reasons.add(arg.value)
                else:
                    assert isinstance(arg, ast.Name), ast.dump(arg)
                    reasons.add(constants[arg.id])
    return reasons


def reject_constants() -> dict[str, str]:
    return {k: v for k, v in vars(codec).items() if k.startswith("REJECT_")}


def body_rejects() -> set[str]:
    """REJECT_* constants the decoder counts in ``_decode_body``."""
    tree = _trees()["codec.py"]
    (method,) = [n for n in ast.walk(tree)
                 if isinstance(n, ast.FunctionDef) and n.name == "_decode_body"]
    names = {n.id for n in ast.walk(method) if isinstance(n, ast.Name)}
    return {v for k, v in reject_constants().items() if k in names}


def documented() -> dict[str, str]:
    """{reason: bytes column} of the table under the "| Reason |" header."""
    lines = DOC.read_text(encoding="utf-8").splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("| Reason |"))
    rows = {}
    for line in lines[start + 2:]:
        if not line.startswith("|"):
            break
        cells = [c.strip() for c in line.strip("|").split("|")]
        m = re.fullmatch(r"`(\w+)`", cells[0])
        assert m, f"docs/protocol.md: reason cell {cells[0]!r} is not `a_reason`"
        assert m.group(1) not in rows, f"docs/protocol.md: {m.group(1)} twice"
        rows[m.group(1)] = cells[-1]
    return rows


def test_the_table_lists_exactly_the_codecs_reasons() -> None:
    code = set(reject_constants().values()) | invalid_message_reasons()
    table = set(documented())
    assert not code - table, f"docs/protocol.md does not document {sorted(code - table)}"
    assert not table - code, f"docs/protocol.md documents reasons the codec never gives: " \
        f"{sorted(table - code)}"


def test_the_bytes_column_follows_where_the_decoder_rejects() -> None:
    consumed = body_rejects() | invalid_message_reasons()
    assert consumed and consumed != set(documented())  # both kinds exist
    for reason, column in documented().items():
        want = "consumed" if reason in consumed else "skipped"
        assert column == want, f"docs/protocol.md: `{reason}` bytes are {want}, not {column}"


def test_the_derivation_agrees_with_the_decoder_on_samples() -> None:
    """One reason of each kind, fed to a real decoder: the sets above mean what they say."""
    # A frame whose body is not msgpack: bad_body, consumed (nothing skipped).
    d = Decoder()
    assert d.feed(frame_body(b"\xc1") + GOOD_FRAME)
    assert dict(d.stats.rejected) == {codec.REJECT_BAD_BODY: 1}
    assert d.stats.bytes_skipped == 0 and codec.REJECT_BAD_BODY in body_rejects()
    # A body that is a map without a type: an InvalidMessage reason, consumed.
    d = Decoder()
    assert d.feed(frame_obj({"seq": 1}) + GOOD_FRAME)
    ((reason, count),) = d.stats.rejected.items()
    assert count == 1 and reason in invalid_message_reasons() and d.stats.bytes_skipped == 0
    # A bad CRC: skipped.
    bad = bytearray(GOOD_FRAME)
    bad[-1] ^= 0xFF
    d = Decoder()
    assert d.feed(bytes(bad) + GOOD_FRAME)
    assert dict(d.stats.rejected) == {codec.REJECT_BAD_CRC: 1}
    assert d.stats.bytes_skipped == len(bad) and codec.REJECT_BAD_CRC not in body_rejects()

"""The Markdown docs: every table is well formed, and no doc names a path of the machine it was
written on (a checkout, a home directory, the reference notes the project was built from)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DOCS = sorted([ROOT / "README.md", *(ROOT / "docs").glob("*.md")])

# Paths that exist only where a doc was written: home and work directories, pytest's temporary
# directories, the notes under shared/ that users do not have, and this checkout itself.
LOCAL_PATH = re.compile(
    r"(?<![\w.~-])/(?:work|root|home|Users)/[\w.-]+"
    r"|/tmp/pytest-of-[\w-]+"
    r"|\bshared/reference\b"
    r"|\.pyenv/versions/"
)


def _cells(line: str) -> list[str]:
    """A table row's cells; a | inside a code span or escaped as \\| does not split."""
    text = re.sub(r"`[^`]*`", "CODE", line.strip()).replace("\\|", "PIPE")
    if text.startswith("|"):
        text = text[1:]
    if text.endswith("|"):
        text = text[:-1]
    return text.split("|")


def tables(text: str) -> list[tuple[int, list[str]]]:
    """(first line number, lines) of every pipe table outside fenced code blocks."""
    found: list[tuple[int, list[str]]] = []
    fenced = False
    current: list[str] = []
    start = 0
    for number, line in enumerate(text.splitlines() + [""], 1):
        if line.lstrip().startswith("```"):
            fenced = not fenced
        is_row = not fenced and line.lstrip().startswith("|")
        if is_row:
            if not current:
                start = number
            current.append(line)
        elif current:
            found.append((start, current))
            current = []
    return found


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.name)
def test_every_table_row_has_the_header_s_column_count(doc) -> None:
    problems = []
    for start, lines in tables(doc.read_text()):
        header = len(_cells(lines[0]))
        if len(lines) < 2 or not re.fullmatch(r"\|?\s*:?-+:?\s*(\|\s*:?-+:?\s*)*\|?",
                                               lines[1].strip()):
            problems.append(f"{doc.name}:{start}: no |---| line under the header")
            continue
        for offset, line in enumerate(lines[1:], 1):
            if len(_cells(line)) != header:
                problems.append(f"{doc.name}:{start + offset}: {len(_cells(line))} cells under "
                                f"a {header}-column header")
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.name)
def test_no_doc_names_a_path_of_the_build_machine(doc) -> None:
    text = doc.read_text()
    found = [f"{doc.name}:{text.count(chr(10), 0, m.start()) + 1}: {m.group(0)}"
             for m in LOCAL_PATH.finditer(text)]
    if str(ROOT) in text:
        found.append(f"{doc.name}: names this checkout, {ROOT}")
    assert not found, "\n".join(found)


def test_the_checks_catch_what_they_are_for() -> None:
    bad_table = "| a | b |\n|---|---|\n| 1 | 2 | 3 |\n"
    (_, lines), = tables(bad_table)
    assert [len(_cells(line)) for line in lines] == [2, 2, 3]
    assert len(_cells("| `x | y` | b \\| c |")) == 2
    assert tables("```\n| a |\n```\n") == []
    for path in ("/work/main/.venv/bin/python", "/root/.cache/iim", "/home/ci/iim",
                 "/tmp/pytest-of-root/pytest-3/x", "see shared/reference/anchors.md"):
        assert LOCAL_PATH.search(path), path
    for path in ("/var/lib/iim", "/etc/iim/relay.conf", "~/.cache/iim/vm", "/usr/share/doc",
                 "https://opendev.org/openstack/masakari-monitors/src/branch/master/x.py"):
        assert not LOCAL_PATH.search(path), path

"""Every command's --help reads like a man page: what it does, its options, an example."""

from __future__ import annotations

import re

import click
import pytest
from click.testing import CliRunner

from guest_agent.cli import main as agent_cli

pytest.importorskip("oslo_config")  # iim-relay's side
from host_relay.cli import cli as relay_cli  # noqa: E402

ROOTS = {"iim-agent": agent_cli, "iim-relay": relay_cli}
AUTOMATIC = {"help", "version"}  # click's own options, with click's own help


def _commands():
    def walk(path, cmd):
        yield path, cmd
        if isinstance(cmd, click.Group):
            for name, sub in sorted(cmd.commands.items()):
                yield from walk((*path, name), sub)

    for name, root in ROOTS.items():
        yield from walk((name,), root)


COMMANDS = list(_commands())


def _help(path) -> str:
    result = CliRunner().invoke(ROOTS[path[0]], [*path[1:], "--help"],
                                prog_name=path[0], terminal_width=100)
    assert result.exit_code == 0, result.output
    return result.output


def test_every_cli_has_its_commands():
    names = {" ".join(p) for p, _ in COMMANDS}
    assert {"iim-agent run", "iim-agent check-config", "iim-agent status", "iim-agent pause",
            "iim-agent resume", "iim-relay run", "iim-relay status"} <= names


@pytest.mark.parametrize(("path", "cmd"), COMMANDS, ids=[" ".join(p) for p, _ in COMMANDS])
def test_help_is_a_man_page(path, cmd):
    text = _help(path)
    # What it does: a one-line summary and at least one paragraph more.
    paragraphs = [p for p in (cmd.help or "").split("\n\n") if p.strip()]
    assert len(paragraphs) >= 3, f"{' '.join(path)}: summary, description, example"
    summary = paragraphs[0].strip()
    assert summary.endswith(".") and "\n" not in summary, summary
    # Its options, each explained.
    for param in cmd.params:
        if isinstance(param, click.Option) and param.name not in AUTOMATIC:
            assert param.help and param.help.strip(), f"{' '.join(path)} {param.opts}: no help"
            for opt in param.opts:
                assert opt in text, f"{opt} missing from {' '.join(path)} --help"
    # An example that runs this very command.
    match = re.search(r"^  Examples?\b.*:\n((?:    .*\n|\n)+)", text, re.M)
    assert match, f"{' '.join(path)} --help has no Example section:\n{text}"
    assert " ".join(path) in match.group(1) or len(path) == 1, match.group(1)
    # Leaf commands say what their exit status means (scripts and systemd read it).
    if not isinstance(cmd, click.Group):
        assert re.search(r"\bExit(s| status)\b", text), f"{' '.join(path)}: no exit status"

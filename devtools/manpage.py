"""Render the man pages of iim-agent and iim-relay from their click commands.

The pages say exactly what ``--help`` says (the command tree, each command's
help and options), so they cannot drift from the code:
tests/docs/test_manpages.py fails when the committed pages under packaging/man/
differ from what this renders; run scripts/gen-man after changing a command.

    python -m devtools.manpage iim-relay          # print one page
    python -m devtools.manpage --write            # write packaging/man/*.8
"""

from __future__ import annotations

import argparse
import inspect
import sys
from pathlib import Path

import click

import iim_protocol

ROOT = Path(__file__).resolve().parent.parent
MAN_DIR = ROOT / "packaging" / "man"
SECTION = "8"  # system administration commands and daemons

SUMMARY = {
    "iim-agent": "watch processes inside an instance and report them to iim-relay",
    "iim-relay": "report failed OpenStack instances to Masakari from the compute host",
}
FILES = {
    "iim-agent": [
        ("/etc/iim/agent.yaml", "The configuration file."),
        ("/dev/virtio-ports/org.openstack.iim.0",
         "The virtio-serial port to the host (or a serial tty named by port:)."),
    ],
    "iim-relay": [
        ("/etc/iim/relay.conf", "The configuration file (oslo.config INI)."),
        ("/var/lib/iim", "The durable outbox, the control socket and channels/."),
    ],
}
SEE_ALSO = {
    "iim-agent": ["iim-relay(8)", "systemctl(1)"],
    "iim-relay": ["iim-agent(8)", "virsh(1)", "systemctl(1)"],
}


def _commands():
    from guest_agent.cli import main as agent
    from host_relay.cli import cli as relay

    return {"iim-agent": agent, "iim-relay": relay}


def roff(text: str) -> str:
    """Text for a roff line: backslashes, minus signs and leading control characters escaped."""
    text = text.replace("\\", "\\e").replace("-", "\\-")
    if text.startswith((".", "'")):
        text = "\\&" + text
    return text


def _paragraphs(help_text: str) -> list[str]:
    """click's help as roff: wrapped paragraphs, and ``\\b`` blocks kept as they are."""
    out: list[str] = []
    for block in inspect.cleandoc(help_text).split("\n\n"):
        lines = block.split("\n")
        if lines[0].strip() == "\b":
            out += [".PP", ".nf"] + [roff(line) for line in lines[1:]] + [".fi"]
        else:
            out += [".PP", roff(" ".join(line.strip() for line in lines))]
    return out


def _options(cmd: click.Command, ctx: click.Context) -> list[str]:
    out: list[str] = []
    for param in cmd.get_params(ctx):
        record = param.get_help_record(ctx)
        if record is None or isinstance(param, click.Argument):  # arguments: in the usage
            continue
        names, text = record
        out += [".TP", f"\\fB{roff(names)}\\fR", roff(text)]
    return out


def render(prog: str, root: click.Command | None = None) -> str:
    """The man page of ``prog`` as roff source."""
    root = root or _commands()[prog]
    version = iim_protocol.__version__
    ctx = click.Context(root, info_name=prog, **root.context_settings)
    lines = [
        f'.\\" {prog}({SECTION}): generated from the click help by devtools/manpage.py;'
        " do not edit",
        f'.TH {prog.upper()} {SECTION} "" "iim {version}" "System Administration"',
        ".SH NAME",
        f"{roff(prog)} \\- {roff(SUMMARY[prog])}",
        ".SH SYNOPSIS",
        f"\\fB{roff(prog)}\\fR [\\fIOPTIONS\\fR] \\fICOMMAND\\fR [\\fIARGS\\fR]...",
        ".SH DESCRIPTION",
        *_paragraphs(root.help or ""),
        ".SH OPTIONS",
        *_options(root, ctx),
    ]
    if isinstance(root, click.Group):
        lines.append(".SH COMMANDS")
        for name, cmd in sorted(root.commands.items()):
            sub = click.Context(cmd, info_name=name, parent=ctx)
            usage = " ".join(cmd.collect_usage_pieces(sub))
            lines += [".SS " + roff(f"{prog} {name} {usage}".strip()),
                      *_paragraphs(cmd.help or ""), *_options(cmd, sub)]
    lines.append(".SH FILES")
    for path, text in FILES[prog]:
        lines += [".TP", f"\\fI{roff(path)}\\fR", roff(text)]
    lines += [".SH SEE ALSO", ", ".join(
        f"\\fB{roff(ref.split('(')[0])}\\fR({ref.split('(')[1]}" for ref in SEE_ALSO[prog])]
    return "\n".join(lines) + "\n"


def path_of(prog: str) -> Path:
    return MAN_DIR / f"{prog}.{SECTION}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("prog", nargs="?", choices=sorted(SUMMARY))
    parser.add_argument("--write", action="store_true", help="write packaging/man/*.8")
    args = parser.parse_args(argv)
    if args.write:
        MAN_DIR.mkdir(exist_ok=True)
        for prog in sorted(SUMMARY):
            path_of(prog).write_text(render(prog))
            print(f"wrote {path_of(prog).relative_to(ROOT)}", file=sys.stderr)
        return 0
    if not args.prog:
        parser.error("name a program, or --write")
    sys.stdout.write(render(args.prog))
    return 0


if __name__ == "__main__":
    sys.exit(main())

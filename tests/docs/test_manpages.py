"""The man pages in packaging/man/ are the click help of today's commands, and render cleanly."""

from __future__ import annotations

import os
import re
import shutil
import subprocess

import pytest

pytest.importorskip("oslo_config")  # iim-relay's side
from devtools import manpage  # noqa: E402

PROGS = ("iim-agent", "iim-relay")


@pytest.mark.parametrize("prog", PROGS)
def test_committed_page_matches_the_cli(prog) -> None:
    committed = manpage.path_of(prog).read_text()
    assert committed == manpage.render(prog), (
        f"packaging/man/{prog}.8 is out of date: run scripts/gen-man")


@pytest.mark.parametrize("prog", PROGS)
def test_page_names_every_command_and_option(prog) -> None:
    root = manpage._commands()[prog]
    page = manpage.render(prog)
    for name, cmd in root.commands.items():
        assert f".SS {prog} {name}".replace("-", "\\-") in page
        for param in cmd.params:
            for opt in getattr(param, "opts", []):
                if param.param_type_name == "option":
                    assert opt.replace("-", "\\-") in page, (name, opt)


@pytest.mark.parametrize("prog", PROGS)
def test_page_renders_without_groff_warnings(prog) -> None:
    if shutil.which("man") is None:
        pytest.skip("man is not installed")
    env = dict(os.environ, MANWIDTH="80", LC_ALL="C.UTF-8")
    result = subprocess.run(["man", "--warnings", "-E", "UTF-8", "-l",
                             str(manpage.path_of(prog))],
                            capture_output=True, text=True, timeout=60, env=env)
    assert result.returncode == 0 and result.stderr == "", result.stderr
    text = re.sub(r".\x08", "", result.stdout)
    assert "Exit status" in text and "SEE ALSO" in text


def test_roff_escapes_what_roff_would_eat() -> None:
    assert manpage.roff(".hidden") == "\\&.hidden"
    assert manpage.roff("'quoted") == "\\&'quoted"
    assert manpage.roff("a\\b --x") == "a\\eb \\-\\-x"

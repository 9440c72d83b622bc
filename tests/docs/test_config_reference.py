"""docs/config-reference.md is generated from the options and must stay in step with them."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("oslo_config")  # the relay's side: not on the guest's Python 3.9 venv

from devtools import config_doc  # noqa: E402
from guest_agent import config as agent_config  # noqa: E402
from guest_agent.durations import format_duration  # noqa: E402
from host_relay.conf.opts import list_opts  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
REFERENCE = ROOT / "docs" / "config-reference.md"


def _rows(text: str) -> dict[str, list[str]]:
    """{section heading: [first cell of every table row]} of the reference."""
    out: dict[str, list[str]] = {}
    section = ""
    for line in text.splitlines():
        if line.startswith("#"):
            section = line.lstrip("#").strip()
            out.setdefault(section, [])
        elif line.startswith("| `"):
            out[section].append(line.split("|")[1].strip().strip("`"))
    return out


def test_committed_reference_matches_the_options():
    assert REFERENCE.read_text() == config_doc.render(), (
        "docs/config-reference.md is out of date: run scripts/gen-config-doc "
        "(scripts/gen-config runs it too) and commit the result"
    )


def test_every_relay_option_has_a_row_in_its_group():
    rows = _rows(config_doc.render())
    for group, opts in list_opts():
        name = group if isinstance(group, str) else group.name
        documented = rows[f"[{name}]"]
        assert [o.dest for o in opts] == documented, name


def test_bounds_and_defaults_come_from_the_options():
    text = config_doc.render()
    # [detector] missed_heartbeats: IntOpt(default=10, min=2, max=100)
    assert re.search(r"^\| `missed_heartbeats` \| integer \| `10` \| 2 to 100 \|", text, re.M)
    # A per-host default is shown as its sample_default, never this machine's name.
    assert "| `host` | string | `<current hostname>` |" in text


def test_every_agent_key_with_its_real_default_and_limits():
    rows = _rows(config_doc.render())
    agent = rows["iim-agent (`/etc/iim/agent.yaml`)"]
    assert agent == list(agent_config.TOP_KEYS) + list(agent_config.CHECK_KEYS)
    defaults = agent_config.AgentConfig()
    text = config_doc.render()
    assert f"| `heartbeat_interval` | `{format_duration(defaults.heartbeat_interval)}` |" in text
    assert f"| `port` | `{defaults.port}` |" in text
    assert f"| `control_socket` | `{defaults.control_socket}` |" in text
    grace = f"0 to {format_duration(agent_config.MAX_GRACE)}"
    assert f"| `grace` | `{format_duration(agent_config.DEFAULT_GRACE)}` | {grace} |" in text


def test_a_new_agent_key_without_a_description_fails_the_generator(monkeypatch):
    monkeypatch.setattr(agent_config, "TOP_KEYS", (*agent_config.TOP_KEYS, "log_level"))
    with pytest.raises(SystemExit, match="undocumented.*log_level"):
        config_doc.render()


def test_generator_script_writes_what_the_module_renders(tmp_path):
    out = tmp_path / "ref.md"
    subprocess.run([sys.executable, "-m", "devtools.config_doc", "-o", str(out)],
                   cwd=ROOT, check=True, timeout=60)
    assert out.read_text() == config_doc.render()

"""The cloud-config examples in packaging/cloud-init/ stay valid and install a working agent.

Each example is checked with the real tools: `cloud-init schema` (Debian's
cloud-init, see scripts/apt-packages), cloud-init's own schema for unknown
top-level keys (which `cloud-init schema` 22.x lets through), `sh -n` for its
shell, `systemd-analyze verify` for a unit it writes, and the agent's own
validation (`parse_config` and `iim-agent check-config`) for the agent.yaml it
writes.  Placeholder URLs must stay in the documentation domains.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path
from urllib.parse import urlparse

import pytest
import yaml

from guest_agent.config import parse_config

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = sorted((ROOT / "packaging" / "cloud-init").glob("*.yaml"))
AGENT_YAML = "/etc/iim/agent.yaml"
AGENT_BIN = Path(sys.executable).with_name("iim-agent")
SYSTEM_PYTHON = "/usr/bin/python3"  # the one Debian's cloud-init is installed for
# RFC 2606 names: an example must never point at a host that could exist.
DOC_DOMAINS = ("example.org", "example.com", "example.net")
TIMEOUT = 60

ids = [p.name for p in EXAMPLES]


def _tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.fail(f"{name} is not installed: scripts/test installs it from scripts/apt-packages")
    return path


def _load(path: Path) -> dict:
    return yaml.safe_load(path.read_text())


def _write_file(doc: dict, path: str) -> str:
    for item in doc.get("write_files") or []:
        if item["path"] == path:
            return item["content"]
    raise AssertionError(f"no write_files entry for {path}")


def _runcmd_text(doc: dict) -> str:
    parts = []
    for cmd in doc.get("runcmd") or []:
        parts.append(cmd if isinstance(cmd, str) else " ".join(cmd))
    return "\n".join(parts)


def test_there_are_examples_for_each_install_method():
    names = {p.name for p in EXAMPLES}
    assert {"iim-agent-repo.yaml", "iim-agent-package-url.yaml", "iim-agent-pip.yaml"} <= names


@pytest.mark.parametrize("path", EXAMPLES, ids=ids)
def test_cloud_init_accepts_it(path):
    out = subprocess.run([_tool("cloud-init"), "schema", "-c", str(path)],
                         capture_output=True, text=True, timeout=TIMEOUT)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "Valid cloud-config" in out.stdout
    assert "DEPRECATED" not in out.stdout + out.stderr, out.stdout


@pytest.fixture(scope="module")
def cloud_init_keys() -> set[str]:
    """Every top-level key some cloud-init module reads, from cloud-init's own schema."""
    script = (
        "import json; from cloudinit.config.schema import get_schema\n"
        "s = get_schema(); keys = set(s.get('properties', {}))\n"
        "for d in s.get('$defs', {}).values(): keys |= set(d.get('properties', {}))\n"
        "print(json.dumps(sorted(keys)))"
    )
    out = subprocess.run([SYSTEM_PYTHON, "-c", script], capture_output=True, text=True,
                         timeout=TIMEOUT, check=True)
    keys = set(json.loads(out.stdout))
    assert {"packages", "write_files", "runcmd", "apt"} <= keys
    return keys


@pytest.mark.parametrize("path", EXAMPLES, ids=ids)
def test_no_unknown_top_level_keys(path, cloud_init_keys):
    # `cloud-init schema` passes a misspelt module key (`packges:`) silently.
    unknown = set(_load(path)) - cloud_init_keys
    assert not unknown, f"{path.name}: cloud-init reads no such key: {sorted(unknown)}"


@pytest.mark.parametrize("path", EXAMPLES, ids=ids)
def test_its_agent_yaml_is_a_valid_agent_config(path, tmp_path):
    text = _write_file(_load(path), AGENT_YAML)
    config = parse_config(text, f"{path.name}:{AGENT_YAML}")
    assert config.checks, "an example should watch something"
    conf = tmp_path / "agent.yaml"
    conf.write_text(text)
    out = subprocess.run([str(AGENT_BIN), "check-config", "-c", str(conf)],
                         capture_output=True, text=True, timeout=TIMEOUT)
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("OK:")


@pytest.mark.parametrize("path", EXAMPLES, ids=ids)
def test_it_enables_and_starts_the_agent(path):
    doc = _load(path)
    script = _runcmd_text(doc)
    assert re.search(r"systemctl enable --now iim-agent\.service", script)
    if "packages" in doc:
        assert "iim-agent" in doc["packages"]


@pytest.mark.parametrize("path", EXAMPLES, ids=ids)
def test_its_shell_parses(path, tmp_path):
    script = tmp_path / "runcmd.sh"
    script.write_text(_runcmd_text(_load(path)) + "\n")
    out = subprocess.run(["sh", "-n", str(script)], capture_output=True, text=True,
                         timeout=TIMEOUT)
    assert out.returncode == 0, out.stderr


@pytest.mark.parametrize("path", EXAMPLES, ids=ids)
def test_urls_are_placeholders(path):
    hosts = {urlparse(u).hostname for u in re.findall(r"https?://[^\s\"']+", path.read_text())}
    assert hosts, "an example names where to get the agent"
    for host in hosts:
        assert host and host.endswith(DOC_DOMAINS), f"{path.name}: {host} is not a placeholder"


def test_pip_example_unit_runs_the_venv_it_creates(tmp_path):
    doc = _load(ROOT / "packaging" / "cloud-init" / "iim-agent-pip.yaml")
    unit = _write_file(doc, "/etc/systemd/system/iim-agent.service")
    execstart = re.search(r"^ExecStart=(\S+) (.*)$", unit, re.M)
    assert execstart, unit
    venv = re.search(r"python3 -m venv (/\S+)", _runcmd_text(doc)).group(1)
    assert execstart.group(1) == f"{venv}/bin/iim-agent"
    assert execstart.group(2).split()[0] == "run"
    # systemd-analyze wants the binary to exist: point it at this checkout's.
    (tmp_path / "iim-agent.service").write_text(unit.replace(execstart.group(1), str(AGENT_BIN)))
    out = subprocess.run([_tool("systemd-analyze"), "verify", str(tmp_path / "iim-agent.service")],
                         capture_output=True, text=True, timeout=TIMEOUT)
    assert out.returncode == 0, out.stderr
    assert "Unknown" not in out.stderr and "ignoring" not in out.stderr, out.stderr


def _directives(unit: str) -> list[str]:
    return [line.strip() for line in unit.splitlines()
            if line.strip() and not line.lstrip().startswith("#")]


def test_pip_example_unit_is_the_packaged_unit_but_for_the_binary():
    # A pip-installed agent must start, restart and be confined like the packaged one.
    doc = _load(ROOT / "packaging" / "cloud-init" / "iim-agent-pip.yaml")
    unit = _write_file(doc, "/etc/systemd/system/iim-agent.service")
    packaged = (ROOT / "packaging" / "agent" / "iim-agent.service").read_text()
    ours = _directives(unit.replace("/opt/iim-agent/bin/iim-agent", "/usr/bin/iim-agent"))
    # pip installs no man page: the package's Documentation=man:... has nothing to point at.
    theirs = [d for d in _directives(packaged) if not d.startswith("Documentation=man:")]
    assert ours == theirs, (
        "copy packaging/agent/iim-agent.service's directives into the pip example"
    )


def test_package_url_example_names_the_files_packaging_build_makes(built):
    text = (ROOT / "packaging" / "cloud-init" / "iim-agent-package-url.yaml").read_text()
    named = set(re.findall(r"iim-agent[_-][\w.~+-]+\.(?:deb|rpm)", text))
    assert named == {built.agent_deb.name, built.agent_rpm.name}


def test_repository_example_installs_the_package_packaging_builds():
    nfpm = yaml.safe_load((ROOT / "packaging" / "iim-agent.yaml").read_text())
    doc = _load(ROOT / "packaging" / "cloud-init" / "iim-agent-repo.yaml")
    assert doc["packages"] == [nfpm["name"]]
    unit = Path(next(c["dst"] for c in nfpm["contents"] if c["dst"].endswith(".service")))
    assert f"systemctl, enable, --now, {unit.name}" in (
        ROOT / "packaging" / "cloud-init" / "iim-agent-repo.yaml").read_text()


def test_pip_example_installs_this_version():
    import iim_protocol

    text = (ROOT / "packaging" / "cloud-init" / "iim-agent-pip.yaml").read_text()
    assert re.findall(r"iim-([\d.]+)-py3-none-any\.whl", text) == [iim_protocol.__version__]

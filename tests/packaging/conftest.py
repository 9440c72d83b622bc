"""The packages as packaging/build makes them, built once per test session."""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

import iim_protocol

REPO = Path(__file__).resolve().parents[2]
VERSION = iim_protocol.__version__
RELEASE = "1"


@dataclass(frozen=True)
class Built:
    agent_deb: Path
    agent_rpm: Path
    relay_deb: Path
    relay_rpm: Path


@pytest.fixture(scope="session")
def built(tmp_path_factory) -> Built:
    """packaging/build -o <a temporary dir> (dist/ stays the developer's)."""
    dist = tmp_path_factory.mktemp("dist")
    result = subprocess.run([str(REPO / "packaging" / "build"), "-o", str(dist)],
                            capture_output=True, text=True, timeout=120, cwd=REPO)
    assert result.returncode == 0, result.stderr
    paths = Built(
        agent_deb=dist / f"iim-agent_{VERSION}-{RELEASE}_all.deb",
        agent_rpm=dist / f"iim-agent-{VERSION}-{RELEASE}.noarch.rpm",
        relay_deb=dist / f"iim-relay_{VERSION}-{RELEASE}_all.deb",
        relay_rpm=dist / f"iim-relay-{VERSION}-{RELEASE}.noarch.rpm",
    )
    # The script prints what it built, one path a line.
    assert result.stdout.split() == [str(paths.agent_deb), str(paths.agent_rpm),
                                     str(paths.relay_deb), str(paths.relay_rpm)]
    return paths


def run(*cmd: str, timeout: float = 60, check: bool = True, **kw) -> subprocess.CompletedProcess:
    result = subprocess.run(list(cmd), capture_output=True, text=True, timeout=timeout, **kw)
    if check:
        assert result.returncode == 0, f"{cmd}: {result.returncode}\n{result.stdout}{result.stderr}"
    return result


def source_files(*modules: str) -> set[str]:
    """The .py files of ``modules`` in the tree, relative to the repository."""
    return {str(p.relative_to(REPO)) for m in modules for p in (REPO / m).rglob("*.py")
            if "__pycache__" not in p.parts}


# What each package must depend on: (deb, rpm) names.
AGENT_DEPENDS = [
    ("python3 (>= 3.9)", "python3 >= 3.9"),
    ("python3-psutil", "python3-psutil"),
    ("python3-msgpack", "python3-msgpack"),
    ("python3-serial", "python3-pyserial"),
    ("python3-click", "python3-click"),
    ("python3-yaml", "python3-pyyaml"),
]
RELAY_DEPENDS = [
    ("python3 (>= 3.10)", "python3 >= 3.10"),
    ("python3-oslo.config", "python3-oslo-config"),
    ("python3-oslo.log", "python3-oslo-log"),
    ("python3-keystoneauth1", "python3-keystoneauth1"),
    ("python3-msgpack", "python3-msgpack"),
    ("python3-click", "python3-click"),
    ("python3-libvirt", "python3-libvirt"),
    ("python3-prometheus-client", "python3-prometheus_client"),
]

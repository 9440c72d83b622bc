"""What a distribution ships besides the code: man pages, copyright, changelog; lintian's verdict.

Fast: the built packages are inspected, nothing is installed (test_install.py
checks that `man iim-relay` works once the .deb is installed).
"""

from __future__ import annotations

import gzip
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.packaging.conftest import RELEASE, REPO, VERSION, run

PACKAGES = ("iim-agent", "iim-relay")


def deb_of(built, pkg: str) -> Path:
    return built.agent_deb if pkg == "iim-agent" else built.relay_deb


def rpm_of(built, pkg: str) -> Path:
    return built.agent_rpm if pkg == "iim-agent" else built.relay_rpm


@pytest.fixture(scope="module")
def unpacked(built, tmp_path_factory) -> dict[str, Path]:
    roots = {}
    for pkg in PACKAGES:
        roots[pkg] = tmp_path_factory.mktemp(pkg)
        run("dpkg-deb", "-x", str(deb_of(built, pkg)), str(roots[pkg]))
    return roots


def render_man(path: Path) -> subprocess.CompletedProcess:
    """``man -l`` with groff's warnings on, as lintian runs it; plain text out."""
    env = dict(os.environ, MANWIDTH="80", LC_ALL="C.UTF-8")
    result = subprocess.run(["man", "--warnings", "-E", "UTF-8", "-l", str(path)],
                            capture_output=True, text=True, timeout=60, env=env)
    result.stdout = re.sub(r".\x08", "", result.stdout)  # no bold/underline overstrikes
    return result


@pytest.mark.parametrize("pkg", PACKAGES)
def test_deb_has_man_page_copyright_and_changelog(unpacked, pkg) -> None:
    root = unpacked[pkg]
    man = root / f"usr/share/man/man8/{pkg}.8.gz"
    # The committed page (tests/docs/test_manpages.py keeps it equal to the CLI), compressed.
    assert gzip.decompress(man.read_bytes()) == (REPO / f"packaging/man/{pkg}.8").read_bytes()
    if shutil.which("man"):
        result = render_man(man)
        assert result.returncode == 0 and not result.stderr, result.stderr
        assert re.search(rf"^NAME\n\s+{pkg} +- ", result.stdout, re.M), result.stdout[:500]
        assert "COMMANDS" in result.stdout and f"{pkg} run" in result.stdout

    doc = root / f"usr/share/doc/{pkg}"
    copyright_text = (doc / "copyright").read_text()
    # DEP-5: the Format line first, a Files paragraph, the license by its SPDX name.
    assert copyright_text.startswith(
        "Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/\n")
    assert re.search(r"^Files: \*\nCopyright: .+\nLicense: Apache-2.0$", copyright_text, re.M)
    assert "/usr/share/common-licenses/Apache-2.0" in copyright_text
    assert sorted(p.name for p in doc.iterdir()) == ["changelog.Debian.gz", "copyright"]

    changelog = doc / "changelog.Debian.gz"
    parsed = run("dpkg-parsechangelog", "-l", str(changelog), "-S", "Version").stdout.strip() \
        if shutil.which("dpkg-parsechangelog") else None
    text = gzip.decompress(changelog.read_bytes()).decode()
    assert text.startswith(f"{pkg} ({VERSION}-{RELEASE}) unstable; urgency=medium\n")
    assert parsed in (None, f"{VERSION}-{RELEASE}")
    assert (root / f"usr/share/lintian/overrides/{pkg}").is_file()


@pytest.mark.parametrize("pkg", PACKAGES)
def test_rpm_marks_documentation_and_license(built, pkg) -> None:
    rpm = str(rpm_of(built, pkg))
    docs = run("rpm", "-qpd", rpm).stdout.split()
    assert docs == [f"/usr/share/doc/{pkg}/changelog", f"/usr/share/man/man8/{pkg}.8.gz"]
    licenses = run("rpm", "-qpL", rpm).stdout.split()
    assert licenses == [f"/usr/share/doc/{pkg}/copyright", f"/usr/share/licenses/{pkg}/LICENSE"]
    files = run("rpm", "-qpl", rpm).stdout.split()
    # Debian-only files stay out of the .rpm.
    assert not [f for f in files if "lintian" in f or f.endswith("changelog.Debian.gz")]


@pytest.mark.slow
def test_lintian_reports_nothing_but_what_is_overridden_with_a_reason(built) -> None:
    lintian = shutil.which("lintian")
    if lintian is None:
        pytest.skip("lintian is not installed (scripts/apt-packages lists it)")
    result = run(lintian, "--info", "--display-info", "--pedantic", "--no-tag-display-limit",
                 str(built.agent_deb), str(built.relay_deb), check=False, timeout=300)
    tags = [line for line in result.stdout.splitlines() if re.match(r"^[EWIPX]: ", line)]
    assert not tags, "\n".join(tags)
    assert result.returncode == 0, result.stdout + result.stderr
    # An override that no longer matches anything is reported as unused-override: none.
    assert "unused-override" not in result.stdout


@pytest.mark.parametrize("pkg", PACKAGES)
def test_every_lintian_override_says_why(pkg) -> None:
    lines = (REPO / f"packaging/lintian-overrides/{pkg}").read_text().splitlines()
    overrides = [i for i, line in enumerate(lines) if line.strip() and not line.startswith("#")]
    assert overrides
    for i in overrides:
        assert lines[i].startswith(f"{pkg}: "), lines[i]
        # The reason: a comment right above the override (or above the one it is grouped with).
        j = i - 1
        while j >= 0 and lines[j].strip() and not lines[j].startswith("#"):
            j -= 1
        assert j >= 0 and lines[j].startswith("# ") and len(lines[j].split()) > 4, lines[i]


@pytest.mark.parametrize("pkg", PACKAGES)
def test_units_point_at_the_man_page_and_the_relay_does_not_loop_on_bad_config(unpacked, pkg):
    text = (unpacked[pkg] / f"usr/lib/systemd/system/{pkg}.service").read_text()
    directives = [line.strip() for line in text.splitlines() if line and line[0].isalpha()]
    assert f"Documentation=man:{pkg}(8)" in directives
    if pkg == "iim-relay":
        # Exit 2 is a configuration error: restarting cannot fix it, and its one-line
        # message on stderr is what `systemctl status` shows from the journal.
        assert "Restart=on-failure" in directives
        assert "RestartPreventExitStatus=2" in directives
        assert "StandardError=journal" in directives

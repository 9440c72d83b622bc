"""The operator-facing documents name only options, defaults and commands that exist.

Checked in docs/operator.md, docs/image-builders.md and README.md:

* every `[group] option` mention, and every `option = value` line of an INI
  block, is an option iim-relay registers (list_opts, keystoneauth's and
  oslo.log's, as in the sample) - except the few Masakari options named in
  FOREIGN; every relay.conf block loads through the relay's own loader with
  no error and no warning; the guide names an option of each of iim's groups;
* a default written as `[group] option` (N s) is that option's default;
* every `iim-relay ...`/`iim-agent ...` in code is a real subcommand, with
  options that command has;
* every YAML block that looks like an agent config passes the agent's own
  validation, and every relative link points at a file.
"""

from __future__ import annotations

import re
import textwrap
from pathlib import Path

import click
import pytest
import yaml

pytest.importorskip("oslo_config")  # the relay's side

from devtools import config_doc  # noqa: E402
from guest_agent import config as agent_config  # noqa: E402
from guest_agent.cli import main as agent_cli  # noqa: E402
from host_relay.cli import cli as relay_cli  # noqa: E402
from host_relay.conf import loader  # noqa: E402
from host_relay.conf.opts import list_opts  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
DOCS = [ROOT / "docs" / "operator.md", ROOT / "docs" / "image-builders.md", ROOT / "README.md"]
CLIS = {"iim-agent": agent_cli, "iim-relay": relay_cli}
# Masakari's own options the operator's guide discusses (masakari.conf, not iim's).
FOREIGN = {
    ("DEFAULT", "notification_delay_max"),
    ("DEFAULT", "duplicate_notification_detection_interval"),
    ("coordination", "backend_url"),
    ("instance_failure", "process_all_instances"),
}
# Appended to a block without a [masakari] section, so that it is a whole configuration.
MASAKARI_NOAUTH = "\n[masakari]\nauth_type = none\nendpoint = http://127.0.0.1:15868\n"
FENCE = re.compile(r"^ *```(\w*)\n(.*?)^ *```", re.M | re.S)
ids = [p.name for p in DOCS]


@pytest.fixture(scope="module")
def relay_options() -> dict[tuple[str, str], object]:
    known = {}
    for ns in config_doc.namespaces():
        for group, opts in config_doc.load_namespace(ns):
            for opt in opts:
                known[(config_doc._group_name(group), opt.dest)] = opt
    assert ("detector", "cooldown") in known and ("DEFAULT", "log_file") in known
    return known


def _prose(text: str) -> str:
    return FENCE.sub("", text)


def _code(text: str) -> list[str]:
    """Fenced blocks, indented blocks and inline code spans."""
    fenced = [m.group(2) for m in FENCE.finditer(text)]
    prose = _prose(text)
    # Indented blocks: in these documents, command lines such as `    iim-relay status`.
    indented = re.findall(r"^ {4,}((?:iim-agent|iim-relay)\b.*)$", prose, re.M)
    inline = []
    for paragraph in re.split(r"\n\s*\n", prose):
        inline += re.findall(r"`([^`]+)`", paragraph.replace("\n", " "))
    return fenced + indented + inline


def _ini_blocks(text: str) -> list[str]:
    return [m.group(2) for m in FENCE.finditer(text) if m.group(1) == "ini"]


@pytest.mark.parametrize("doc", DOCS, ids=ids)
def test_group_option_mentions_exist(doc, relay_options):
    text = doc.read_text()
    # Prose may wrap a mention over two lines; code is read line by line.
    mentions = set(re.findall(r"\[(\w+)\] (\w+)", " ".join(_prose(text).split())))
    for m in FENCE.finditer(text):
        mentions |= set(re.findall(r"\[(\w+)\][ \t]+(\w+)", m.group(2)))
    for group, option in sorted(mentions - FOREIGN):
        assert (group, option) in relay_options, f"{doc.name}: no option [{group}] {option}"


def test_operator_guide_mentions_every_group_of_the_relay():
    """Each of iim-relay's own option groups (list_opts) is named with one of its options."""
    text = " ".join(_prose((ROOT / "docs" / "operator.md").read_text()).split())
    for group, opts in list_opts():
        name = group if isinstance(group, str) else group.name
        named = [o.dest for o in opts if f"[{name}] {o.dest}" in text]
        assert named, f"docs/operator.md does not mention any [{name}] option"


@pytest.mark.parametrize("doc", DOCS, ids=ids)
def test_ini_blocks_set_real_options(doc, relay_options, tmp_path):
    """Each relay.conf block loads through the relay's own loader, without a warning."""
    loaded = 0
    for n, block in enumerate(_ini_blocks(doc.read_text())):
        first = block.splitlines()[0]
        if first.startswith("#") and ".conf" in first and "relay.conf" not in first:
            # another program's file, e.g. masakari.conf
            for key in _ini_keys(block):
                assert key in FOREIGN, f"{doc.name}: {key} is not a known Masakari option"
            continue
        for section, option in _ini_keys(block):
            assert (section, option) in relay_options, f"{doc.name}: [{section}] {option}"
        path = tmp_path / f"block{n}.conf"
        # A block about one section only still needs somewhere to send notifications.
        extra = "" if "[masakari]" in block else MASAKARI_NOAUTH
        path.write_text(block + extra)
        try:
            conf = loader.load(["--config-file", str(path)], default_config_files=[],
                               conf=loader.new_conf())
        except loader.ConfigError as exc:
            pytest.fail(f"{doc.name}: the relay refuses this block:\n{block}\n{exc}")
        assert loader.config_warnings(conf) == [], f"{doc.name}:\n{block}"
        loaded += 1
    if doc.name in ("operator.md", "README.md"):
        assert loaded >= 1


def _ini_keys(block: str) -> list[tuple[str, str]]:
    keys, section = [], "DEFAULT"
    for line in block.splitlines():
        line = line.strip()
        if m := re.fullmatch(r"\[(\w+)\]", line):
            section = m.group(1)
        elif m := re.match(r"(\w+) = ", line):
            keys.append((section, m.group(1)))
    return keys


@pytest.mark.parametrize("doc", DOCS, ids=ids)
def test_stated_defaults_are_the_defaults(doc, relay_options):
    text = " ".join(doc.read_text().split())
    found = re.findall(r"`\[(\w+)\] (\w+)` \((\d+(?:\.\d+)?)(?: s)?\)", text)
    for group, option, value in found:
        if (group, option) in FOREIGN:
            continue
        default = relay_options[(group, option)].default
        assert float(value) == float(default), f"{doc.name}: [{group}] {option} is {default}"
    if doc.name == "operator.md":
        assert len(found) >= 2  # the pattern still matches how the guide writes defaults


def _command_mentions(text: str):
    for code in _code(text):
        for m in re.finditer(r"\b(iim-agent|iim-relay)((?:[ \t]+[^\s|;&#)]+)*)", code):
            yield m.group(1), m.group(2).split()


@pytest.mark.parametrize("doc", DOCS, ids=ids)
def test_commands_and_their_options_exist(doc):
    seen = 0
    for prog, words in _command_mentions(doc.read_text()):
        if not words:
            continue
        group = CLIS[prog]
        sub = words[0]
        if sub.startswith("-"):
            assert sub in ("--help", "-h", "--version", "-V"), f"{doc.name}: {prog} {sub}"
            continue
        if not re.fullmatch(r"[a-z][a-z-]*", sub):
            continue  # a path or file name after the program name in prose-like code
        cmd = group.commands.get(sub)
        assert cmd is not None, f"{doc.name}: no command `{prog} {sub}`"
        known = {o for p in cmd.params if isinstance(p, click.Option) for o in p.opts}
        known |= {"--help", "-h"}
        for word in words[1:]:
            if word.startswith("-"):
                flag = word.split("=", 1)[0]
                assert flag in known, f"{doc.name}: `{prog} {sub}` has no option {flag}"
        seen += 1
    if doc.name == "operator.md":
        assert seen >= 8


@pytest.mark.parametrize("doc", DOCS, ids=ids)
def test_agent_yaml_blocks_are_valid(doc):
    checked = 0
    for m in FENCE.finditer(doc.read_text()):
        if m.group(1) != "yaml" or m.group(2).startswith("#cloud-config"):
            continue
        block = textwrap.dedent(m.group(2))
        data = yaml.safe_load(block)
        if isinstance(data, dict) and set(data) <= set(agent_config.TOP_KEYS):
            agent_config.parse_config(block, f"{doc.name} block")
            checked += 1
    if doc.name == "operator.md":
        assert checked >= 1


@pytest.mark.parametrize("doc", DOCS, ids=ids)
def test_relative_links_resolve(doc):
    for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", doc.read_text()):
        if re.match(r"\w+://", target):
            continue
        assert (doc.parent / target).exists(), f"{doc.name}: broken link {target}"

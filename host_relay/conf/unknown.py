"""Unknown sections and options: warnings with the closest valid name.

oslo.config ignores what it does not know, so a typo silently leaves the
default in force.  :func:`unknown_options` compares every key the files set
with what oslo would read (registered options, their deprecated aliases,
and oslo.log's options that it registers only when used) and says what was
probably meant.
"""

from __future__ import annotations

import difflib
from collections.abc import Sequence
from importlib.metadata import entry_points
from typing import Optional

from oslo_config import cfg

from host_relay.conf import oslo_private
from host_relay.conf.sources import ConfigFile, group_key


def _library_opts() -> list[tuple[Optional[str], cfg.Opt]]:
    """oslo.log's options that it registers only when used (fatal_deprecations and the like)."""
    found: list[tuple[Optional[str], cfg.Opt]] = []
    for ep in entry_points(group="oslo.config.opts"):
        if ep.name == "oslo.log":
            for group, opts in ep.load()():
                found += [(group, opt) for opt in opts]
    return found


def _known(conf: cfg.ConfigOpts) -> dict[str, set[str]]:
    """Every section and key oslo would read: registered names plus their deprecated aliases."""
    known: dict[str, set[str]] = {"DEFAULT": set()}
    for group, opt in [*oslo_private.all_opts(conf), *_library_opts()]:
        known.setdefault(group or "DEFAULT", set()).add(opt.dest)
        for dep in opt.deprecated_opts:
            dep_group = dep.group or group or "DEFAULT"
            known.setdefault(group_key(dep_group), set()).add(dep.name or opt.dest)
    return known


def unknown_options(conf: cfg.ConfigOpts, files: Sequence[ConfigFile]) -> list[str]:
    """One warning per unknown section (per file) and per unknown key, with a hint."""
    known = _known(conf)
    owner = {}  # key -> a section that has it, for keys written in the wrong section
    for section, keys in known.items():
        for key in keys:
            owner.setdefault(key, section)
    warnings = []
    for parsed in files:
        reported_sections = set()
        for (section, key), (_value, line) in parsed.values.items():
            group = group_key(section)
            if group not in known:
                if section in reported_sections:
                    continue
                reported_sections.add(section)
                close = difflib.get_close_matches(group, list(known), n=1)
                if not close:
                    close = [s for s in known if s.lower() == group.lower()]
                hint = f"; did you mean [{close[0]}]?" if close else ""
                warnings.append(
                    f"{parsed.path}: section [{section}] is not used by iim-relay and is "
                    f"ignored{hint}"
                )
                continue
            if key in known[group]:
                continue
            close = difflib.get_close_matches(key, sorted(known[group]), n=1)
            if close:
                hint = f"; did you mean {close[0]}?"
            elif key in owner:
                hint = f"; it belongs in [{owner[key]}]"
            else:
                hint = ""
            warnings.append(
                f"{parsed.path}: [{section}] {key} is not a known option and is ignored"
                f"{hint} (line {line})"
            )
    return warnings

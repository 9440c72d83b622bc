"""Where each setting came from: the files oslo read, in its order, with line numbers.

oslo.config tells what a value is, not where it was written.  To name the
file and line of a bad setting, :func:`config_files` lists the files oslo
parsed (in its order: later ones override earlier ones), :class:`ConfigFile`
re-reads one with oslo's own parser keeping line numbers, and
:func:`source` says which one (or which environment variable) supplied the
value oslo uses.
"""

from __future__ import annotations

import glob
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Optional

from oslo_config import cfg

from host_relay.conf import oslo_private


def group_key(section: str) -> str:
    """The group a section header selects: oslo matches groups case-insensitively, but
    [DEFAULT] only in capitals."""
    return section if section == "DEFAULT" else section.lower()


@dataclass
class ConfigFile:
    """One parsed config file: what each section as written sets, and on which line."""

    path: str
    # (section as written, key) -> (last value, line of that assignment)
    values: dict[tuple[str, str], tuple[str, int]] = field(default_factory=dict)

    @classmethod
    def read(cls, path: str) -> ConfigFile:
        """Parse ``path`` as oslo does; raises OSError or ``cfg.ParseError``."""
        parser = oslo_private.LineParser(path)
        parser.parse()
        parsed = cls(path)
        for section, keys in parser.sections.items():
            for key, values in keys.items():
                parsed.values[(section, key)] = (values[-1], parser.lines[(section, key)])
        return parsed

    def lookup(self, group: str, key: str) -> Optional[tuple[str, int]]:
        """(value, line) of the last ``key`` in any section selecting ``group``, or None."""
        found = None
        for (section, name), value in self.values.items():
            if name == key and group_key(section) == group:
                found = value
        return found


def config_args(argv: Sequence[str]) -> list[tuple[str, str]]:
    """The --config-file / --config-dir arguments, in order (argparse accepts unique prefixes)."""
    found = []
    args = list(argv)
    for i, arg in enumerate(args):
        if arg == "--":
            break
        name, eq, value = arg.partition("=")
        if len(name) <= len("--config-"):
            continue
        if "--config-file".startswith(name):
            kind = "file"
        elif "--config-dir".startswith(name):
            kind = "dir"
        else:
            continue
        if not eq:
            if i + 1 >= len(args):
                continue
            value = args[i + 1]
        found.append((kind, value))
    return found


def _dir_files(directory: str) -> list[str]:
    return sorted(glob.glob(os.path.join(os.path.expanduser(directory), "*.conf")))


def config_files(conf: cfg.ConfigOpts, argv: Sequence[str]) -> list[str]:
    """The files oslo parsed, in its order: later ones override earlier ones.

    The defaults come first (files only without --config-file, directories only
    without --config-dir), then every --config-file and --config-dir in argv order.
    """
    cli = config_args(argv)
    files = []
    if not any(kind == "file" for kind, _ in cli):
        files += conf.default_config_files or []
    if not any(kind == "dir" for kind, _ in cli):
        for directory in conf.default_config_dirs or []:
            files += _dir_files(directory)
    for kind, value in cli:
        files += [value] if kind == "file" else _dir_files(value)
    return [oslo_private.fixpath(path) for path in files]


@dataclass
class Source:
    """Where a value comes from: a file (with line), an environment variable, or neither."""

    where: str  # a file, an environment variable, or "the configuration"
    raw: Optional[str] = None
    line: Optional[int] = None

    def suffix(self, default: Optional[str] = None) -> str:
        """`` (line N; default D)``, or what part of it is known, or nothing."""
        notes = [f"line {self.line}"] if self.line else []
        if default is not None:
            notes.append(f"default {default}")
        return f" ({'; '.join(notes)})" if notes else ""


def source(files: Sequence[ConfigFile], group: Optional[str], name: str) -> Source:
    """Where the value oslo uses for [group] name comes from: environment, then the last file."""
    env = oslo_private.env_var(group, name)
    if env in os.environ:
        return Source(f"environment variable {env}", os.environ[env])
    for parsed in reversed(files):
        hit = parsed.lookup(group or "DEFAULT", name)
        if hit is not None:
            return Source(parsed.path, hit[0], hit[1])
    return Source("the configuration")  # a default or a programmatic override

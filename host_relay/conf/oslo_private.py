"""The only module that touches oslo.config's private API.

oslo.config offers no public way to do four things the loader needs to name
the file, line and fix of a bad setting:

* iterate over every registered (group, option) pair: ``ConfigOpts._all_opt_infos``;
* normalise a config file path the way oslo does: ``cfg._fixpath``;
* learn the line of each ``key = value``: a ``cfg.ConfigParser`` subclass that
  hooks ``_split_key_value`` (called once per key line, while ``lineno`` is
  that line) and records it in ``assignment``;
* keep a few values of our own on a ``ConfigOpts`` (the warnings of the last
  load, the auth plugin options it registered): attributes in the instance
  ``__dict__``, since ``getattr`` on a ConfigOpts looks up options.

Plus, for tests only, whether a ConfigOpts was ever parsed (``_args``).

tests/host_relay/test_conf_oslo_private.py pins each behaviour relied on here,
so an oslo.config upgrade that changes one fails there first, with a name.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, Optional

from oslo_config import cfg

__all__ = [
    "LineParser",
    "all_opts",
    "env_var",
    "fixpath",
    "stash",
    "stashed",
    "unstash",
    "was_parsed",
]


def all_opts(conf: cfg.ConfigOpts) -> Iterator[tuple[Optional[str], cfg.Opt]]:
    """Every registered option as (group name or None for [DEFAULT], opt)."""
    for info, group in conf._all_opt_infos():
        yield (group.name if group is not None else None), info["opt"]


def fixpath(path: str) -> str:
    """A config file path as oslo records it (``~`` expanded, absolute)."""
    return cfg._fixpath(path)


def env_var(group: Optional[str], name: str) -> str:
    """The environment variable oslo.config reads for ``[group] name`` (its env source)."""
    return f"OS_{(group or 'DEFAULT').upper()}__{name.upper()}"


class LineParser(cfg.ConfigParser):
    """oslo's own config file parser, remembering the line where each key was set.

    After :meth:`parse`, ``sections`` maps each section (as written) to
    ``{key: [values...]}`` as oslo parses it, and ``lines`` maps
    ``(section, key)`` to the line of the key's last assignment.
    """

    def __init__(self, filename: str) -> None:
        super().__init__(filename, {})
        self.lines: dict[tuple[str, str], int] = {}
        self._key_line = 0

    def _split_key_value(self, line: str) -> tuple[str, list[str]]:
        self._key_line = self.lineno
        return super()._split_key_value(line)

    def assignment(self, key: str, value: list[str]) -> None:
        super().assignment(key, value)
        assert self.section is not None
        self.lines[(self.section, key)] = self._key_line


def stash(conf: cfg.ConfigOpts, key: str, value: Any) -> None:
    """Keep ``value`` on ``conf`` under ``key`` (not an option; survives re-parsing)."""
    conf.__dict__[key] = value


def stashed(conf: cfg.ConfigOpts, key: str, default: Any = None) -> Any:
    """What :func:`stash` kept under ``key``, or ``default``."""
    return conf.__dict__.get(key, default)


def unstash(conf: cfg.ConfigOpts, key: str) -> Any:
    """Remove and return what :func:`stash` kept under ``key`` (None if nothing)."""
    return conf.__dict__.pop(key, None)


def was_parsed(conf: cfg.ConfigOpts) -> bool:
    """Whether ``conf`` ever parsed a command line (for tests that guard the global CONF)."""
    return conf._args is not None

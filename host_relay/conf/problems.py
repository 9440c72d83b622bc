"""What is wrong with a configuration, as one line each: file, option, value, fix, line.

oslo.config checks a value only when something reads it, and its messages
name neither the file nor the line.  :func:`check_values` reads every
registered option once and turns each failure into such a line;
:func:`check` adds the rules between options (pairs that must be ordered,
the [libvirt] opt-in rule); :func:`cli_opt_problems` explains the values
oslo rejects while it parses (command-line options set in a file).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from typing import Optional, Union

from oslo_config import cfg, types

from host_relay.conf import bounds, oslo_private
from host_relay.conf.sources import ConfigFile, source
from host_relay.detector_config import DetectorConfig
from host_relay.settings import BUILT_FROM_OPTIONS, UUID_RE


class ConfigError(Exception):
    """The configuration cannot be used; ``problems`` lists every reason, one line each."""

    def __init__(self, problems: Union[str, Iterable[str]]) -> None:
        self.problems = [problems] if isinstance(problems, str) else list(problems)
        super().__init__("\n".join(self.problems))


def fmt(number: Union[float, int]) -> str:
    """A bound or value as an operator writes it: 60, not 60.0."""
    if isinstance(number, float) and number.is_integer():
        return str(int(number))
    return str(number)


def value_problem(
    files: Sequence[ConfigFile], group: Optional[str], opt: cfg.Opt, exc: Exception
) -> str:
    """The line for an option whose value oslo refused: numbers get their bounds."""
    src = source(files, group, opt.dest)
    section = group or "DEFAULT"
    shown = "****" if opt.secret else src.raw
    setting = f"{src.where}: [{section}] {opt.dest} = {shown}"
    kind = opt.type
    if isinstance(kind, (types.Integer, types.Float)):
        noun = "an integer" if isinstance(kind, types.Integer) else "a number"
        lo, hi = kind.min, kind.max
        if lo is not None and hi is not None:
            limits = f"between {fmt(lo)} and {fmt(hi)}"
        elif lo is not None:
            limits = f"at least {fmt(lo)}"
        else:
            limits = f"at most {fmt(hi)}"
        default = fmt(opt.default) if opt.default is not None else None
        try:
            type(kind)()(src.raw)  # the same type without bounds
        except (TypeError, ValueError):
            return f"{setting} is not {noun}: must be {noun} {limits}{src.suffix(default)}"
        return f"{setting} is out of range: must be {limits}{src.suffix(default)}"
    reason = str(exc).split(" is not valid: ", 1)[-1]
    return f"{setting} is not valid: {reason}{src.suffix()}"


def check_values(conf: cfg.ConfigOpts, files: Sequence[ConfigFile]) -> list[str]:
    """Read every registered option once: oslo converts and range-checks only on access."""
    problems = []
    for group, opt in oslo_private.all_opts(conf):
        try:
            _ = conf[group][opt.dest] if group else conf[opt.dest]
        except (cfg.ConfigSourceValueError, ValueError) as exc:
            problems.append(value_problem(files, group, opt, exc))
        except cfg.TemplateSubstitutionError as exc:
            src = source(files, group, opt.dest)
            problems.append(
                f"{src.where}: [{group or 'DEFAULT'}] {opt.dest} = {src.raw}: {exc}; "
                f"write $$ for a literal ${src.suffix()}"
            )
    return problems


def cli_opt_problems(conf: cfg.ConfigOpts, paths: Sequence[str]) -> list[str]:
    """Values oslo refused while parsing (options that are also command-line options)."""
    problems = []
    for path in paths:
        try:
            parsed = ConfigFile.read(path)
        except (OSError, cfg.ParseError):
            continue
        for group, opt in oslo_private.all_opts(conf):
            hit = parsed.lookup(group or "DEFAULT", opt.dest)
            if hit is None:
                continue
            try:
                opt.type(hit[0])
            except ValueError as exc:
                problems.append(
                    f"{path}: [{group or 'DEFAULT'}] {opt.dest} = {hit[0]} is not valid: "
                    f"{exc} (line {hit[1]})"
                )
    return problems


def _ordered() -> list[tuple[str, str, str]]:
    """(group, low, high): the ORDERED pairs of every dataclass built from options."""
    return [
        (cls.OPTION_GROUP, low, high)
        for cls in (DetectorConfig, *BUILT_FROM_OPTIONS)
        for low, high in bounds.ordered(cls)
    ]


def check(conf: cfg.ConfigOpts, files: Sequence[ConfigFile] = ()) -> None:
    """Raise ConfigError if options that constrain each other disagree."""
    problems = []
    if not conf.host.strip():
        where = source(files, None, "host")
        problems.append(
            f"{where.where}: [DEFAULT] host is empty: set it to this compute host's name as "
            f"registered in a Masakari failover segment, or remove it to use the system "
            f"hostname{where.suffix()}"
        )
    for group, low, high in _ordered():
        lo, hi = conf[group][low], conf[group][high]
        if lo <= hi:
            continue
        where = source(files, group, low)
        if where.raw is None:
            where = source(files, group, high)
        problems.append(
            f"{where.where}: [{group}] {low} = {fmt(lo)} is greater than {high} = {fmt(hi)}: "
            f"{low} must not exceed {high}; lower {low} or raise {high}{where.suffix()}"
        )
    problems += _libvirt_problems(conf, files)
    if problems:
        raise ConfigError(problems)


def _libvirt_problems(conf: cfg.ConfigOpts, files: Sequence[ConfigFile]) -> list[str]:
    """[libvirt]: regular expressions that compile, UUIDs, an opt-in rule that can match."""
    lv = conf.libvirt
    problems = []

    def say(name: str, text: str) -> None:
        src = source(files, "libvirt", name)
        problems.append(f"{src.where}: [libvirt] {name} = {src.raw if src.raw is not None else ''}"
                        f" {text}{src.suffix()}")

    for name in ("match_name", "match_metadata"):
        try:
            re.compile(lv[name])
        except re.error as exc:
            say(name, f"is not a Python regular expression ({exc}): fix the pattern")
    bad = [u for u in lv.instance_uuids if not UUID_RE.match(u.strip().lower())]
    if bad:
        say("instance_uuids", f"has entries that are not UUIDs ({', '.join(bad)}): list "
            "Nova instance UUIDs such as 3f0a9c1e-5b7d-4e2f-9a1b-2c3d4e5f6a01, comma-separated")
    if lv.connection_uri.strip():
        if lv.opt_in == "match" and not (lv.match_name or lv.match_metadata):
            say("opt_in", "needs a pattern: set match_name or match_metadata (or use opt_in = "
                "all), otherwise no domain gets the channel")
        if lv.opt_in == "list" and not lv.instance_uuids:
            say("opt_in", "needs instance_uuids: list the instances that get the channel (or "
                "use opt_in = all), otherwise no domain gets the channel")
    return problems

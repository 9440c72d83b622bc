"""Load iim-relay's configuration once, at start-up, and fail loudly if it is wrong.

oslo.config is lenient where a monitoring daemon must not be: it checks a
value only when something reads it (a bad value in a rarely used option
surfaces hours later), and it ignores options it does not know (a typo
silently leaves the default in force).  :func:`load` parses the command line
and config files, reads every registered option once, checks the options
that constrain each other, and turns every problem into a
:class:`ConfigError` whose message names the file, the option and the fix.
Unknown sections and options become warnings with the closest valid name
(:func:`config_warnings`; :func:`setup_logging` logs them).

Everything else in the relay takes plain values: :func:`settings_from` and
:func:`detector_config_from` are the only readers of the parsed options.
"""

from __future__ import annotations

import difflib
import glob
import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from importlib.metadata import entry_points

from keystoneauth1 import loading as ks_loading
from oslo_config import cfg, types
from oslo_log import log as logging

import iim_protocol
from host_relay.conf import masakari
from host_relay.conf.opts import MODULES
from host_relay.settings import (
    ChannelSettings,
    DeliverySettings,
    LibvirtSettings,
    MetricsSettings,
    RelaySettings,
)

PROJECT = "iim"
_UUID_RE = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")
PROG = "iim-relay"
# What the iim-relay packages install (packaging/); read first when no --config-file is given.
PACKAGED_CONFIG_FILE = "/etc/iim/relay.conf"

# load() keeps these on the ConfigOpts it parsed (oslo's ConfigOpts has no place for them).
_WARNINGS_ATTR = "_iim_config_warnings"
_PLUGIN_ATTR = "_iim_auth_plugin_opts"  # (group, opts) registered for the chosen auth_type
_FILES_ATTR = "_iim_config_files"  # the files read, in oslo's order


class ConfigError(Exception):
    """The configuration cannot be used; ``problems`` lists every reason, one line each."""

    def __init__(self, problems: str | Iterable[str]) -> None:
        self.problems = [problems] if isinstance(problems, str) else list(problems)
        super().__init__("\n".join(self.problems))


# --- registration ----------------------------------------------------------------------------


def register_all(conf: cfg.ConfigOpts) -> None:
    """Register every iim-relay group and oslo.log's options on ``conf``.

    Idempotent.  It must run before ``conf`` parses a command line, since
    oslo.log's options include command-line ones.
    """
    for module in MODULES:
        module.register_opts(conf)
    if "log_file" not in conf:
        conf.clear()  # forget an earlier parse so CLI options may be registered
        logging.register_options(conf)


def new_conf() -> cfg.ConfigOpts:
    """A fresh ConfigOpts with every option registered, independent of the global CONF."""
    conf = cfg.ConfigOpts()
    register_all(conf)
    return conf


# --- reading the files the way oslo does, with line numbers ------------------------------------


def _group_key(section: str) -> str:
    # oslo matches group sections case-insensitively, but [DEFAULT] only in capitals.
    return section if section == "DEFAULT" else section.lower()


class _LineParser(cfg.ConfigParser):
    """oslo's own parser, remembering where each key was set."""

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


@dataclass
class _File:
    path: str
    # (section as written, key) -> (last value, line of that assignment)
    values: dict[tuple[str, str], tuple[str, int]] = field(default_factory=dict)

    @classmethod
    def read(cls, path: str) -> _File:
        parser = _LineParser(path)
        parser.parse()
        parsed = cls(path)
        for section, keys in parser.sections.items():
            for key, values in keys.items():
                parsed.values[(section, key)] = (values[-1], parser.lines[(section, key)])
        return parsed

    def lookup(self, group: str, key: str) -> tuple[str, int] | None:
        found = None
        for (section, name), value in self.values.items():
            if name == key and _group_key(section) == group:
                found = value
        return found


def _config_args(argv: Sequence[str]) -> list[tuple[str, str]]:
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


def _config_files(conf: cfg.ConfigOpts, argv: Sequence[str]) -> list[str]:
    """The files oslo parsed, in its order: later ones override earlier ones.

    The defaults come first (files only without --config-file, directories only
    without --config-dir), then every --config-file and --config-dir in argv order.
    """
    cli = _config_args(argv)
    files = []
    if not any(kind == "file" for kind, _ in cli):
        files += conf.default_config_files or []
    if not any(kind == "dir" for kind, _ in cli):
        for directory in conf.default_config_dirs or []:
            files += _dir_files(directory)
    for kind, value in cli:
        files += [value] if kind == "file" else _dir_files(value)
    return [cfg._fixpath(path) for path in files]


@dataclass
class _Source:
    where: str  # a file, an environment variable, or "the configuration"
    raw: str | None = None
    line: int | None = None

    def suffix(self, default: str | None = None) -> str:
        notes = [f"line {self.line}"] if self.line else []
        if default is not None:
            notes.append(f"default {default}")
        return f" ({'; '.join(notes)})" if notes else ""


def _source(conf: cfg.ConfigOpts, files: Sequence[_File], group: str | None, name: str) -> _Source:
    """Where the value oslo uses for [group] name comes from: environment, then the last file."""
    env = f"OS_{(group or 'DEFAULT').upper()}__{name.upper()}"
    if env in os.environ:
        return _Source(f"environment variable {env}", os.environ[env])
    for parsed in reversed(files):
        hit = parsed.lookup(group or "DEFAULT", name)
        if hit is not None:
            return _Source(parsed.path, hit[0], hit[1])
    return _Source("the configuration")  # a default or a programmatic override


def _fmt(number: float | int) -> str:
    if isinstance(number, float) and number.is_integer():
        return str(int(number))
    return str(number)


def _opts(conf: cfg.ConfigOpts) -> Iterable[tuple[str | None, cfg.Opt]]:
    # oslo has no public iterator over (group, opt) pairs.
    for info, group in conf._all_opt_infos():
        yield (group.name if group is not None else None), info["opt"]


def _value_problem(
    conf: cfg.ConfigOpts, files: Sequence[_File], group: str | None, opt: cfg.Opt, exc: Exception
) -> str:
    src = _source(conf, files, group, opt.dest)
    section = group or "DEFAULT"
    shown = "****" if opt.secret else src.raw
    setting = f"{src.where}: [{section}] {opt.dest} = {shown}"
    kind = opt.type
    if isinstance(kind, (types.Integer, types.Float)):
        noun = "an integer" if isinstance(kind, types.Integer) else "a number"
        lo, hi = kind.min, kind.max
        if lo is not None and hi is not None:
            bounds = f"between {_fmt(lo)} and {_fmt(hi)}"
        elif lo is not None:
            bounds = f"at least {_fmt(lo)}"
        else:
            bounds = f"at most {_fmt(hi)}"
        default = _fmt(opt.default) if opt.default is not None else None
        try:
            type(kind)()(src.raw)  # the same type without bounds
        except (TypeError, ValueError):
            return f"{setting} is not {noun}: must be {noun} {bounds}{src.suffix(default)}"
        return f"{setting} is out of range: must be {bounds}{src.suffix(default)}"
    reason = str(exc).split(" is not valid: ", 1)[-1]
    return f"{setting} is not valid: {reason}{src.suffix()}"


def _cli_opt_problems(conf: cfg.ConfigOpts, argv: Sequence[str]) -> list[str]:
    problems = []
    for path in _config_files(conf, argv):
        try:
            parsed = _File.read(path)
        except (OSError, cfg.ParseError):
            continue
        for group, opt in _opts(conf):
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


def _check_values(conf: cfg.ConfigOpts, files: Sequence[_File]) -> list[str]:
    """Read every registered option once: oslo converts and range-checks only on access."""
    problems = []
    for group, opt in _opts(conf):
        try:
            _ = conf[group][opt.dest] if group else conf[opt.dest]
        except (cfg.ConfigSourceValueError, ValueError) as exc:
            problems.append(_value_problem(conf, files, group, opt, exc))
        except cfg.TemplateSubstitutionError as exc:
            src = _source(conf, files, group, opt.dest)
            problems.append(
                f"{src.where}: [{group or 'DEFAULT'}] {opt.dest} = {src.raw}: {exc}; "
                f"write $$ for a literal ${src.suffix()}"
            )
    return problems


# --- keystoneauth ---------------------------------------------------------------------------


def _auth_section(conf: cfg.ConfigOpts) -> str:
    return conf[masakari.GROUP].auth_section or masakari.GROUP


def _auth_plugin_names() -> list[str]:
    # The entry points, not ks_loading.get_available_plugin_names(): that imports every
    # plugin and logs a complaint for each one whose optional dependencies are missing.
    return sorted({ep.name for ep in entry_points(group="keystoneauth1.plugin")})


def _register_auth_plugin(conf: cfg.ConfigOpts, files: Sequence[_File]) -> list[str]:
    """Register the chosen plugin's options, as keystoneauth's loader will, so they are checked."""
    if conf[masakari.GROUP].auth_section:
        # keystoneauth reads auth_type from the auth_section when one is named.
        ks_loading.register_auth_conf_options(conf, masakari.GROUP)
    section = _auth_section(conf)
    name = conf[section].auth_type
    if not name:
        return []
    known = _auth_plugin_names()
    if name not in known:
        src = _source(conf, files, section, "auth_type")
        close = difflib.get_close_matches(name, known, n=1)
        hint = f"did you mean {close[0]}? " if close else ""
        return [
            f"{src.where}: [{section}] auth_type = {name} is not a keystoneauth plugin: "
            f"{hint}use password (Keystone) or none (no Keystone, with endpoint = URL); "
            f"available: {', '.join(known)}{src.suffix()}"
        ]
    try:
        plugin_opts = ks_loading.get_auth_plugin_conf_options(name)
    except Exception as exc:  # a plugin whose optional dependencies are missing
        src = _source(conf, files, section, "auth_type")
        return [
            f"{src.where}: [{section}] auth_type = {name}: the plugin cannot be loaded "
            f"({type(exc).__name__}: {exc}); install what it needs or choose another"
            f"{src.suffix()}"
        ]
    conf.register_opts(plugin_opts, group=section)
    setattr(conf, _PLUGIN_ATTR, (section, plugin_opts))
    return []


# --- unknown sections and options ---------------------------------------------------------------


def _known(conf: cfg.ConfigOpts) -> dict[str, set[str]]:
    """Every section and key oslo would read: registered names plus their deprecated aliases."""
    known: dict[str, set[str]] = {"DEFAULT": set()}
    for group, opt in [*_opts(conf), *_library_opts()]:
        known.setdefault(group or "DEFAULT", set()).add(opt.dest)
        for dep in opt.deprecated_opts:
            dep_group = dep.group or group or "DEFAULT"
            known.setdefault(_group_key(dep_group), set()).add(dep.name or opt.dest)
    return known


def _library_opts() -> list[tuple[str | None, cfg.Opt]]:
    """oslo.log's options that it registers only when used (fatal_deprecations and the like)."""
    found: list[tuple[str | None, cfg.Opt]] = []
    for ep in entry_points(group="oslo.config.opts"):
        if ep.name == "oslo.log":
            for group, opts in ep.load()():
                found += [(group, opt) for opt in opts]
    return found


def _unknown_options(conf: cfg.ConfigOpts, files: Sequence[_File]) -> list[str]:
    known = _known(conf)
    owner = {}  # key -> a section that has it, for keys written in the wrong section
    for section, keys in known.items():
        for key in keys:
            owner.setdefault(key, section)
    warnings = []
    for parsed in files:
        reported_sections = set()
        for (section, key), (_value, line) in parsed.values.items():
            group = _group_key(section)
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


# --- constraints between options ----------------------------------------------------------------


_ORDERED = (
    ("detector", "min_interval", "max_interval"),
    ("channels", "reconnect_initial", "reconnect_max"),
    ("masakari", "backoff_initial", "backoff_max"),
    ("libvirt", "reconnect_initial", "reconnect_max"),
)


def check(conf: cfg.ConfigOpts, files: Sequence[_File] = ()) -> None:
    """Raise ConfigError if options that constrain each other disagree."""
    problems = []
    if not conf.host.strip():
        where = _source(conf, files, None, "host")
        problems.append(
            f"{where.where}: [DEFAULT] host is empty: set it to this compute host's name as "
            f"registered in a Masakari failover segment, or remove it to use the system "
            f"hostname{where.suffix()}"
        )
    for group, low, high in _ORDERED:
        lo, hi = conf[group][low], conf[group][high]
        if lo <= hi:
            continue
        where = _source(conf, files, group, low)
        if where.raw is None:
            where = _source(conf, files, group, high)
        problems.append(
            f"{where.where}: [{group}] {low} = {_fmt(lo)} is greater than {high} = {_fmt(hi)}: "
            f"{low} must not exceed {high}; lower {low} or raise {high}{where.suffix()}"
        )
    problems += _libvirt_problems(conf, files)
    if problems:
        raise ConfigError(problems)


def _libvirt_problems(conf: cfg.ConfigOpts, files: Sequence[_File]) -> list[str]:
    """[libvirt]: regular expressions that compile, UUIDs, an opt-in rule that can match."""
    lv = conf.libvirt
    problems = []

    def say(name: str, text: str) -> None:
        src = _source(conf, files, "libvirt", name)
        problems.append(f"{src.where}: [libvirt] {name} = {src.raw if src.raw is not None else ''}"
                        f" {text}{src.suffix()}")

    for name in ("match_name", "match_metadata"):
        try:
            re.compile(lv[name])
        except re.error as exc:
            say(name, f"is not a Python regular expression ({exc}): fix the pattern")
    bad = [u for u in lv.instance_uuids if not _UUID_RE.match(u.strip().lower())]
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


# --- the entry point ---------------------------------------------------------------------------


def find_default_config_files() -> list[str]:
    """The files read without --config-file, each only if present, later ones overriding.

    /etc/iim/relay.conf (the packaged file), then what oslo's usual search
    finds for project ``iim`` and program ``iim-relay`` (``/etc/iim/iim.conf``,
    ``/etc/iim/iim-relay.conf``, or the same under ``~/.iim``).
    """
    found = cfg.find_config_files(project=PROJECT, prog=PROG)
    if os.path.isfile(PACKAGED_CONFIG_FILE):
        found = [PACKAGED_CONFIG_FILE] + [f for f in found if f != PACKAGED_CONFIG_FILE]
    return found


def load(
    argv: Sequence[str],
    default_config_files: list[str] | None = None,
    *,
    conf: cfg.ConfigOpts | None = None,
) -> cfg.ConfigOpts:
    """Parse ``argv`` (without the program name) and the config files into ``conf``.

    ``conf`` defaults to the global ``cfg.CONF``; tests pass :func:`new_conf`.
    ``default_config_files`` of None means :func:`find_default_config_files`
    (``/etc/iim/relay.conf``, then oslo's search for ``/etc/iim/iim.conf``,
    ``/etc/iim/iim-relay.conf``, ``~/.iim/...``) and oslo's ``.conf.d``
    directories; a list means exactly those files and no default directories.

    Raises ConfigError naming every problem found; ``--help`` and ``--version``
    exit through SystemExit as usual.  Warnings about unknown sections and
    options are kept for :func:`config_warnings` and :func:`setup_logging`.
    """
    conf = cfg.CONF if conf is None else conf
    search = default_config_files is None
    if search:
        default_config_files = find_default_config_files()
    register_all(conf)
    previous = conf.__dict__.pop(_PLUGIN_ATTR, None)
    if previous is not None:  # loaded before, maybe with another auth_type: start over
        conf.clear()
        conf.unregister_opts(previous[1], group=previous[0])
    try:
        conf(
            args=list(argv),
            project=PROJECT,
            prog=PROG,
            version=iim_protocol.__version__,
            default_config_files=default_config_files,
            default_config_dirs=None if search else [],
            validate_default_values=True,
        )
    except cfg.ConfigFilesNotFoundError as exc:
        raise ConfigError(
            f"{path}: no such file: check the --config-file path" for path in exc.config_files
        ) from None
    except cfg.ConfigFilesPermissionDeniedError as exc:
        raise ConfigError(
            f"{path}: permission denied: make it readable by the user iim-relay runs as"
            for path in exc.config_files
        ) from None
    except cfg.ConfigDirNotFoundError as exc:
        raise ConfigError(
            f"{exc.config_dir}: no such directory: check the --config-dir path"
        ) from None
    except cfg.ConfigFileParseError as exc:
        raise ConfigError(
            f"{exc.config_file}: cannot parse: {exc.msg}; every line must be a [section], "
            "a 'key = value', an indented continuation or a # comment"
        ) from None
    except cfg.ConfigFileValueError as exc:
        # oslo converts command-line options (oslo.log's debug, log_file...) while it
        # parses, and its message names neither the file nor the value.
        raise ConfigError(_cli_opt_problems(conf, argv) or [f"{exc}"]) from None
    except cfg.RequiredOptError as exc:
        raise ConfigError(f"{exc}") from None
    except SystemExit as exc:
        # argparse's exit: --help/--version (0), a bad argument, or (oslo turns it into
        # one) a bad value for a command-line option found in a config file.
        problems = _cli_opt_problems(conf, argv) if exc.code not in (0, None) else []
        if problems:
            raise ConfigError(problems) from None
        raise

    try:
        files = [_File.read(path) for path in _config_files(conf, argv)]
    except cfg.ParseError as exc:  # pragma: no cover - oslo parsed the same files just now
        raise ConfigError(f"{exc.filename}: cannot parse: {exc}") from None

    problems = _register_auth_plugin(conf, files)
    value_problems = _check_values(conf, files)
    problems += value_problems
    if not value_problems:
        try:
            check(conf, files)
        except ConfigError as exc:
            problems += exc.problems
    if problems:
        raise ConfigError(problems)

    setattr(conf, _WARNINGS_ATTR, _unknown_options(conf, files))
    setattr(conf, _FILES_ATTR, [parsed.path for parsed in files])
    return conf


def config_files(conf: cfg.ConfigOpts) -> list[str]:
    """The files :func:`load` read, later ones overriding earlier ones."""
    return list(conf.__dict__.get(_FILES_ATTR, []))


def config_warnings(conf: cfg.ConfigOpts) -> list[str]:
    """What :func:`load` found suspicious but usable: unknown sections and options."""
    return list(conf.__dict__.get(_WARNINGS_ATTR, []))


# --- plain values for the rest of the relay ----------------------------------------------------


def settings_from(conf: cfg.ConfigOpts) -> RelaySettings:
    """The relay's settings as plain values, from a conf that :func:`load` accepted."""
    check(conf)
    ch, ms, lv = conf.channels, conf[masakari.GROUP], conf.libvirt
    return RelaySettings(
        host=conf.host,
        state_path=conf.state_path,
        shutdown_grace=conf.shutdown_grace,
        channels=ChannelSettings(
            socket_dir=ch.socket_dir,
            reconnect_initial=ch.reconnect_initial,
            reconnect_max=ch.reconnect_max,
            read_chunk=ch.read_chunk,
            max_bytes_per_second=ch.max_bytes_per_second,
            max_frames_per_second=ch.max_frames_per_second,
        ),
        delivery=DeliverySettings(
            backoff_initial=ms.backoff_initial,
            backoff_max=ms.backoff_max,
            jitter=ms.jitter,
            request_timeout=ms.request_timeout,
        ),
        metrics=MetricsSettings(listen=conf.metrics.listen),
        libvirt=LibvirtSettings(
            connection_uri=lv.connection_uri.strip(),
            opt_in=lv.opt_in,
            match_name=lv.match_name,
            match_metadata=lv.match_metadata,
            instance_uuids=tuple(lv.instance_uuids),
            serial_fallback=lv.serial_fallback,
            serial_port=lv.serial_port,
            socket_owner=lv.socket_owner,
            socket_group=lv.socket_group,
            reconnect_initial=lv.reconnect_initial,
            reconnect_max=lv.reconnect_max,
        ),
        config_warnings=tuple(config_warnings(conf)),
    )


DETECTOR_FIELDS = (
    "missed_heartbeats",
    "min_interval",
    "max_interval",
    "min_uptime",
    "max_pause",
    "cooldown",
    "max_notifications",
    "notification_window",
)


def detector_config_from(conf: cfg.ConfigOpts) -> dict[str, int | float]:
    """Keyword arguments for ``host_relay.detector.DetectorConfig``."""
    check(conf)
    return {name: conf.detector[name] for name in DETECTOR_FIELDS}


def setup_logging(conf: cfg.ConfigOpts, argv0: str = PROG) -> None:
    """Set up oslo.log from a loaded conf, then log what :func:`load` warned about.

    Raises ConfigError when the log file cannot be opened.
    """
    try:
        logging.setup(conf, argv0, version=iim_protocol.__version__)
    except OSError as exc:  # log_file or log_dir that cannot be opened
        target = exc.filename or conf.log_file
        raise ConfigError(
            f"{(config_files(conf) or ['the command line'])[-1]}: [DEFAULT] log_file "
            f"{target} cannot be opened ({exc.strerror}): create its directory, make it "
            "writable by the user iim-relay runs as, or remove log_file to log to stderr"
        ) from None
    log = logging.getLogger(__name__)
    for warning in config_warnings(conf):
        log.warning("%s", warning)

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

The jobs live in their own modules; this one puts them in order:

* ``sources``: the files oslo read, with line numbers, and where a value came from;
* ``problems``: one line per problem (:class:`ConfigError`, :func:`check`);
* ``auth``: the chosen keystoneauth plugin's options and what they lack;
* ``unknown``: warnings for unknown sections and options;
* ``build``: the plain values (:func:`settings_from`, :func:`detector_config_from`),
  the only readers of the parsed options;
* ``oslo_private``: every use of oslo.config's private API.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

from oslo_config import cfg
from oslo_log import log as logging

import iim_protocol
from host_relay.conf import auth, oslo_private, sources
from host_relay.conf.build import (
    DETECTOR_FIELDS,
    FILES_STASH,
    WARNINGS_STASH,
    config_files,
    config_warnings,
    detector_config_from,
    settings_from,
)
from host_relay.conf.opts import MODULES
from host_relay.conf.problems import ConfigError, check, check_values, cli_opt_problems
from host_relay.conf.unknown import unknown_options

__all__ = [
    "DETECTOR_FIELDS",
    "PACKAGED_CONFIG_FILE",
    "ConfigError",
    "check",
    "config_files",
    "config_warnings",
    "detector_config_from",
    "find_default_config_files",
    "load",
    "new_conf",
    "register_all",
    "settings_from",
    "setup_logging",
]

PROJECT = "iim"
PROG = "iim-relay"
# What the iim-relay packages install (packaging/); read first when no --config-file is given.
PACKAGED_CONFIG_FILE = "/etc/iim/relay.conf"


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
    auth.forget_auth_plugin(conf)  # loaded before, maybe with another auth_type: start over
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
        raise ConfigError(_cli_problems(conf, argv) or [f"{exc}"]) from None
    except cfg.RequiredOptError as exc:
        raise ConfigError(f"{exc}") from None
    except SystemExit as exc:
        # argparse's exit: --help/--version (0), a bad argument, or (oslo turns it into
        # one) a bad value for a command-line option found in a config file.
        problems = _cli_problems(conf, argv) if exc.code not in (0, None) else []
        if problems:
            raise ConfigError(problems) from None
        raise

    try:
        files = [sources.ConfigFile.read(path) for path in sources.config_files(conf, argv)]
    except cfg.ParseError as exc:  # pragma: no cover - oslo parsed the same files just now
        raise ConfigError(f"{exc.filename}: cannot parse: {exc}") from None

    problems = auth.register_auth_plugin(conf, files)
    value_problems = check_values(conf, files)
    problems += value_problems
    if not value_problems:
        try:
            check(conf, files)
        except ConfigError as exc:
            problems += exc.problems
    if problems:
        raise ConfigError(problems)

    oslo_private.stash(conf, WARNINGS_STASH, unknown_options(conf, files))
    oslo_private.stash(conf, FILES_STASH, [parsed.path for parsed in files])
    return conf


def _cli_problems(conf: cfg.ConfigOpts, argv: Sequence[str]) -> list[str]:
    return cli_opt_problems(conf, sources.config_files(conf, argv))


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

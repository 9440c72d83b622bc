"""iim-relay's oslo.config options, one module per group (as masakari-monitors lays them out).

Importing this package registers every group on the global ``CONF``.  Code
that needs an independent ConfigOpts (tests, tools) uses :func:`new_conf`.
Only the entry points read options; everything else takes the plain values
of :func:`settings_from` and :func:`detector_config_from`.
"""

import importlib
from typing import TYPE_CHECKING, Any

from oslo_config import cfg

from host_relay.conf import channels, default, detector, libvirt, masakari, metrics, witnesses

if TYPE_CHECKING:
    from host_relay.conf.loader import (
        ConfigError,
        check,
        config_files,
        config_warnings,
        detector_config_from,
        load,
        new_conf,
        register_all,
        settings_from,
        setup_logging,
    )

# The loader's functions are imported on first use, not with this package: the
# dataclasses they build (host_relay.settings, host_relay.detector_config) read
# their bounds from the option modules of this package, which would otherwise
# be a circular import.
_LOADER_NAMES = frozenset({
    "ConfigError",
    "check",
    "config_files",
    "config_warnings",
    "detector_config_from",
    "load",
    "new_conf",
    "register_all",
    "settings_from",
    "setup_logging",
})


def __getattr__(name: str) -> Any:
    if name in _LOADER_NAMES or name == "loader":
        # import_module, not "from host_relay.conf import loader": that would ask
        # this very function for "loader" again before importing it.
        loader = importlib.import_module("host_relay.conf.loader")
        return loader if name == "loader" else getattr(loader, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


CONF = cfg.CONF
check_masakari = masakari.check_usable


def register_opts(conf: cfg.ConfigOpts) -> None:
    """Register every iim-relay group (not oslo.log's options: see register_all)."""
    for module in (default, channels, detector, witnesses, masakari, metrics, libvirt):
        module.register_opts(conf)


register_opts(CONF)

__all__ = [
    "CONF",
    "ConfigError",
    "check",
    "check_masakari",
    "config_files",
    "config_warnings",
    "detector_config_from",
    "load",
    "new_conf",
    "register_all",
    "register_opts",
    "settings_from",
    "setup_logging",
]

"""[masakari] authentication: register the chosen keystoneauth plugin's options, and say
what is missing.

keystoneauth registers a plugin's options only when the client loads it, so
their values would be checked hours later.  :func:`register_auth_plugin`
registers them at start-up (as keystoneauth's loader will) so the loader
checks them with the rest.  Whether the set-up is complete enough to run is
``host_relay.conf.masakari.check_usable``'s question, asked before ``run``.
"""

from __future__ import annotations

import difflib
from collections.abc import Sequence
from importlib.metadata import entry_points

from keystoneauth1 import loading as ks_loading
from oslo_config import cfg

from host_relay.conf import masakari, oslo_private
from host_relay.conf.sources import ConfigFile, source

# load() keeps the (group, opts) it registered for the chosen auth_type on the
# ConfigOpts, to unregister them before a later load.
PLUGIN_STASH = "_iim_auth_plugin_opts"


def _auth_section(conf: cfg.ConfigOpts) -> str:
    return conf[masakari.GROUP].auth_section or masakari.GROUP


def _auth_plugin_names() -> list[str]:
    # The entry points, not ks_loading.get_available_plugin_names(): that imports every
    # plugin and logs a complaint for each one whose optional dependencies are missing.
    return sorted({ep.name for ep in entry_points(group="keystoneauth1.plugin")})


def forget_auth_plugin(conf: cfg.ConfigOpts) -> None:
    """Undo an earlier :func:`register_auth_plugin` (maybe for another auth_type)."""
    previous = oslo_private.unstash(conf, PLUGIN_STASH)
    if previous is not None:
        conf.clear()
        conf.unregister_opts(previous[1], group=previous[0])


def register_auth_plugin(conf: cfg.ConfigOpts, files: Sequence[ConfigFile]) -> list[str]:
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
        src = source(files, section, "auth_type")
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
        src = source(files, section, "auth_type")
        return [
            f"{src.where}: [{section}] auth_type = {name}: the plugin cannot be loaded "
            f"({type(exc).__name__}: {exc}); install what it needs or choose another"
            f"{src.suffix()}"
        ]
    conf.register_opts(plugin_opts, group=section)
    oslo_private.stash(conf, PLUGIN_STASH, (section, plugin_opts))
    return []

"""Every iim-relay option, for ``oslo-config-generator`` (namespace ``iim-relay``).

The ``oslo.config.opts`` entry point in pyproject.toml points here.  oslo.log's
options come from its own namespace (see etc/iim-relay-config-generator.conf);
keystoneauth's are listed with the ``[masakari]`` group, as OpenStack projects
do, since keystoneauth1 has no namespace of its own.
"""

from __future__ import annotations

from oslo_config import cfg

from host_relay.conf import channels, default, detector, libvirt, masakari, metrics, witnesses

# One module per group, in the order the sample lists them.
MODULES = (default, channels, detector, witnesses, masakari, metrics, libvirt)


def list_opts() -> list[tuple[str | cfg.OptGroup, list[cfg.Opt]]]:
    result: list[tuple[str | cfg.OptGroup, list[cfg.Opt]]] = []
    for module in MODULES:
        for group, group_opts in module.list_opts().items():
            result.append((group, list(group_opts)))
    return result

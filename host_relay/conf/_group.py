"""A helper every option module uses to register its group."""

from __future__ import annotations

from oslo_config import cfg


def register_group(conf: cfg.ConfigOpts, group: cfg.OptGroup) -> None:
    """Register a fresh copy of ``group`` on ``conf``.

    oslo's register_group stores a *shallow* copy of the OptGroup it is given,
    so every ConfigOpts registering the same module-level OptGroup would share
    one dict of registered options (and of set_default values): options
    registered on a test's ConfigOpts would appear on the global CONF.
    """
    conf.register_group(cfg.OptGroup(group.name, title=group.title, help=group.help))

"""Plain values for the rest of the relay, built from a loaded configuration.

Each dataclass says which option group it comes from (``OPTION_GROUP``) and
which option each field is (``bounds.opt_field``), so building one is a
loop, not a list of names to keep in step with the options.
"""

from __future__ import annotations

import dataclasses
from typing import Any, TypeVar

from oslo_config import cfg

from host_relay.conf import bounds, oslo_private
from host_relay.conf.problems import check
from host_relay.detector_config import DetectorConfig
from host_relay.settings import (
    ChannelSettings,
    DeliverySettings,
    LibvirtSettings,
    MetricsSettings,
    RelaySettings,
    WitnessSettings,
)

# load() keeps its warnings on the ConfigOpts it parsed (oslo's ConfigOpts has no place for them).
WARNINGS_STASH = "_iim_config_warnings"
FILES_STASH = "_iim_config_files"  # the files load() read, in oslo's order

# One field per [detector] option (tests/host_relay/test_conf_bounds.py checks it).
DETECTOR_FIELDS = tuple(f.name for f in dataclasses.fields(DetectorConfig))

T = TypeVar("T")


def from_options(cls: type[T], conf: cfg.ConfigOpts, **extra: Any) -> T:
    """``cls`` with every ``opt_field`` read from its option in ``cls.OPTION_GROUP``."""
    name = cls.OPTION_GROUP  # type: ignore[attr-defined]
    group = conf if name == "DEFAULT" else conf[name]
    values = {}
    for field in dataclasses.fields(cls):  # type: ignore[arg-type]
        if bounds.field_opt(field) is not None:
            value = group[field.name]
            values[field.name] = tuple(value) if isinstance(value, list) else value
    return cls(**values, **extra)


def config_warnings(conf: cfg.ConfigOpts) -> list[str]:
    """What ``load`` found suspicious but usable: unknown sections and options."""
    return list(oslo_private.stashed(conf, WARNINGS_STASH, []))


def config_files(conf: cfg.ConfigOpts) -> list[str]:
    """The files ``load`` read, later ones overriding earlier ones."""
    return list(oslo_private.stashed(conf, FILES_STASH, []))


def settings_from(conf: cfg.ConfigOpts) -> RelaySettings:
    """The relay's settings as plain values, from a conf that ``load`` accepted."""
    check(conf)
    return from_options(
        RelaySettings,
        conf,
        host=conf.host,
        channels=from_options(ChannelSettings, conf),
        delivery=from_options(DeliverySettings, conf),
        metrics=from_options(MetricsSettings, conf),
        libvirt=from_options(LibvirtSettings, conf),
        witnesses=from_options(WitnessSettings, conf),
        config_warnings=tuple(config_warnings(conf)),
    )


def detector_config_from(conf: cfg.ConfigOpts) -> DetectorConfig:
    """The detector's limits, every field read from its [detector] option."""
    check(conf)
    return from_options(DetectorConfig, conf)

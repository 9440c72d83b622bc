"""One source of truth for each limit: the plain-value dataclasses obey their oslo options.

For every dataclass built from options, each field declared with
``opt_field`` must be the registered option of the same name in its group,
and the dataclass must accept exactly the option's range: its min and max
pass, a step beyond either fails.  Together with
test_conf.py::test_every_numeric_option_has_min_and_max this pins that a
bound is written once, in the ``Opt``, and enforced everywhere.
"""

from __future__ import annotations

import dataclasses
import math

import pytest
from oslo_config import cfg, types

from host_relay.conf import bounds
from host_relay.conf import opts as conf_opts
from host_relay.detector_config import DetectorConfig

# dataclass -> the option group its fields come from
BUILT_FROM_OPTIONS = [
    (DetectorConfig, "detector"),
]


def _group_opts(group_name: str) -> dict[str, cfg.Opt]:
    for group, group_opts in conf_opts.list_opts():
        name = group if isinstance(group, str) else group.name
        if name == group_name:
            return {opt.dest: opt for opt in group_opts}
    raise KeyError(group_name)


def _fields(cls: type) -> list[tuple[dataclasses.Field, cfg.Opt]]:
    return [(f, bounds.field_opt(f)) for f in dataclasses.fields(cls) if bounds.field_opt(f)]


def _beyond(value: float, step: int, kind: types.Number) -> float:
    if isinstance(kind, types.Integer):
        return value + step
    return value + step * max(abs(value) * 1e-9, 1e-9)


def _cases() -> list[tuple[type, str, dataclasses.Field, cfg.Opt]]:
    return [(cls, group, f, opt) for cls, group in BUILT_FROM_OPTIONS for f, opt in _fields(cls)]


def _id(case: tuple) -> str:
    return f"{case[0].__name__}.{case[2].name}"


def test_detector_config_has_one_field_per_detector_option():
    assert [f.name for f, _ in _fields(DetectorConfig)] == list(_group_opts("detector"))
    assert [f.name for f in dataclasses.fields(DetectorConfig)] == list(_group_opts("detector"))


@pytest.mark.parametrize("case", _cases(), ids=_id)
def test_field_is_its_registered_option_with_its_default(case):
    cls, group, field, opt = case
    assert opt is _group_opts(group)[field.name], "the field must use the registered Opt"
    assert field.default == (tuple(opt.default) if isinstance(opt.default, list) else opt.default)


@pytest.mark.parametrize("case", _cases(), ids=_id)
def test_field_accepts_exactly_the_options_range(case):
    cls, _group, field, opt = case
    if not isinstance(opt.type, (types.Integer, types.Float)):
        pytest.skip("not numeric")
    lo, hi = opt.type.min, opt.type.max
    assert lo is not None and hi is not None
    others = {}
    if cls is DetectorConfig and field.name in ("min_interval", "max_interval"):
        # max_interval must not be below min_interval: test each at the other's extreme.
        others = {"max_interval": 60.0} if field.name == "min_interval" else {"min_interval": 0.1}
    for good in (lo, hi):
        assert getattr(cls(**{**others, field.name: good}), field.name) == good
    for bad in (_beyond(lo, -1, opt.type), _beyond(hi, +1, opt.type), math.nan):
        if isinstance(opt.type, types.Integer) and isinstance(bad, float):
            continue  # a float is refused for another reason (type), tested below
        with pytest.raises(ValueError, match=rf"{field.name}=.* must be within \[{lo}, {hi}\]"):
            cls(**{**others, field.name: bad})


def test_detector_config_error_names_bounds_and_reason():
    with pytest.raises(ValueError) as info:
        DetectorConfig(missed_heartbeats=1)
    assert str(info.value) == (
        "missed_heartbeats=1 must be within [2, 100]: fewer would call a guest hung after one "
        "late heartbeat (0: every guest hung); more makes hang detection useless"
    )
    with pytest.raises(ValueError, match="max_notifications must be an integer, not float"):
        DetectorConfig(max_notifications=3.0)
    with pytest.raises(ValueError, match="cooldown must be a number, not bool"):
        DetectorConfig(cooldown=True)
    with pytest.raises(ValueError, match="must not be below min_interval"):
        DetectorConfig(min_interval=5.0, max_interval=4.0)


def test_bounds_refuses_an_unbounded_or_non_numeric_option():
    assert bounds.bounds(cfg.IntOpt("n", min=1, max=5)) == (1, 5)
    with pytest.raises(TypeError, match="needs both min= and max="):
        bounds.bounds(cfg.IntOpt("n", min=1))
    with pytest.raises(TypeError, match="not numeric"):
        bounds.bounds(cfg.StrOpt("s"))
    with pytest.raises(KeyError):
        bounds.find([cfg.StrOpt("s")], "t")

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
import subprocess
import sys

import pytest
from oslo_config import cfg, types

from host_relay.conf import bounds, masakari
from host_relay.conf import opts as conf_opts
from host_relay.detector_config import DetectorConfig
from host_relay.settings import BUILT_FROM_OPTIONS, LibvirtSettings, RelaySettings

# Every dataclass built from options, with the option group its fields come from.
CLASSES = [(cls, cls.OPTION_GROUP) for cls in (DetectorConfig, *BUILT_FROM_OPTIONS)]
# Fields that are not options: RelaySettings' host (required: the option's default is
# this machine's name) and the parts and warnings it is assembled from.
NOT_OPTIONS = {"host", "channels", "delivery", "libvirt", "metrics", "witnesses",
               "config_warnings"}
# Defaults that differ from the option's on purpose (each documented in its class).
DEFAULT_OVERRIDES = {("LibvirtSettings", "connection_uri"): ""}  # off unless configured


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
    return [(cls, group, f, opt) for cls, group in CLASSES for f, opt in _fields(cls)]


def _required(cls: type) -> dict:
    return {"host": "compute-1"} if cls is RelaySettings else {}


def _partners(cls: type, name: str) -> dict:
    """For a field in an ORDERED pair: its partner at the extreme that lets it move freely."""
    found = {}
    for low, high in bounds.ordered(cls):
        if name == low:
            found[high] = bounds.bounds(_group_opts(cls.OPTION_GROUP)[high])[1]
        elif name == high:
            found[low] = bounds.bounds(_group_opts(cls.OPTION_GROUP)[low])[0]
    return found


def _id(case: tuple) -> str:
    return f"{case[0].__name__}.{case[2].name}"


def test_detector_config_has_one_field_per_detector_option():
    assert [f.name for f, _ in _fields(DetectorConfig)] == list(_group_opts("detector"))
    assert [f.name for f in dataclasses.fields(DetectorConfig)] == list(_group_opts("detector"))


@pytest.mark.parametrize("cls, group", CLASSES, ids=lambda c: getattr(c, "__name__", c))
def test_every_field_is_an_option_of_its_group_or_named_as_not_one(cls, group):
    opts = _group_opts(group)
    for field in dataclasses.fields(cls):
        if bounds.field_opt(field) is None:
            assert field.name in NOT_OPTIONS, f"{cls.__name__}.{field.name} has no option"
        else:
            assert field.name in opts, f"{cls.__name__}.{field.name} is not a [{group}] option"
    for low, high in bounds.ordered(cls):
        assert {low, high} <= set(opts)


def test_every_iim_option_of_a_built_group_has_a_field():
    """Nothing is read from the options by hand: a new option gets its field or is named here."""
    fields = {(group, f.name) for cls, group in CLASSES for f, _ in _fields(cls)}
    not_fields = {("DEFAULT", "host"), ("masakari", "noauth_token")}  # the client reads it
    for _cls, group in CLASSES:
        # [masakari] also lists keystoneauth's options, which keystoneauth reads itself.
        own = masakari.masakari_opts if group == "masakari" else _group_opts(group).values()
        missing = {(group, opt.dest) for opt in own} - fields - not_fields
        assert not missing


@pytest.mark.parametrize("case", _cases(), ids=_id)
def test_field_is_its_registered_option_with_its_default(case):
    cls, group, field, opt = case
    assert opt is _group_opts(group)[field.name], "the field must use the registered Opt"
    expected = tuple(opt.default) if isinstance(opt.default, list) else opt.default
    expected = DEFAULT_OVERRIDES.get((cls.__name__, field.name), expected)
    assert field.default == expected


@pytest.mark.parametrize(
    "case", [c for c in _cases() if isinstance(c[3].type, (types.Integer, types.Float))], ids=_id)
def test_field_accepts_exactly_the_options_range(case):
    cls, _group, field, opt = case
    lo, hi = opt.type.min, opt.type.max
    assert lo is not None and hi is not None
    others = {**_required(cls), **_partners(cls, field.name)}
    for good in (lo, hi):
        assert getattr(cls(**{**others, field.name: good}), field.name) == good
    for bad in (_beyond(lo, -1, opt.type), _beyond(hi, +1, opt.type), math.nan):
        if isinstance(opt.type, types.Integer) and isinstance(bad, float):
            continue  # a float is refused for another reason (type), tested below
        with pytest.raises(ValueError, match=rf"{field.name}=.* must be within \[{lo}, {hi}\]"):
            cls(**{**others, field.name: bad})


def test_string_choices_come_from_the_option():
    allowed = bounds.choices(_group_opts("libvirt")["opt_in"])
    assert allowed == ("all", "match", "list")
    for value in allowed:
        assert LibvirtSettings(opt_in=value).opt_in == value
    with pytest.raises(ValueError, match="opt_in='some' must be one of all, match, list"):
        LibvirtSettings(opt_in="some")


@pytest.mark.parametrize("cls", [c for c, _ in CLASSES if bounds.ordered(c)],
                         ids=lambda c: c.__name__)
def test_ordered_pairs_are_enforced(cls):
    for low, high in bounds.ordered(cls):
        lo_opt, hi_opt = _group_opts(cls.OPTION_GROUP)[low], _group_opts(cls.OPTION_GROUP)[high]
        value = max(bounds.bounds(lo_opt)[0], bounds.bounds(hi_opt)[0])
        assert cls(**{**_required(cls), low: value, high: value})  # equal is fine
        bigger = min(bounds.bounds(lo_opt)[1], bounds.bounds(hi_opt)[1])
        with pytest.raises(ValueError, match=f"{low}=.* must not exceed {high}="):
            cls(**{**_required(cls), low: bigger, high: value})


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
    with pytest.raises(ValueError, match=r"min_interval=5.0 must not exceed max_interval=4.0"):
        DetectorConfig(min_interval=5.0, max_interval=4.0)


def test_bounds_refuses_an_unbounded_or_non_numeric_option():
    assert bounds.bounds(cfg.IntOpt("n", min=1, max=5)) == (1, 5)
    with pytest.raises(TypeError, match="needs both min= and max="):
        bounds.bounds(cfg.IntOpt("n", min=1))
    with pytest.raises(TypeError, match="not numeric"):
        bounds.bounds(cfg.StrOpt("s"))
    with pytest.raises(KeyError):
        bounds.find([cfg.StrOpt("s")], "t")


@pytest.mark.parametrize("first", [
    "import host_relay.settings",
    "import host_relay.detector_config",
    "import host_relay.detector",
    "import host_relay.conf.loader",
    "from host_relay import conf",
    "import host_relay.cli",
])
def test_imports_work_in_any_order_in_a_fresh_interpreter(first):
    """The dataclasses read the option modules, the loader builds the dataclasses: no cycle."""
    code = (f"{first}\n"
            "from host_relay import conf\n"
            "c = conf.load([], default_config_files=[], conf=conf.new_conf())\n"
            "assert conf.settings_from(c).channels.reconnect_max == 30.0\n"
            "assert conf.detector_config_from(c).late_tolerance == 2.0\n"
            "assert conf.loader.PROG == 'iim-relay'\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0, result.stderr

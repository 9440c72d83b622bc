"""Dataclass fields whose default and bounds are an oslo option's: each limit written once.

The relay's plain-value dataclasses (``host_relay.settings``,
``host_relay.detector_config``) are built from options, and code and tests
also build them by hand.  Either way a value must obey the same limits, so a
field does not repeat them: :func:`opt_field` ties the field to its ``Opt``
(the field's default is the option's default), and :func:`check`,
called from ``__post_init__``, checks every such field against the option's
type: ``min``/``max`` for numbers, ``choices`` for strings; and the pairs
of fields the class declares ``ORDERED`` (low must not exceed high).

This module imports only oslo.config, so the option modules and the
dataclasses can both use it.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable, Mapping
from typing import Any, Optional, Union

from oslo_config import cfg, types

Number = Union[int, float]

_OPT = "iim_opt"  # dataclass field metadata key: the cfg.Opt the field takes its limits from


def find(opts: Iterable[cfg.Opt], name: str) -> cfg.Opt:
    """The option ``name`` (its ``dest``) among ``opts``; KeyError if there is none."""
    for opt in opts:
        if opt.dest == name:
            return opt
    raise KeyError(f"no option {name!r}")


def bounds(opt: cfg.Opt) -> tuple[Number, Number]:
    """(min, max) of a numeric option; TypeError if it is not numeric or lacks a bound."""
    kind = opt.type
    if not isinstance(kind, (types.Integer, types.Float)):
        raise TypeError(f"option {opt.dest} is not numeric")
    if kind.min is None or kind.max is None:
        raise TypeError(f"option {opt.dest} needs both min= and max=")
    return kind.min, kind.max


def choices(opt: cfg.Opt) -> Optional[tuple[str, ...]]:
    """The values a string option allows, or None if it allows any."""
    allowed = getattr(opt.type, "choices", None)
    return tuple(allowed) if allowed else None


def opt_field(opts: Iterable[cfg.Opt], name: str, **kwargs: Any) -> Any:
    """A dataclass field taking its default and limits from option ``name`` in ``opts``.

    Pass ``default=`` to override the option's default (say why where you do);
    list defaults become tuples, so the dataclass stays hashable.
    """
    opt = find(opts, name)
    default = kwargs.pop("default", opt.default)
    if isinstance(default, list):
        default = tuple(default)
    return dataclasses.field(default=default, metadata={_OPT: opt}, **kwargs)


def field_opt(field: dataclasses.Field) -> Optional[cfg.Opt]:
    """The option a dataclass field was declared with by :func:`opt_field`, if any."""
    return field.metadata.get(_OPT)


def check_value(name: str, opt: cfg.Opt, value: Any, why: str = "") -> None:
    """Raise ValueError unless ``value`` is of ``opt``'s type and within its limits."""
    reason = f": {why}" if why else ""
    kind = opt.type
    if isinstance(kind, types.Integer):
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"{name} must be an integer, not {type(value).__name__}{reason}")
    elif isinstance(kind, types.Float):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValueError(f"{name} must be a number, not {type(value).__name__}{reason}")
    else:
        allowed = choices(opt)
        if allowed is not None and value not in allowed:
            raise ValueError(f"{name}={value!r} must be one of {', '.join(allowed)}{reason}")
        return
    lo, hi = bounds(opt)
    if math.isnan(value) or not lo <= value <= hi:
        raise ValueError(f"{name}={value!r} must be within [{lo}, {hi}]{reason}")


def ordered(cls: Any) -> tuple[tuple[str, str], ...]:
    """The (low, high) field pairs of a dataclass where low must not exceed high.

    Declared once, as the class's ``ORDERED`` ClassVar; the loader reports the
    same pairs with file and line.
    """
    return tuple(getattr(cls, "ORDERED", ()))


def check(instance: Any, why: Optional[Mapping[str, str]] = None) -> None:
    """Check every :func:`opt_field` of a dataclass instance, then its :func:`ordered` pairs.

    ``why`` adds a reason per field to its error message.  Raises ValueError.
    """
    why = why or {}
    for field in dataclasses.fields(instance):
        opt = field_opt(field)
        if opt is not None:
            check_value(field.name, opt, getattr(instance, field.name), why.get(field.name, ""))
    for low, high in ordered(type(instance)):
        lo, hi = getattr(instance, low), getattr(instance, high)
        if lo > hi:
            raise ValueError(f"{low}={lo!r} must not exceed {high}={hi!r}")

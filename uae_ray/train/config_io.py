"""Reading dataclass configurations (e.g. :class:`~uae_ray.train.config.TrainConfig`) from YAML.

A YAML config is a mapping of field names to values, e.g.::

    steps: 3000
    crop: [64, 64, 64]
    modalities: [CT, MR]
    modality_shift_prob: 0.5
    pair_prob: 0.25

Unknown keys are an error (typos must not be silently ignored); values are coerced to the
field's annotated type (lists -> tuples, ``2e-3`` -> float: PyYAML reads exponents without a dot
as strings).
"""

from __future__ import annotations

import dataclasses
import types
import typing
from pathlib import Path
from typing import Any, Mapping, TypeVar

import yaml

T = TypeVar("T")


def _coerce(value: Any, tp: Any, name: str) -> Any:
    """Convert ``value`` to the annotated type ``tp`` (scalars, optionals and tuples)."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _coerce(value, inner[0], name) if len(inner) == 1 else value
    if origin is tuple:
        if isinstance(value, (str, bytes)) or not isinstance(value, (list, tuple)):
            value = [value]
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_coerce(v, args[0], name) for v in value)
        if args and len(args) != len(value):
            raise ValueError(f"{name}: expected {len(args)} values, got {list(value)}")
        return tuple(_coerce(v, a, name) for v, a in zip(value, args)) if args else tuple(value)
    if tp is bool:
        if not isinstance(value, bool):
            raise ValueError(f"{name}: expected true/false, got {value!r}")
        return value
    if tp in (int, float, str):
        try:
            out = tp(value)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"{name}: cannot read {value!r} as {tp.__name__}") from exc
        if tp is int and isinstance(value, float) and out != value:
            raise ValueError(f"{name}: expected an integer, got {value!r}")
        return out
    return value


def coerce_fields(cls: type[T], values: Mapping[str, Any]) -> dict[str, Any]:
    """Check field names of a dataclass and coerce the values to their annotated types.

    Raises:
        ValueError: an unknown field name or a value of the wrong type.
    """
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(values) - names)
    if unknown:
        raise ValueError(f"unknown {cls.__name__} field(s): {', '.join(unknown)}")
    return {k: _coerce(v, hints[k], k) for k, v in values.items()}


def config_from_mapping(cls: type[T], values: Mapping[str, Any], base: T | None = None) -> T:
    """A dataclass instance: ``base`` (or the defaults) with ``values`` replacing its fields."""
    fields = coerce_fields(cls, values)
    return dataclasses.replace(base, **fields) if base is not None else cls(**fields)


def read_yaml_mapping(path: str | Path) -> dict[str, Any]:
    """The top-level mapping of a YAML file (an empty file is an empty mapping)."""
    with open(path) as fh:
        data = yaml.safe_load(fh)
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a mapping of config fields, got {type(data).__name__}")
    return data


def load_yaml_config(cls: type[T], path: str | Path, base: T | None = None) -> T:
    """Read a YAML file of ``cls`` field names into a ``cls`` instance (see :func:`config_from_mapping`)."""
    return config_from_mapping(cls, read_yaml_mapping(path), base)


def dump_yaml_config(config: Any, path: str | Path) -> None:
    """Write a dataclass instance as YAML (tuples as lists), readable by :func:`load_yaml_config`."""

    def plain(v: Any) -> Any:
        return [plain(x) for x in v] if isinstance(v, (tuple, list)) else v

    data = {k: plain(v) for k, v in dataclasses.asdict(config).items()}
    Path(path).write_text(yaml.safe_dump(data, sort_keys=False))

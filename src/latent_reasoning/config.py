"""Validated configuration dataclasses: a wrong key or value names itself and the valid choices."""

from __future__ import annotations

import dataclasses
import typing
from typing import Any


class ConfigError(ValueError):
    """A configuration key or value that cannot be used; raised before any work starts."""


def choices(*values: str, default: str) -> Any:
    """A dataclass field restricted to `values`."""
    return dataclasses.field(default=default, metadata={"choices": values})


def _coerce(name: str, value: Any, kind: Any) -> Any:
    """Turn `value` (possibly a string from the command line) into `kind`, or explain why not."""
    origin = typing.get_origin(kind)
    if origin is typing.Union or str(origin) == "<class 'types.UnionType'>":
        options = [k for k in typing.get_args(kind) if k is not type(None)]
        if value is None or (isinstance(value, str) and value.lower() in ("none", "null")):
            return None
        kind = options[0]
    if kind is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "1", "yes", "on", "false", "0", "no", "off"):
            return value.lower() in ("true", "1", "yes", "on")
        raise ConfigError(f"{name}={value!r}: expected true or false")
    if kind in (int, float):
        try:
            number = float(value) if isinstance(value, str) else value
            if kind is int:
                if float(number) != int(float(number)):
                    raise ValueError
                return int(float(number))
            return float(number)
        except (TypeError, ValueError):
            raise ConfigError(f"{name}={value!r}: expected {'an integer' if kind is int else 'a number'}") from None
    if kind is str:
        if value is None:  # e.g. YAML reads an unquoted "#..." as a comment, leaving nothing
            raise ConfigError(f"{name}: no value (quote values that start with '#' in YAML)")
        return str(value)
    if typing.get_origin(kind) in (list, tuple):
        if isinstance(value, str):
            value = [v for v in value.split(",") if v]
        inner = typing.get_args(kind)[0] if typing.get_args(kind) else str
        return [_coerce(name, v, inner) for v in value]
    if kind is dict or typing.get_origin(kind) is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{name}={value!r}: expected a mapping")
        return dict(value)
    return value


class Config:
    """Base for config dataclasses: values are coerced to their annotated types and checked on construction."""

    def __post_init__(self) -> None:
        hints = typing.get_type_hints(type(self))
        for field in dataclasses.fields(self):
            value = _coerce(field.name, getattr(self, field.name), hints[field.name])
            allowed = field.metadata.get("choices")
            if allowed and value not in allowed:
                raise ConfigError(f"{field.name}={value!r}: choose one of {list(allowed)}")
            setattr(self, field.name, value)
        self.check()

    def check(self) -> None:
        """Cross-field checks of a subclass; raise ConfigError naming the key."""

    @classmethod
    def keys(cls) -> list[str]:
        return [field.name for field in dataclasses.fields(cls)]

    @classmethod
    def from_dict(cls, values: dict[str, Any]):
        unknown = sorted(set(values) - set(cls.keys()))
        if unknown:
            raise ConfigError(f"unknown key {unknown[0]!r} for {cls.__name__}; valid keys: {cls.keys()}")
        return cls(**values)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def positive(name: str, value: float) -> None:
    if value <= 0:
        raise ConfigError(f"{name}={value!r}: must be positive")

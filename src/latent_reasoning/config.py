"""Validated configuration dataclasses: a wrong key or value names itself and the valid choices."""

from __future__ import annotations

import dataclasses
import difflib
import math
import typing
from pathlib import Path
from typing import Any


class ConfigError(ValueError):
    """A configuration key or value that cannot be used; raised before any work starts."""


def unknown_key(key: str, valid: list[str], owner: str) -> ConfigError:
    """The error for a key nobody owns, suggesting the nearest valid one (a typo is the usual cause)."""
    nearest = difflib.get_close_matches(key, valid, n=1)
    hint = f"; did you mean {nearest[0]!r}?" if nearest else ""
    return ConfigError(f"unknown key {key!r} for {owner}{hint} (valid keys: {', '.join(sorted(valid))})")


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
        expected = "an integer" if kind is int else "a number"
        try:
            number = float(value) if isinstance(value, str) else float(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{name}={value!r}: expected {expected}") from None
        if isinstance(value, bool) or not math.isfinite(number):
            raise ConfigError(f"{name}={value!r}: expected {expected}, finite")
        if kind is int:
            if number != int(number):
                raise ConfigError(f"{name}={value!r}: expected {expected}")
            return int(number)
        return number
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


def read_yaml(path: Path) -> Any:
    """A YAML file's content; a syntax error or undecodable bytes name the file and line."""
    import yaml

    try:
        return yaml.safe_load(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as error:
        line = path.read_bytes()[: error.start].count(b"\n") + 1
        raise ConfigError(f"{path}, line {line}: not UTF-8 text ({error.reason})") from None
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f", line {mark.line + 1} column {mark.column + 1}" if mark else ""
        problem = getattr(error, "problem", None) or str(error).splitlines()[0]
        raise ConfigError(f"{path}{where}: malformed YAML ({problem})") from None


class Config:
    """Base for config dataclasses: values are coerced to their annotated types and checked on construction.

    Every number must be finite and 0 or more (no key here means anything when negative); the keys in
    `positive_keys` must be above 0. `check` adds a subclass's own rules.
    """

    positive_keys: typing.ClassVar[tuple[str, ...]] = ()  # keys that must be above 0

    def __post_init__(self) -> None:
        hints = typing.get_type_hints(type(self))
        for field in dataclasses.fields(self):
            value = _coerce(field.name, getattr(self, field.name), hints[field.name])
            allowed = field.metadata.get("choices")
            if allowed and value not in allowed:
                raise ConfigError(f"{field.name}={value!r}: choose one of {list(allowed)}")
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                if field.name in self.positive_keys and value <= 0:
                    raise ConfigError(f"{field.name}={value!r}: must be positive")
                if value < 0:
                    raise ConfigError(f"{field.name}={value!r}: must be 0 or more")
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
            raise unknown_key(unknown[0], cls.keys(), cls.__name__)
        return cls(**values)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

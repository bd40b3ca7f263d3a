"""Methods: each a Config dataclass and a Method. `get(name)` returns the Method class."""

from __future__ import annotations

import importlib

from .base import Method, MethodConfig, Prediction

REGISTRY = {
    "no-cot": "sft:NoCoT",
    "cot": "sft:CoT",
    "cot-sc": "sft:CoTSC",
    "coconut": "coconut:Coconut",
    "slr": "coconut:StableLatentReasoning",
    "latro": "latro:LaTRO",
    "icot": "icot:ICoT",
}


def names() -> list[str]:
    return sorted(REGISTRY)


def get(name: str) -> type[Method]:
    if name not in REGISTRY:
        raise ValueError(f"unknown method {name!r}; choose one of {names()}")
    module_name, class_name = REGISTRY[name].split(":")
    return getattr(importlib.import_module(f".{module_name}", __name__), class_name)


__all__ = ["Method", "MethodConfig", "Prediction", "get", "names"]

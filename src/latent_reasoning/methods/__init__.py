"""Methods: each a Config dataclass and a Method. `get(name)` returns the Method class."""

from __future__ import annotations

import importlib

REGISTRY = {
    "no-cot": "sft:NoCoT",
    "cot": "sft:CoT",
    "cot-sc": "sft:CoTSC",
    "coconut": "coconut:Coconut",
    "slr": "coconut:StableLatentReasoning",
    "latro": "latro:LaTRO",
    "grpo": "grpo:GRPO",
    "lepo": "lepo:LEPO",
    "icot": "icot:ICoT",
    "softcot": "softcot:SoftCoT",
    "softcot++": "softcot:SoftCoTPlusPlus",
    "lta-thinker": "lta_thinker:LTAThinker",
}


def names() -> list[str]:
    return sorted(REGISTRY)


def get(name: str) -> type:
    if name not in REGISTRY:
        raise ValueError(f"unknown method {name!r}; choose one of {names()}")
    module_name, class_name = REGISTRY[name].split(":")
    return getattr(importlib.import_module(f".{module_name}", __name__), class_name)


def __getattr__(name: str):
    """Method, MethodConfig and Prediction on first use: they import torch, which `latent --help` must not wait for."""
    if name in ("Method", "MethodConfig", "Prediction"):
        return getattr(importlib.import_module(".base", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["Method", "MethodConfig", "Prediction", "get", "names"]

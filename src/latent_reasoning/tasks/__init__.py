"""Task families: loaders, generators and graders behind one `get(name)`."""

from __future__ import annotations

import importlib

from .base import DataError, Example, Task

# task name -> "module:Class"; modules are imported on first use so `latent --help` stays fast.
REGISTRY = {
    "multiplication": "multiplication:Multiplication",
    "parity": "parity:Parity",
    "arithmetic": "arithmetic:Arithmetic",
    "prosqa": "prosqa:ProsQA",
    "graph": "graph:Graph",
    "prontoqa": "prontoqa:ProntoQA",
    "gsm8k": "gsm8k:GSM8K",
    "gsm8k-aug": "gsm8k:GSM8KAug",
    "math500": "math500:MATH500",
    "arc-challenge": "multiple_choice:ARCChallenge",
    "aqua-rat": "multiple_choice:AQuARAT",
    "bigbench-date": "multiple_choice:BigBenchDate",
    "strategyqa": "strategyqa:StrategyQA",
}


def names() -> list[str]:
    return sorted(REGISTRY)


def get(name: str, **options) -> Task:
    """The Task called `name` (options such as `digits=5` go to its constructor)."""
    if name not in REGISTRY:
        raise ValueError(f"unknown task {name!r}; choose one of {names()}")
    module_name, class_name = REGISTRY[name].split(":")
    module = importlib.import_module(f".{module_name}", __name__)
    return getattr(module, class_name)(**options)


__all__ = ["DataError", "Example", "Task", "get", "names"]

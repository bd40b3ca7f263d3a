"""From names and options to a trained checkpoint or an evaluation: what `latent train/eval` and the demo share.

A run is described by one flat mapping (a YAML recipe plus key=value overrides):
    method, task, model            which method, task family and backbone
    task_options                   constructor options of the task (e.g. {digits: 5})
    DataConfig keys                where training and held-out examples come from
    TrainConfig keys               the trainer's (steps, lr, batch_size, ...)
    the method's Config keys       the method's own (max_new_tokens, lora, ...)
Every key must belong to exactly one of these, or the run stops before any work, naming it.
"""

from __future__ import annotations

import shlex
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from . import backbones, checkpoint, methods, tasks
from .config import Config, ConfigError
from .evaluate import evaluate
from .methods.base import chain_text, prompt_text
from .trainer import TrainConfig, Trainer, set_seed

RUN_KEYS = ("method", "task", "model", "task_options")


@dataclass
class DataConfig(Config):
    train_data: str | None = None  # file or folder; default: generate (generated tasks) or the hub
    train_split: str = "train"
    train_size: int = 10000  # generated training examples, for generated tasks without train_data
    eval_data: str | None = None  # held-out examples scored during training; default: generated
    eval_split: str = "valid"


@dataclass
class Run:
    method: str
    task: str
    model: str
    task_options: dict[str, Any]
    data: DataConfig
    train: TrainConfig
    method_config: methods.MethodConfig

    def describe(self, command: str | None = None) -> dict[str, Any]:
        """What config.yaml holds: enough to rebuild the run."""
        return {
            "method": self.method, "task": self.task, "model": self.model, "task_options": self.task_options,
            "seed": self.train.seed, "command": command or shlex.join(["latent", *sys.argv[1:]]),
            "data": self.data.to_dict(), "train": self.train.to_dict(), "method_config": self.method_config.to_dict(),
        }


def read_recipe(path: str | Path | None) -> dict[str, Any]:
    if path is None:
        return {}
    values = yaml.safe_load(Path(path).read_text()) or {}
    if not isinstance(values, dict):
        raise ConfigError(f"{path}: a recipe is a mapping of keys to values")
    return values


def parse_overrides(pairs: list[str]) -> dict[str, Any]:
    """`key=value` strings from the command line; `task.digits=5` (or `task_options={digits: 5}`) sets task options."""
    values: dict[str, Any] = {}
    for pair in pairs:
        if "=" not in pair:
            raise ConfigError(f"{pair!r}: expected key=value")
        key, value = pair.split("=", 1)
        if key.startswith("task."):
            values.setdefault("task_options", {})[key[5:]] = yaml.safe_load(value)
        elif key == "task_options":
            options = yaml.safe_load(value)
            if not isinstance(options, dict):
                raise ConfigError(f"task_options={value!r}: expected a mapping such as {{digits: 2}}, or task.KEY=VALUE")
            values.setdefault("task_options", {}).update(options)
        else:
            values[key] = value
    return values


def make_run(values: dict[str, Any], check_model_name: bool = True) -> Run:
    """Validate a flat mapping into a Run; any unknown key or bad value raises ConfigError naming it.

    `check_model_name` resolves the model before any work; a run read back from a checkpoint skips it,
    since the checkpoint holds its own weights (a LoRA one loads its base, which fails clearly there).
    """
    values = dict(values)
    for key in ("method", "task", "model"):
        if not values.get(key):
            raise ConfigError(f"missing {key!r}")
    try:
        method_class = methods.get(values["method"])
    except ValueError as error:
        raise ConfigError(str(error)) from None
    if values["task"] not in tasks.names():
        raise ConfigError(f"unknown task {values['task']!r}; choose one of {tasks.names()}")
    groups = {"data": DataConfig, "train": TrainConfig, "method": method_class.Config}
    split: dict[str, dict[str, Any]] = {name: {} for name in groups}
    for key, value in values.items():
        if key in RUN_KEYS:
            continue
        owner = [name for name, cls in groups.items() if key in cls.keys()]
        if not owner:
            valid = sorted(set(RUN_KEYS).union(*(cls.keys() for cls in groups.values())))
            raise ConfigError(f"unknown key {key!r} for method {values['method']!r}; valid keys: {valid}")
        split[owner[0]][key] = value
    if check_model_name:
        check_model(values["model"])
    if values.get("lora") in (True, "true", "True") and values["model"] in backbones.PRESETS:
        raise ConfigError(f"lora=true needs a pretrained backbone; {values['model']!r} is a random tiny preset")
    task_options = dict(values.get("task_options") or {})
    try:
        tasks.get(values["task"], **task_options)
    except TypeError as error:
        raise ConfigError(f"task_options {task_options} for task {values['task']!r}: {error}") from None
    return Run(values["method"], values["task"], values["model"], task_options,
               DataConfig(**split["data"]), TrainConfig(**split["train"]), method_class.Config(**split["method"]))


def check_model(name: str) -> None:
    """Fail fast on a model that is neither a preset, SmolLM2, a folder, nor a hub id whose config resolves."""
    if name in backbones.PRESETS or name == backbones.SMOLLM2 or Path(name).is_dir():
        return
    from transformers import AutoConfig

    try:
        AutoConfig.from_pretrained(name)
    except (OSError, ValueError) as error:
        raise ConfigError(f"model {name!r} is not a preset {list(backbones.PRESETS)}, not "
                          f"{backbones.SMOLLM2!r}, not a folder, and not loadable from the hub "
                          f"({type(error).__name__}: {str(error).splitlines()[0]})") from None


def load_examples(task: tasks.Task, data: str | None, split: str, size: int, seed: int,
                  exclude: list[tasks.Example] = ()) -> list[tasks.Example]:
    """Examples from a file/folder, or generated (generated tasks; never one of `exclude`), or from the hub."""
    if data is not None:
        return task.load(split=split, path=data)
    try:
        return task.generate(size, seed=seed, exclude={e.question for e in exclude})
    except NotImplementedError:
        return task.load(split=split)


def build_method(run: Run, train_texts: list[str] | None = None, weights: str | Path | None = None):
    """The run's Method on a fresh backbone, or on the weights saved in checkpoint folder `weights`."""
    task = tasks.get(run.task, **run.task_options)
    if weights is not None and checkpoint.is_peft(Path(weights)):
        from peft import PeftModel

        model, tokenizer = backbones.load_backbone(run.model)
        model = PeftModel.from_pretrained(model, weights, is_trainable=True)
    elif weights is not None:
        model, tokenizer = backbones.load_backbone(str(weights))
    else:
        model, tokenizer = backbones.load_backbone(run.model, texts=train_texts, seed=run.train.seed)
        if run.method_config.lora:
            model = backbones.add_lora(model, r=run.method_config.lora_r, alpha=run.method_config.lora_alpha)
    method = methods.get(run.method)(run.method_config, model, tokenizer, task)
    if weights is not None:
        method.load_extra_state(checkpoint.read_extras(weights))
    return method


def texts_of(examples: list[tasks.Example], separator: str = "\n") -> list[str]:
    """The text a word-level tokenizer for a tiny model is built from."""
    return [prompt_text(e) + chain_text(e, separator) for e in examples]


def train(run: Run, out: str | Path, resume: bool = False, command: str | None = None):
    """Train `run` into `out`/checkpoint; returns (method, history)."""
    out = Path(out)
    set_seed(run.train.seed)
    task = tasks.get(run.task, **run.task_options)
    train_examples = load_examples(task, run.data.train_data, run.data.train_split, run.data.train_size, run.train.seed)
    eval_examples = []
    if run.train.eval_size:
        eval_examples = load_examples(task, run.data.eval_data, run.data.eval_split, run.train.eval_size,
                                      run.train.seed + 10_000, exclude=train_examples)
    saved = checkpoint.find(out / "checkpoint") if resume else None
    if resume and saved is None:
        raise FileNotFoundError(f"--resume: no checkpoint in {out}")
    init_from = getattr(run.method_config, "init_from", None)  # e.g. coconut starts from a cot checkpoint
    if saved is not None:
        method = build_method(run, weights=saved)
    elif init_from:
        found = checkpoint.find(Path(init_from))
        if found is None:
            raise FileNotFoundError(f"init_from={init_from!r}: no checkpoint there")
        method = build_method(run, weights=found)
    else:
        method = build_method(run, texts_of(train_examples, task.step_separator))
    trainer = Trainer(method, train_examples, run.train, out, run.describe(command), evaluate=evaluate)
    history = trainer.fit(eval_examples, resume=resume)
    return method, history


def load_method(folder: str | Path):
    """Rebuild the Method saved in a checkpoint folder."""
    found, run = find_run(folder)
    return build_method(run, weights=found)


def find_run(folder: str | Path) -> tuple[Path, Run]:
    """The complete checkpoint at `folder` and the Run it was trained with (from its config.yaml)."""
    found = checkpoint.find(Path(folder))
    if found is None:
        raise FileNotFoundError(f"{folder}: no checkpoint here (no config.yaml)")
    saved = checkpoint.read_run(found)
    run = make_run({"method": saved["method"], "task": saved["task"], "model": saved["model"],
                    "task_options": saved.get("task_options") or {},
                    **saved["data"], **saved["train"], **saved["method_config"]}, check_model_name=False)
    return found, run


def check_answering_keys(run: Run, keys) -> None:
    """Keys changed at answer time (eval, inspect) must be the method's own config keys."""
    valid = type(run.method_config).keys()
    for key in keys:
        if key not in valid:
            raise ConfigError(f"unknown key {key!r} for method {run.method!r}; valid keys: {valid}")

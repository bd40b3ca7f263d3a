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

import random
import shlex
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from . import backbones, checkpoint, methods, tasks
from .config import Config, ConfigError, read_yaml, unknown_key
from .evaluate import evaluate
from .methods.base import StepTokens, chain_text, prompt_text
from .trainer import TrainConfig, Trainer, set_seed

RUN_KEYS = ("method", "task", "model", "task_options")
PATH_KEYS = ("train_data", "eval_data", "init_from")  # relative paths in a recipe mean the recipe's folder
RUN_FILES = ("checkpoint", "checkpoint.old", "checkpoint.tmp", "train")  # what `train` writes into --out
# Keys a resumed run may change: they decide when to score and save and how steps run (compiled or not), not
# what is trained.
RESUMABLE_KEYS = ("eval_every", "eval_batch_size", "save_every", "log_with", "compile")


@dataclass
class DataConfig(Config):
    train_data: str | None = None  # file or folder; default: generate (generated tasks) or the hub
    train_split: str = "train"
    train_size: int = 10000  # generated training examples, for generated tasks without train_data
    eval_data: str | None = None  # held-out examples; default: generated, else held out of a local train_data
    eval_split: str = "valid"

    positive_keys = ("train_size",)


@dataclass
class Run:
    method: str
    task: str
    model: str
    task_options: dict[str, Any]
    data: DataConfig
    train: TrainConfig
    method_config: methods.MethodConfig

    @property
    def model_label(self) -> str:
        """The model as results name it: a preset built with another depth (`layers=`) says so."""
        layers = self.method_config.layers
        return self.model if layers is None else f"{self.model}, {layers} layers"

    def describe(self, command: str | None = None) -> dict[str, Any]:
        """What config.yaml holds: enough to rebuild the run."""
        return {
            "method": self.method, "task": self.task, "model": self.model, "task_options": self.task_options,
            "seed": self.train.seed, "command": command or shlex.join(["latent", *sys.argv[1:]]),
            "data": self.data.to_dict(), "train": self.train.to_dict(), "method_config": self.method_config.to_dict(),
        }


def read_recipe(path: str | Path | None) -> dict[str, Any]:
    """A YAML recipe's keys; its relative paths (PATH_KEYS, and a `model` or softcot `assistant` starting with ".")
    are made relative to the recipe's folder, so a recipe means the same files wherever it is run from."""
    if path is None:
        return {}
    values = read_yaml(Path(path)) or {}
    if not isinstance(values, dict):
        raise ConfigError(f"{path}: a recipe is a mapping of keys to values")
    folder = Path(path).parent
    for key, value in values.items():
        is_path = key in PATH_KEYS or (key in ("model", "assistant") and str(value).startswith("."))
        if is_path and isinstance(value, str) and not Path(value).is_absolute():
            values[key] = str(folder / value)
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

    `check_model_name` resolves the model and `init_from` before any work; a run read back from a
    checkpoint skips it, since the checkpoint holds its own weights (a LoRA one loads its base, which
    fails clearly there). With `init_from` and no `model`, the model is the one that checkpoint was trained from.
    """
    values = dict(values)
    if values.get("init_from") and check_model_name:
        values["model"] = init_model(values["init_from"], values.get("model"))
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
            raise unknown_key(key, valid, f"method {values['method']!r}")
        split[owner[0]][key] = value
    if check_model_name:
        check_model(values["model"])
    layers = values.get("layers")
    if check_model_name and layers is not None and (values.get("init_from") or values["model"] not in backbones.PRESETS):
        where = f"init_from={values['init_from']!r}" if values.get("init_from") else f"model {values['model']!r}"
        raise ConfigError(f"layers={layers}: builds a tiny preset {list(backbones.PRESETS)} with another depth; "
                          f"{where} has its depth already")
    if values.get("lora") in (True, "true", "True") and values["model"] in backbones.PRESETS:
        raise ConfigError(f"lora=true needs a pretrained backbone; {values['model']!r} is a random tiny preset")
    task_options = dict(values.get("task_options") or {})
    try:
        task = tasks.get(values["task"], **task_options)
    except (TypeError, ValueError) as error:
        raise ConfigError(f"task_options {task_options} for task {values['task']!r}: {error}") from None
    data = DataConfig(**split["data"])
    for key in ("train_split", "eval_split"):
        check_split(task, key, getattr(data, key))
    return Run(values["method"], values["task"], values["model"], task_options,
               data, TrainConfig(**split["train"]), method_class.Config(**split["method"]))


def check_split(task: tasks.Task, key: str, split: str) -> None:
    """A split the task has in files or on the hub. A hub dataset may name further splits, and a task
    that is only generated has no splits to name: those pass."""
    known = set(task.splits) | set(task.hub_splits)
    if known and split not in known and not task.hub_id:
        raise ConfigError(f"{key}={split!r}: task {task.name!r} has the splits {sorted(known)}")


def init_model(init_from: str, model: str | None) -> str:
    """The model a run starting from checkpoint `init_from` has: the one that checkpoint was trained from."""
    found = find_checkpoint(init_from)
    if found is None:
        raise ConfigError(f"init_from={init_from!r}: no checkpoint there (a run folder or its checkpoint/)")
    if checkpoint.is_peft(found):
        raise ConfigError(f"init_from={init_from!r} holds a LoRA adapter; start from a checkpoint of full weights")
    trained_from = checkpoint.read_run(found)["model"]
    if model and model != trained_from:
        raise ConfigError(f"model={model!r} but init_from={init_from!r} holds a {trained_from!r} model; "
                          f"leave model out to use it")
    return trained_from


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
                  exclude: list[tasks.Example] = (), skip_bad: bool = False) -> list[tasks.Example]:
    """Examples from a file/folder, or generated (generated tasks; never one of `exclude`), or from the hub."""
    if data is not None:
        return task.load(split=split, path=data, skip_bad=skip_bad)
    if generates(task):
        return task.generate(size, seed=seed, exclude={e.question for e in exclude})
    return task.load(split=split, skip_bad=skip_bad)


def generates(task: tasks.Task) -> bool:
    return type(task).generate is not tasks.Task.generate


def hold_out(examples: list[tasks.Example], size: int, seed: int, source: str) -> tuple[list, list]:
    """(training, held-out): `size` examples drawn (seeded) out of a local training file, for held-out scores."""
    if size >= len(examples):
        raise ConfigError(f"eval_size={size}: train_data {source} holds only {len(examples)} examples to hold "
                          f"some out of; set eval_data= to a held-out file, or a smaller eval_size (0: none)")
    chosen = set(random.Random(seed).sample(range(len(examples)), size))
    print(f"holding out {size} of the {len(examples)} examples of {source} for held-out scoring "
          f"(eval_data= names a held-out file instead)", file=sys.stderr)
    return ([e for i, e in enumerate(examples) if i not in chosen], [e for i, e in enumerate(examples) if i in chosen])


def build_method(run: Run, train_texts: list[str] | None = None, weights: str | Path | None = None):
    """The run's Method on a fresh backbone, on the checkpoint it starts from (`init_from`), or on the
    weights saved in checkpoint folder `weights`."""
    task = tasks.get(run.task, **run.task_options)
    init_from = find_checkpoint(run.method_config.init_from) if run.method_config.init_from else None
    saved = weights or init_from
    if saved is not None and checkpoint.is_peft(Path(saved)):
        from peft import PeftModel

        model, tokenizer = backbones.load_backbone(str(init_from or run.model))  # the adapter's base
        model = PeftModel.from_pretrained(model, saved, is_trainable=True)
    elif saved is not None:
        model, tokenizer = load_saved(Path(saved))
    else:
        model, tokenizer = backbones.load_backbone(run.model, texts=train_texts, seed=run.train.seed,
                                                   layers=run.method_config.layers)
    if weights is None and run.method_config.lora:
        model = backbones.add_lora(model, r=run.method_config.lora_r, alpha=run.method_config.lora_alpha)
    method = methods.get(run.method)(run.method_config, model, tokenizer, task)
    if saved is not None:
        extras = checkpoint.read_extras(saved)
        # a new run from init_from counts its own training data (the step means place latent answers)
        method.load_extra_state(StepTokens.cleared(extras) if weights is None else extras)
    if weights is not None and (steps := checkpoint.trained_steps(weights)):
        # a curriculum (coconut's stage, icot's removal count) stands where its last step left it, so that a
        # checkpoint saved mid-course answers as the run did at that point, not as at the end of the course
        method.on_step(steps - 1)
    return method


def load_saved(folder: Path):
    """The backbone saved in a checkpoint folder; missing or damaged weights name the folder."""
    from safetensors import SafetensorError

    try:
        return backbones.load_backbone(str(folder))
    except (OSError, SafetensorError) as error:
        raise ConfigError(f"{folder}: cannot load the checkpoint's weights, is model.safetensors missing or "
                          f"truncated? ({type(error).__name__}: {str(error).splitlines()[0]})") from error


def texts_of(examples: list[tasks.Example], separator: str = "\n") -> list[str]:
    """The text a word-level tokenizer for a tiny model is built from."""
    return [prompt_text(e) + chain_text(e, separator) for e in examples]


def train(run: Run, out: str | Path, resume: bool = False, overwrite: bool = False, command: str | None = None,
          skip_bad: bool = False):
    """Train `run` into `out`/checkpoint; returns (method, history).

    A folder that already holds a run is refused unless `resume` (continue it) or `overwrite` (remove
    its files first, once the new run's data and model are ready).
    """
    out = Path(out)
    previous = [out / name for name in RUN_FILES if (out / name).exists()]
    if resume and overwrite:
        raise ConfigError("--resume continues the run in --out and --overwrite replaces it: give one")
    if previous and not (resume or overwrite):
        raise ConfigError(f"{out} already holds a run ({', '.join(p.name for p in previous)}): pass --resume "
                          f"to continue it or --overwrite to start over")
    saved = checkpoint.find(out / "checkpoint") if resume else None
    if resume and saved is None:
        raise ConfigError(f"--resume: no checkpoint in {out}")
    set_seed(run.train.seed)
    task = tasks.get(run.task, **run.task_options)
    train_examples = load_examples(task, run.data.train_data, run.data.train_split, run.data.train_size,
                                   run.train.seed, skip_bad=skip_bad)
    eval_examples = []
    if run.train.eval_size and run.data.eval_data is None and run.data.train_data is not None and not generates(task):
        # local training data never sends us to the hub for an eval split
        train_examples, eval_examples = hold_out(train_examples, run.train.eval_size, run.train.seed,
                                                 run.data.train_data)
    elif run.train.eval_size:
        eval_examples = load_examples(task, run.data.eval_data, run.data.eval_split, run.train.eval_size,
                                      run.train.seed + 10_000, exclude=train_examples, skip_bad=skip_bad)
    if saved is not None:
        method = build_method(run, weights=saved)
    else:
        method = build_method(run, texts_of(train_examples, task.step_separator))
    if overwrite:
        for path in previous:
            shutil.rmtree(path)
    trainer = Trainer(method, train_examples, run.train, out, run.describe(command), evaluate=evaluate)
    history = trainer.fit(eval_examples, resume=resume)
    return method, history


def resume_values(out: str | Path, given: dict[str, Any]) -> dict[str, Any]:
    """The flat values of the run saved in `out` (what --resume continues), after checking that the
    `given` ones (recipe and command line) agree with them; a mismatch names the differing keys."""
    found = checkpoint.find(Path(out) / "checkpoint")
    if found is None:
        raise ConfigError(f"--resume: no checkpoint in {out}")
    saved = saved_values(found)
    before, after = flat(make_run(saved, check_model_name=False)), flat(make_run({**saved, **given}))
    differing = [key for key in after if after[key] != before.get(key) and key not in RESUMABLE_KEYS]
    if differing:
        changes = ", ".join(f"{key}={before.get(key)!r} -> {after[key]!r}" for key in differing)
        raise ConfigError(f"--resume: {found}/config.yaml differs in {changes}; resume with the run's own "
                          f"values, or start a new run (--overwrite, or another --out)")
    return {**saved, **given}


def flat(run: Run) -> dict[str, Any]:
    return {"method": run.method, "task": run.task, "model": run.model, "task_options": run.task_options,
            **run.data.to_dict(), **run.train.to_dict(), **run.method_config.to_dict()}


def load_method(folder: str | Path):
    """Rebuild the Method saved in a checkpoint folder."""
    found, run = find_run(folder)
    return build_method(run, weights=found)


def find_checkpoint(folder: str | Path) -> Path | None:
    """The checkpoint of `folder`: a checkpoint folder itself, or a run folder (train --out) holding checkpoint/."""
    return checkpoint.find(Path(folder)) or checkpoint.find(Path(folder) / "checkpoint")


def find_run(folder: str | Path) -> tuple[Path, Run]:
    """The complete checkpoint at `folder` (a run folder or its checkpoint/) and the Run it was trained with."""
    found = find_checkpoint(folder)
    if found is None:
        raise ConfigError(f"{folder}: no checkpoint here (neither it nor its checkpoint/ holds a config.yaml)")
    return found, make_run(saved_values(found), check_model_name=False)


def saved_values(found: Path) -> dict[str, Any]:
    """The flat values of the run whose checkpoint is `found` (its config.yaml)."""
    saved = checkpoint.read_run(found)
    try:
        return {"method": saved["method"], "task": saved["task"], "model": saved["model"],
                "task_options": saved.get("task_options") or {},
                **saved["data"], **saved["train"], **saved["method_config"]}
    except (KeyError, TypeError) as error:
        raise ConfigError(f"{found}/config.yaml: not a run description (missing {error})") from None


def check_answering_keys(run: Run, keys) -> None:
    """Keys changed at answer time (eval, inspect) must be the method's own config keys."""
    valid = type(run.method_config).keys()
    for key in keys:
        if key not in valid:
            raise unknown_key(key, valid, f"answering with method {run.method!r}")

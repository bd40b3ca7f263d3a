"""Checkpoint folders, written atomically.

A checkpoint is a folder holding
    model.safetensors (+ config.json)  or  adapter_model.safetensors (LoRA)   the trained weights
    tokenizer files
    extras.safetensors      tensors a method keeps beyond the backbone (may be absent)
    config.yaml             everything needed to rebuild the run: method, task, model, both configs
    trainer_state.json      step, scheduler state, Python RNG state
    optimizer.pt, rng.pt    optimizer and torch RNG tensors (loaded with weights_only=True: never unpickled)
It is written to `<name>.tmp` and renamed into place, so a kill never leaves a half checkpoint;
the previous checkpoint is kept as `<name>.old` until the rename is done.
"""

from __future__ import annotations

import json
import random
import shutil
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from safetensors.torch import load_file, save_file

from .config import ConfigError, read_yaml


def is_peft(folder: Path) -> bool:
    """Whether the checkpoint holds a LoRA adapter (to load onto its base model) rather than full weights."""
    return (Path(folder) / "adapter_config.json").exists()


def write(folder: Path, method, run: dict[str, Any], state: dict[str, Any] | None = None, optimizer=None) -> Path:
    """Write a checkpoint of `method` (its model, tokenizer, extras) and the run description to `folder`."""
    folder = Path(folder)
    tmp, old = folder.with_name(folder.name + ".tmp"), folder.with_name(folder.name + ".old")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    with quiet_progress_bars():  # transformers' "Writing model shards" bar would break the training bar
        method.model.save_pretrained(tmp, safe_serialization=True)
    method.tokenizer.save_pretrained(tmp)
    extras = {name: tensor.detach().contiguous().cpu() for name, tensor in method.extra_state().items()}
    if extras:
        save_file(extras, tmp / "extras.safetensors")
    (tmp / "config.yaml").write_text(yaml.safe_dump(run, sort_keys=False))
    if state is not None:
        (tmp / "trainer_state.json").write_text(json.dumps(state, indent=1))
        torch.save({"torch": torch.get_rng_state(), "numpy": torch.from_numpy(_numpy_state())}, tmp / "rng.pt")
    if optimizer is not None:
        torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
    if folder.exists():
        shutil.rmtree(old, ignore_errors=True)
        folder.rename(old)
    tmp.rename(folder)
    shutil.rmtree(old, ignore_errors=True)
    return folder


@contextmanager
def quiet_progress_bars():
    from transformers.utils import logging as transformers_logging

    enabled = transformers_logging.is_progress_bar_enabled()
    transformers_logging.disable_progress_bar()
    try:
        yield
    finally:
        if enabled:
            transformers_logging.enable_progress_bar()


def find(folder: Path) -> Path | None:
    """The complete checkpoint at `folder`, or the previous one if a kill came between the two renames."""
    folder = Path(folder)
    for candidate in (folder, folder.with_name(folder.name + ".old")):
        if (candidate / "config.yaml").exists():
            return candidate
    return None


def read_run(folder: Path) -> dict[str, Any]:
    """The run description in config.yaml; malformed YAML names the file and line."""
    saved = read_yaml(Path(folder) / "config.yaml")
    if not isinstance(saved, dict):
        raise ConfigError(f"{Path(folder) / 'config.yaml'}: expected a run description (a mapping)")
    return saved


def read_extras(folder: Path) -> dict[str, torch.Tensor]:
    path = Path(folder) / "extras.safetensors"
    return load_file(path) if path.exists() else {}


def trained_steps(folder: Path) -> int:
    """How many optimizer steps the checkpoint's run had taken when it was saved (0 if unrecorded)."""
    path = Path(folder) / "trainer_state.json"
    return json.loads(path.read_text())["step"] if path.exists() else 0


def read_trainer_state(folder: Path, optimizer=None) -> dict[str, Any]:
    """Restore optimizer and RNG states from `folder`; return trainer_state.json."""
    folder = Path(folder)
    state = json.loads((folder / "trainer_state.json").read_text())
    if optimizer is not None:
        optimizer.load_state_dict(torch.load(folder / "optimizer.pt", weights_only=True))
    rng = torch.load(folder / "rng.pt", weights_only=True)
    torch.set_rng_state(rng["torch"])
    _set_numpy_state(rng["numpy"].numpy())
    random.setstate(_tuples(state["python_rng"]))
    return state


def _tuples(value):
    return tuple(_tuples(v) for v in value) if isinstance(value, list) else value


def _numpy_state() -> np.ndarray:
    _, keys, position, has_gauss, cached = np.random.get_state()
    return np.concatenate([keys.astype(np.int64), np.array([position, has_gauss], dtype=np.int64),
                           np.array([cached], dtype=np.float64).view(np.int64)])


def _set_numpy_state(packed: np.ndarray) -> None:
    keys = packed[:624].astype(np.uint32)
    position, has_gauss = int(packed[624]), int(packed[625])
    cached = float(packed[626:627].view(np.float64)[0])
    np.random.set_state(("MT19937", keys, position, has_gauss, cached))

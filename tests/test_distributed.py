"""`accelerate launch --multi_gpu --num_processes 2` on this CPU (DDP over gloo) trains, and matches one process."""

import os
import subprocess
import sys
from pathlib import Path

import torch

from latent_reasoning.run import load_method, make_run, train

SETTINGS = ["task.digits=2", "steps=6", "train_size=200", "eval_size=0", "save_every=0", "log_with=none",
            "mixed_precision=no", "lr=3e-3", "warmup_steps=2"]


def test_two_processes_train_and_equal_one_process_on_the_same_global_batch(tmp_path):
    launcher = Path(sys.executable).parent / "accelerate"
    # accelerate's --cpu flag starts a single process (multi-CPU there means MPI); --multi_gpu is its
    # torchrun launcher, which on a machine without GPUs runs DDP over gloo (DistributedType.MULTI_CPU)
    command = [str(launcher), "launch", "--multi_gpu", "--num_processes", "2", "--num_cpu_threads_per_process", "1",
               "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
               "-m", "latent_reasoning.cli", "train", "--method", "cot", "--task", "multiplication",
               "--model", "tiny-5m", "--out", str(tmp_path / "ddp"), "batch_size=4", *SETTINGS]
    result = subprocess.run(command, capture_output=True, text=True, timeout=600,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stderr[-3000:]
    two = load_method(tmp_path / "ddp" / "checkpoint")

    # each of the 2 processes took 4 examples of the global batch of 8; one process takes all 8
    values = dict(pair.split("=", 1) for pair in SETTINGS)
    options = {"task_options": {"digits": 2}}
    values.pop("task.digits")
    one_run = make_run({"method": "cot", "task": "multiplication", "model": "tiny-5m", "batch_size": 8,
                        **options, **values})
    one, history = train(one_run, tmp_path / "one")
    assert history[-1]["loss"] < history[0]["loss"]
    expected, got = one.model.state_dict(), two.model.state_dict()
    for name in expected:
        torch.testing.assert_close(got[name], expected[name], atol=2e-5, rtol=1e-4, msg=name)

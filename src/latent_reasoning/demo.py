"""`latent demo`: generate a task, train a tiny model with each method, score each on held-out examples.

Offline, on a CPU, in minutes (README has the measured times; `--quick`: under 2 for CI). Writes results.md,
results.json and results.png (accuracy against forward passes per answer) to the output folder.
"""

from __future__ import annotations

import time
from pathlib import Path

from . import report, tasks
from .evaluate import evaluate
from .run import make_run, train

# The embedded default: 16-bit parity on a 1M-parameter Llama. Answering directly, a small transformer stays at
# chance; CoT writes the 16 running parities and learns the task in about 250 steps; coconut starts from the CoT
# model and turns the running parities into continuous thoughts one a stage, each thought in the slot of the parity
# it replaces (markers=false: no <bot>/<eot>) and also trained to spell its own step (step_weight). With the markers
# one seed of two ended in the mid-curriculum dip; without, both CoT models tried stay at 100% from stage 4 on, at
# batch 128 and at 64 (bench/results/parity-16-markers-probe.txt).
# "multiplication" is the earlier demo: 2x2 multiplication on tiny-5m, where coconut and slr stay near no-CoT.
LATENT = {"first_stage": 1, "c": 1, "lr_schedule": "constant", "warmup_steps": 0, "reset_optimizer": False,
          "keep_position": True, "step_weight": 1.0, "markers": False}
# cot-sc answers with the cot model; latent methods train from the cot checkpoint; latro fine-tunes the cot model
# on its own sampled rationales, at the small budget and the lowest learning rate tried, which lost the least
# accuracy (bench/results/latro-multiplication-2x2-lr1e-5.jsonl).
LATRO = {"batch_size": 8, "lr": 1e-5, "rollouts": 8, "rationale_tokens": 24, "lora": False, "warmup_steps": 0}
SELF_CONSISTENCY = {"decoding": "self-consistency", "samples": 5, "temperature": 0.7}
TWO_STAGES = {"first_stage": 1, "c": 1, "stages": 2, "steps_per_stage": 100, "steps": 200, "warmup_steps": 0}

# Per task: the model, the data sizes, and (label, method trained or None, its keys, the model it starts from /
# answers with). Steps and stages are the full run's; QUICK shrinks them for CI.
DEMOS = {
    "parity": {
        "task_options": {"bits": 16}, "model": "tiny-1m", "train_size": 20000, "eval_n": 300, "batch_size": 128,
        "max_new_tokens": 24,
        "methods": [
            ("no-cot", "no-cot", {"steps": 300, "lr": 1e-3}, None),
            ("cot", "cot", {"steps": 300, "lr": 1e-3}, None),
            ("cot-sc", None, SELF_CONSISTENCY, "cot"),
            # 16 stages of 40 steps; the 16th makes every step latent. At 50 a stage held-out accuracy was 100% from
            # step 200 on (bench/results/parity-16-markers-probe.txt); 40 keeps the demo under 5 minutes on AMX
            ("coconut", "coconut", {**LATENT, "stages": 16, "steps_per_stage": 40, "steps": 640, "lr": 3e-4,
                                    "batch_size": 64}, "cot"),
        ],
    },
    "multiplication": {
        "task_options": {"digits": 2}, "model": "tiny-5m", "train_size": 6000, "eval_n": 300, "batch_size": 64,
        "max_new_tokens": 32,
        "methods": [
            ("no-cot", "no-cot", {"steps": 800}, None),
            ("cot", "cot", {"steps": 800}, None),
            ("cot-sc", None, SELF_CONSISTENCY, "cot"),
            ("coconut", "coconut", TWO_STAGES, "cot"),
            ("slr", "slr", TWO_STAGES, "cot"),
            ("latro", "latro", {**LATRO, "steps": 40}, "cot"),
        ],
    },
}
QUICK = {"train_size": 1000, "eval_n": 40, "batch_size": 16}  # and each run's steps shrunk by quick_keys


def quick_keys(keys: dict) -> dict:
    """A run's keys shrunk for --quick: a few steps, every curriculum stage still visited."""
    keys = dict(keys)
    if "batch_size" in keys:
        keys["batch_size"] = min(keys["batch_size"], QUICK["batch_size"])
    if "steps" not in keys:
        return keys
    if "stages" in keys:
        keys["steps_per_stage"] = 2
        keys["steps"] = 2 * (keys["stages"] - keys.get("first_stage", 0) + 1)
    else:
        keys["steps"] = 2 if keys.get("rollouts") else 40
    return keys


def run_demo(out: Path, quick: bool = False, seed: int = 0, task_name: str = "parity") -> list[dict]:
    demo = DEMOS[task_name]
    sizes = {**demo, **QUICK} if quick else demo
    task, model = tasks.get(task_name, **demo["task_options"]), demo["model"]
    train_examples = task.generate(sizes["train_size"], seed=seed)
    held_out = task.generate(sizes["eval_n"], seed=seed + 1, exclude={e.question for e in train_examples})
    data_file = out / "data" / "train.txt"
    data_file.parent.mkdir(parents=True, exist_ok=True)
    task.save(train_examples, data_file)
    print(f"demo: {task_name} {demo['task_options']}, {len(train_examples)} generated training examples, "
          f"{len(held_out)} held out; model {model}")

    rows, trained = [], {}
    for label, method_name, keys, base in demo["methods"]:
        train_seconds = 0.0
        if method_name is None:  # answer with another method's model, differently
            method, train_seconds = trained[base]
            method.config = type(method.config)(**{**method.config.to_dict(), **keys})
        else:
            keys = quick_keys(keys) if quick else keys
            values = {"method": method_name, "task": task_name, "task_options": demo["task_options"], "model": model,
                      "train_data": str(data_file), "batch_size": sizes["batch_size"], "lr": 1e-3,
                      "warmup_steps": keys["steps"] // 20, "save_every": 0, "eval_size": 0, "log_with": "none",
                      "seed": seed, "max_new_tokens": demo["max_new_tokens"], **keys}
            if base is not None:  # trained on top of another method's checkpoint
                values["init_from"] = str(out / base / "checkpoint")
            started = time.perf_counter()
            # the demo's folders are its own: a second demo replaces the first
            method, _ = train(make_run(values), out / label, overwrite=True,
                              command=f"latent demo --task {task_name}{' --quick' if quick else ''} --seed {seed}")
            train_seconds = time.perf_counter() - started
            trained[label] = (method, train_seconds)
        summary = evaluate(method, held_out, batch_size=100, out=out / label / "eval",
                           run={"task": task_name, "split": f"generated(seed={seed + 1})", "method": label,
                                "model": model, "seed": seed, "command": "latent demo"})
        summary["train_seconds"] = train_seconds
        rows.append(summary)
        print(f"demo: {label}: accuracy {summary['accuracy']:.3f}, "
              f"{summary['forward_passes']:.1f} forward passes per answer", flush=True)

    options = ", ".join(f"{key} {value}" for key, value in demo["task_options"].items())
    table = report.write(rows, out, f"latent demo: {task_name} ({options}), {model}, seed {seed}{' (quick)' if quick else ''}")
    print(table)
    print(f"demo: table and plot in {out}")
    return rows

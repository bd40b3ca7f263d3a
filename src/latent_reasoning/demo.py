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

# The embedded default: 2x2 multiplication (iCoT format, 8,100 distinct questions) on a 5M-parameter
# Llama. Explicit CoT learns it in about 800 steps on a CPU while answering directly stays near 0%,
# so the table shows a real gap; coconut and slr start from the cot model and turn its two steps
# into continuous thoughts, one stage per step.
TASK, TASK_OPTIONS = "multiplication", {"digits": 2}
FULL = {"train_size": 6000, "eval_n": 300, "steps": 800, "batch_size": 64, "steps_per_stage": 100, "latro_steps": 40}
QUICK = {"train_size": 1000, "eval_n": 40, "steps": 40, "batch_size": 16, "steps_per_stage": 10, "latro_steps": 2}

# (label, method trained, extra keys, model it starts from / answers with)
# cot-sc answers with the cot model; coconut and slr train from the cot checkpoint (stages 1 and 2);
# latro fine-tunes the cot model on its own sampled rationales, at the small budget and the lowest learning
# rate tried, which lost the least accuracy (bench/results/latro-multiplication-2x2-lr1e-5.jsonl).
LATENT = {"first_stage": 1, "stages": 2, "c": 1}
LATRO = {"batch_size": 8, "lr": 1e-5, "rollouts": 8, "rationale_tokens": 24, "lora": False}
METHODS = [
    ("no-cot", "no-cot", {}, None),
    ("cot", "cot", {}, None),
    ("cot-sc", None, {"decoding": "self-consistency", "samples": 5, "temperature": 0.7}, "cot"),
    ("coconut", "coconut", LATENT, "cot"),
    ("slr", "slr", LATENT, "cot"),
    ("latro", "latro", LATRO, "cot"),
]


def run_demo(out: Path, quick: bool = False, seed: int = 0) -> list[dict]:
    sizes = QUICK if quick else FULL
    task = tasks.get(TASK, **TASK_OPTIONS)
    train_examples = task.generate(sizes["train_size"], seed=seed)
    held_out = task.generate(sizes["eval_n"], seed=seed + 1, exclude={e.question for e in train_examples})
    data_file = out / "data" / "train.txt"
    data_file.parent.mkdir(parents=True, exist_ok=True)
    task.save(train_examples, data_file)
    print(f"demo: {TASK} {TASK_OPTIONS}, {len(train_examples)} generated training examples, "
          f"{len(held_out)} held out; model tiny-5m; {sizes['steps']} steps per method")

    rows, trained = [], {}
    for label, method_name, extra, base in METHODS:
        train_seconds = 0.0
        if method_name is None:  # answer with another method's model, differently
            method, train_seconds = trained[base]
            method.config = type(method.config)(**{**method.config.to_dict(), **extra})
        else:
            values = {"method": method_name, "task": TASK, "task_options": TASK_OPTIONS, "model": "tiny-5m",
                      "train_data": str(data_file), "steps": sizes["steps"], "batch_size": sizes["batch_size"],
                      "lr": 1e-3, "warmup_steps": sizes["steps"] // 20, "save_every": 0, "eval_size": 0,
                      "log_with": "none", "seed": seed, "max_new_tokens": 32, **extra}
            if method_name == "latro":
                values.update(init_from=str(out / base / "checkpoint"), steps=sizes["latro_steps"], warmup_steps=0)
            elif base is not None:  # a latent method: its curriculum on top of the cot checkpoint
                values.update(init_from=str(out / base / "checkpoint"), steps_per_stage=sizes["steps_per_stage"],
                              steps=2 * sizes["steps_per_stage"], warmup_steps=0)
            started = time.perf_counter()
            # the demo's folders are its own: a second demo replaces the first
            method, _ = train(make_run(values), out / label, overwrite=True,
                              command=f"latent demo{' --quick' if quick else ''} --seed {seed}")
            train_seconds = time.perf_counter() - started
            trained[label] = (method, train_seconds)
        summary = evaluate(method, held_out, batch_size=100, out=out / label / "eval",
                           run={"task": TASK, "split": f"generated(seed={seed + 1})", "method": label,
                                "model": "tiny-5m", "seed": seed, "command": "latent demo"})
        summary["train_seconds"] = train_seconds
        rows.append(summary)
        print(f"demo: {label}: accuracy {summary['accuracy']:.3f}, "
              f"{summary['forward_passes']:.1f} forward passes per answer", flush=True)

    table = report.write(rows, out, f"latent demo: {TASK} {TASK_OPTIONS['digits']}x{TASK_OPTIONS['digits']}, "
                                    f"tiny-5m, seed {seed}{' (quick)' if quick else ''}")
    print(table)
    print(f"demo: table and plot in {out}")
    return rows

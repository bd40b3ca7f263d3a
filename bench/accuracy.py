"""Accuracy benchmark: train each variant on generated data, score it on a held-out split, append result rows.

    python bench/accuracy.py --task multiplication --task-option digits=4 \
        --eval-data ../shared/data/icot-multiplication --eval-split valid \
        --train-size 40000 --steps 700 --batch-size 64 --seeds 0 \
        --variant cot=cot --variant no-cot=no-cot --out bench/results/baselines-multiplication-4x4.jsonl

A variant is `label=method[:key=value,key=value]`; its keys are method (or trainer) config keys, plus
`reuse=<label>` (answer with that variant's trained model, e.g. cot-sc with cot's) and `from=<label>`
(start from that variant's checkpoint of the same seed: coconut from cot, latro from a CoT warm-up).
Each row is DESIGN.md's result row plus train_seconds and the variant; `command` is this command line.

With --resume, a variant whose run folder already holds a checkpoint continues from it (pass
save_every=N in the variant so that a long run killed midway leaves one); train_seconds is then the
training time summed over the processes that trained it. A variant whose row (label and seed) --out
already holds is not scored again, unless a later variant reuses its model.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
from pathlib import Path

import yaml

from latent_reasoning import checkpoint, tasks
from latent_reasoning.evaluate import evaluate
from latent_reasoning.run import make_run, train


def parse_variant(text: str) -> tuple[str, str, dict]:
    label, _, spec = text.partition("=")
    method, _, options = spec.partition(":")
    values = dict(pair.split("=", 1) for pair in options.split(",") if pair)
    return label, method, {key: yaml.safe_load(value) for key, value in values.items()}


def read_rows(path: str) -> list[dict]:
    """The result rows a --out file holds (none if it does not exist yet)."""
    if not os.path.exists(path):
        return []
    return [json.loads(line) for line in open(path) if line.strip()]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--task", required=True)
    parser.add_argument("--task-option", action="append", default=[], help="key=value task option")
    parser.add_argument("--model", default="tiny-5m")
    parser.add_argument("--eval-data", required=True, help="file or folder of the held-out split")
    parser.add_argument("--eval-split", default="valid")
    parser.add_argument("--eval-limit", type=int)
    parser.add_argument("--train-size", type=int, default=20000)
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--seeds", default="0", help="comma-separated")
    parser.add_argument("--variant", action="append", required=True, help="label=method[:key=value,...]")
    parser.add_argument("--runs", default="runs/bench", help="where checkpoints go")
    parser.add_argument("--out", required=True, help="jsonl file the rows are appended to")
    parser.add_argument("--resume", action="store_true", help="continue variants whose run folder has a checkpoint")
    args = parser.parse_args()

    command = shlex.join(["python", "bench/accuracy.py", *sys.argv[1:]])
    task_options = {k: yaml.safe_load(v) for k, v in (o.split("=", 1) for o in args.task_option)}
    task = tasks.get(args.task, **task_options)
    held_out = task.load(split=args.eval_split, path=args.eval_data)[: args.eval_limit]
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    scored = {(r["method"], r["seed"]) for r in read_rows(args.out)} if args.resume else set()
    for seed in [int(s) for s in args.seeds.split(",")]:
        train_examples = task.generate(args.train_size, seed=seed, exclude={e.question for e in held_out})
        data = Path(args.runs) / f"{args.task}-train-seed{seed}.data"
        data.parent.mkdir(parents=True, exist_ok=True)
        # written whole and then renamed: processes sharing --runs and a seed never read a half-written file
        partial = data.with_name(f"{data.name}.{os.getpid()}.partial")
        task.save(train_examples, partial)
        os.replace(partial, data)
        trained = {}
        variants = list(map(parse_variant, args.variant))
        # a variant already scored is skipped, unless one still to be scored answers with its model
        needed = {options["reuse"] for label, _, options in variants
                  if "reuse" in options and (label, seed) not in scored}
        for label, method, options in variants:
            if (label, seed) in scored and label not in needed:
                print(f"{label}, seed {seed}: already in {args.out}; not scored again", flush=True)
                continue
            reuse = options.pop("reuse", None)
            start_from = options.pop("from", None)
            values = {"method": method, "task": args.task, "task_options": task_options, "model": args.model,
                      "train_data": str(data), "steps": args.steps, "batch_size": args.batch_size, "lr": args.lr,
                      "warmup_steps": max(args.steps // 20, 1), "save_every": 0, "eval_size": 0,
                      "log_with": "none", "seed": seed, **options}
            if start_from:
                values["init_from"] = str(Path(args.runs) / f"{args.task}-{start_from}-seed{seed}" / "checkpoint")
            if reuse:
                model, train_seconds = trained[reuse]
                model.config = type(model.config)(**{**model.config.to_dict(), **options})
            else:
                out = Path(args.runs) / f"{args.task}-{label}-seed{seed}"
                resume = args.resume and checkpoint.find(out / "checkpoint") is not None
                model, history = train(make_run(values), out, resume=resume, command=command)
                train_seconds = history[-1]["seconds"]
                trained[label] = (model, train_seconds)
            summary = evaluate(model, held_out, batch_size=100,
                               run={"task": args.task, "split": args.eval_split, "method": label, "model": args.model,
                                    "seed": seed, "command": command})
            summary.update(train_seconds=round(train_seconds, 1), steps=args.steps, batch_size=args.batch_size,
                           train_size=args.train_size, variant=f"{method}:{options}")
            with open(args.out, "a") as handle:
                handle.write(json.dumps(summary) + "\n")
            print(json.dumps(summary), flush=True)


if __name__ == "__main__":
    main()

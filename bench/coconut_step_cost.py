"""Where a coconut step's extra time goes: forward and backward of the coconut loss (ProsQA, tiny-5m, batch 16, the
trainer's precision) at stage 0 (no thoughts, but the sequence already read as prompt pass + continuation pass) and at
each --stages, against a plain forward + backward over the same positions per row (bench/train_speed.py's bare step with
the trainer's precision). Prints one JSON line per row: medians over --steps after 3 warm-up steps, seconds, and
microseconds per position; the plain row adds the last stage's microseconds per position over its own.

    OMP_NUM_THREADS=2 python bench/coconut_step_cost.py --stages 0,3
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import statistics
import time

import torch
from train_speed import BareStep, Counter

from latent_reasoning import tasks
from latent_reasoning.run import build_method, make_run, texts_of
from latent_reasoning.trainer import Bf16Weights, adamw, resolve_precision


def timed(step, steps: int) -> dict:
    """step() -> (forward s, backward s, positions); medians over `steps` after 3 warm-ups."""
    rows = [step() for _ in range(3 + steps)][3:]
    forward, backward, positions = (statistics.median(column) for column in zip(*rows))
    return {"forward_s": round(forward, 4), "backward_s": round(backward, 4), "positions": positions,
            "us_per_position": round(1e6 * (forward + backward) / positions, 1)}


def passes(loss_of, parameters, optimizer, precision: str) -> tuple[float, float]:
    """Seconds of the forward pass `loss_of()` and of its backward pass, under the trainer's precision (bf16 autocast,
    with the weights in bf16 during the passes for bf16-weights); then an untimed AdamW step."""
    weights = Bf16Weights(parameters, []) if precision == "bf16-weights" else contextlib.nullcontext()
    with weights:
        started = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision in ("bf16", "bf16-weights")):
            loss = loss_of()
        middle = time.perf_counter()
        loss.backward()
        ended = time.perf_counter()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return middle - started, ended - middle


def coconut_row(examples, stage: int, steps: int, precision: str) -> tuple[dict, torch.nn.Module]:
    run = make_run({"method": "coconut", "task": "prosqa", "model": "tiny-5m", "batch_size": 16, "c": 1, "stages": 6,
                    "first_stage": stage, "steps_per_stage": 1000, "mixed_precision": precision, "log_with": "none"})
    method = build_method(run, texts_of(examples))
    model = method.model.train()
    model.set_attn_implementation("eager")
    counter = Counter(model)
    optimizer = adamw(method.trainable_parameters(), lr=1e-5, weight_decay=0.0)
    batches = itertools.count()

    def step():
        first = next(batches) * 16 % (len(examples) - 16)
        before = counter.positions
        seconds = passes(lambda: method.loss(examples[first : first + 16], 0)[0], method.trainable_parameters(),
                         optimizer, resolve_precision(precision))
        return *seconds, counter.positions - before

    return {"row": "coconut", "stage": stage, **timed(step, steps)}, model


def plain_row(model, positions_per_row: int, steps: int, precision: str) -> dict:
    bare = BareStep(model, torch.float32, True, resolve_precision(precision), "eager")
    ids = torch.randint(0, model.config.vocab_size, (16, positions_per_row))

    def step():
        loss_of = lambda: bare.model(input_ids=ids, labels=ids).loss  # noqa: E731
        return *passes(loss_of, list(bare.model.parameters()), bare.optimizer, bare.precision), ids.numel()

    return {"row": "plain", "positions_per_row": positions_per_row, **timed(step, steps)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--stages", default="0,3")
    parser.add_argument("--steps", type=int, default=7)
    parser.add_argument("--precision", default="auto", help="the trainer's mixed_precision")
    args = parser.parse_args()
    examples = tasks.get("prosqa").generate(400, seed=0)
    print(json.dumps({"torch": torch.__version__, "threads": torch.get_num_threads(),
                      "precision": resolve_precision(args.precision)}), flush=True)
    for stage in map(int, args.stages.split(",")):
        row, model = coconut_row(examples, stage, args.steps, args.precision)
        print(json.dumps(row), flush=True)
        if stage == max(map(int, args.stages.split(","))):
            plain = plain_row(model, round(row["positions"] / 16), args.steps, args.precision)
            plain[f"stage_{stage}_over_plain"] = round(row["us_per_position"] / plain["us_per_position"], 3)
            print(json.dumps(plain), flush=True)


if __name__ == "__main__":
    main()

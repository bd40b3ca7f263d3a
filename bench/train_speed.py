"""Training speed of the real trainer and methods, against the machine's GEMM peak, measured side by side in one run.

1. GEMM peaks: a 2048^3 `a @ b` in fp32 (and bf16 where the CPU or GPU has it), median of 7 after 3 warm-ups.
2. SFT (`cot`) steps of the real Trainer at its default precision (or --precision) on realistic lengths, for tiny-5m (2x2
   multiplication, the demo's setting), tiny-20m (ProsQA) and SmolLM2-135M (GSM8K): tokens/s (real tokens,
   padding excluded), positions computed per real token (1.0 = no compute on padding), and model FLOP/s
   = (6 N tokens + attention) / s over the peaks. Attention counts 6 layers hidden len^2 per sequence of `len`
   real tokens (causal, forward + backward). Before each timed step, a bare Hugging Face step (forward with
   labels, backward, torch's default AdamW) on a copy of the model, on random tokens as many as the real ones
   (batch x mean length, no padding): in fp32, and with bf16 weights where bf16 is supported.
3. A coconut step (ProsQA, tiny-5m, stage 3) against a plain forward + backward + AdamW over the same
   number of positions (batch x the coconut batch's prompt + thoughts + continuation width), interleaved,
   with the trainer's AdamW, precision and attention.
4. A latro step (tiny-5m, 2x2 multiplication, the demo's LaTRO settings).

    OMP_NUM_THREADS=1 python bench/train_speed.py
    OMP_NUM_THREADS=1 python bench/train_speed.py --rows tiny-5m,tiny-20m,smollm2 --warmup 4 --steps 6 --compile
Medians of --steps timed steps after --warmup; read the ratios (the machine may be shared). Prints one JSON
line per row; `precision` is what the trainer ran with (bf16-weights: bf16 autocast with the weights in bf16 during the passes).
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

import torch

os.environ.setdefault("TQDM_DISABLE", "1")  # before the trainer imports tqdm: no progress bars between the rows
from latent_reasoning import tasks
from latent_reasoning.backbones import count_parameters
from latent_reasoning.run import build_method, make_run, texts_of
from latent_reasoning.trainer import Bf16Weights, Trainer, adamw, bf16_supported, resolve_attention, resolve_precision

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def gemm_peak(dtype: torch.dtype, size: int = 2048) -> float:
    """FLOP/s of one size^3 matrix product: median of 7 after 3 warm-ups."""
    a, b = torch.randn(size, size, dtype=dtype), torch.randn(size, size, dtype=dtype)
    times = []
    for repeat in range(10):
        started = time.perf_counter()
        a @ b
        if repeat >= 3:
            times.append(time.perf_counter() - started)
    return 2 * size**3 / statistics.median(times)


class Counter:
    """Counts, over every forward call of a model, the positions computed and the attention work
    (sum of len^2 over sequences read in one pass without a cache, len their real tokens)."""

    def __init__(self, model):
        self.positions, self.squared_lengths = 0, 0
        model.register_forward_pre_hook(self.hook, with_kwargs=True)

    def hook(self, module, args, kwargs):
        inputs = kwargs.get("input_ids")
        if inputs is None:
            inputs = kwargs.get("inputs_embeds")
        if inputs is None:
            return
        self.positions += inputs.shape[0] * inputs.shape[1]
        mask = kwargs.get("attention_mask")
        if kwargs.get("past_key_values") is None and mask is not None and mask.dim() == 2:
            self.squared_lengths += int((mask.sum(-1) ** 2).sum())


class BareStep:
    """A plain Hugging Face step on a copy of the model: forward with labels, backward, AdamW, on random ids.
    AdamW is torch's default (the issue's bare step, the same before and after) or, with `as_trainer`, built
    as the trainer builds it, with the trainer's precision and attention (to compare methods over the same
    optimizer and arithmetic: under bf16 autocast, and with bf16 weights during the passes for bf16-weights)."""

    def __init__(self, model, dtype: torch.dtype, as_trainer: bool, precision: str = "no", attention: str = "auto"):
        self.model = copy.deepcopy(model).to(dtype).train()
        if as_trainer:
            self.model.set_attn_implementation(resolve_attention(attention, self.model.device))
        make = adamw if as_trainer else torch.optim.AdamW
        self.optimizer = make(self.model.parameters(), lr=1e-5, weight_decay=0.0)
        self.precision = precision if as_trainer else "no"

    def seconds(self, batch: int, length: int) -> float:
        ids = torch.randint(0, self.model.config.vocab_size, (batch, length))
        bf16 = self.precision in ("bf16", "bf16-weights")
        weights = Bf16Weights(list(self.model.parameters()), []) if self.precision == "bf16-weights" else contextlib.nullcontext()
        started = time.perf_counter()
        with weights, torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            self.model(input_ids=ids, labels=ids).loss.backward()
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return time.perf_counter() - started


def train_steps(values: dict, train_examples, warmup: int, steps: int, bare_dtypes=(), bare_length="tokens",
                bare_as_trainer=False) -> dict:
    """Run warmup + steps + 1 steps of the real Trainer and time each of the `steps` after the warm-up. Before
    each timed step, one bare step per dtype of `bare_dtypes` runs over as many rows as the trainer's batch and
    as many `bare_length` ("tokens" or "positions") per row as the step before, so both see the same load."""
    run = make_run({"steps": warmup + steps + 1, "save_every": 0, "eval_size": 0, "log_with": "none",
                    "warmup_steps": 0, **values})
    method = build_method(run, texts_of(train_examples))
    precision = resolve_precision(run.train.mixed_precision)
    bare_steps = {dtype: BareStep(method.model, dtype, bare_as_trainer, precision, run.train.attention) for dtype in bare_dtypes}
    counter = Counter(method.model.get_decoder())  # the decoder: the SFT loss runs it without the head
    starts, ends, tokens, positions, squared = [], [], [], [], []
    bare = {dtype: [] for dtype in bare_dtypes}  # (tokens, seconds) per timed step
    real_on_step, real_loss = method.on_step, method.loss

    def on_step(step):
        ends.append(time.perf_counter())
        positions.append(counter.positions)
        squared.append(counter.squared_lengths)
        if warmup <= step < warmup + steps:
            count = {"tokens": tokens[-1], "positions": positions[-1] - positions[-2]}[bare_length]
            length = round(count / run.train.batch_size)
            for dtype, bare_step in bare_steps.items():
                bare[dtype].append((run.train.batch_size * length, bare_step.seconds(run.train.batch_size, length)))
        starts.append(time.perf_counter())
        return real_on_step(step)

    def loss(examples, step, **kwargs):
        value, metrics = real_loss(examples, step, **kwargs)
        tokens.append(metrics.get("tokens", 0.0))
        return value, metrics

    method.on_step, method.loss = on_step, loss
    with tempfile.TemporaryDirectory() as out:
        trainer = Trainer(method, train_examples, run.train, out, run.describe("bench/train_speed.py"))
        trainer.fit()
    timed = range(warmup, warmup + steps)  # step i runs from starts[i] to ends[i + 1]
    seconds = [ends[i + 1] - starts[i] for i in timed]
    per_step = lambda series: sum(series[i + 1] - series[i] for i in timed) / steps  # noqa: E731
    return {"method": method, "precision": precision,
            "seconds": statistics.median(seconds), "tokens": sum(tokens[i] for i in timed) / steps,
            "tokens_per_s": statistics.median(tokens[i] / s for i, s in zip(timed, seconds)),
            "positions": per_step(positions), "squared_lengths": per_step(squared),
            "positions_per_s": statistics.median((positions[i + 1] - positions[i]) / s for i, s in zip(timed, seconds)),
            "bare_per_s": {dtype: statistics.median(n / s for n, s in pairs) for dtype, pairs in bare.items()}}


def flops_per_step(model, result: dict) -> float:
    config = model.config
    layers = getattr(config, "num_hidden_layers", None) or config.n_layer
    hidden = getattr(config, "hidden_size", None) or config.n_embd
    return 6 * count_parameters(model) * result["tokens"] + 6 * layers * hidden * result["squared_lengths"]


def sft_row(name: str, task_name: str, examples, batch: int, max_length: int, peaks: dict, args) -> dict:
    values = {"method": "cot", "task": task_name, "model": name, "batch_size": batch, "max_length": max_length,
              "mixed_precision": args.precision, "attention": args.attention, "compile": args.compile}
    if task_name == "multiplication":
        values["task_options"] = {"digits": 2}
    dtypes = {"fp32": torch.float32, **({"bf16_weights": torch.bfloat16} if "bf16" in peaks else {})}
    result = train_steps(values, examples, args.warmup, args.steps, bare_dtypes=list(dtypes.values()))
    model = result["method"].model
    flops = flops_per_step(model, result) / result["seconds"]
    row = {"row": "sft", "model": name, "task": task_name, "batch": batch, "max_length": max_length,
           "precision": result["precision"], "attention": model.config._attn_implementation, "compile": args.compile,
           "threads": torch.get_num_threads(),
           "s_per_step": round(result["seconds"], 3), "tokens_per_step": round(result["tokens"]), "tokens_per_s": round(result["tokens_per_s"], 1),
           "positions_per_token": round(result["positions"] / result["tokens"], 3),
           "model_gflop_per_s": round(flops / 1e9, 2)}
    for dtype, peak in peaks.items():
        row[f"fraction_of_{dtype}_peak"] = round(flops / peak, 4)
    for label, dtype in dtypes.items():
        bare = result["bare_per_s"][dtype]
        row.update({f"bare_{label}_tokens_per_s": round(bare, 1),
                    f"trainer_over_bare_{label}": round(result["tokens_per_s"] / bare, 3)})
    return row


def coconut_row(examples, args) -> dict:
    values = {"method": "coconut", "task": "prosqa", "model": "tiny-5m", "batch_size": 16, "c": 1, "stages": 6,
              "first_stage": 3, "steps_per_stage": 1000, "mixed_precision": args.precision,
              "attention": args.attention}
    result = train_steps(values, examples, args.warmup, args.steps, bare_dtypes=[torch.float32],
                         bare_length="positions", bare_as_trainer=True)
    plain = result["bare_per_s"][torch.float32]
    # positions: every pass's inputs, prompt + thoughts + continuation (padded), as the plain step's rows
    return {"row": "coconut", "model": "tiny-5m", "task": "prosqa", "batch": 16, "stage": 3,
            "precision": result["precision"], "s_per_step": round(result["seconds"], 3),
            "positions_per_row": round(result["positions"] / 16), "positions_per_s": round(result["positions_per_s"], 1),
            "plain_positions_per_s": round(plain, 1), "coconut_over_plain": round(plain / result["positions_per_s"], 3)}


def latro_row(examples, args) -> dict:
    values = {"method": "latro", "task": "multiplication", "task_options": {"digits": 2}, "model": "tiny-5m",
              "batch_size": 8, "lr": 1e-5, "rollouts": 8, "rationale_tokens": 24, "mixed_precision": args.precision,
              "attention": args.attention}
    result = train_steps(values, examples, args.warmup, args.steps)
    return {"row": "latro", "model": "tiny-5m", "task": "multiplication-2x2", "batch": 8, "rollouts": 8,
            "precision": result["precision"], "s_per_step": round(result["seconds"], 3),
            "tokens_per_s": round(result["tokens_per_s"], 1), "positions_per_step": round(result["positions"])}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", default="tiny-5m,tiny-20m,smollm2,coconut,latro")
    parser.add_argument("--steps", type=int, default=3, help="timed steps")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--precision", default="auto", help="the trainer's mixed_precision for every row")
    parser.add_argument("--attention", default="auto", help="the trainer's attention for every row (auto: eager on a CPU)")
    parser.add_argument("--compile", action="store_true", help="the trainer's compile=true for every row (warm-up "
                                                                "steps then include the compiling)")
    parser.add_argument("--data", default=str(SHARED_DATA), help="folder holding gsm8k/ (SmolLM2's row)")
    args = parser.parse_args()
    rows = args.rows.split(",")

    peaks = {"fp32": gemm_peak(torch.float32)}
    if bf16_supported():
        peaks["bf16"] = gemm_peak(torch.bfloat16)
    print(json.dumps({"torch": torch.__version__, "cpu": platform.processor() or platform.machine(),
                      "cpu_capability": torch.backends.cpu.get_cpu_capability(), "bf16_supported": bf16_supported(),
                      "threads": torch.get_num_threads(), "loadavg_before": os.getloadavg()[0],
                      **{f"gemm_{dtype}_gflop_per_s": round(peak / 1e9, 1) for dtype, peak in peaks.items()}}), flush=True)

    multiplication = tasks.get("multiplication", digits=2).generate(2000, seed=0)
    prosqa = tasks.get("prosqa").generate(400, seed=0)
    if "tiny-5m" in rows:
        print(json.dumps(sft_row("tiny-5m", "multiplication", multiplication, 64, 512, peaks, args)), flush=True)
    if "tiny-20m" in rows:
        print(json.dumps(sft_row("tiny-20m", "prosqa", prosqa, 8, 512, peaks, args)), flush=True)
    if "smollm2" in rows:
        gsm8k = tasks.get("gsm8k").load(split="train", path=Path(args.data) / "gsm8k")[:400]
        # one warm-up step, unless the compiling needs the warm-up steps asked for
        smol_args = argparse.Namespace(**{**vars(args), "warmup": args.warmup if args.compile else 1})
        print(json.dumps(sft_row("smollm2-135m-instruct", "gsm8k", gsm8k, 8, 256, peaks, smol_args)), flush=True)
    if "coconut" in rows:
        print(json.dumps(coconut_row(prosqa, args)), flush=True)
    if "latro" in rows:
        print(json.dumps(latro_row(multiplication, args)), flush=True)
    print(json.dumps({"loadavg_after": os.getloadavg()[0]}), flush=True)


if __name__ == "__main__":
    main()

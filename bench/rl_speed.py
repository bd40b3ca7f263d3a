"""Speed, side by side in one run (issue 17): a lepo step against a grpo step, and a grpo step against
TRL's GRPOTrainer step, on the same model, G, prompts and lengths.

    pip install trl==1.16.0        # optional bench dependency (pyproject extra "bench")
    python bench/rl_speed.py --prompts 1 --g 4 --tokens 16 --latent-steps 8 --rounds 3

Four engines in one process, each with its own copy of the model (SmolLM2-135M-Instruct, fp32, full
fine-tuning) and its own AdamW: TRL's GRPOTrainer, our `grpo`, and `lepo` with each of its latent
estimators (`soft_label`, `gumbel_density`; L = `--latent-steps` soft tokens first). A step is a whole
RL update: sample G completions for each prompt, grade them, the loss, backward, clip, AdamW.

Interleaved: TRL's trainer runs `--rounds` + 1 steps; after each of them a callback runs one step of
each of ours, in an order that rotates from round to round, so that all see the same machine load
over time. Round 0 warms every engine up and is not counted. Figures are medians over the rounds;
throughput is sampled completion tokens per second of whole step time (as bench/latro_vs_trl.py).

Matched settings: lr 1e-6, no weight decay, gradient norm clipped to 1 (TRL's default; ours with the
trainer's fused AdamW, as `latent train` steps), temperature 1, top-k 30, top-p 0.95 (our defaults;
TRL's set to them), beta 0 (no reference model on either side), clip 0.2, advantages normalised
within each group with eps 1e-4, the GRPO paper's per-completion mean of the token losses (TRL's
loss_type "grpo"), one update per rollout (TRL's num_iterations 1, so it computes no old log-probs
either), generation with the model itself (no vLLM), the same prompt text, the same reward (the
task's grader), and fp32 throughout: TRL's configs default to bf16 mixed precision (`bf16=None`
becomes True), whose autocast on a CPU without bf16 units runs the matrix products several times
slower, so it is set off (`--trl-bf16` keeps TRL's default). TRL keeps its defaults otherwise
(gradient checkpointing on, as a user would run it; `--no-trl-checkpointing` turns it off).

`--bf16`, on a CPU with bf16 units: each side at its default precision there. TRL with its bf16 autocast (as
`--trl-bf16`); ours as `latent train`'s `mixed_precision=auto` resolves there, bf16-weights (bf16 copies of the
weights inside bf16 autocast for the rollout, the loss and backward; fp32 weights for clipping and AdamW).

Equal lengths: by default EOS does not end a completion (TRL: `min_new_tokens` = `--tokens`, which
masks EOS; ours: the rollouts' end-of-sequence set is emptied for this process), so every completion
on every engine has exactly `--tokens` tokens and the steps do equal work. `--stop-at-eos` keeps the
usual endings (step times then also follow each engine's sampled lengths).

Each of our steps is also split into phases (rollout, the rest of the loss, backward, optimizer) and
TRL's into generation and the rest: where the time goes.
"""

from __future__ import annotations

import os

os.environ.setdefault("TQDM_DISABLE", "1")

import argparse  # noqa: E402
import contextlib  # noqa: E402
import json  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import torch  # noqa: E402
from latro_vs_trl import StepClock, questions  # noqa: E402  (bench/ is the script's folder, so on sys.path)
from transformers import TrainerCallback  # noqa: E402

OURS = {"grpo": ("grpo", {}), "lepo": ("lepo", {"estimator": "soft_label"}),
        "lepo-gd": ("lepo", {"estimator": "gumbel_density"})}


class Ours:
    """One of our methods with its own model copy and the trainer's AdamW; `step` times one whole update as the
    trainer makes it (loss, backward, clip the gradient norm to 1, AdamW), by phases."""

    def __init__(self, method: str, extra: dict, args):
        from latent_reasoning.run import build_method, make_run
        from latent_reasoning.trainer import adamw

        values = {"method": method, "task": "gsm8k", "model": args.model, "lora": False, "seed": 0,
                  "rollouts": args.g, "completion_tokens": args.tokens, "rollout_temperature": 1.0, "beta": 0.0, **extra}
        if method == "lepo":
            values["latent_steps"] = args.latent_steps
        self.method = build_method(make_run(values))
        self.method.model.train()
        self.optimizer = adamw(self.method.trainable_parameters(), lr=1e-6, weight_decay=0.0)  # the trainer's (fused)
        self.generator = torch.Generator().manual_seed(0)
        self.rollout_seconds = 0.0
        rollout = self.method.rollout

        def timed_rollout(*given, **options):
            started = time.perf_counter()
            try:
                return rollout(*given, **options)
            finally:
                self.rollout_seconds = time.perf_counter() - started

        self.method.rollout = timed_rollout
        self.bf16 = args.bf16

    def precision(self):
        """The trainer's bf16-weights (--bf16): bf16 copies of the weights, inside bf16 autocast."""
        if not self.bf16:
            return contextlib.nullcontext()
        from latent_reasoning.trainer import Bf16Weights

        stack = contextlib.ExitStack()
        stack.enter_context(Bf16Weights(self.method.trainable_parameters(), []))
        stack.enter_context(torch.autocast("cpu", dtype=torch.bfloat16))
        return stack

    def step(self, step: int, batch) -> dict:
        started = time.perf_counter()
        with self.precision():
            loss, metrics = self.method.loss(batch, step, self.generator)
            scored = time.perf_counter()
            loss.backward()
        backward = time.perf_counter()
        torch.nn.utils.clip_grad_norm_(self.method.trainable_parameters(), 1.0)  # as the trainer and TRL do
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        ended = time.perf_counter()
        phases = {"rollout": self.rollout_seconds, "loss": scored - started - self.rollout_seconds,
                  "backward": backward - scored, "optimizer": ended - backward}
        return {"seconds": ended - started, "tokens": metrics["sampled_tokens"], "phases": phases}


class Interleave(TrainerCallback):
    """After each TRL step (timed by the StepClock before it), one step of each of our engines, in rotating order."""

    def __init__(self, ours: dict[str, Ours], batch, clock: StepClock, trl_generate: list[float]):
        self.ours, self.batch, self.clock, self.trl_generate = ours, batch, clock, trl_generate
        self.results = {name: [] for name in ours}

    def on_step_end(self, *_, **__):
        round_index = len(self.clock.seconds) - 1
        names = list(self.ours)
        shift = round_index % len(names)
        for name in names[shift:] + names[:shift]:
            result = self.ours[name].step(round_index, self.batch)
            self.results[name].append(result)
        line = [f"trl {self.clock.seconds[-1]:.1f}s (generate {self.trl_generate[-1]:.1f}s)"]
        line += [f"{name} {self.results[name][-1]['seconds']:.1f}s" for name in names]
        print(f"round {round_index}{' (warm-up)' if round_index == 0 else ''}: " + ", ".join(line), flush=True)


def ignore_eos() -> None:
    """EOS ends none of our rollouts in this process: `base.sample` reads its end tokens from `eos_ids`."""
    from latent_reasoning.methods import base

    base.eos_ids = lambda tokenizer, model: [-1]  # no token id is -1


def trl_trainer(args, batch, callbacks: list, generate_seconds: list[float]):
    from datasets import Dataset
    from trl import GRPOConfig, GRPOTrainer

    from latent_reasoning import tasks
    from latent_reasoning.backbones import load_backbone
    from latent_reasoning.methods.base import prompt_text

    task = tasks.get("gsm8k")
    model, tokenizer = load_backbone(args.model)
    dataset = Dataset.from_list([{"prompt": prompt_text(e), "index": i} for i, e in enumerate(batch)])

    def graded(completions, index, **_):  # the same grader our methods reward with
        return [float(task.grade(text, batch[i])) for text, i in zip(completions, index)]

    config = GRPOConfig(
        output_dir=str(Path(args.scratch) / "trl-grpo"), per_device_train_batch_size=args.prompts * args.g,
        num_generations=args.g, max_completion_length=args.tokens, temperature=1.0, top_k=30, top_p=0.95,
        beta=0.0, epsilon=0.2, loss_type="grpo", scale_rewards="group", num_iterations=1, use_vllm=False,
        generation_kwargs=None if args.stop_at_eos else {"min_new_tokens": args.tokens},
        gradient_checkpointing=args.trl_checkpointing, bf16=args.trl_bf16, learning_rate=1e-6, max_steps=args.rounds + 1,
        logging_steps=1, save_strategy="no", report_to=[], use_cpu=True, seed=0, disable_tqdm=True)
    trainer = GRPOTrainer(model=model, reward_funcs=graded, args=config, train_dataset=dataset,
                          processing_class=tokenizer, callbacks=callbacks)
    generate = trainer._generate

    def timed_generate(*given, **options):
        started = time.perf_counter()
        try:
            return generate(*given, **options)
        finally:
            generate_seconds.append(time.perf_counter() - started)

    trainer._generate = timed_generate
    return trainer


def summarize(runs: list[dict]) -> dict:
    seconds = [run["seconds"] for run in runs]
    tokens = [run["tokens"] for run in runs]
    summary = {"median_step_seconds": round(statistics.median(seconds), 2),
               "sampled_tokens_per_step": round(statistics.mean(tokens), 1),
               "sampled_tokens_per_second": round(sum(tokens) / sum(seconds), 2)}
    phases = runs[0].get("phases", {})
    summary["median_phase_seconds"] = {name: round(statistics.median(run["phases"][name] for run in runs), 2)
                                       for name in phases}
    return summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--prompts", type=int, default=1, help="questions per step")
    parser.add_argument("--g", type=int, default=4, help="G: completions sampled per question")
    parser.add_argument("--tokens", type=int, default=16, help="longest completion (exact length unless --stop-at-eos)")
    parser.add_argument("--latent-steps", type=int, default=8, help="lepo's L: soft tokens at the start of a completion")
    parser.add_argument("--rounds", type=int, default=3, help="timed rounds, after one warm-up round")
    parser.add_argument("--stop-at-eos", action="store_true", help="let EOS end a completion (lengths then differ)")
    parser.add_argument("--no-trl-checkpointing", dest="trl_checkpointing", action="store_false",
                        help="turn off TRL's default gradient checkpointing")
    parser.add_argument("--trl-bf16", action="store_true",
                        help="TRL's own default: bf16 mixed precision (autocast; slow on a CPU without bf16 units)")
    parser.add_argument("--bf16", action="store_true",
                        help="each side at its default precision on a CPU with bf16: TRL's bf16 autocast, our bf16-weights")
    parser.add_argument("--scratch", default="runs/bench-trl")
    parser.add_argument("--out", help="json file for the results")
    args = parser.parse_args()

    if args.bf16:
        from latent_reasoning.trainer import bf16_supported

        if not bf16_supported():
            parser.error("--bf16: this CPU has no bf16 units (torch.backends.cpu.get_cpu_capability())")
        args.trl_bf16 = True
    torch.manual_seed(0)
    if not args.stop_at_eos:
        ignore_eos()
    batch = questions(args.prompts)
    ours = {name: Ours(method, extra, args) for name, (method, extra) in OURS.items()}
    clock, generate_seconds = StepClock(rows=args.prompts * args.g), []
    interleave = Interleave(ours, batch, clock, generate_seconds)
    trainer = trl_trainer(args, batch, [clock, interleave], generate_seconds)
    trainer.train()

    results = {"trl": [{"seconds": s, "tokens": t, "phases": {"generate": g, "rest": s - g}}
                       for s, t, g in zip(clock.seconds, clock.tokens, generate_seconds)]}
    results.update(interleave.results)
    counted = {name: runs[1:] for name, runs in results.items()}  # round 0 is the warm-up
    summary = {"command": " ".join(["python", "bench/rl_speed.py", *sys.argv[1:]]),
               "torch_threads": torch.get_num_threads(),
               "settings": {"model": args.model, "prompts": args.prompts, "G": args.g, "tokens": args.tokens,
                            "latent_steps": args.latent_steps, "exact_lengths": not args.stop_at_eos,
                            "trl_gradient_checkpointing": args.trl_checkpointing, "trl_bf16": args.trl_bf16,
                            "ours_bf16_weights": args.bf16},
               "rounds": results}
    for name, runs in counted.items():
        summary[name] = summarize(runs)

    def paired(over: str, under: str) -> list[float]:  # per-round step-time ratios
        return [round(a["seconds"] / b["seconds"], 3) for a, b in zip(counted[over], counted[under])]

    ratios = {
        "lepo_over_grpo_step": round(summary["lepo"]["median_step_seconds"] / summary["grpo"]["median_step_seconds"], 3),
        "lepo_gd_over_grpo_step": round(summary["lepo-gd"]["median_step_seconds"] / summary["grpo"]["median_step_seconds"], 3),
        "grpo_over_trl_tokens_per_second": round(summary["grpo"]["sampled_tokens_per_second"]
                                                 / summary["trl"]["sampled_tokens_per_second"], 3),
        "per_round_lepo_over_grpo": paired("lepo", "grpo"),
        "per_round_lepo_gd_over_grpo": paired("lepo-gd", "grpo"),
        "per_round_trl_over_grpo": paired("trl", "grpo"),
    }
    for key in ("lepo_over_grpo", "lepo_gd_over_grpo", "trl_over_grpo"):
        ratios[f"median_per_round_{key}"] = round(statistics.median(ratios[f"per_round_{key}"]), 3)
    summary["ratios"] = ratios
    summary["aims"] = {"lepo step <= 1.3x grpo step": max(ratios["lepo_over_grpo_step"], ratios["lepo_gd_over_grpo_step"]) <= 1.3,
                       "grpo >= 2x TRL GRPOTrainer sampled tokens/s": ratios["grpo_over_trl_tokens_per_second"] >= 2.0}
    print(json.dumps({key: value for key, value in summary.items() if key != "rounds"}, indent=1))
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(summary, indent=1) + "\n")


if __name__ == "__main__":
    main()

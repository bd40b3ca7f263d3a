"""A LaTRO step against TRL's RLOOTrainer step, side by side on the same model, K, prompts and lengths.

    pip install trl==1.16.0        # optional bench dependency (pyproject extra "bench")
    python bench/latro_vs_trl.py --model smollm2-135m-instruct --prompts 2 --k 4 --tokens 64 --steps 2 --rounds 2

Each engine runs in its own subprocess (so that each has its own peak RSS), alternating
trl, latro, trl, latro ... for `--rounds`, so that both see the same machine load over time.
A subprocess makes one warm-up step, then `--steps` timed steps; a step is a whole RL update:
sample K completions for each prompt, score them, compute the loss, backward, AdamW.

Both do full fine-tuning of fp32 weights with a frozen reference model (beta = 0.05), temperature 1,
lr 1e-6, and sample up to `--tokens` new tokens per completion. TRL keeps its defaults otherwise
(gradient checkpointing on, and bf16 mixed precision: its configs turn `bf16` on unless fp16 is, so
its passes run under bf16 autocast, which a CPU without bf16 units computes several times slower than
fp32; bench/rl_speed.py compares fp32 with fp32); its reward is a string match of the gold number,
which costs nothing, while LaTRO's reward log pi(y | x + z) is part of its teacher-forced pass.
Throughput is sampled completion tokens per second of whole step time.

`--engines latro-one-pass,latro` compares our step with and without its shared-prompt scoring (the teacher-forced
pass and the reference's run each prompt once for its K rows; `latro-one-pass` runs it K times, as before).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
from transformers import TrainerCallback

FIXTURE = Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "gsm8k"


ENGINES = ("trl", "latro", "latro-one-pass")


def questions(n: int):
    from latent_reasoning import tasks

    return tasks.get("gsm8k").load(split="test", path=FIXTURE)[:n]


def peak_rss_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # ru_maxrss is in KiB on Linux


class StepClock(TrainerCallback):
    """Times each TRL trainer step (on_step_begin to on_step_end: sampling, reward, loss, backward, optimizer)
    and reads its sampled tokens from the logged mean completion length times the `rows` sampled per step."""

    def __init__(self, rows: int):
        self.rows, self.seconds, self.tokens, self.started = rows, [], [], 0.0

    def on_step_begin(self, *_, **__):
        self.started = time.perf_counter()

    def on_step_end(self, *_, **__):
        self.seconds.append(time.perf_counter() - self.started)

    def on_log(self, _args, _state, _control, logs=None, **__):
        if logs and "completions/mean_length" in logs:
            self.tokens.append(logs["completions/mean_length"] * self.rows)


def run_latro(args) -> dict:
    from latent_reasoning.run import build_method, make_run

    run = make_run({"method": "latro", "task": "gsm8k", "model": args.model, "lora": False, "seed": 0,
                    "rollouts": args.k, "rationale_tokens": args.tokens, "beta": 0.05, "rollout_temperature": 1.0})
    method = build_method(run)
    method.model.train()
    optimizer = torch.optim.AdamW(method.trainable_parameters(), lr=1e-6)
    batch = questions(args.prompts)
    generator = torch.Generator().manual_seed(0)
    times, tokens = [], []
    for step in range(args.steps + 1):
        started = time.perf_counter()
        loss, metrics = method.loss(batch, step, generator)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if step > 0:  # step 0 is the warm-up
            times.append(time.perf_counter() - started)
            tokens.append(metrics["sampled_tokens"])
    return {"seconds": times, "tokens": tokens}


def run_trl(args) -> dict:
    from datasets import Dataset
    from trl import RLOOConfig, RLOOTrainer

    from latent_reasoning.backbones import load_backbone
    from latent_reasoning.methods.base import prompt_text

    model, tokenizer = load_backbone(args.model)
    batch = questions(args.prompts)
    dataset = Dataset.from_list([{"prompt": prompt_text(e), "answer": e.answer} for e in batch])

    def contains_gold(completions, answer, **_):
        return [float(gold in text) for text, gold in zip(completions, answer)]

    clock = StepClock(rows=args.prompts * args.k)
    config = RLOOConfig(output_dir=str(Path(args.scratch) / "trl"), per_device_train_batch_size=args.prompts * args.k,
                        num_generations=args.k, max_completion_length=args.tokens, temperature=1.0, beta=0.05,
                        learning_rate=1e-6, max_steps=args.steps + 1, logging_steps=1, save_strategy="no",
                        report_to=[], use_cpu=True, seed=0, disable_tqdm=True)
    trainer = RLOOTrainer(model=model, reward_funcs=contains_gold, args=config, train_dataset=dataset,
                          processing_class=tokenizer, callbacks=[clock])
    trainer.train()
    return {"seconds": clock.seconds[1:], "tokens": clock.tokens[1:]}


def child(args) -> None:
    torch.manual_seed(0)
    if args.engine == "latro-one-pass":  # score every row with its own copy of the prompt
        from latent_reasoning.methods import latro

        shared = latro.token_logprobs
        latro.token_logprobs = lambda model, packed, width=None, k=1: shared(model, packed, width)
    result = (run_trl if args.engine == "trl" else run_latro)(args)
    result.update(engine=args.engine, peak_rss_gib=round(peak_rss_gib(), 2))
    print("RESULT " + json.dumps(result), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--prompts", type=int, default=2, help="questions per step")
    parser.add_argument("--k", type=int, default=4, help="completions sampled per question")
    parser.add_argument("--tokens", type=int, default=64, help="longest completion (rationale)")
    parser.add_argument("--steps", type=int, default=2, help="timed steps per subprocess, after one warm-up")
    parser.add_argument("--rounds", type=int, default=2, help="subprocess pairs of the two --engines, alternating")
    parser.add_argument("--scratch", default="runs/bench-trl")
    parser.add_argument("--engines", default="trl,latro", help="two of trl, latro, latro-one-pass; the ratio is "
                        "the second's throughput over the first's")
    parser.add_argument("--engine", choices=ENGINES, help=argparse.SUPPRESS)  # set in the subprocesses
    parser.add_argument("--out", help="json file for the results")
    args = parser.parse_args()
    if args.engine:
        return child(args)

    engines = args.engines.split(",")
    if len(engines) != 2 or len(set(engines)) != 2 or not set(engines) <= set(ENGINES):
        sys.exit(f"--engines {args.engines}: expected two different ones of {', '.join(ENGINES)}")
    command = " ".join(["python", "bench/latro_vs_trl.py", *sys.argv[1:]])
    results = {engine: [] for engine in engines}
    for round_index in range(args.rounds):
        for engine in engines:
            output = subprocess.run([sys.executable, __file__, *sys.argv[1:], "--engine", engine],
                                    capture_output=True, text=True, env={**os.environ, "TQDM_DISABLE": "1"})
            lines = [line for line in output.stdout.splitlines() if line.startswith("RESULT ")]
            if output.returncode != 0 or not lines:
                sys.exit(f"{engine} failed:\n{output.stderr[-3000:]}")
            result = json.loads(lines[-1][len("RESULT "):])
            results[engine].append(result)
            print(f"round {round_index + 1} {engine}: step seconds {result['seconds']}, "
                  f"sampled tokens {result['tokens']}, peak RSS {result['peak_rss_gib']} GiB", flush=True)

    summary = {"command": command, "torch_threads": torch.get_num_threads(), "rounds": results}
    for engine, runs in results.items():
        seconds = [s for run in runs for s in run["seconds"]]
        tokens = [t for run in runs for t in run["tokens"]]
        summary[engine] = {"median_step_seconds": round(statistics.median(seconds), 2),
                           "sampled_tokens_per_step": round(statistics.mean(tokens), 1),
                           "sampled_tokens_per_second": round(sum(tokens) / sum(seconds), 1),
                           "peak_rss_gib": max(run["peak_rss_gib"] for run in runs)}
    first, second = engines
    name = f"{second}_over_{first}".replace("-", "_")
    ratio = summary[second]["sampled_tokens_per_second"] / summary[first]["sampled_tokens_per_second"]
    summary[f"throughput_ratio_{name}"] = round(ratio, 2)
    summary[f"peak_rss_ratio_{name}"] = round(summary[second]["peak_rss_gib"] / summary[first]["peak_rss_gib"], 2)
    print(json.dumps({k: v for k, v in summary.items() if k != "rounds"}, indent=1))
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(summary, indent=1) + "\n")


if __name__ == "__main__":
    main()

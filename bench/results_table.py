"""Print the README's results table (markdown): one row per task, model and method of the files below.

    python bench/results_table.py > table.md

RESULTS lists the bench/results/*.jsonl files the table summarizes, in the table's order; each entry
may keep only some of a file's variants (`methods`; the others are in bench/README.md), rename them
(`names`), and give the task a name (`task`; default: the rows' task and the --task-option values of
their command). A file
not there yet is skipped with a note on stderr. A variant's rows are grouped over seeds: accuracy mean
with the per-seed accuracies in seed order, forward passes per answer averaged over seeds.
"""

from __future__ import annotations

import json
import re
import statistics
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

RESULTS = [
    {"file": "bench/results/latent-multiplication-2x2.jsonl", "task": "2x2 multiplication (500 held out)",
     "methods": ["no-cot", "cot", "coconut", "slr"]},
    {"file": "bench/results/latent-multiplication-4x4.jsonl", "task": "4x4 multiplication (valid, 1000)",
     "methods": ["no-cot", "cot", "coconut", "slr"]},
    {"file": "bench/results/multiplication-4x4-cot.jsonl", "task": "4x4 multiplication (valid, 1000)",
     "names": {"cot": "cot, 3,000 steps (configs/cot-multiplication-4x4.yaml)",
               "cot-more": "cot, seed 0 + 1,000 steps at lr 3e-4"}},
    {"file": "bench/results/multiplication-4x4-latent.jsonl", "task": "4x4 multiplication (valid, 1000)",
     "names": {"icot": "icot from that cot (a token removed every 112 steps, kept positions)",
               "coconut": "coconut from that cot, kept positions, markers=false, step_weight"}},
    {"file": "bench/results/multiplication-4x4-icot.jsonl", "task": "4x4 multiplication (valid, 1000)",
     "methods": ["icot-38000", "icot", "icot-slow"],
     "names": {"icot-38000": "icot from a 100% cot, a token removed every 600 steps, kept positions, then 6,000 steps "
                             "answer only",
               "icot": "the same + 6,000 answer-only steps, lr decaying (configs/icot-multiplication-4x4*.yaml)",
               "icot-slow": "the same, chain tokens 25-49 removed every 1,500 steps (seed 3 only)"}},
    {"file": "bench/results/multiplication-4x4-gpt2-2l.jsonl", "task": "4x4 multiplication (valid, 1000)",
     "names": {"cot": "cot (configs/cot-multiplication-4x4-gpt2-2l.yaml)",
               "icot-32000": "icot from that cot, tiny-5m's course at lr 2e-4 (its answer-only parts stopped: flat)"}},
    {"file": "bench/results/multiplication-4x4-deep.jsonl", "task": "4x4 multiplication (valid, 1000)",
     "names": {"cot": "cot (configs/cot-multiplication-4x4-deep.yaml)",
               "icot-32000": "icot from that cot, tiny-5m's course (its answer-only parts not run)"}},
    {"file": "bench/results/multiplication-4x4-cw0.jsonl", "task": "4x4 multiplication (valid, 1000)",
     "methods": ["icot"],
     "names": {"icot": "icot, tiny-5m's course with the loss on the answer alone (chain_weight=0, seed 3 only)"}},
    {"file": "bench/results/multiplication-4x4-rs100.jsonl", "task": "4x4 multiplication (valid, 1000)",
     "methods": ["icot-decay6k", "icot-decay24k", "icot"],
     "names": {"icot-decay6k": "icot, tiny-5m's course and answer-only parts with Bai et al.'s running-sum loss "
                               "(running_sum_weight=100)",
               "icot-decay24k": "the same with the decaying part 24,000 steps long",
               "icot": "the same with the decaying part 48,000 steps long (configs/icot-multiplication-4x4-rs100*.yaml)"}},
    {"file": "bench/results/multiplication-4x4-coconut.jsonl", "task": "4x4 multiplication (valid, 1000)",
     "names": {"coconut": "coconut from a 100% cot (the icot runs' backbones), kept positions, markers=false, step_weight",
               "slr": "slr, the same"}},
    {"file": "bench/results/prosqa-pairs-long.jsonl", "task": "ProsQA, facts as pairs (valid, 300; earlier grader)",
     "methods": ["no-cot-2000", "cot-2000", "coconut", "slr"],
     "names": {"no-cot-2000": "no-cot", "cot-2000": "cot"}},
    {"file": "bench/results/latro-parity-16.jsonl", "task": "parity, 16 bits, answers only (500 held out)",
     "names": {"warmup": "cot warm-up stopped partway (base)", "latro": "latro (+200 steps of 16, no chains)",
               "sft-answers": "no-cot sft on the same answers", "sft-chains": "cot sft on gold chains (+200 steps)"}},
    {"file": "bench/results/latro-multiplication-2x2.jsonl", "task": "2x2 multiplication (500 held out)",
     "names": {"warmup": "cot warm-up (base)", "sft": "cot (sft, +150 steps)", "latro": "latro (+150 steps)"}},
    {"file": "bench/results/gsm8k-smollm2.jsonl", "task": "GSM8K (test, first 200; earlier grader)"},
    {"file": "bench/results/parity-16.jsonl", "task": "parity, 16 bits (500 held out)", "methods": ["no-cot", "cot"]},
    {"file": "bench/results/parity-16-latent.jsonl", "task": "parity, 16 bits (500 held out)",
     "methods": ["icot-lr3e-4", "coconut-step-lr3e-4", "slr-step-lr3e-4"],
     "names": {"icot-lr3e-4": "icot", "coconut-step-lr3e-4": "coconut + step_weight",
               "slr-step-lr3e-4": "slr + step_weight"}},
    {"file": "bench/results/parity-16-markers.jsonl", "task": "parity, 16 bits (500 held out)",
     "methods": ["cot", "coconut-markers-false"],
     "names": {"cot": "cot (lr 1e-3)", "coconut-markers-false": "coconut + step_weight, markers=false"}},
    {"file": "bench/results/parity-16-merge2.jsonl", "task": "parity, 16 bits (500 held out)",
     "names": {"coconut-merge2": "coconut, two steps a thought (merge_steps=2)"}},
    {"file": "bench/results/parity-16-named.jsonl", "task": "parity, 16 bits, steps named ('b3 1 0'; 500 held out)",
     "methods": ["no-cot", "cot", "cot-more", "coconut"],
     "names": {"cot-more": "cot, seed 2 + 400 steps at lr 3e-4", "coconut": "coconut + step_weight, markers=false"}},
    {"file": "bench/results/graph-h3-path.jsonl", "task": "graph search, 3 hops, one node a step (500 held out)",
     "names": {"cot-more": "cot, +800 steps at lr 3e-4", "coconut-markers-false": "coconut + step_weight, markers=false",
               "coconut-markers": "coconut + step_weight (markers)", "slr-markers-false": "slr + step_weight, markers=false"}},
    {"file": "bench/results/graph-h3-depth.jsonl", "task": "graph search, 3 hops, one node a step (500 held out)",
     "methods": ["slr-depth-step", "slr-depth-step-halt-kl-0.001", "no-cot-20-layers"],
     "names": {"slr-depth-step": "slr loop=depth + step_weight, T = 4 (from the CoT model)",
               "slr-depth-step-halt-kl-0.001": "the same, KL halting per token (0.001)",
               "no-cot-20-layers": "no-cot, 20 layers (its 6 passes of 20 layers = the loop's 24 of 5)"}},
    {"file": "bench/results/parity-16-depth.jsonl", "task": "parity, 16 bits (500 held out)",
     "methods": ["slr-depth-step-from-scratch", "slr-depth-step-from-scratch-timestep-none",
                 "slr-depth-step-from-scratch-injection-off", "slr-depth-step-from-scratch-loop-lora-on",
                 "slr-depth-step-from-scratch-normalize-on",
                 "slr-depth-step", "slr-depth-step-timestep-none",
                 "slr-depth-step-injection-off", "slr-depth-step-normalize-on", "slr-depth-step-question-readout",
                 "no-cot-68-layers"],
     "names": {"slr-depth-step-from-scratch": "slr loop=depth + step_weight, step_readout=answer, T grown 3 to 17, "
                                              "from scratch (configs/slr-depth-parity.yaml)",
               "slr-depth-step-from-scratch-timestep-none": "the same from scratch, timestep embedding off",
               "slr-depth-step-from-scratch-injection-off": "the same from scratch, input injection off",
               "slr-depth-step-from-scratch-loop-lora-on": "the same from scratch, loop-wise LoRA on",
               "slr-depth-step-from-scratch-normalize-on": "the same from scratch, normalisation on",
               "slr-depth-step": "slr loop=depth + step_weight, step_readout=answer, T = 17 (from the CoT model)",
               "slr-depth-step-timestep-none": "the same, timestep embedding off",
               "slr-depth-step-injection-off": "the same, input injection off",
               "slr-depth-step-normalize-on": "the same, normalisation on",
               "slr-depth-step-question-readout": "the same, steps read at the question's end",
               "no-cot-68-layers": "no-cot, 68 layers (its 6 passes of 68 layers = the loop's 102 of 4)"}},
    {"file": "bench/results/graph-h3-forward.jsonl", "task": "graph search, 3 hops, edges as steps (500 held out)",
     "names": {"coconut-markers-false": "coconut + step_weight, markers=false",
               "slr-markers-false": "slr + step_weight, markers=false"}},
    {"file": "bench/results/graph-h6-forward.jsonl", "task": "graph search, 6 hops, edges as steps (500 held out)",
     "names": {"coconut-markers-false": "coconut + step_weight, markers=false",
               "coconut-stopped": "coconut, seed 0 (stopped at step 400: stuck from stage 2)",
               "coconut-more": "coconut, seed 2 + 400 steps at the last stage",
               "coconut-more-lr3e-4": "coconut + 400 steps at the last stage at lr 3e-4",
               "coconut-cosine": "coconut, cosine lr over 1,800 steps (seed 2 stopped: stuck at stage 1)",
               "coconut-hop-curriculum": "coconut from the 3-hop coconut model (hop curriculum)",
               "slr-hop-curriculum": "slr from the 3-hop slr model (hop curriculum)"}},
    {"file": "bench/results/lta-thinker-multiplication-2x2.jsonl", "task": "2x2 multiplication (300 held out)",
     "methods": ["cot", "cot-sc10", "lta-all", "lta-sft", "softcot", "softcot-small", "softcot++"],
     "names": {"cot": "cot (the frozen backbone)", "cot-sc10": "cot-sc, 10 samples (the frozen backbone)",
               "lta-all": "lta-thinker on it, keep_position, N = 32", "lta-sft": "lta-thinker, SFT loss only",
               "softcot": "softcot, keep_position, N = 32, the backbone assisting itself",
               "softcot-small": "softcot, assistant a smaller tiny-1m CoT model", "softcot++": "softcot++, 5 chains"}},
    {"file": "bench/results/rl-arithmetic-smollm2.jsonl", "task": "arithmetic, 2 terms (300 held out)",
     "methods": ["warm-start", "cot", "grpo", "lepo", "lepo-gd", "lepo-none", "latro"],
     "names": {"warm-start": "the model as it is (RL warm start)", "cot": "cot (SFT, LoRA, 100 steps of 4)",
               "grpo": "grpo (LoRA, same budget)", "lepo": "lepo, soft-label", "lepo-gd": "lepo, Gumbel density",
               "lepo-none": "lepo, noise=none", "latro": "latro"}},
    {"file": "bench/results/lta-thinker-arithmetic-smollm2.jsonl", "task": "arithmetic, 2 terms (300 held out)",
     "methods": ["softcot-n32", "lta-n32", "lta-sft-n32"],
     "names": {"softcot-n32": "softcot, frozen backbone, N = 32", "lta-n32": "lta-thinker, frozen backbone, N = 32",
               "lta-sft-n32": "lta-thinker, SFT loss only"}},
]

HEADER = ("| task | model | method | seeds | accuracy mean (per seed) | forward passes | link |\n"
          "|---|---|---|---|---|---|---|")


def task_name(row: dict) -> str:
    """The row's task with the task options its command set, e.g. "parity (bits=16)"."""
    options = re.findall(r"--task-option[= ](\S+)", row.get("command", ""))
    return f"{row['task']} ({', '.join(options)})" if options else row["task"]


def label(row: dict) -> str:
    """The variant a row belongs to: bench/accuracy.py's label, or `arm` for hand-run comparisons."""
    return row.get("arm") or row["method"]


def rows_of(entry: dict) -> list[str]:
    path = ROOT / entry["file"]
    records = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    groups: dict[tuple[str, str, str], list[dict]] = {}
    for record in records:
        key = (entry.get("task") or task_name(record), record["model"], label(record))
        groups.setdefault(key, []).append(record)
    keep = entry.get("methods")
    order = sorted(groups, key=lambda k: keep.index(k[2]) if keep and k[2] in keep else 0)
    lines = []
    for key in order:
        if keep and key[2] not in keep:
            continue
        group = sorted(groups[key], key=lambda r: r["seed"])
        accuracy = [100 * r["accuracy"] for r in group]
        mean = f"{statistics.mean(accuracy):.1f}%"
        if len(group) > 1:
            mean += f" ({' / '.join(f'{a:.1f}' for a in accuracy)})"
        seeds = ", ".join(str(r["seed"]) for r in group)
        passes = statistics.mean(r["forward_passes"] for r in group)
        link = f"[{Path(entry['file']).name}]({entry['file']})"
        name = entry.get("names", {}).get(key[2], key[2])
        lines.append(f"| {key[0]} | {key[1]} | {name} | {seeds} | {mean} | {passes:.1f} | {link} |")
    return lines


def main() -> int:
    print(HEADER)
    for entry in RESULTS:
        if not (ROOT / entry["file"]).is_file():
            print(f"results_table: {entry['file']} not there yet, skipped", file=sys.stderr)
            continue
        for line in rows_of(entry):
            print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Print a markdown table of bench/accuracy.py rows (or hand-run rows labelled by an "arm"): per variant,
accuracy over seeds and cost per answer. The seeds column names the seeds, in the order of the per-seed accuracies.

    python bench/summarize.py bench/results/latent-multiplication-2x2.jsonl
"""

from __future__ import annotations

import json
import statistics
import sys


def main() -> None:
    rows = [json.loads(line) for path in sys.argv[1:] for line in open(path) if line.strip()]
    by_method: dict[str, list[dict]] = {}
    for row in rows:
        by_method.setdefault(row.get("arm") or row["method"], []).append(row)
    print("| variant | seeds | accuracy mean | std | per seed | forward passes | generated tokens | train s |")
    print("|---|---|---|---|---|---|---|---|")
    for method, group in by_method.items():
        group.sort(key=lambda r: r["seed"])
        accuracy = [100 * r["accuracy"] for r in group]
        spread = statistics.stdev(accuracy) if len(accuracy) > 1 else 0.0
        per_seed = " / ".join(f"{a:.1f}" for a in accuracy)
        passes = statistics.mean(r["forward_passes"] for r in group)
        tokens = statistics.mean(r["generated_tokens"] for r in group)
        seconds = statistics.mean(r["train_seconds"] for r in group)
        seeds = ", ".join(str(r["seed"]) for r in group)
        print(f"| {method} | {seeds} | {statistics.mean(accuracy):.1f}% | {spread:.1f} | {per_seed} | "
              f"{passes:.1f} | {tokens:.1f} | {seconds:.0f} |")


if __name__ == "__main__":
    main()

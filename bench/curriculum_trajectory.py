"""A curriculum run's course from its checkpoint's trainer_state.json: per stage (icot's count of removed chain tokens,
or coconut's stage), the mean training loss over its first and last `--window` steps (and, where logged, the parts in
PARTS over the last), then every held-out eval.

    python bench/curriculum_trajectory.py logs/s38-runs/m4-icot600-s1
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

PARTS = {"answer_loss": 3, "running_sum_loss": 4}  # icot's logged parts of the loss, and the decimals they print with


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run", help="a train --out folder (holding checkpoint/)")
    parser.add_argument("--window", type=int, default=100)
    args = parser.parse_args()
    history = json.loads((Path(args.run) / "checkpoint" / "trainer_state.json").read_text())["history"]
    key = "removed" if "removed" in history[0] else "stage"
    losses: dict[int, list[float]] = {}
    parts: dict[str, dict[int, list[float]]] = {name: {} for name in PARTS}
    for record in history:
        losses.setdefault(int(record[key]), []).append(record["loss"])
        for name in PARTS:
            if name in record:
                parts[name].setdefault(int(record[key]), []).append(record[name])
    logged = [name for name in PARTS if parts[name]]
    columns = f" ({', '.join(logged)}: the last)" if logged else ""
    print(f"{key}: loss over the first {args.window} steps -> the last {args.window}{columns}")
    for value, stage in sorted(losses.items()):
        line = f"  {value}: {statistics.mean(stage[:args.window]):.3f} -> {statistics.mean(stage[-args.window:]):.3f}"
        shown = [f"{statistics.mean(parts[name][value][-args.window:]):.{PARTS[name]}f}"
                 for name in logged if value in parts[name]]
        if shown:
            line += f" ({', '.join(shown)})"
        print(line)
    print("held-out evals:")
    for record in history:
        if "eval_accuracy" in record:
            print(f"  step {record['step']}: {key} {int(record[key])}, accuracy {100 * record['eval_accuracy']:.1f}%, "
                  f"{record['eval_forward_passes']:.1f} forward passes")


if __name__ == "__main__":
    main()

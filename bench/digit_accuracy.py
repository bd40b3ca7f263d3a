"""Per-digit accuracy of multiplication answers: how close wrong answers come, from `latent eval` predictions.

    python bench/digit_accuracy.py runs/eval4/no-cot/predictions.jsonl runs/eval4/coconut/predictions.jsonl
    python bench/digit_accuracy.py --data ../shared/data/icot-multiplication/4_by_4_mult/valid.txt runs/eval4/cot/predictions.jsonl

Answers are iCoT-style digits, least significant first, separated by spaces; position i of the
prediction is compared with position i of the gold answer (a missing digit counts as wrong).
With --data (the file the predictions were scored on), predictions that write steps also get, for
each gold step, the share of questions whose line for it equals it, and the share whose partial
product (the line before its running sum in parentheses) equals the gold one. The written lines are
matched to the last gold steps: a coconut model at stage k writes steps k+1 .. m ("-" marks the
steps it made latent).
"""

import argparse
import json
from pathlib import Path

from latent_reasoning.tasks.multiplication import Multiplication


def digit_accuracy(rows: list[dict]) -> list[float]:
    width = max(len(row["gold"].split()) for row in rows)
    hits = [0] * width
    for row in rows:
        gold, predicted = row["gold"].split(), (row["answer"] or "").split()
        for i, digit in enumerate(gold):
            hits[i] += i < len(predicted) and predicted[i] == digit
    return [hit / len(rows) for hit in hits]


def step_accuracy(rows: list[dict], gold_steps: dict[str, list[str]], part=lambda line: line) -> list:
    """Per gold step: the share of rows whose matching written line agrees under `part`; None if no
    row wrote that step."""
    width = max(len(steps) for steps in gold_steps.values())
    hits, written = [0] * width, [0] * width
    for row in rows:
        lines = [line.strip() for line in row["text"].split("\n") if line.strip() and not line.startswith("####")]
        steps = gold_steps[row["question"]]
        offset = len(steps) - len(lines)  # the steps before `offset` were not written
        for i, step in enumerate(steps[max(offset, 0):], start=max(offset, 0)):
            written[i] += 1
            hits[i] += part(lines[i - offset]) == part(step)
    return [hit / len(rows) if count else None for hit, count in zip(hits, written)]


def partial_product(line: str) -> str:
    return line.split("(")[0].strip()


def shares(values: list) -> str:
    return " ".join("-" if value is None else f"{value:.2f}" for value in values)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("predictions", nargs="+", help="predictions.jsonl files of `latent eval`")
    parser.add_argument("--data", help="the multiplication file scored on, to check CoT lines against gold steps")
    args = parser.parse_args()
    gold_steps = None
    if args.data:
        examples = Multiplication(4).parse_file(Path(args.data))
        gold_steps = {example.question: example.steps for example in examples}
    for path in args.predictions:
        rows = [json.loads(line) for line in open(path)]
        per_position = digit_accuracy(rows)
        exact = sum(row["correct"] for row in rows) / len(rows)
        line = (f"{path}: exact {exact:.1%}, per digit {sum(per_position) / len(per_position):.1%}, "
                f"by position (least significant first) {' '.join(f'{p:.2f}' for p in per_position)}")
        if gold_steps:
            line += (f", CoT lines equal to gold steps {shares(step_accuracy(rows, gold_steps))}"
                     f", partial products {shares(step_accuracy(rows, gold_steps, partial_product))}")
        print(line)

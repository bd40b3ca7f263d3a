"""Per-digit accuracy of multiplication answers: how close wrong answers come, from `latent eval` predictions.

    python bench/digit_accuracy.py runs/eval4/no-cot/predictions.jsonl runs/eval4/coconut/predictions.jsonl

Answers are iCoT-style digits, least significant first, separated by spaces; position i of the
prediction is compared with position i of the gold answer (a missing digit counts as wrong).
"""

import json
import sys


def digit_accuracy(rows: list[dict]) -> list[float]:
    width = max(len(row["gold"].split()) for row in rows)
    hits = [0] * width
    for row in rows:
        gold, predicted = row["gold"].split(), (row["answer"] or "").split()
        for i, digit in enumerate(gold):
            hits[i] += i < len(predicted) and predicted[i] == digit
    return [hit / len(rows) for hit in hits]


if __name__ == "__main__":
    for path in sys.argv[1:]:
        rows = [json.loads(line) for line in open(path)]
        per_position = digit_accuracy(rows)
        exact = sum(row["correct"] for row in rows) / len(rows)
        print(f"{path}: exact {exact:.1%}, per digit {sum(per_position) / len(per_position):.1%}, "
              f"by position (least significant first) {' '.join(f'{p:.2f}' for p in per_position)}")

"""The one evaluator: batched answering, grading, cost accounting, predictions.jsonl and summary.json."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from .tasks import Example


def evaluate(method, examples: list[Example], batch_size: int = 64, out: str | Path | None = None,
             run: dict[str, Any] | None = None, progress: bool = False) -> dict[str, Any]:
    """Answer `examples` with `method` in batches, grade each with the method's task, and summarise.

    The summary is the result row of DESIGN.md: task, split, n, method, model, seed, accuracy,
    forward_passes and generated_tokens (means per example, as counted by the method),
    seconds_per_example, examples_per_second, command (from `run`, where given), thought_variance
    (softcot, lta-thinker: the mean of the predictions' thought variance) where the method reports one,
    and, where the method returns every sampled text (self-consistency decoding of cot-sc, latro, grpo,
    lepo), `pass_at_k`.
    With `out`, writes out/predictions.jsonl and out/summary.json.
    """
    if not examples:
        raise ValueError("nothing to evaluate: the example list is empty")
    method.model.eval()
    rows = []
    started = time.perf_counter()
    batches = range(0, len(examples), batch_size)
    for first in tqdm(batches, desc=f"eval {method.name}", disable=not progress, dynamic_ncols=True):
        chunk = examples[first : first + batch_size]
        for example, prediction in zip(chunk, method.answer(chunk)):
            rows.append({
                "question": example.question,
                "gold": example.answer,
                "text": prediction.text,
                "answer": prediction.answer,
                "correct": bool(method.task.grade(prediction.text, example)),
                "forward_passes": prediction.forward_passes,
                "generated_tokens": prediction.generated_tokens,
                **({"thoughts": prediction.thoughts} if prediction.thoughts is not None else {}),
                **({"thought_variance": prediction.thought_variance} if prediction.thought_variance is not None else {}),
                **({"samples_correct": [bool(method.task.grade(text, example)) for text in prediction.samples]}
                   if prediction.samples is not None else {}),
            })
    seconds = time.perf_counter() - started
    n = len(rows)
    run = run or {}
    summary = {
        "task": run.get("task", method.task.name),
        "split": run.get("split"),
        "n": n,
        "method": run.get("method", method.name),
        "model": run.get("model"),
        "seed": run.get("seed"),
        "accuracy": sum(row["correct"] for row in rows) / n,
        "forward_passes": sum(row["forward_passes"] for row in rows) / n,
        "generated_tokens": sum(row["generated_tokens"] for row in rows) / n,
        "seconds_per_example": seconds / n,
        "examples_per_second": n / seconds if seconds else float("inf"),
        "command": run.get("command"),
    }
    variances = [row["thought_variance"] for row in rows if "thought_variance" in row]
    if variances:
        summary["thought_variance"] = sum(variances) / len(variances)
    graded = [row["samples_correct"] for row in rows if "samples_correct" in row]
    if graded and len(graded) == n:
        summary.update(pass_at_k(graded))
    if out is not None:
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        with open(out / "predictions.jsonl", "w", encoding="utf-8") as handle:
            for row in rows:
                handle.write(json.dumps(row) + "\n")
        (out / "summary.json").write_text(json.dumps(summary, indent=1))
    return summary


def pass_at_k(graded: list[list[bool]]) -> dict[str, float]:
    """From each question's k sampled answers graded (self-consistency decoding): `pass_at_1`, the mean
    accuracy of a single sample (over all samples), and `pass_at_k`, the fraction of questions that at
    least one of its k samples answers right; `pass_k` is k (the smallest count, if they differ)."""
    return {
        "pass_at_1": sum(sum(g) / len(g) for g in graded) / len(graded),
        "pass_at_k": sum(any(g) for g in graded) / len(graded),
        "pass_k": min(len(g) for g in graded),
    }

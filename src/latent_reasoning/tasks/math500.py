"""MATH-500: the 500-problem test subset of Hendrycks MATH used by PRM800K ("Let's Verify Step by Step").

File `test.jsonl` (JSON Lines) and hub HuggingFaceH4/MATH-500 share the fields `problem`, `solution`
(worked solution ending in `\\boxed{...}`), `answer` (the final answer as a LaTeX string),
`subject`, `level` (1-5) and `unique_id`. Answers are graded with math-verify.
"""

from __future__ import annotations

import re
from pathlib import Path

from .answers import match_math
from .base import Example, Task, read_jsonl


def paragraphs(solution: str) -> list[str]:
    """The solution's blank-line-separated paragraphs; an Asymptote figure `[asy]...[/asy]` stays whole."""
    steps: list[str] = []
    for paragraph in re.split(r"\n\s*\n", solution.strip()):
        if steps and steps[-1].count("[asy]") > steps[-1].count("[/asy]"):
            steps[-1] += "\n\n" + paragraph
        else:
            steps.append(paragraph)
    return [step.strip() for step in steps if step.strip()]


class MATH500(Task):
    """MATH-500; steps are the solution's paragraphs (350 of the 500 solutions are one paragraph)."""

    name = "math500"
    splits = {"test": "test.jsonl"}
    hub_id = "HuggingFaceH4/MATH-500"

    def parse_file(self, path: Path, skip_bad: bool = False) -> list[Example]:
        return read_jsonl(path, self.from_hub_row, skip_bad)

    def from_hub_row(self, row: dict) -> Example:
        answer = row["answer"]
        if not isinstance(answer, str) or not answer.strip():
            raise ValueError(f"expected 'answer' to be a non-empty LaTeX string, got {answer!r}")
        steps = paragraphs(row["solution"])
        meta = {"subject": row["subject"], "level": int(row["level"]), "unique_id": row["unique_id"]}
        return Example(question=row["problem"].strip(), steps=steps, answer=answer.strip(), meta=meta)

    def grade(self, text: str, example: Example) -> bool:
        return match_math(text, example.answer)

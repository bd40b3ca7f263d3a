"""Multiple-choice tasks: ARC-Challenge, AQuA-RAT and BIG-bench Date Understanding.

Every Example carries its options in the question, one per line after "Options:" as "(A) text"
(the layout BIG-Bench-Hard uses), its answer as a single letter, and `meta["options"]` as
{letter: text} so the grader can also accept the option's own text.
"""

from __future__ import annotations

import random
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .answers import match_choice
from .base import DataError, Example, Task, parse_records, read_json, read_jsonl

LETTERS = "ABCDEFGHIJ"
_OPTION_LINE = re.compile(r"^\(([A-Z])\)\s*(.*)$")
_AQUA_OPTION = re.compile(r"^([A-Z])\)\s*(.*)$", re.DOTALL)


def with_options(question: str, options: dict[str, str]) -> str:
    """The question followed by "Options:" and one "(A) text" line per option."""
    lines = [f"({letter}) {text}" for letter, text in options.items()]
    return "\n".join([question.strip(), "Options:", *lines])


def bigbench_examples(task: Any, path: Path, parse: Callable[[dict], Example], skip_bad: bool) -> list[Example]:
    """The examples of a BIG-bench task object `{"examples": [...], ...}` read from `path`;
    positions are 0-based example indices."""
    if not isinstance(task, dict) or not isinstance(task.get("examples"), list):
        raise DataError(path, "top level", "expected a BIG-bench task object with an 'examples' list")
    return parse_records(enumerate(task["examples"]), parse, path, "example", skip_bad)


class MultipleChoice(Task):
    """Grading shared by the choice tasks: the letter (or the option text) in the final answer."""

    def grade(self, text: str, example: Example) -> bool:
        return match_choice(text, example.answer, example.meta["options"])


class ARCChallenge(MultipleChoice):
    """ARC-Challenge in the hub schema `{"id", "question", "choices": {"text", "label"}, "answerKey"}`.

    Numeric labels ("1"-"5", used by a few upstream items) become letters ("A"-"E"). No steps.
    """

    name = "arc-challenge"
    splits = {"train": "train.jsonl", "test": "test.jsonl"}
    hub_id = "allenai/ai2_arc"
    hub_config = "ARC-Challenge"

    def parse_file(self, path: Path, skip_bad: bool = False) -> list[Example]:
        return read_jsonl(path, self.from_hub_row, skip_bad)

    def from_hub_row(self, row: dict) -> Example:
        choices = row["choices"]
        labels = [_as_letter(label) for label in choices["label"]]
        if len(labels) != len(choices["text"]) or len(labels) < 2:
            raise ValueError("expected 'choices' to hold as many 'text' as 'label' entries, at least two")
        options = dict(zip(labels, (text.strip() for text in choices["text"]), strict=True))
        answer = _as_letter(row["answerKey"])
        if answer not in options:
            raise ValueError(f"answerKey {row['answerKey']!r} is not one of the labels {choices['label']}")
        meta = {"options": options, "id": row["id"]}
        return Example(question=with_options(row["question"], options), steps=[], answer=answer, meta=meta)


def _as_letter(label: str) -> str:
    label = str(label).strip()
    if label.isdigit() and 1 <= int(label) <= len(LETTERS):
        return LETTERS[int(label) - 1]
    if len(label) == 1 and label in LETTERS:
        return label
    raise ValueError(f"expected a choice label A-J or 1-10, got {label!r}")


class AQuARAT(MultipleChoice):
    """AQuA-RAT: JSON Lines `{"question", "options": ["A)...", ...], "rationale", "correct"}`
    (files `dev.json`, `test.json`; hub deepmind/aqua_rat "raw"). Steps are the rationale's lines."""

    name = "aqua-rat"
    splits = {"dev": "dev.json", "test": "test.json"}
    hub_id = "deepmind/aqua_rat"
    hub_config = "raw"
    hub_splits = {"dev": "validation"}

    def parse_file(self, path: Path, skip_bad: bool = False) -> list[Example]:
        return read_jsonl(path, self.from_hub_row, skip_bad)

    def from_hub_row(self, row: dict) -> Example:
        options = {}
        for option in row["options"]:
            match = _AQUA_OPTION.match(option.strip())
            if not match:
                raise ValueError(f"expected options like 'A)125', got {option!r}")
            options[match.group(1)] = match.group(2).strip()
        answer = row["correct"].strip()
        if answer not in options:
            raise ValueError(f"'correct' is {row['correct']!r}, not one of the option letters {sorted(options)}")
        steps = [line.strip() for line in row["rationale"].split("\n") if line.strip()]
        return Example(
            question=with_options(row["question"], options), steps=steps, answer=answer, meta={"options": options}
        )


class BigBenchDate(MultipleChoice):
    """BIG-bench Date Understanding. Split "test" is BIG-bench's `task.json` (369 examples whose
    `target_scores` map each option to 0/1); split "bbh" is BIG-Bench-Hard's 250 (`input` already
    lists "(A) ..." options, `target` is "(B)"), the only copy on the hub (lukaemon/bbh).

    BIG-bench lists the right option first almost always, so the options are sorted and then
    shuffled with the question text as seed: the same order on every run, the answer letter spread
    over A-F. These files carry the BIG-bench canary: evaluate on them, never train.
    """

    name = "bigbench-date"
    splits = {"test": "task.json", "bbh": "bbh_date_understanding.json"}
    hub_id = "lukaemon/bbh"
    hub_config = "date_understanding"
    hub_splits = {"bbh": "test"}

    def load_hub(self, split: str, skip_bad: bool = False) -> list[Example]:
        if split != "bbh":
            raise ValueError(
                f"the hub holds only the BBH copy of {self.name!r}: use split 'bbh', or path= for {split!r}"
            )
        return super().load_hub(split, skip_bad)

    def parse_file(self, path: Path, skip_bad: bool = False) -> list[Example]:
        return bigbench_examples(read_json(path), path, self.parse_example, skip_bad)

    def parse_example(self, example: dict) -> Example:
        """A BIG-bench example (`input`, `target_scores`) or a BBH one (`input`, `target`)."""
        if "target_scores" not in example:
            return self.from_hub_row(example)
        scores = example["target_scores"]
        right = [option for option, score in scores.items() if score == 1]
        if len(right) != 1 or not 2 <= len(scores) <= len(LETTERS):
            raise ValueError(f"expected 'target_scores' with 2-10 options, exactly one option scored 1, got {scores}")
        texts = sorted(scores)
        random.Random(example["input"]).shuffle(texts)
        options = dict(zip(LETTERS, texts))
        answer = LETTERS[texts.index(right[0])]
        return Example(
            question=with_options(example["input"], options), steps=[], answer=answer, meta={"options": options}
        )

    def from_hub_row(self, row: dict) -> Example:
        """A BBH example: `input` with "(A) ..." option lines, `target` like "(B)"."""
        options = {}
        for line in row["input"].split("\n"):
            match = _OPTION_LINE.match(line.strip())
            if match:
                options[match.group(1)] = match.group(2).strip()
        answer = row["target"].strip().strip("()")
        if answer not in options:
            raise ValueError(f"target {row['target']!r} is not one of the '(A) ...' options in the input")
        return Example(question=row["input"].strip(), steps=[], answer=answer, meta={"options": options})

"""GSM8K grade-school math, in the original OpenAI layout and in the iCoT layout COCONUT trains on.

GSM8K (`train.jsonl`, `test.jsonl`): JSON Lines `{"question", "answer"}`; `answer` holds one solution
step per line, calculator annotations `<<48/2=24>>` included, and ends with `#### <number>`.

GSM8K-Aug (iCoT, `train.txt`/`train_no_aug.txt`, `valid.txt`, `test.txt`): one example per line,
`<question>||<steps> #### <answer>`. In the augmented files the steps are space-separated equations
`<<4-2=2>> <<2/.5=4>>`, split on spaces as COCONUT's `gsm_icot.py` does. `train_no_aug.txt` holds the
original GSM8K solutions (no `<<`) with their line breaks turned into spaces; see `split_sentences`.
"""

from __future__ import annotations

import re
from pathlib import Path

from .answers import match_number
from .base import Example, Task, read_jsonl, read_lines

_NUMBER = re.compile(r"-?\d+(?:\.\d+)?")
_CAPITALISED_WORD = re.compile(r"\s+(?=[A-Z])")
_ABBREVIATION = re.compile(r"\b(?:Mr|Mrs|Ms|Dr|St)\.$")


def number_answer(text: str) -> str:
    """The gold number with thousands commas removed ("1,080" -> "1080"); anything else is an error."""
    answer = text.strip().replace(",", "")
    if not _NUMBER.fullmatch(answer):
        raise ValueError(f"expected a number after '####', got {text.strip()!r}")
    return answer


def split_sentences(solution: str) -> list[str]:
    """Steps of a GSM8K solution whose line breaks were flattened to single spaces.

    A step ends at a sentence end (".", "!", "?" followed by a capitalised word, not after "Mr." and
    the like) or, once the step holds an "=", before the next capitalised word: each original line
    computes one result, so "... = 21 eggs a week Each week ..." splits before "Each". On the 6973
    problems of `train_no_aug.txt` this rebuilds the original GSM8K lines exactly for 82% of them
    (3.57 steps per problem against 3.58); the misses split at a name after an equation
    ("... = 60 cents to | Randi.") or keep two short sentences together.
    """
    steps, start = [], 0
    for boundary in _CAPITALISED_WORD.finditer(solution):
        piece = solution[start : boundary.start()]
        ends_sentence = piece.endswith((".", "!", "?")) and not _ABBREVIATION.search(piece)
        if ends_sentence or "=" in piece:
            steps.append(piece)
            start = boundary.end()
    steps.append(solution[start:])
    return [step.strip() for step in steps if step.strip()]


class GSM8K(Task):
    """GSM8K from OpenAI's JSON Lines (or the hub's openai/gsm8k "main"); steps keep the calculator annotations."""

    name = "gsm8k"
    splits = {"train": "train.jsonl", "test": "test.jsonl"}
    hub_id = "openai/gsm8k"
    hub_config = "main"

    def parse_file(self, path: Path, skip_bad: bool = False) -> list[Example]:
        return read_jsonl(path, self.from_hub_row, skip_bad)

    def from_hub_row(self, row: dict) -> Example:
        """`{"question", "answer"}` with the steps one per line and `#### <number>` last."""
        solution, marker, answer = row["answer"].rpartition("####")
        if not marker:
            raise ValueError("expected the answer to end with a '#### <number>' line")
        steps = [line.strip() for line in solution.split("\n") if line.strip()]
        return Example(question=row["question"].strip(), steps=steps, answer=number_answer(answer))

    def grade(self, text: str, example: Example) -> bool:
        return match_number(text, example.answer)


class GSM8KAug(Task):
    """GSM8K in the iCoT `question||steps #### answer` layout (the data COCONUT uses).

    The augmented train split (`train.txt`, about 385k lines) is read when present in the folder,
    else `train_no_aug.txt` (the 6973 original problems). The hub copy whynlp/gsm8k-aug has the
    fields `question`, `steps` (a list) and `answer`.
    """

    name = "gsm8k-aug"
    splits = {"train": "train.txt", "valid": "valid.txt", "test": "test.txt"}
    hub_id = "whynlp/gsm8k-aug"
    hub_splits = {"valid": "validation"}

    def load(self, split: str = "test", path: str | Path | None = None, skip_bad: bool = False) -> list[Example]:
        if split == "train" and path is not None and Path(path).is_dir() and not (Path(path) / "train.txt").exists():
            path = Path(path) / "train_no_aug.txt"
        return super().load(split, path, skip_bad)

    def parse_file(self, path: Path, skip_bad: bool = False) -> list[Example]:
        return read_lines(path, self.parse_line, skip_bad)

    def parse_line(self, line: str) -> Example:
        question, separator, rest = line.partition("||")
        if not separator:
            raise ValueError("expected '<question>||<steps> #### <answer>', found no '||'")
        steps, marker, answer = rest.rpartition("####")
        if not marker:
            raise ValueError("expected '<question>||<steps> #### <answer>', found no '####'")
        steps = steps.strip()
        split_steps = steps.split(" ") if "<<" in steps else split_sentences(steps)
        return Example(question=question.strip(), steps=split_steps, answer=number_answer(answer))

    def from_hub_row(self, row: dict) -> Example:
        if not isinstance(row["steps"], list):
            raise ValueError(f"expected 'steps' to be a list of strings, got {type(row['steps']).__name__}")
        return Example(
            question=row["question"].strip(), steps=list(row["steps"]), answer=number_answer(str(row["answer"]))
        )

    def grade(self, text: str, example: Example) -> bool:
        return match_number(text, example.answer)

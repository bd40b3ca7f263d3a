"""StrategyQA: yes/no questions whose reasoning steps are implicit.

Splits "train"/"dev" (`train.json`, `dev.json`): JSON arrays of `{"qid", "question", "answer": bool,
"facts": [...], "decomposition": [...], ...}`, the authors' 90/10 split of the annotated train set;
steps are the facts. Split "bigbench" (`bigbench_task.json`): BIG-bench's task object whose examples
have `input`, `target_scores` {"Yes": 0/1, "No": 0/1} and `target` ("Yes. <explanation>"); steps are
the explanation's sentences. That file carries the BIG-bench canary: evaluate on it, never train.

The hub copy ChilleD/StrategyQA has the train/dev fields and its own "train"/"test" splits.
Answers are "True"/"False" everywhere; the grader also takes yes/no.
"""

from __future__ import annotations

import re
from pathlib import Path

from .answers import match_bool
from .base import Example, Task, parse_records, read_json
from .multiple_choice import bigbench_examples


class StrategyQA(Task):
    name = "strategyqa"
    splits = {"train": "train.json", "dev": "dev.json", "bigbench": "bigbench_task.json"}
    hub_id = "ChilleD/StrategyQA"

    def parse_file(self, path: Path, skip_bad: bool = False) -> list[Example]:
        """A JSON array of annotated records (positions: "index"), or a BIG-bench task object ("example")."""
        data = read_json(path)
        if isinstance(data, list):
            return parse_records(enumerate(data), self.from_hub_row, path, "index", skip_bad)
        return bigbench_examples(data, path, self.parse_bigbench, skip_bad)

    def from_hub_row(self, row: dict) -> Example:
        """`{"qid", "question", "answer": bool, "facts": [str], ...}`."""
        answer, facts = row["answer"], row["facts"]
        if not isinstance(answer, bool):
            raise ValueError(f"expected 'answer' to be true or false, got {answer!r}")
        if not isinstance(facts, list):
            raise ValueError(f"expected 'facts' to be a list of strings, got {type(facts).__name__}")
        meta = {"qid": row["qid"]} if "qid" in row else {}
        return Example(
            question=row["question"].strip(), steps=[fact.strip() for fact in facts], answer=str(answer), meta=meta
        )

    def parse_bigbench(self, example: dict) -> Example:
        """`{"input", "target_scores": {"Yes": 1, "No": 0}, "target": "Yes. <explanation>"}`."""
        scores = example["target_scores"]
        if sorted(scores) != ["No", "Yes"] or sorted(scores.values()) != [0, 1]:
            raise ValueError(f"expected 'target_scores' to score one of Yes/No 1 and the other 0, got {scores}")
        explanation = re.sub(r"^(Yes|No)\b\.?", "", example.get("target", "").strip()).strip()
        steps = [sentence for sentence in re.split(r"(?<=[.!?])\s+", explanation) if sentence]
        return Example(question=example["input"].strip(), steps=steps, answer=str(scores["Yes"] == 1))

    def grade(self, text: str, example: Example) -> bool:
        return match_bool(text, example.answer == "True")

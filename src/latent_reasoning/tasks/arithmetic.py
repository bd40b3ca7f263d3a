"""Addition and subtraction chains in plain English: a generated task a small pretrained model can partly do.

GSM8K sits at SmolLM2-135M-Instruct's floor (1.5%), too low for reinforcement learning to find a signal;
these questions are the same kind of work made short, so such a model starts in between. Each question
combines `terms` whole numbers of at most `digits` digits with + and -, the running total never negative.
`form` sets the wording:

    plain:  What is 59 + 63 - 17?
    words:  Ann has 59 coins. Ann gets 63 more coins. Ann gives away 17 coins. How many coins does Ann have now?

The chain of thought is one equation a line ("59 + 63 = 122", "122 - 17 = 105") and the answer the final
total. The same seed draws the same sums in both forms, so a model trained on one can be scored on the
other, question for question (out of distribution). One example per line of JSON Lines:

    {"question": "What is 59 + 63 - 17?", "steps": ["59 + 63 = 122", "122 - 17 = 105"], "answer": "105"}
"""

from __future__ import annotations

import json
import random
import re
from pathlib import Path

from .base import Example, Task, read_jsonl
from .exclusions import distinct_examples

NAMES = ["Ann", "Ben", "Mia", "Sam", "Tom", "Eva", "Leo", "Zoe"]
THINGS = ["apples", "books", "coins", "stickers", "marbles", "cards", "shells", "pencils"]
GAINS = ["gets {n} more {things}", "finds {n} {things}", "buys {n} {things}"]
LOSSES = ["gives away {n} {things}", "loses {n} {things}", "sells {n} {things}"]
STEP = re.compile(r"(\d+) ([+-]) (\d+) = (\d+)")


def combine(a: int, sign: str, b: int) -> int:
    return a + b if sign == "+" else a - b


class Arithmetic(Task):
    name = "arithmetic"

    def __init__(self, terms: int = 3, digits: int = 2, form: str = "plain"):
        for option, value, least in (("terms", terms, 2), ("digits", digits, 1)):
            if not isinstance(value, int) or isinstance(value, bool) or value < least:
                raise ValueError(f"arithmetic {option} must be an integer of at least {least}, got {value!r}")
        if form not in ("plain", "words"):
            raise ValueError(f"arithmetic form must be 'plain' or 'words', got {form!r}")
        self.terms, self.digits, self.form = terms, digits, form

    def parse_file(self, path: Path, skip_bad: bool = False) -> list[Example]:
        return read_jsonl(path, parse_record, skip_bad)

    def grade(self, text: str, example: Example) -> bool:
        from .answers import match_number

        return match_number(text, example.answer)

    def problem(self, rng: random.Random) -> Example:
        largest = 10**self.digits - 1
        total = rng.randint(1, largest)
        numbers, signs, steps = [total], [], []
        for _ in range(self.terms - 1):
            sign = rng.choice("+-") if total > 0 else "+"
            number = rng.randint(1, largest if sign == "+" else min(total, largest))
            result = combine(total, sign, number)
            steps.append(f"{total} {sign} {number} = {result}")
            numbers.append(number)
            signs.append(sign)
            total = result
        if self.form == "plain":
            question = "What is " + " ".join([str(numbers[0])] + [f"{s} {n}" for s, n in zip(signs, numbers[1:])]) + "?"
        else:
            wording = random.Random(" ".join(steps))  # its own draws: the same seed gives the same sums in both forms
            name, things = wording.choice(NAMES), wording.choice(THINGS)
            events = [wording.choice(GAINS if sign == "+" else LOSSES).format(n=n, things=things)
                      for sign, n in zip(signs, numbers[1:])]
            question = (f"{name} has {numbers[0]} {things}. " + "".join(f"{name} {event}. " for event in events)
                        + f"How many {things} does {name} have now?")
        return Example(question, steps, str(total))

    def generate(self, n: int, seed: int, exclude: set[str] | None = None) -> list[Example]:
        """`n` problems with pairwise different questions, none in `exclude`, the same for the same seed."""
        rng = random.Random(seed)
        return distinct_examples(lambda: self.problem(rng), n, exclude, frozenset())

    def save(self, examples: list[Example], path: str | Path) -> None:
        with open(path, "w", encoding="utf-8") as handle:
            for example in examples:
                record = {"question": example.question, "steps": example.steps, "answer": example.answer}
                handle.write(json.dumps(record) + "\n")


def parse_record(record: dict) -> Example:
    question, steps, answer = record["question"], record["steps"], record["answer"]
    if not isinstance(question, str) or not question.strip():
        raise ValueError("'question' must be a non-empty string")
    if not isinstance(steps, list) or not steps:
        raise ValueError("'steps' must be a non-empty list of equations such as '59 + 63 = 122'")
    for i, step in enumerate(steps, 1):
        match = STEP.fullmatch(step) if isinstance(step, str) else None
        if match is None:
            raise ValueError(f"step {i} {step!r}: expected '<a> + <b> = <c>' or '<a> - <b> = <c>'")
        a, sign, b, c = int(match[1]), match[2], int(match[3]), int(match[4])
        if combine(a, sign, b) != c:
            raise ValueError(f"step {i} {step!r} is wrong: {a} {sign} {b} is {combine(a, sign, b)}")
    if not isinstance(answer, str) or answer != STEP.fullmatch(steps[-1])[4]:
        raise ValueError(f"'answer' must be the last step's result as a string, got {answer!r}")
    return Example(question, steps, answer)

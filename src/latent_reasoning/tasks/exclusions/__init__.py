"""Questions the generators never produce: those of the official evaluation splits.

Each `<name>.txt` here lists the first 12 hex digits of the SHA-1 of every question of one
official split, one per line. Hashes rather than the questions themselves keep the package small
and make it independent of any data folder at run time. Only the valid splits are listed: the test
splits are withheld from our data folder. Rebuild the lists with
`python -m latent_reasoning.tasks.exclusions /path/to/shared/data`.
"""

from __future__ import annotations

import hashlib
from functools import lru_cache
from importlib import resources
from typing import Callable

from ..base import Example


def question_hash(question: str) -> str:
    return hashlib.sha1(question.encode("utf-8")).hexdigest()[:12]


@lru_cache(maxsize=None)
def official_hashes(name: str) -> frozenset[str]:
    """The hashes in `<name>.txt`. A missing list raises: silently excluding nothing would leak
    evaluation questions into generated training data."""
    text = resources.files(__name__).joinpath(f"{name}.txt").read_text(encoding="utf-8")
    return frozenset(text.split())


def distinct_examples(
    make: Callable[[], Example],
    n: int,
    exclude: set[str] | None,
    official: frozenset[str],
    render: Callable[[Example], Example] = lambda example: example,
) -> list[Example]:
    """`n` examples `render(make())` with pairwise different questions, none in `exclude` and none
    made from a question whose hash is in `official` (the hashes are of the official wording)."""
    exclude = exclude or set()
    seen: set[str] = set()
    examples: list[Example] = []
    rejected = 0
    while len(examples) < n:
        made = make()
        example = render(made)
        question = example.question
        if question in seen or question in exclude or question_hash(made.question) in official:
            rejected += 1
            # A small question space (e.g. 1-digit multiplication) cannot yield n new questions.
            if rejected > 1000 + 10 * n:
                raise ValueError(f"found only {len(examples)} distinct new questions after {rejected} repeats; "
                                 f"ask for fewer than {n}")
            continue
        seen.add(question)
        examples.append(example)
    return examples

"""What a model's ProsQA chains are made of: are the steps it writes facts of the question?

    python bench/prosqa_chains.py runs/eval/cot/predictions.jsonl [more predictions.jsonl ...]

Reads the predictions files `latent eval` writes (question, the generated text, correct) for ProsQA in
any facts format, and prints per file: how many written step lines state a fact of the question, how
often the first one does, how often the steps link up (each starts at the concept the last one ended
at), how often the whole chain is a real path from the person asked about, how often the last step
names one of the two options and the answer repeats it, how often the answer names one of the two
options (with or without a chain: a latent or no-cot model writes none), and the accuracy. A chain
that is a real path and ends at an option can only end at the right one (the other option is
unreachable), so the gap between "real path" and "accuracy" is what the model gets right by
something other than the chain.
"""

from __future__ import annotations

import argparse
import json
import re

from latent_reasoning.tasks.prosqa import FACT_SENTENCE

QUERY = re.compile(r"Is (\w+) a (\w+) or (\w+)\?$")


def facts_of(question: str) -> tuple[set[tuple[str, str]], str, tuple[str, str]]:
    """The question's facts as (from, to) pairs, the person asked about and the two options."""
    question = FACT_SENTENCE.sub(r"\1 \2.", question)
    person, *options = QUERY.search(question).groups()
    facts = {tuple(pair) for pair in re.findall(r"(\w+) (\w+)\.", question[: question.rindex("Is ")])}
    return facts, person, tuple(options)


def chain_of(text: str) -> list[list[str]]:
    """The written steps before the "####" answer line, each as its words."""
    lines = [line for line in text.split("\n") if line.strip() and not line.startswith("####")]
    return [FACT_SENTENCE.sub(r"\1 \2.", line).strip().rstrip(".").split() for line in lines]


def summary(rows: list[dict]) -> dict[str, float]:
    counts = dict(steps=0, facts=0, first_fact=0, linked=0, real_path=0, ends_at_option=0, answer_repeats=0,
                  answer_is_option=0, correct=0)
    for row in rows:
        facts, person, options = facts_of(row["question"])
        steps = chain_of(row["text"])
        pairs = [tuple(step) for step in steps if len(step) == 2]
        counts["steps"] += len(steps)
        counts["facts"] += sum(pair in facts for pair in pairs)
        counts["first_fact"] += bool(pairs) and pairs[0] in facts
        # an empty chain is not a linked one: no-cot writes no steps
        linked = bool(pairs) and len(pairs) == len(steps) and all(a[1] == b[0] for a, b in zip(pairs, pairs[1:]))
        counts["linked"] += linked
        counts["real_path"] += (linked and pairs[0][0] == person and all(p in facts for p in pairs)
                                and pairs[-1][1] in options)
        last = pairs[-1][1] if pairs else None
        counts["ends_at_option"] += last in options
        answer = row.get("answer") or ""
        counts["answer_repeats"] += last is not None and answer.endswith(last)
        answer_words = answer.split()
        counts["answer_is_option"] += bool(answer_words) and answer_words[-1] in options
        counts["correct"] += bool(row["correct"])
    n = len(rows)
    return {"problems": n, "step_lines": counts["steps"],
            "step lines that are facts": counts["facts"] / max(counts["steps"], 1),
            **{key.replace("_", " "): counts[key] / n for key in
               ("first_fact", "linked", "real_path", "ends_at_option", "answer_repeats", "answer_is_option",
                "correct")}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("predictions", nargs="+", help="predictions.jsonl files written by `latent eval`")
    args = parser.parse_args()
    for path in args.predictions:
        with open(path) as handle:
            rows = [json.loads(line) for line in handle if line.strip()]
        numbers = summary(rows)
        print(path)
        for key, value in numbers.items():
            print(f"  {key:28s} {value:.1%}" if isinstance(value, float) else f"  {key:28s} {value}")


if __name__ == "__main__":
    main()

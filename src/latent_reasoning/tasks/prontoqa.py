"""ProntoQA, 5-hop fictional ontology (Saparov & He 2023), in COCONUT's JSON layout.

A file is one JSON array of records (the same reader as ProsQA, see prosqa.py):

    {"question": "Tumpuses are floral. Each jompus is not melodic. ... Alex is a tumpus. Alex is a jompus.
                  True or false: Alex is happy.",
     "steps": ["Alex is a tumpus. Tumpuses are gorpuses.", ..., "Alex is a brimpus. Brimpuses are happy.",
               "Alex is happy."],
     "answer": "True",
     "idx_to_symbol": ["Alex", "tumpus", ...], "edges": [[3, 11], ...], "root": 0, "target": 5,
     "neg_target": 6, "chain_concepts": ["tumpus", "gorpus", "wumpus", "sterpus", "brimpus"]}

Every official problem has the same shape, which the generator reproduces: a chain of five concepts
c0 -> ... -> c4 with the person in c0; every chain concept has one property and one more child
concept with a property of its own (c4 a second child without one); a distractor concept, which the
person also belongs to, with a property and a child; and a contrary concept holding c4's property
with the opposite sign. That is 23 facts in random order, then the two facts about the person in
random order, then the query about c4's property, asked plain or negated. The gold steps walk the
chain, citing each rule sentence as the question words it. Each fact is worded "Every X is a Y.",
"Each X is a Y." or "Xes are Yes." (half the time the plural). All frequencies below are fitted to
the 200 official valid problems; tests/test_generators.py checks the fit.
"""

from __future__ import annotations

import random
from pathlib import Path

from .base import Example, Task, read_json_array
from .exclusions import distinct_examples, official_hashes
from .prosqa import parse_record, save_records

NAMES = ("Alex", "Fae", "Max", "Polly", "Rex", "Sally", "Sam", "Stella", "Wren")
CONCEPTS = ("brimpus", "dumpus", "gorpus", "grimpus", "impus", "jompus", "lempus", "lorpus", "numpus", "rompus",
            "shumpus", "sterpus", "tumpus", "vumpus", "wumpus", "yumpus", "zumpus")
# Properties come in families; one problem never uses two properties of a family (except c4's
# property on the contrary concept), and every family is equally likely.
PROPERTY_FAMILIES = (
    ("blue", "red", "brown", "orange"), ("small", "large"), ("metallic", "wooden", "luminous", "liquid"),
    ("transparent", "opaque"), ("nervous", "happy", "feisty", "shy"), ("bright", "dull"),
    ("sweet", "sour", "spicy", "bitter"), ("floral", "fruity", "earthy"), ("hot", "cold", "temperate"),
    ("kind", "mean", "angry", "amenable", "aggressive"), ("melodic", "muffled", "discordant", "loud"),
    ("slow", "moderate", "fast"), ("windy", "sunny", "overcast", "rainy", "snowy"),
)
HOPS = 5
NEGATED_ON_CHAIN = 0.26  # share of "is not" among the properties of c0..c3
NEGATED_ELSEWHERE = 0.33  # ... of the side concepts and the distractor
# c4's property and the query are each negated half the time, so half the answers are True (the
# valid file has 89 of 200, the withheld test file 397 of 800).
NEGATED_ON_LAST = NEGATED_QUERY = 0.5
PLURAL, EVERY = 0.5, 0.25  # wording of a fact; "Each" takes the rest


class ProntoQA(Task):
    name = "prontoqa"
    splits = {"train": "prontoqa_train.json", "valid": "prontoqa_valid.json", "test": "prontoqa_test.json"}
    hub_id = None  # COCONUT's ProntoQA files are generated, not published on the hub

    def parse_file(self, path: Path, skip_bad: bool = False) -> list[Example]:
        return read_json_array(path, parse_true_false, skip_bad)

    def grade(self, text: str, example: Example) -> bool:
        from .answers import match_bool

        return match_bool(text, example.answer == "True")

    def generate(self, n: int, seed: int, exclude: set[str] | None = None) -> list[Example]:
        """`n` distinct problems, none with a question in `exclude` or in the official valid split."""
        rng = random.Random(seed)
        return distinct_examples(lambda: make_problem(rng), n, exclude, official_hashes("prontoqa_valid"))

    def save(self, examples: list[Example], path: str | Path) -> None:
        save_records(examples, path, ("question", "steps", "answer"))


def parse_true_false(record: dict) -> Example:
    example = parse_record(record)
    # Grading compares against "True", so any other spelling would silently mark every answer wrong.
    if example.answer not in ("True", "False"):
        raise ValueError(f"answer must be 'True' or 'False', got {example.answer!r}")
    return example


def make_problem(rng: random.Random) -> Example:
    person = rng.choice(NAMES)
    concepts = rng.sample(CONCEPTS, 2 * HOPS + 4)
    chain, sides = concepts[:HOPS], concepts[HOPS : 2 * HOPS]
    last_leaf, distractor, distractor_leaf, contrary = concepts[2 * HOPS :]
    families = rng.sample(PROPERTY_FAMILIES, 2 * HOPS + 1)
    properties = [rng.choice(family) for family in families]
    asked = properties[HOPS - 1]
    asked_negated = rng.random() < NEGATED_ON_LAST

    chain_rules = [_is_a(rng, a, b) for a, b in zip(chain, chain[1:])]
    chain_rules.append(_has(rng, chain[-1], asked, asked_negated))
    leaves = {last_leaf: chain[-1], distractor_leaf: distractor}  # leaf -> its parent
    leaf_rules = {leaf: _is_a(rng, parent, leaf) for leaf, parent in leaves.items()}
    facts = chain_rules + list(leaf_rules.values()) + [_is_a(rng, a, b) for a, b in zip(chain, sides)]
    facts += [_has(rng, c, p, rng.random() < NEGATED_ON_CHAIN) for c, p in zip(chain[:-1], properties)]
    facts += [_has(rng, c, p, rng.random() < NEGATED_ELSEWHERE)
              for c, p in zip(sides + [distractor], properties[HOPS:])]
    facts.append(_has(rng, contrary, asked, not asked_negated))
    rng.shuffle(facts)
    memberships = [f"{person} is {_a(chain[0])}.", f"{person} is {_a(distractor)}."]
    rng.shuffle(memberships)
    query_negated = rng.random() < NEGATED_QUERY
    query = f"True or false: {person} is {'not ' * query_negated}{asked}."

    steps = [f"{person} is {_a(concept)}. {rule}" for concept, rule in zip(chain, chain_rules)]
    steps.append(f"{person} is {'not ' * asked_negated}{asked}.")
    answer = "True" if query_negated == asked_negated else "False"

    # The published graph fields leave out a leaf concept that is only ever written in the plural
    # ("Jompuses are impuses."); generated ones do the same so that both look alike.
    hidden = {leaf for leaf, rule in leaf_rules.items() if not rule.startswith(("Every", "Each"))}
    symbols = [person] + chain + sorted(set(concepts[HOPS:]) - hidden)
    index = {symbol: i for i, symbol in enumerate(symbols)}
    links = [*zip(chain, chain[1:]), *zip(chain, sides), *((parent, leaf) for leaf, parent in leaves.items())]
    edges = [[index[a], index[b]] for a, b in links if b in index]
    # root, target and neg_target are fixed indices in the published files (person, c4, first other symbol).
    meta = {"idx_to_symbol": symbols, "edges": edges, "root": 0, "target": HOPS, "neg_target": HOPS + 1,
            "chain_concepts": chain}
    return Example(" ".join(facts + memberships + [query]), steps, answer, meta)


def _is_a(rng: random.Random, concept: str, parent: str) -> str:
    return _rule(rng, concept, _a(parent), _plural(parent))


def _has(rng: random.Random, concept: str, prop: str, negated: bool) -> str:
    predicate = f"{'not ' * negated}{prop}"
    return _rule(rng, concept, predicate, predicate)


def _rule(rng: random.Random, concept: str, singular: str, plural: str) -> str:
    """"Every X is <singular>.", "Each X is <singular>." or "Xes are <plural>."."""
    form = rng.random()
    if form < PLURAL:
        return f"{_plural(concept).capitalize()} are {plural}."
    return f"{'Every' if form < PLURAL + EVERY else 'Each'} {concept} is {singular}."


def _a(concept: str) -> str:
    return f"{'an' if concept[0] in 'aeiou' else 'a'} {concept}"


def _plural(concept: str) -> str:
    return concept + "es"  # every concept word ends in "-pus"

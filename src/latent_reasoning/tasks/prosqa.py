"""ProsQA (COCONUT, Hao et al. 2024): is a person a A or a B, over a random graph of made-up concepts.

A file is one JSON array of records:

    {"question": "Every shumpus is a rempus. ... Tom is a terpus. ... Is Tom a lempus or scrompus?",
     "answer": "Tom is a lempus.",
     "steps": ["Tom is a terpus.", "Every terpus is a brimpus.", "Every brimpus is a lempus."],
     "idx_to_symbol": ["Davis", "Tom", "shumpus", ...], "edges": [[0, 2], [1, 3], ...],
     "root": 1, "target": 16, "neg_target": 13}

The question states every edge of a directed acyclic graph as a fact, in random order: "Tom is a
terpus." from a person (a node without parents), "Every terpus is a brimpus." otherwise. The gold
steps are a shortest path from the person `root` to the concept `target`; `neg_target`, the other
option, cannot be reached from `root`. Fields other than question, steps and answer go to
Example.meta. ProntoQA's COCONUT files use the same layout, so prontoqa.py reuses the reader here.

`ProsQA(facts="pairs")` writes every fact of the question and of the steps as its two symbols
("Every terpus is a brimpus." -> "terpus brimpus.", "Tom is a terpus." -> "Tom terpus."), about
half the tokens. That is the compact edge-list form in which the COCONUT authors train models from
scratch on ProsQA (Zhu et al. 2025, arXiv 2505.12514); a model without language pretraining gains
nothing from the filler words. The final question and the answer stay sentences, so grading is the same.
`ProsQA(facts="lines")` is the pairs form with one fact per line of the question, so a fact in the
question and the same fact written as a step ("terpus brimpus." at the start of a line) are the same
tokens for a word-level tokenizer (which tells a word after a space from one that starts a line):
the step is an exact copy of a question line.

The generator is written from the construction the COCONUT paper describes in words, with its
parameters fitted to the 300 official valid problems; tests/test_generators.py checks the fit.
"""

from __future__ import annotations

import json
import math
import random
import re
from collections import deque
from pathlib import Path

from .base import Example, Task, read_json_array
from .exclusions import distinct_examples, official_hashes

# Every person name and concept word of the official valid file.
NAMES = ("Alex", "Bob", "Carol", "Davis", "Eva", "Fae", "Gabriel", "Jack", "Max", "Oliver", "Polly", "Rex",
         "Sally", "Sam", "Stella", "Tom", "Wren")
CONCEPTS = ("boompus", "bompus", "brimpus", "chorpus", "dumpus", "felpus", "fompus", "gerpus", "gorpus", "grimpus",
            "gwompus", "hilpus", "impus", "jelpus", "jompus", "kerpus", "lempus", "lorpus", "numpus", "quimpus",
            "rempus", "rompus", "rorpus", "scrompus", "shumpus", "sterpus", "storpus", "terpus", "timpus", "tumpus",
            "vumpus", "worpus", "wumpus", "yerpus", "yimpus", "yumpus", "zhorpus", "zumpus")

# Graph construction. Nodes 0 and 1 are people; each later node draws a Poisson number of parents.
# It either stays inside one person's family (parents only among nodes descending from that person
# alone) or may take any earlier node as a parent, which is how the two families meet and how further
# people (nodes that drew no parents) get children. People who got none are dropped, which leaves the
# 17-28 nodes of the official problems. The second family is favoured: in the official problems node 1
# has the larger family and is the root 65% of the time.
NODES = 28
MEAN_PARENTS = 1.5
ONLY_FIRST, ONLY_SECOND = 0.33, 0.45  # chance a new node is confined to node 0's / node 1's family
DEPTH_WEIGHT = 1.5  # a candidate parent d edges below a person is drawn with weight 1 + 1.5 d: longer chains
MIN_HOPS, MAX_HOPS = 3, 6  # the range of gold path lengths in the official problems

FACT_SENTENCE = re.compile(r"\b(?:Every )?(\w+) is a (\w+)\.")


class ProsQA(Task):
    name = "prosqa"
    splits = {"train": "prosqa_train.json", "valid": "prosqa_valid.json", "test": "prosqa_test.json"}
    hub_id = None  # COCONUT publishes ProsQA only in its GitHub repository

    def __init__(self, facts: str = "sentences"):
        if facts not in ("sentences", "pairs", "lines"):
            raise ValueError(f"prosqa facts must be 'sentences', 'pairs' or 'lines', got {facts!r}")
        self.facts = facts

    def parse_file(self, path: Path, skip_bad: bool = False) -> list[Example]:
        return [self.render(example) for example in read_json_array(path, parse_record, skip_bad)]

    def render(self, example: Example) -> Example:
        """`example` with its facts written as `self.facts` says; rendering twice changes nothing."""
        if self.facts == "sentences":
            return example
        question, *steps = [FACT_SENTENCE.sub(r"\1 \2.", text) for text in [example.question, *example.steps]]
        if self.facts == "lines":
            question = question.replace(". ", ".\n")
        return Example(question, steps, example.answer, example.meta)

    def grade(self, text: str, example: Example) -> bool:
        from .answers import match_entity

        return match_entity(text, example.answer)

    def generate(self, n: int, seed: int, exclude: set[str] | None = None) -> list[Example]:
        """`n` distinct problems, none with a question in `exclude` or in the official valid split."""
        rng = random.Random(seed)
        return distinct_examples(lambda: make_problem(rng), n, exclude, official_hashes("prosqa_valid"), self.render)

    def save(self, examples: list[Example], path: str | Path) -> None:
        save_records(examples, path, ("question", "answer", "steps"))


# ---- the COCONUT JSON layout (shared with prontoqa.py) --------------------------------------------
CORE_FIELDS = ("question", "steps", "answer")


def parse_record(record: dict) -> Example:
    if not isinstance(record, dict):
        raise ValueError(f"expected a JSON object with {', '.join(CORE_FIELDS)}, got {type(record).__name__}")
    question, steps, answer = record["question"], record["steps"], record["answer"]
    if not isinstance(question, str):
        raise ValueError("question must be a string")
    if not isinstance(steps, list) or not all(isinstance(step, str) for step in steps):
        raise ValueError("steps must be a list of strings")
    if not isinstance(answer, str):
        raise ValueError("answer must be a string")
    meta = {key: value for key, value in record.items() if key not in CORE_FIELDS}
    return Example(question, steps, answer, meta)


def save_records(examples: list[Example], path: str | Path, key_order: tuple[str, ...]) -> None:
    """One JSON array, the core fields in `key_order` (each official file's order) and then the meta."""
    records = []
    for example in examples:
        core = {"question": example.question, "steps": example.steps, "answer": example.answer}
        records.append({**{key: core[key] for key in key_order}, **example.meta})
    with open(path, "w", encoding="utf-8") as handle:
        json.dump(records, handle)


# ---- generation -------------------------------------------------------------------------------
def make_problem(rng: random.Random) -> Example:
    while True:
        problem = _try_problem(rng, _random_graph(rng))
        if problem is not None:
            return problem


def _random_graph(rng: random.Random) -> list[list[int]]:
    """Parents of each node, nodes in creation order (so every edge goes from a lower to a higher index)."""
    parents: list[list[int]] = [[], []]
    family = [1, 2]  # bit 1: descends from node 0, bit 2: from node 1; 0 for further people
    depth = [0, 0]
    for node in range(2, NODES):
        roll = rng.random()
        allowed = {1} if roll < ONLY_FIRST else {2} if roll < ONLY_FIRST + ONLY_SECOND else {0, 1, 2, 3}
        candidates = [j for j in range(node) if family[j] in allowed]
        weights = [1 + DEPTH_WEIGHT * depth[j] for j in candidates]
        chosen = []
        for _ in range(min(_poisson(rng, MEAN_PARENTS), len(candidates))):
            pick = rng.choices(range(len(candidates)), weights=weights)[0]
            chosen.append(candidates.pop(pick))
            weights.pop(pick)
        parents.append(chosen)
        family.append(_union(family[j] for j in chosen))
        depth.append(1 + max((depth[j] for j in chosen), default=-1))
    has_children = {j for chosen in parents for j in chosen}
    kept = [node for node in range(NODES) if parents[node] or node in has_children]
    renumber = {old: new for new, old in enumerate(kept)}
    return [[renumber[j] for j in parents[old]] for old in kept]


def _try_problem(rng: random.Random, parents: list[list[int]]) -> Example | None:
    """A question over the graph, or None when it has none in the official shape.

    The root is whichever of nodes 0 and 1 reaches a leaf of its own (one the other cannot reach)
    farther away; the target is its farthest such leaf, the wrong option a leaf of the other's own.
    """
    children: list[list[int]] = [[] for _ in parents]
    for node, chosen in enumerate(parents):
        for j in chosen:
            children[j].append(node)
    hops = [_hops_from(start, children) for start in (0, 1)]
    leaves = [node for node in range(len(parents)) if not children[node]]
    own = [[leaf for leaf in leaves if leaf in hops[s] and leaf not in hops[1 - s]] for s in (0, 1)]
    reach = [max((hops[s][leaf] for leaf in own[s]), default=0) for s in (0, 1)]
    root = rng.randrange(2) if reach[0] == reach[1] else int(reach[1] > reach[0])
    people = [node for node in range(len(parents)) if not parents[node]]
    if not MIN_HOPS <= reach[root] <= MAX_HOPS or not own[1 - root] or len(people) > len(NAMES):
        return None
    target = rng.choice([leaf for leaf in own[root] if hops[root][leaf] == reach[root]])
    neg_target = rng.choice(own[1 - root])

    symbols = _name_nodes(rng, parents, people)
    edges = [[j, node] for node, chosen in enumerate(parents) for j in chosen]
    facts = [_fact(symbols[a], symbols[b], a in people) for a, b in edges]
    rng.shuffle(facts)
    options = [symbols[target], symbols[neg_target]]
    rng.shuffle(options)
    person = symbols[root]
    path = _random_shortest_path(rng, root, target, parents, hops[root])
    steps = [_fact(symbols[a], symbols[b], a == root) for a, b in zip(path, path[1:])]
    question = " ".join(facts) + f" Is {person} a {options[0]} or {options[1]}?"
    meta = {"idx_to_symbol": symbols, "edges": edges, "root": root, "target": target, "neg_target": neg_target}
    return Example(question, steps, f"{person} is a {symbols[target]}.", meta)


def _fact(subject: str, category: str, subject_is_person: bool) -> str:
    # ProsQA writes "a" before every concept, vowel or not ("Tom is a impus.").
    return f"{subject} is a {category}." if subject_is_person else f"Every {subject} is a {category}."


def _name_nodes(rng: random.Random, parents: list[list[int]], people: list[int]) -> list[str]:
    names = iter(rng.sample(NAMES, len(people)))
    concepts = iter(rng.sample(CONCEPTS, len(parents) - len(people)))
    return [next(names) if not chosen else next(concepts) for chosen in parents]


def _hops_from(start: int, children: list[list[int]]) -> dict[int, int]:
    """Shortest number of edges from `start` to every node it reaches (breadth-first)."""
    hops = {start: 0}
    queue = deque([start])
    while queue:
        node = queue.popleft()
        for child in children[node]:
            if child not in hops:
                hops[child] = hops[node] + 1
                queue.append(child)
    return hops


def _random_shortest_path(rng: random.Random, root: int, target: int, parents: list[list[int]],
                          hops: dict[int, int]) -> list[int]:
    """One of the shortest root->target paths, each equally likely (as in the official gold steps)."""
    count = {root: 1}  # shortest paths from root to each node; nodes in order of distance, parents first
    for node in sorted(hops, key=hops.get):
        if node != root:
            count[node] = sum(count[j] for j in parents[node] if hops.get(j) == hops[node] - 1)
    path = [target]
    while path[-1] != root:
        before = [j for j in parents[path[-1]] if hops.get(j) == hops[path[-1]] - 1]
        path.append(rng.choices(before, weights=[count[j] for j in before])[0])
    return path[::-1]


def _poisson(rng: random.Random, mean: float) -> int:
    """A Poisson draw by multiplying uniforms (Knuth), from `rng` alone so generation stays seeded."""
    limit, count, product = math.exp(-mean), 0, rng.random()
    while product > limit:
        count += 1
        product *= rng.random()
    return count


def _union(families) -> int:
    bits = 0
    for value in families:
        bits |= value
    return bits

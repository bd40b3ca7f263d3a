"""Graph search in ProsQA's shape at a size set by options: which of two nodes can the root reach?

A generated problem is a forest over `nodes` made-up node names, one word each (a single token for
the tiny models' word-level tokenizer). The question lists every edge as "| <parent> <child>", in
random order, then asks which of two options is reachable from the root, the options in random
order. The first problem of seed 0 with the default options:

    | di ku | ve ke | biv lu | bek pu | si se | bek baz | pu bev | di sa | sa ni | baz boz | ni ve | ku si | boz ra | bev biv . from bek : ra or se ?

The answer is the reachable option's name, here "ra". The gold steps, one per hop, are either

    chain="backward" (default): from the FIRST option up through its parents to its top node,
        "- <child> from <parent>" per step: "- ra from boz", "- boz from baz", "- baz from bek".
        Every node has at most one parent, so this needs no lookahead; if the top reached is the
        root (bek), the first option is the answer, else the other.
    chain="forward": the path from the root to the answer, "- <parent> to <child>" per step, as in
        ProsQA: "- bek to baz", "- baz to boz", "- boz to ra".
    chain="path": the same path as one token a step, the node reached (" baz", " boz", " ra"), the
        steps written one after another on one line (`step_separator` ""): " baz boz ra#### ra". As
        the symbolic graphs COCONUT's small-scale studies use, a step is one node.

Each step starts with "-" (or, on a path, a space) so that every node name is written after a space everywhere (the
question starts with "|" for the same reason): the word-level tokenizer gives a word at the start
of a line a different token from the same word after a space, and a step should name a node with
the same token the question uses.

The graph (all counts fixed by the options):
    the root's tree: the root, a chain of `hops` edges down to the answer, and `branches` dead-end
        chains hanging from the root;
    a disconnected tree of the same shape holding the other option at the end of its own chain of
        `hops` edges, so the option is not reachable and the shape does not tell which tree is whose;
    the remaining nodes lengthen the 2 * branches dead-end chains as evenly as possible (each has at
        least one node; which chains get one more is random); with branches=0 they form a third,
        separate chain instead (one more tree, still no option in it).
So the root has 1 + branches children and there are `nodes` - (number of trees) edges.
With `min_hops` below `hops`, each problem draws its own number of hops from min_hops .. hops (uniform; the
node count stays, the nodes a shorter chain leaves go to the other chains): questions of mixed depth, for a
model that repeats one hop's computation (slr loop=depth) to learn the hop on short questions.
Names are drawn at random from the first `symbols` names of NAMES.

File format, one example per line (what save writes and load reads back exactly):

    <question>||<step>||<step>||...||<last step> #### <answer>

The question and steps never contain "||" or "####". Example.meta holds the root, the two options
in question order and the number of hops; it is rebuilt from the line when loading.
"""

from __future__ import annotations

import random
import re
from pathlib import Path

from .base import Example, Task, read_lines
from .exclusions import distinct_examples

ANSWER_MARKER = "####"  # methods.base.ANSWER_MARKER (not imported: that module pulls in torch)
LINE_FORMAT = "expected '<question>||<step>||...||<step> #### <answer>'"


def _names() -> tuple[str, ...]:
    """Pronounceable made-up names: consonant-vowel pairs, then consonant-vowel-consonant words
    ending in k, v or z; common English words left out."""
    consonants, vowels = "bdfgklmnprstvz", "aeiou"
    english = {"be", "bi", "bo", "da", "de", "do", "fa", "go", "la", "lo", "ma", "me", "mi", "mo", "mu", "no",
               "nu", "pa", "pi", "re", "so", "ta", "ti", "to", "biz", "fez", "lav", "rev"}
    pairs = [c + v for c in consonants for v in vowels]
    triples = [c + v + end for c in consonants for v in vowels for end in "kvz"]
    return tuple(name for name in pairs + triples if name not in english)


NAMES = _names()

NAME = r"[a-z]+"
QUESTION = re.compile(rf"((?:\| {NAME} {NAME} )+)\. from ({NAME}) : ({NAME}) or ({NAME}) \?")
STEP = re.compile(rf"- ({NAME}) (from|to) ({NAME})| {NAME}")


class Graph(Task):
    name = "graph"
    answer_prefix = ANSWER_MARKER

    def __init__(self, nodes: int = 16, hops: int = 3, branches: int = 1, chain: str = "backward",
                 symbols: int = 64, min_hops: int | None = None):
        min_hops = hops if min_hops is None else min_hops
        for option, value, least in (("hops", hops, 1), ("branches", branches, 0), ("nodes", nodes, 1),
                                     ("symbols", symbols, 1), ("min_hops", min_hops, 1)):
            if not isinstance(value, int) or isinstance(value, bool) or value < least:
                raise ValueError(f"graph {option} must be an integer of at least {least}, got {value!r}")
        if chain not in ("backward", "forward", "path"):
            raise ValueError(f"graph chain must be 'backward', 'forward' or 'path', got {chain!r}")
        smallest = 2 * (1 + hops + branches)  # two trees: top, chain of `hops`, one node per dead end
        if nodes < smallest:
            raise ValueError(f"graph nodes={nodes} is too few for hops={hops} and branches={branches}: "
                             f"need at least 2 * (1 + hops + branches) = {smallest}")
        if min_hops > hops:
            raise ValueError(f"graph min_hops={min_hops} is more than hops={hops}")
        if branches == 0 and nodes == smallest + 1:  # (fewer hops leave at least 2 nodes over)
            raise ValueError(f"graph nodes={nodes} with branches=0: the one node left over fits nowhere "
                             f"without a branch; use nodes={smallest} or at least {smallest + 2}")
        if not nodes <= symbols <= len(NAMES):
            raise ValueError(f"graph symbols={symbols} must be at least nodes={nodes} and at most {len(NAMES)} "
                             f"(the names available)")
        self.nodes, self.hops, self.branches, self.chain, self.symbols = nodes, hops, branches, chain, symbols
        self.min_hops = min_hops
        if chain == "path":
            self.step_separator = ""  # each step carries its own leading space

    # ---- loading and grading -----------------------------------------------------------------------
    def parse_file(self, path: Path, skip_bad: bool = False) -> list[Example]:
        return read_lines(path, parse_line, skip_bad)

    def grade(self, text: str, example: Example) -> bool:
        """Right when the text after the last "####" (to the end of its line, a final period
        dropped) is exactly the answer's name: the other option, both, or nothing are wrong."""
        if ANSWER_MARKER not in text:
            return False
        answered = text.rsplit(ANSWER_MARKER, 1)[1].split("\n", 1)[0].strip().rstrip(".").strip()
        return answered == example.answer

    # ---- generation --------------------------------------------------------------------------------
    def generate(self, n: int, seed: int, exclude: set[str] | None = None) -> list[Example]:
        """`n` problems with pairwise different questions, none in `exclude`, the same for the same seed."""
        rng = random.Random(seed)
        return distinct_examples(lambda: self.problem(rng), n, exclude, frozenset())

    def problem(self, rng: random.Random) -> Example:
        hops = self.hops if self.min_hops == self.hops else rng.randint(self.min_hops, self.hops)
        parent = self._random_forest(rng, hops)
        names = rng.sample(NAMES[: self.symbols], self.nodes)
        root, answer, other = 0, hops, 2 * hops + 1  # see _random_forest for the numbering
        edges = [(names[parent[child]], names[child]) for child in range(self.nodes) if parent[child] is not None]
        rng.shuffle(edges)
        options = [names[answer], names[other]]
        rng.shuffle(options)
        facts = " ".join(f"| {u} {v}" for u, v in edges)
        question = f"{facts} . from {names[root]} : {options[0]} or {options[1]} ?"
        if self.chain == "forward":
            steps = [f"- {names[node - 1]} to {names[node]}" for node in range(1, hops + 1)]
        elif self.chain == "path":
            steps = [f" {names[node]}" for node in range(1, hops + 1)]
        else:
            parent_of = {v: u for u, v in edges}
            steps, node = [], options[0]
            while node in parent_of:
                steps.append(f"- {node} from {parent_of[node]}")
                node = parent_of[node]
        return Example(question, steps, names[answer], question_meta(question, steps))

    def _random_forest(self, rng: random.Random, hops: int) -> list[int | None]:
        """The parent of each node (None for a top). Node 0 is the root, 1..hops its chain to the
        answer; node hops+1 is the other tree's top and the next hops nodes its chain to the other
        option; the rest are dead-end chains (or, with no branches, one chain of their own)."""
        parent: list[int | None] = []
        for top in (0, hops + 1):
            parent += [None] + [top + k for k in range(hops)]
        left = self.nodes - len(parent)
        if self.branches == 0:
            if left:
                parent += [None] + [len(parent) + k for k in range(left - 1)]
            return parent
        dead_ends = [(top, 1) for top in (0, hops + 1) for _ in range(self.branches)]
        longer = set(rng.sample(range(len(dead_ends)), (left - len(dead_ends)) % len(dead_ends)))
        for index, (top, _) in enumerate(dead_ends):
            length = (left // len(dead_ends)) + (index in longer)
            parent += [top] + [len(parent) + k for k in range(length - 1)]
        return parent

    def save(self, examples: list[Example], path: str | Path) -> None:
        with open(path, "w", encoding="utf-8") as handle:
            for example in examples:
                handle.write(format_line(example) + "\n")


def question_meta(question: str, steps: list[str]) -> dict:
    match = QUESTION.fullmatch(question)
    if match is None:
        raise ValueError(f"question {question[:60]!r}...: expected '| <u> <v> | ... . from <root> : <a> or <b> ?', "
                         "names lowercase letters")
    return {"root": match.group(2), "options": [match.group(3), match.group(4)], "hops": len(steps)}


def format_line(example: Example) -> str:
    return "||".join([example.question, *example.steps]) + f" {ANSWER_MARKER} {example.answer}"


def parse_line(line: str) -> Example:
    body, marker, answer = line.rstrip().rpartition(f" {ANSWER_MARKER} ")
    question, *steps = body.split("||")
    if not marker or not steps:
        raise ValueError(LINE_FORMAT)
    meta = question_meta(question, steps)
    for step in steps:
        if STEP.fullmatch(step) is None:
            raise ValueError(f"step {step!r}: expected '- <child> from <parent>', '- <parent> to <child>' or ' <node>'")
    if answer not in meta["options"]:
        raise ValueError(f"answer {answer!r} is neither option {meta['options']}")
    return Example(question, steps, answer, meta)

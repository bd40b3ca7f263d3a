"""Parity of n random bits: a task no-CoT cannot learn at useful lengths and CoT learns at once.

One example per line, in the same layout as the multiplication files:

    1 0 1 1 0 0 1 0||1 1 0 1 1 1 0 0 #### 0

The question is the bits, space-separated; the chain of thought is the running parity after each
bit (step i is b_1 xor .. xor b_i, so the last step is the answer); the answer is the parity of all
bits. The steps are written on one line, separated by spaces (`step_separator`), one token each:
when step i is predicted the model stands on step i - 1 and reads bit i at the same distance back
for every i, so each step is a xor of the current token with one fixed-offset lookup. Written one
step a line, the previous step is one token back too, and a 1M-parameter model was still at chance
after 200 steps of 128 (the xor of two looked-up bits gives no signal until both lookups form). `bits` (default 16) sets n. A model reading the chain needs one lookup per step; a model
answering directly must compute an n-way xor in one forward pass, which a small transformer does
not learn from scratch (see ../shared/notes/small-scale-latent.md: 50% at 16 and 24 bits).

`chain="named"` writes each step as a short phrase that names the bit it reads, as ProsQA's and the
graph task's steps are sentences: the question names every bit and each step is that name, the bit
and the parity so far, the steps separated by " ; ":

    b1 1 b2 0 b3 1||b1 1 1 ; b2 0 1 ; b3 1 0 #### 0

A step then finds its bit by name rather than by distance, and is several tokens (5-6 with the presets'
word tokenizer, which splits 'b10' into b, 1, 0), so one continuous thought a step saves passes (with
one token a step it costs as many as the chain).

With `min_bits` below `bits`, each string draws its own length from min_bits .. bits (uniform): strings of
mixed length, as looped transformers are trained on parity (Fan et al. 2025, arXiv 2409.15647), so that a
model repeating one step's computation (slr loop=depth) can learn the step on short strings.

`chain="suffix"` writes step i as the parity of the last i bits (b_n xor .. xor b_{n-i+1}), in the same file
layout; the last step is again the answer. A model that computes the steps where it answers (slr loop=depth,
step_readout=answer) then finds step i's bit at the same distance back whatever the string's length, where the
running chain puts bit i at a distance that grows with n: strings of mixed length share one computation per step.
"""

from __future__ import annotations

import random
from pathlib import Path

from .base import Example, Task, read_lines
from .exclusions import distinct_examples

LINE_FORMAT = "expected '<bits>||<running (or suffix) parities> #### <parity>', space-separated"
NAMED_FORMAT = "expected 'b1 <bit> b2 <bit> ..||b1 <bit> <parity> ; b2 <bit> <parity> ; .. #### <parity>'"


class Parity(Task):
    name = "parity"
    answer_prefix = "####"
    step_separator = " "

    def __init__(self, bits: int = 16, chain: str = "running", min_bits: int | None = None):
        min_bits = bits if min_bits is None else min_bits
        for key, value in (("bits", bits), ("min_bits", min_bits)):
            if not isinstance(value, int) or isinstance(value, bool) or value < 2:
                raise ValueError(f"parity {key} must be an integer of at least 2, got {value!r}")
        if min_bits > bits:
            raise ValueError(f"parity min_bits={min_bits} is more than bits={bits}")
        if chain not in ("running", "named", "suffix"):
            raise ValueError(f"parity chain must be 'running', 'named' or 'suffix', got {chain!r}")
        self.bits, self.chain, self.min_bits = bits, chain, min_bits
        if chain == "named":
            self.step_separator = " ; "

    def parse_file(self, path: Path, skip_bad: bool = False) -> list[Example]:
        if self.chain == "named":
            return read_lines(path, parse_named_line, skip_bad)
        return read_lines(path, lambda line: parse_line(line, self.chain), skip_bad)

    def grade(self, text: str, example: Example) -> bool:
        from .answers import match_digits

        return match_digits(text, example.answer)

    def example(self, bits: list[int]) -> Example:
        parities = chain_of(bits, self.chain)
        running = parities[-1]
        if self.chain == "named":
            question = " ".join(f"b{i} {bit}" for i, bit in enumerate(bits, 1))
            steps = [f"b{i} {bit} {parity}" for i, (bit, parity) in enumerate(zip(bits, parities), 1)]
            return Example(question, steps, str(running))
        return Example(" ".join(map(str, bits)), [str(parity) for parity in parities], str(running))

    def generate(self, n: int, seed: int, exclude: set[str] | None = None) -> list[Example]:
        """`n` distinct bit strings of length `bits` (or each of a length drawn from min_bits .. bits), uniform,
        never a question in `exclude`."""
        lengths = range(self.min_bits, self.bits + 1)
        strings = sum(2**length for length in lengths)
        words_per_bit = 2 if self.chain == "named" else 1
        excluded = sum(len(question.split(" ")) // words_per_bit in lengths for question in exclude or ())
        if n > strings - excluded:
            raise ValueError(f"parity: {n} distinct examples asked of {self.min_bits}..{self.bits} bits "
                             f"(only {strings} exist)")
        rng = random.Random(seed)

        def draw() -> Example:
            length = self.bits if self.min_bits == self.bits else rng.randint(self.min_bits, self.bits)
            return self.example([rng.randint(0, 1) for _ in range(length)])

        return distinct_examples(draw, n, exclude, frozenset())

    def save(self, examples: list[Example], path: str | Path) -> None:
        with open(path, "w", encoding="utf-8") as handle:
            for example in examples:
                handle.write(f"{example.question}||{self.step_separator.join(example.steps)} #### {example.answer}\n")


def chain_of(bits: list[int], chain: str) -> list[int]:
    """The steps' parities: of the first i bits (running, named) or of the last i (suffix)."""
    parities, running = [], 0
    for bit in bits[::-1] if chain == "suffix" else bits:
        running ^= bit
        parities.append(running)
    return parities


def parse_line(line: str, chain: str = "running") -> Example:
    question, bar, rest = line.rstrip().partition("||")
    steps_text, marker, answer = rest.rpartition(" #### ")
    bits, steps = question.split(" "), steps_text.split(" ")
    if not bar or not marker or not all(token in ("0", "1") for token in bits + steps + [answer]):
        raise ValueError(LINE_FORMAT)
    if len(steps) != len(bits):
        raise ValueError(f"{len(bits)} bits but {len(steps)} {chain} parities; {LINE_FORMAT}")
    expected = [str(p) for p in chain_of([int(b) for b in bits], chain)]
    if steps != expected or answer != expected[-1]:
        raise ValueError(f"the {chain} parities of {question!r} are {' '.join(expected)} #### {expected[-1]}, "
                         f"found {steps_text} #### {answer}")
    return Example(question, steps, answer)


def parse_named_line(line: str) -> Example:
    question, bar, rest = line.rstrip().partition("||")
    chain, marker, answer = rest.rpartition(" #### ")
    words = question.split(" ")
    names, bits = words[0::2], words[1::2]
    steps = chain.split(" ; ")
    if not bar or not marker or answer not in ("0", "1") or names != [f"b{i}" for i in range(1, len(bits) + 1)]:
        raise ValueError(NAMED_FORMAT)
    running = 0
    for i, (bit, step) in enumerate(zip(bits, steps), 1):
        running ^= bit == "1"
        if bit not in ("0", "1") or step != f"b{i} {bit} {running:d}":
            raise ValueError(f"step {i} should be 'b{i} {bit} {running:d}', found {step!r}; {NAMED_FORMAT}")
    if len(steps) != len(bits):
        raise ValueError(f"{len(bits)} bits but {len(steps)} steps; {NAMED_FORMAT}")
    return Example(question, steps, answer)

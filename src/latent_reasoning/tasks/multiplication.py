"""Multi-digit multiplication in the iCoT text format (Deng et al.; the 4x4 and 5x5 sets COCONUT uses).

One example per line:

    5 6 3 2 * 7 4 3 4||5 5 5 6 1 + 0 0 6 4 9 0 ( 5 5 1 1 1 1 ) + ... #### 5 5 6 0 8 2 0 1

Digits are space-separated and least-significant first (that line is 2365 x 4347 = 10280655).
The chain of thought lists the first operand times each digit of the second, written with one more
digit than the first operand and shifted by the digit's position (leading zeros, as the order is
reversed); after the first, each partial product is followed by the running sum in parentheses,
padded to the partial product's width. The answer has as many digits as both operands together.

We split the chain of thought into one step per partial product, a step after the first keeping
its "+" and its running sum: ["5 5 5 6 1", "+ 0 0 6 4 9 0 ( 5 5 1 1 1 1 )", ...]. Joining the steps
with single spaces gives the file's text back exactly.
"""

from __future__ import annotations

import random
from pathlib import Path

from .base import Example, Task, read_lines
from .exclusions import distinct_examples, official_hashes

LINE_FORMAT = "expected '<question>||<steps> #### <answer>'"
FILES = {"train": "train.txt", "valid": "valid.txt", "test": "test_bigbench.txt"}
OFFICIAL_DIGITS = (4, 5)  # operand sizes with an official valid split whose questions generate() avoids


def reversed_digits(number: int, width: int) -> str:
    """`number` zero-padded to `width` digits, least-significant digit first, space-separated."""
    return " ".join(str(number).zfill(width)[::-1])


class Multiplication(Task):
    name = "multiplication"
    answer_prefix = "####"  # iCoT's answer marker, what models trained on iCoT data write before the product

    def __init__(self, digits: int = 4):
        if not isinstance(digits, int) or isinstance(digits, bool) or digits < 1:
            raise ValueError(f"multiplication digits must be a positive integer (4 and 5 have official splits), "
                             f"got {digits!r}")
        self.digits = digits
        folder = f"{digits}_by_{digits}_mult"
        self.splits = {split: f"{folder}/{file}" for split, file in FILES.items()}

    # ---- loading -------------------------------------------------------------------------------
    def load(self, split: str = "test", path: str | Path | None = None, skip_bad: bool = False) -> list[Example]:
        """As Task.load; a folder may be the iCoT data folder (holding <d>_by_<d>_mult/) or one
        <d>_by_<d>_mult folder itself, holding valid.txt, test_bigbench.txt or train.txt."""
        if path is not None and Path(path).is_dir() and split in FILES:
            folder = Path(path)
            if not (folder / self.splits[split]).exists() and (folder / FILES[split]).exists():
                path = folder / FILES[split]
        return super().load(split, path, skip_bad)

    def parse_file(self, path: Path, skip_bad: bool = False) -> list[Example]:
        return read_lines(path, parse_line, skip_bad)

    # ---- grading -------------------------------------------------------------------------------
    def grade(self, text: str, example: Example) -> bool:
        from .answers import match_digits

        return match_digits(text, example.answer)

    # ---- generation ----------------------------------------------------------------------------
    def example(self, a: int, b: int) -> Example:
        """The iCoT example for a x b (its chain of thought exactly as iCoT writes it)."""
        width_a, width_b = len(str(a)), len(str(b))
        steps, total = [], 0
        for position, digit in enumerate(str(b)[::-1]):
            partial = a * int(digit)
            total += partial * 10**position
            # The partial product's width also fits the running sum, a x (b mod 10^(position+1)).
            width = width_a + 1 + position
            shifted = reversed_digits(partial * 10**position, width)
            if position == 0:
                steps.append(shifted)
            elif position < width_b - 1:
                steps.append(f"+ {shifted} ( {reversed_digits(total, width)} )")
            else:  # the last running sum is the product itself, so iCoT leaves it out
                steps.append(f"+ {shifted}")
        question = f"{reversed_digits(a, width_a)} * {reversed_digits(b, width_b)}"
        return Example(question, steps, reversed_digits(a * b, width_a + width_b))

    def column_sums(self, example: Example) -> list[int]:
        """The running column sums of a x b, one per answer digit, least significant first (Bai et al. 2025,
        arXiv 2510.00184): c_k = sum_{i+j=k} a_i b_j + floor(c_{k-1} / 10), so the answer's digit k is c_k mod 10."""
        a, b = ([int(d) for d in operand.split()] for operand in example.question.split(" * "))
        sums: list[int] = []
        for k in range(len(example.answer.split())):
            column = sum(a[i] * b[k - i] for i in range(len(a)) if 0 <= k - i < len(b))
            sums.append(column + (sums[-1] // 10 if sums else 0))
        return sums

    def generate(self, n: int, seed: int, exclude: set[str] | None = None) -> list[Example]:
        """`n` distinct problems with both operands uniform over the `digits`-digit numbers (as in the
        official files), never a question in `exclude` or in the official valid split."""
        rng = random.Random(seed)
        low, high = 10 ** (self.digits - 1), 10**self.digits - 1
        hash_list = f"multiplication_{self.digits}x{self.digits}_valid"
        official = official_hashes(hash_list) if self.digits in OFFICIAL_DIGITS else frozenset()
        return distinct_examples(lambda: self.example(rng.randint(low, high), rng.randint(low, high)),
                                 n, exclude, official)

    def save(self, examples: list[Example], path: str | Path) -> None:
        with open(path, "w", encoding="utf-8") as handle:
            for example in examples:
                handle.write(format_line(example) + "\n")


def format_line(example: Example) -> str:
    return f"{example.question}||{' '.join(example.steps)} #### {example.answer}"


def parse_line(line: str) -> Example:
    line = line.rstrip()  # tolerate CRLF line ends
    question, bar, rest = line.partition("||")
    cot, hashes, answer = rest.rpartition(" #### ")
    if not bar or not hashes or not cot.strip():
        raise ValueError(LINE_FORMAT)
    operands = question.split(" * ")
    if len(operands) != 2 or not all(_is_digits(operand) for operand in operands):
        raise ValueError(f"question {question!r}: expected '<digits> * <digits>', digits space-separated")
    if not _is_digits(answer):
        raise ValueError(f"answer {answer!r}: expected space-separated digits")
    first, *others = cot.split(" + ")
    return Example(question, [first] + [f"+ {step}" for step in others], answer)


def _is_digits(text: str) -> bool:
    tokens = text.split(" ")
    return bool(tokens) and all(len(token) == 1 and token.isdigit() for token in tokens)

"""Rebuild the hash lists from the official files: python -m latent_reasoning.tasks.exclusions DATA_FOLDER

DATA_FOLDER is the folder holding prosqa/, prontoqa/ and icot-multiplication/ (e.g. ../shared/data).
"""

from __future__ import annotations

import sys
from pathlib import Path

from .. import get
from . import question_hash

# list name -> (task, task options, official file under the data folder)
SOURCES = {
    "prosqa_valid": ("prosqa", {}, "prosqa/prosqa_valid.json"),
    "prontoqa_valid": ("prontoqa", {}, "prontoqa/prontoqa_valid.json"),
    "multiplication_4x4_valid": ("multiplication", {"digits": 4}, "icot-multiplication/4_by_4_mult/valid.txt"),
    "multiplication_5x5_valid": ("multiplication", {"digits": 5}, "icot-multiplication/5_by_5_mult/valid.txt"),
}


def hashes_of(data: Path, name: str) -> list[str]:
    task, options, file = SOURCES[name]
    return sorted({question_hash(example.question) for example in get(task, **options).load(path=data / file)})


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print(__doc__, file=sys.stderr)
        return 2
    data = Path(argv[0])
    for name in SOURCES:
        hashes = hashes_of(data, name)
        (Path(__file__).parent / f"{name}.txt").write_text("\n".join(hashes) + "\n", encoding="utf-8")
        print(f"{name}: {len(hashes)} hashes")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

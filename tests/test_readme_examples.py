"""README.md's examples run as written, with tiny budgets appended, from a folder holding only what a
fresh clone gives them (configs/), offline, with no ../shared beside it.

Every line of a ```sh block in README.md is an example and must be a `latent ...` command; they run
in order in one folder (later ones use the run folders earlier ones made), in this process through
`latent_reasoning.cli.main` (a new process per command would spend most of the time importing torch).
The budgets appended (BUDGETS) come last on the command line, so they win over the example's own.
"""

from __future__ import annotations

import re
import shlex
import shutil
import sys
from pathlib import Path

import pytest

from latent_reasoning import cli

ROOT = Path(__file__).resolve().parents[1]

# Appended to each command; keys every method accepts, the same on a run and its --resume.
BUDGETS = {
    ("train",): ["steps=2", "batch_size=4", "train_size=64", "eval_size=4", "eval_batch_size=4",
                 "max_new_tokens=8", "warmup_steps=0"],
    ("eval",): ["--limit", "4", "--batch-size", "4", "max_new_tokens=8"],
    ("inspect",): ["--limit", "1", "max_new_tokens=8"],
    ("data", "generate"): ["--n", "64"],
    ("data", "check"): [],
}


def readme_examples() -> list[str]:
    blocks = re.findall(r"^```sh\n(.*?)^```", (ROOT / "README.md").read_text(), re.S | re.M)
    return [line.strip() for block in blocks for line in block.splitlines()
            if line.strip() and not line.strip().startswith("#")]


EXAMPLES = readme_examples()


def with_budget(argv: list[str]) -> list[str]:
    for command, extra in BUDGETS.items():
        if tuple(argv[: len(command)]) == command:
            return argv + extra
    raise AssertionError(f"no budget for `latent {' '.join(argv[:2])}`: add one to BUDGETS")


@pytest.fixture(scope="module")
def clone(tmp_path_factory) -> Path:
    """A folder with what the examples may read from a fresh clone: the recipes."""
    folder = tmp_path_factory.mktemp("clone")
    shutil.copytree(ROOT / "configs", folder / "configs")
    return folder


def test_readme_has_examples():
    assert len(EXAMPLES) >= 5, EXAMPLES
    for line in EXAMPLES:
        assert line.startswith("latent "), f"a README ```sh line that is not a latent command: {line!r}"
        assert "../shared" not in line, f"a README example that needs ../shared: {line!r}"


@pytest.mark.parametrize("line", EXAMPLES, ids=[f"{i}: {line[:70]}" for i, line in enumerate(EXAMPLES)])
def test_readme_example(line, clone, monkeypatch, capsys):
    argv = with_budget(shlex.split(line, comments=True)[1:])
    monkeypatch.chdir(clone)
    monkeypatch.setattr(sys, "argv", ["latent", *argv])
    code = cli.main(argv)
    err = capsys.readouterr().err
    assert code == 0, f"`latent {shlex.join(argv)}` exited {code}: {err[-2000:]}"

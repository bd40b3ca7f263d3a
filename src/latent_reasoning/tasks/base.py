"""The one record every task produces, the Task interface, and the error bad data raises."""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable


@dataclass
class Example:
    """One reasoning problem: the question, its gold reasoning steps and its final answer."""

    question: str
    steps: list[str]
    answer: str
    meta: dict[str, Any] = field(default_factory=dict)


class DataError(ValueError):
    """A record that cannot be read. The message names the file, the line or index, and what was expected."""

    def __init__(self, source: str | Path, where: str, problem: str):
        self.source, self.where, self.problem = str(source), where, problem
        super().__init__(f"{source}, {where}: {problem}")


class Task:
    """A task family: how to load it, how to grade free text against it, and (optionally) how to generate it.

    Subclasses set `name`, `splits` (split name -> file name inside a data folder), `hub_id`
    (and `hub_config`) and implement `parse_file` and `grade`; generated tasks implement
    `generate` and `save`.
    """

    name: str = ""
    splits: dict[str, str] = {}
    hub_id: str | None = None
    hub_config: str | None = None
    hub_splits: dict[str, str] = {}  # our split name -> the hub's split name, where they differ
    answer_prefix = "The answer is"  # what the model writes before its final answer
    step_separator = "\n"  # between gold steps (and before the answer) in a CoT target

    # ---- loading -----------------------------------------------------------------------------
    def load(self, split: str = "test", path: str | Path | None = None, skip_bad: bool = False) -> list[Example]:
        """Examples of `split`, read from `path` (a file, or a folder holding `splits[split]`),
        or from the Hugging Face hub when no path is given.

        A malformed record raises DataError naming file and line/index; with skip_bad=True bad records
        are counted, reported on stderr, and left out (never silently).
        """
        if path is None:
            return self.load_hub(split, skip_bad=skip_bad)
        path = Path(path)
        if path.is_dir():
            if split not in self.splits:
                raise ValueError(f"task {self.name!r} has no split {split!r}; choose one of {sorted(self.splits)}")
            path = path / self.splits[split]
        if not path.exists():
            raise FileNotFoundError(f"{path}: no such file for task {self.name!r} split {split!r}")
        if path.suffix == ".parquet":
            return self.load_hub_rows(_read_parquet(path), source=path, skip_bad=skip_bad)
        return self.parse_file(path, skip_bad=skip_bad)

    def parse_file(self, path: Path, skip_bad: bool = False) -> list[Example]:
        raise NotImplementedError(f"task {self.name!r} cannot read local files")

    def load_hub(self, split: str, skip_bad: bool = False) -> list[Example]:
        """Download `split` through `datasets` (needs the network or a warm HF cache)."""
        if self.hub_id is None:
            raise ValueError(f"task {self.name!r} has no hub dataset; pass path= (or generate it)")
        import datasets

        try:
            rows = datasets.load_dataset(self.hub_id, self.hub_config, split=self.hub_splits.get(split, split))
        except ConnectionError as error:  # offline, or the hub is down: say what to do instead
            raise DataError(f"hub:{self.hub_id}", f"split {split!r}", f"unreachable ({str(error).splitlines()[0]}); "
                            f"give a local copy (train_data=, eval_data= or --data)") from error
        return self.load_hub_rows(rows, source=f"hub:{self.hub_id}/{split}", skip_bad=skip_bad)

    def load_hub_rows(self, rows: Iterable[dict], source: str | Path, skip_bad: bool = False) -> list[Example]:
        return parse_records(enumerate(rows), self.from_hub_row, source, "row", skip_bad)

    def from_hub_row(self, row: dict) -> Example:
        raise NotImplementedError(f"task {self.name!r} has no hub mapping")

    # ---- grading -----------------------------------------------------------------------------
    def grade(self, text: str, example: Example) -> bool:
        """True when the final answer parsed out of free `text` matches `example.answer`."""
        raise NotImplementedError

    # ---- generation (generated tasks only) -----------------------------------------------------
    def generate(self, n: int, seed: int, exclude: set[str] | None = None) -> list[Example]:
        raise NotImplementedError(f"task {self.name!r} is not generated; load it instead")

    def save(self, examples: list[Example], path: str | Path) -> None:
        """Write examples in the file format `load(path=...)` reads."""
        raise NotImplementedError(f"task {self.name!r} cannot write files")


def parse_records(
    items: Iterable[tuple[int, Any]], parse: Callable[[Any], Example], source: str | Path, unit: str, skip_bad: bool
) -> list[Example]:
    """Parse (position, raw record) pairs; a failure becomes a DataError naming `source`, `unit` and position.

    With skip_bad the bad records are counted and reported on stderr instead of raising: never dropped silently.
    """
    examples, bad = [], []
    for position, raw in items:
        try:
            examples.append(parse(raw))
        except (KeyError, ValueError, TypeError, IndexError, AttributeError) as error:
            if isinstance(error, DataError):
                raise
            problem = DataError(source, f"{unit} {position}", _describe(error))
            if not skip_bad:
                raise DataError(source, f"{unit} {position}", f"{_describe(error)} (--skip-bad leaves bad records "
                                                               f"out)") from error
            bad.append(problem)
    if bad:
        print(f"{source}: skipped {len(bad)} bad record(s); first: {bad[0]}", file=sys.stderr)
    return examples


def _describe(error: Exception) -> str:
    if isinstance(error, KeyError):
        return f"missing field {error.args[0]!r}"
    return str(error) or type(error).__name__


def read_lines(path: Path, parse: Callable[[str], Example], skip_bad: bool) -> list[Example]:
    """Parse a text file of one record per line; blank lines are skipped, positions are 1-based lines.
    Each line is decoded on its own, so a line that is not UTF-8 is a bad record like any other."""
    with open(path, "rb") as handle:
        numbered = [(number, line) for number, line in enumerate(handle, 1) if line.strip()]
    return parse_records(numbered, lambda line: parse(_decoded(line).rstrip("\r\n")), path, "line", skip_bad)


def _decoded(line: bytes) -> str:
    try:
        return line.decode("utf-8")
    except UnicodeDecodeError as error:
        raise ValueError(f"not UTF-8 text (byte 0x{line[error.start]:02x} at column {error.start + 1})") from None


def read_json(path: Path) -> Any:
    """A whole JSON document, with the position of a syntax error in the message."""
    data = Path(path).read_bytes()
    try:
        return json.loads(data.decode("utf-8"))
    except UnicodeDecodeError as error:
        line = data[: error.start].count(b"\n") + 1
        raise DataError(path, f"line {line}", f"not UTF-8 text (byte 0x{data[error.start]:02x})") from None
    except json.JSONDecodeError as error:
        raise DataError(path, f"line {error.lineno} column {error.colno}", f"invalid JSON: {error.msg}") from error


def read_jsonl(path: Path, parse: Callable[[dict], Example], skip_bad: bool) -> list[Example]:
    """Parse JSON Lines: each line one JSON object mapped by `parse`."""

    def parse_line(line: str) -> Example:
        try:
            record = json.loads(line)
        except json.JSONDecodeError as error:
            raise ValueError(f"invalid JSON ({error.msg}); expected one JSON object per line") from error
        if not isinstance(record, dict):
            raise ValueError(f"expected a JSON object, got {type(record).__name__}")
        return parse(record)

    return read_lines(path, parse_line, skip_bad)


def read_json_array(path: Path, parse: Callable[[dict], Example], skip_bad: bool) -> list[Example]:
    """Parse a JSON array of objects; positions are 0-based indices."""
    records = read_json(path)
    if not isinstance(records, list):
        raise DataError(path, "top level", f"expected a JSON array of records, got {type(records).__name__}")
    return parse_records(enumerate(records), parse, path, "index", skip_bad)


def _read_parquet(path: Path) -> list[dict]:
    import datasets

    return list(datasets.load_dataset("parquet", data_files=str(path), split="train"))

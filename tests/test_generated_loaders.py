"""Loaders of multiplication, ProsQA and ProntoQA: fixtures, official files, bad data, round trips, grading."""

import json
import re
import shutil
from pathlib import Path

import pytest

from latent_reasoning import tasks
from latent_reasoning.tasks import DataError, Example
from latent_reasoning.tasks.multiplication import Multiplication

FIXTURES = Path(__file__).resolve().parent / "fixtures"
COCONUT_META = {"idx_to_symbol", "edges", "root", "target", "neg_target"}


# ---- the shipped fixtures (the first records of the official valid files) ---------------------------
def test_multiplication_fixture_splits_the_chain_of_thought_per_partial_product():
    examples = Multiplication(4).load(path=FIXTURES / "multiplication_4x4_valid.txt")
    assert len(examples) == 5
    assert examples[0] == Example(
        "5 6 3 2 * 7 4 3 4",
        ["5 5 5 6 1", "+ 0 0 6 4 9 0 ( 5 5 1 1 1 1 )", "+ 0 0 5 9 0 7 0 ( 5 5 6 0 2 8 0 )", "+ 0 0 0 0 6 4 9 0"],
        "5 5 6 0 8 2 0 1",
    )
    lines = (FIXTURES / "multiplication_4x4_valid.txt").read_text().splitlines()
    for example, line in zip(examples, lines):
        assert line == f"{example.question}||{' '.join(example.steps)} #### {example.answer}"


def test_multiplication_5x5_fixture_has_five_partial_products():
    examples = Multiplication(5).load(path=FIXTURES / "multiplication_5x5_valid.txt")
    assert len(examples) == 5
    assert all(len(example.steps) == 5 and len(example.answer.split()) == 10 for example in examples)


@pytest.mark.parametrize("layout", ["4_by_4_mult/valid.txt", "valid.txt"])
def test_multiplication_reads_the_icot_folder_or_a_flat_one(tmp_path, layout):
    (tmp_path / layout).parent.mkdir(parents=True, exist_ok=True)
    shutil.copy(FIXTURES / "multiplication_4x4_valid.txt", tmp_path / layout)
    assert len(Multiplication(4).load("valid", path=tmp_path)) == 5
    with pytest.raises(FileNotFoundError, match="test_bigbench.txt"):
        Multiplication(4).load("test", path=tmp_path)
    with pytest.raises(ValueError, match="no split 'dev'"):
        Multiplication(4).load("dev", path=tmp_path)


def test_multiplication_rejects_a_bad_digit_count():
    with pytest.raises(ValueError, match="positive integer"):
        Multiplication(0)


def test_prosqa_fixture_keeps_the_graph_in_meta():
    examples = tasks.get("prosqa").load(path=FIXTURES / "prosqa_valid.json")
    assert len(examples) == 5
    first = examples[0]
    assert first.answer == "Tom is a lempus."
    assert first.steps == ["Tom is a terpus.", "Every terpus is a brimpus.", "Every brimpus is a lempus."]
    assert first.question.endswith("Is Tom a lempus or scrompus?")
    assert set(first.meta) == COCONUT_META


def test_prosqa_pairs_write_each_fact_as_its_two_symbols_and_grade_the_same():
    sentences = tasks.get("prosqa").load(path=FIXTURES / "prosqa_valid.json")
    task = tasks.get("prosqa", facts="pairs")
    pairs = task.load(path=FIXTURES / "prosqa_valid.json")
    first = pairs[0]
    assert first.steps == ["Tom terpus.", "terpus brimpus.", "brimpus lempus."]
    assert first.answer == "Tom is a lempus." and first.meta == sentences[0].meta
    for example, original in zip(pairs, sentences):
        facts, question = example.question.rsplit(". ", 1)
        assert question == original.question.rsplit(". ", 1)[1]  # "Is Tom a lempus or scrompus?"
        assert all(re.fullmatch(r"\w+ \w+", fact) for fact in facts.split(". "))
        assert len(facts.split(". ")) == len(example.meta["edges"])
        assert task.render(example) == example
    assert task.grade("terpus brimpus.\n#### Tom is a lempus.", first)
    assert not task.grade("#### Tom is a scrompus.", first)
    with pytest.raises(ValueError, match="'edges'"):
        tasks.get("prosqa", facts="edges")
    assert (first.meta["root"], first.meta["target"], first.meta["neg_target"]) == (1, 16, 13)


def test_prosqa_lines_put_each_fact_on_its_own_line_so_a_step_copies_a_question_line():
    pairs = tasks.get("prosqa", facts="pairs").load(path=FIXTURES / "prosqa_valid.json")
    task = tasks.get("prosqa", facts="lines")
    lines = task.load(path=FIXTURES / "prosqa_valid.json")
    for example, paired in zip(lines, pairs):
        assert example.question.replace("\n", " ") == paired.question
        assert (example.steps, example.answer, example.meta) == (paired.steps, paired.answer, paired.meta)
        facts = example.question.split("\n")[:-1]
        assert len(facts) == len(example.meta["edges"]) and set(example.steps) <= set(facts)
        assert task.render(example) == example
    assert lines[0].question.split("\n")[-1] == "Is Tom a lempus or scrompus?"


def test_prontoqa_fixture_keeps_the_graph_in_meta():
    examples = tasks.get("prontoqa").load(path=FIXTURES / "prontoqa_valid.json")
    assert len(examples) == 5
    first = examples[0]
    assert first.answer == "True" and first.question.endswith("True or false: Alex is happy.")
    assert first.steps[-1] == "Alex is happy." and len(first.steps) == 6
    assert set(first.meta) == COCONUT_META | {"chain_concepts"}
    assert first.meta["chain_concepts"] == ["tumpus", "gorpus", "wumpus", "sterpus", "brimpus"]


# ---- bad data -----------------------------------------------------------------------------------
MALFORMED = [
    ("multiplication", "multiplication_malformed.txt", "line 3", "expected '<question>||<steps> #### <answer>'"),
    ("prosqa", "prosqa_malformed.json", "index 1", "missing field 'steps'"),
    ("prontoqa", "prontoqa_malformed.json", "index 1", "answer must be 'True' or 'False'"),
]


@pytest.mark.parametrize("name, file, where, problem", MALFORMED)
def test_a_malformed_record_names_file_position_and_expectation(name, file, where, problem):
    with pytest.raises(DataError) as raised:
        tasks.get(name).load(path=FIXTURES / file)
    message = str(raised.value)
    assert file in message and where in message and problem in message


@pytest.mark.parametrize("name, file, good", [
    ("multiplication", "multiplication_malformed.txt", 3),
    ("prosqa", "prosqa_malformed.json", 2),
    ("prontoqa", "prontoqa_malformed.json", 1),
])
def test_skip_bad_keeps_the_good_records_and_reports_the_rest(capsys, name, file, good):
    assert len(tasks.get(name).load(path=FIXTURES / file, skip_bad=True)) == good
    report = capsys.readouterr().err
    assert file in report and "skipped 2 bad record(s)" in report


@pytest.mark.parametrize("line, problem", [
    ("5 6 3 2 * 7 4 3 4 #### 5 5 6 0 8 2 0 1", "expected '<question>||<steps> #### <answer>'"),
    ("5 6 3 2 x 7 4 3 4||5 5 5 6 1 #### 5 5 6 0 8 2 0 1", "expected '<digits> * <digits>'"),
    ("5 6 3 2 * 7 4 3 4||5 5 5 6 1 #### 10280655", "answer '10280655': expected space-separated digits"),
])
def test_multiplication_line_problems(tmp_path, line, problem):
    path = tmp_path / "valid.txt"
    path.write_text("\n" + line + "\n")
    with pytest.raises(DataError, match="line 2") as raised:
        Multiplication(4).load(path=path)
    assert problem in str(raised.value)


@pytest.mark.parametrize("records, problem", [
    ('{"question": "q"}', "expected a JSON array of records"),
    ('[{"question": "q", "steps": "s", "answer": "a"}]', "steps must be a list of strings"),
    ('[{"question": "q", "steps": ["s", 1], "answer": "a"}]', "steps must be a list of strings"),
    ('[{"question": 3, "steps": [], "answer": "a"}]', "question must be a string"),
    ('["a question"]', "expected a JSON object"),
    ('[{"question": "q",', "invalid JSON"),
])
def test_prosqa_record_problems(tmp_path, records, problem):
    path = tmp_path / "prosqa_valid.json"
    path.write_text(records)
    with pytest.raises(DataError, match="prosqa_valid.json") as raised:
        tasks.get("prosqa").load(path=path)
    assert problem in str(raised.value)


# ---- round trips --------------------------------------------------------------------------------
@pytest.mark.parametrize("name, options", [("multiplication", {"digits": 4}), ("multiplication", {"digits": 2}),
                                           ("prosqa", {}), ("prontoqa", {})])
def test_saved_generated_examples_load_back_equal(tmp_path, name, options):
    task = tasks.get(name, **options)
    examples = task.generate(30, seed=5)
    task.save(examples, tmp_path / "generated")
    assert task.load(path=tmp_path / "generated") == examples


@pytest.mark.parametrize("name, file", [("multiplication", "multiplication_4x4_valid.txt"),
                                        ("prosqa", "prosqa_valid.json"), ("prontoqa", "prontoqa_valid.json")])
def test_save_writes_the_official_format_byte_for_byte(tmp_path, name, file):
    task = tasks.get(name)
    task.save(task.load(path=FIXTURES / file), tmp_path / file)
    assert (tmp_path / file).read_bytes() == (FIXTURES / file).read_bytes()


# ---- the official files (../shared/data), counts as their SOURCE.md states --------------------------
@pytest.mark.parametrize("digits", [4, 5])
def test_official_multiplication_valid(shared_data, tmp_path, digits):
    task = Multiplication(digits)
    examples = task.load("valid", path=shared_data / "icot-multiplication")
    assert len(examples) == 1000
    assert all(len(example.steps) == digits for example in examples)
    task.save(examples, tmp_path / "valid.txt")
    official = shared_data / "icot-multiplication" / f"{digits}_by_{digits}_mult" / "valid.txt"
    assert (tmp_path / "valid.txt").read_bytes() == official.read_bytes()


def test_official_prosqa_valid(shared_data):
    examples = tasks.get("prosqa").load("valid", path=shared_data / "prosqa")
    assert len(examples) == 300
    assert all(set(example.meta) == COCONUT_META for example in examples)


def test_official_prontoqa_valid(shared_data):
    examples = tasks.get("prontoqa").load("valid", path=shared_data / "prontoqa")
    answers = [example.answer for example in examples]
    assert (len(examples), answers.count("True"), answers.count("False")) == (200, 89, 111)


@pytest.mark.parametrize("name", ["prosqa", "prontoqa"])
def test_official_json_round_trips_byte_for_byte(shared_data, tmp_path, name):
    task = tasks.get(name)
    task.save(task.load("valid", path=shared_data / name), tmp_path / "out.json")
    assert (tmp_path / "out.json").read_bytes() == (shared_data / name / f"{name}_valid.json").read_bytes()


# ---- grading (through tasks/answers.py) -----------------------------------------------------------
def _first(name: str, file: str) -> Example:
    return tasks.get(name).load(path=FIXTURES / file)[0]


@pytest.mark.parametrize("name, file, right, wrong", [
    ("multiplication", "multiplication_4x4_valid.txt",
     "5 5 5 6 1 + 0 0 6 4 9 0 #### 5 5 6 0 8 2 0 1", "#### 5 5 6 0 8 2 0 2"),
    ("prosqa", "prosqa_valid.json", "Tom is a terpus. Every brimpus is a lempus. The answer is Tom is a lempus.",
     "The answer is Tom is a scrompus."),
    ("prontoqa", "prontoqa_valid.json", "Alex is a brimpus, so Alex is happy. The answer is True.",
     "The answer is False."),
])
def test_grade_reads_the_final_answer(name, file, right, wrong):
    task, example = tasks.get(name), _first(name, file)
    assert task.grade(right, example)
    assert not task.grade(wrong, example)
    assert task.grade(f"{task.answer_prefix} {example.answer}", example)


def test_multiplication_grade_takes_every_phrasing_of_the_product_and_nothing_else():
    task, example = tasks.get("multiplication"), _first("multiplication", "multiplication_4x4_valid.txt")
    a, b = (int("".join(operand.split()[::-1])) for operand in example.question.split(" * "))
    product = a * b
    for right in (f"#### {example.answer}", f"The answer is {example.answer}", f"The answer is {example.answer}.",
                  f"#### {product}", f"The answer is {product}.", f"{product:,}", str(product)):
        assert task.grade(right, example), right
    for wrong in (f"#### {product + 1}", f"The answer is {product} or {product + 1}", f"#### {example.answer} 0",
                  f"The answer is {str(product)[::-1]}", f"#### {example.answer} apples", ""):
        assert not task.grade(wrong, example), wrong


def test_prosqa_grade_needs_the_answer_sentence_right_person_and_category():
    task, example = tasks.get("prosqa"), _first("prosqa", "prosqa_valid.json")
    person, right_category = example.answer.rstrip(".").split(" is a ")
    options = example.question.rsplit(f"Is {person} a ", 1)[1].rstrip("?").split(" or ")
    wrong_category = next(option for option in options if option != right_category)
    other_person = next(name for name in ("Alex", "Bob", "Max") if name != person)
    for right in (example.answer, f"#### {example.answer}", f"The answer is {person} is a {right_category}",
                  f"So {person} is a {right_category}."):
        assert task.grade(right, example), right
    for wrong in (f"#### {person} is a {wrong_category}.", f"#### {other_person} is a {right_category}.",
                  f"#### {person} is not a {right_category}.", f"#### {person} is a {options[0]} or {options[1]}.",
                  f"#### {example.steps[0]}", f"#### {right_category}", f"Every {wrong_category} is a {right_category}."):
        assert not task.grade(wrong, example), wrong


def test_prontoqa_grade_rejects_negations_and_both_answers():
    task, example = tasks.get("prontoqa"), _first("prontoqa", "prontoqa_valid.json")
    other = "False" if example.answer == "True" else "True"
    for right in (f"#### {example.answer}", f"The answer is {example.answer.lower()}.", f"{example.steps[-1]} {example.answer}"):
        assert task.grade(right, example), right
    for wrong in (f"#### {other}", f"#### not {example.answer}", f"The answer is {example.answer} or {other}.",
                  f"The answer is {other} or {example.answer}.", "True or False", f"#### {example.steps[-1]}"):
        assert not task.grade(wrong, example), wrong


def test_prontoqa_grade_for_a_false_answer():
    example = tasks.get("prontoqa").load(path=FIXTURES / "prontoqa_valid.json")[1]
    assert example.answer == "False"
    assert tasks.get("prontoqa").grade("The answer is False.", example)
    assert not tasks.get("prontoqa").grade("The answer is True.", example)


def test_json_fixtures_are_what_the_official_files_start_with(shared_data):
    for name in ("prosqa", "prontoqa"):
        official = json.loads((shared_data / name / f"{name}_valid.json").read_text())
        assert json.loads((FIXTURES / f"{name}_valid.json").read_text()) == official[:5]

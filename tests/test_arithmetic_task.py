"""The arithmetic task: its chains and answers, both wordings, its file format both ways, its grader and its errors."""

import json
import re

import pytest

from latent_reasoning import tasks
from latent_reasoning.tasks import DataError


def test_chains_compute_the_question_and_generation_is_deterministic():
    task = tasks.get("arithmetic", terms=4, digits=2)
    examples = task.generate(300, seed=3)
    assert [e.question for e in examples] == [e.question for e in task.generate(300, seed=3)]
    assert len({e.question for e in examples}) == 300
    for example in examples:
        expression = re.fullmatch(r"What is ([\d +-]+)\?", example.question)[1]
        numbers = [int(n) for n in re.findall(r"\d+", expression)]
        assert len(numbers) == 4 and all(1 <= n <= 99 for n in numbers)
        assert example.answer == str(eval(expression))  # the chain's result is the question's value
        assert len(example.steps) == 3 and example.steps[-1].endswith(f"= {example.answer}")
        totals = [int(step.split(" = ")[1]) for step in example.steps]
        assert min(totals) >= 0  # the running total never goes negative
    held_out = task.generate(50, seed=4, exclude={e.question for e in examples})
    assert not {e.question for e in held_out} & {e.question for e in examples}


def test_word_form_tells_the_same_chain_as_a_story():
    plain = tasks.get("arithmetic", terms=3).generate(20, seed=1)
    words = tasks.get("arithmetic", terms=3, form="words").generate(20, seed=1)
    for p, w in zip(plain, words):
        assert (w.steps, w.answer) == (p.steps, p.answer)  # same draws, other wording
        name = w.question.split(" ")[0]
        assert w.question.endswith(f"does {name} have now?") and "What is" not in w.question
        numbers = [int(n) for n in re.findall(r"\d+", w.question)]
        assert numbers == [int(n) for n in re.findall(r"\d+", p.question)]


def test_file_round_trip_and_bad_records_name_file_line_and_problem(tmp_path):
    task = tasks.get("arithmetic", terms=3)
    examples = task.generate(10, seed=0)
    path = tmp_path / "arithmetic.jsonl"
    task.save(examples, path)
    assert task.load(path=path) == examples
    bad = {"question": "What is 2 + 2?", "steps": ["2 + 2 = 5"], "answer": "5"}
    path.write_text(path.read_text() + json.dumps(bad) + "\n")
    with pytest.raises(DataError, match=r"arithmetic.jsonl, line 11: step 1 '2 \+ 2 = 5' is wrong: 2 \+ 2 is 4"):
        task.load(path=path)
    assert len(task.load(path=path, skip_bad=True)) == 10
    path.write_text(json.dumps({"question": "What is 2 + 2?", "steps": ["2 + 2 = 4"], "answer": "5"}) + "\n")
    with pytest.raises(DataError, match="'answer' must be the last step's result"):
        task.load(path=path)


def test_grader_reads_the_final_number():
    example = tasks.get("arithmetic").generate(1, seed=0)[0]
    task = tasks.get("arithmetic")
    first, last = example.steps[0], example.steps[-1]
    assert task.grade(f"{first}\n{last}\n#### {example.answer}", example)
    assert task.grade(f"So the total is {example.answer}.", example)
    assert not task.grade(f"#### {int(example.answer) + 1}", example)


def test_bad_options_are_named():
    for option, bad in (("terms", 1), ("digits", 0), ("terms", "3"), ("digits", True)):
        with pytest.raises(ValueError, match=f"arithmetic {option}"):
            tasks.get("arithmetic", **{option: bad})
    with pytest.raises(ValueError, match="arithmetic form"):
        tasks.get("arithmetic", form="story")

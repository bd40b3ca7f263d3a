"""Loaders of the downloaded tasks: shipped fixtures, the shared data files (when present), hub layouts
mimicked with local parquet files, the hub call itself (stubbed, no network), and malformed records."""

import collections
from pathlib import Path

import pytest

from latent_reasoning import tasks
from latent_reasoning.tasks import DataError, Example
from latent_reasoning.tasks.gsm8k import split_sentences

FIXTURES = Path(__file__).parent / "fixtures"


def load(name: str, split: str, path: Path, **options) -> list[Example]:
    return tasks.get(name).load(split, path=path, **options)


@pytest.fixture
def hf_cache(tmp_path, monkeypatch):
    """Keep the parquet builder's cache inside the test's folder."""
    import datasets

    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path / "hf-cache"))


def write_parquet(rows: list[dict], path: Path) -> Path:
    import datasets

    datasets.Dataset.from_list(rows).to_parquet(str(path))
    return path


# ---- shipped fixtures ------------------------------------------------------------------------------


def test_gsm8k_fixture():
    examples = load("gsm8k", "train", FIXTURES / "gsm8k")
    first = examples[0]
    assert first.question.startswith("Natalia sold clips to 48 of her friends in April")
    assert first.steps == [
        "Natalia sold 48/2 = <<48/2=24>>24 clips in May.",
        "Natalia sold 48+24 = <<48+24=72>>72 clips altogether in April and May.",
    ]
    assert first.answer == "72"
    assert [example.answer for example in examples] == ["72", "10", "1080"]  # "#### 1,080" loses its comma
    assert len(load("gsm8k", "test", FIXTURES / "gsm8k")) == 3


def test_gsm8k_aug_fixture_equation_steps():
    examples = load("gsm8k-aug", "valid", FIXTURES / "gsm8k-aug")
    assert examples[0].question.startswith("John cuts his grass to 2 inches.")
    assert examples[0].steps == ["<<4-2=2>>", "<<2/.5=4>>", "<<12/4=3>>", "<<100*3=300>>"]
    assert examples[0].answer == "300"
    assert examples[2].steps == [] and examples[2].answer == "9"  # "...?|| #### 9"
    assert [example.answer for example in load("gsm8k-aug", "test", FIXTURES / "gsm8k-aug")] == ["18", "2125"]


def test_gsm8k_aug_train_falls_back_to_train_no_aug(tmp_path):
    examples = load("gsm8k-aug", "train", FIXTURES / "gsm8k-aug")
    assert len(examples) == 3
    assert examples[0].steps == [
        "The annual budget for policing is 32 / 2 = $16 million.",
        "The combined budget for education and policing is 16 + 12 = $28 million.",
        "There is 32 - 28 = $4 million to manage public spaces.",
    ]
    (tmp_path / "train.txt").write_text("What is 2 times 3?||<<2*3=6>> #### 6\n", encoding="utf-8")
    (tmp_path / "train_no_aug.txt").write_text("Ignored?||Ignored = 1 #### 1\n", encoding="utf-8")
    assert load("gsm8k-aug", "train", tmp_path) == [Example("What is 2 times 3?", ["<<2*3=6>>"], "6")]


@pytest.mark.parametrize(
    "flattened, steps",
    [
        (
            "Each chicken lays 7 * 3 = 21 eggs a week Each week all the chickens lay 21 * 8 = 168 eggs",
            ["Each chicken lays 7 * 3 = 21 eggs a week", "Each week all the chickens lay 21 * 8 = 168 eggs"],
        ),
        (
            "Mrs. Thomson spent $240 x 1/3 = $80 on food. She spent $240 x 1/5 = $48 on clothes.",
            ["Mrs. Thomson spent $240 x 1/3 = $80 on food.", "She spent $240 x 1/5 = $48 on clothes."],
        ),
        ("Let X be the number. Then X = 5", ["Let X be the number.", "Then X = 5"]),
        ("", []),
    ],
)
def test_split_sentences(flattened, steps):
    assert split_sentences(flattened) == steps


def test_math500_fixture():
    examples = load("math500", "test", FIXTURES / "math500")
    first = examples[0]
    assert first.question.startswith("Convert the point $(0,3)$ in rectangular coordinates")
    assert first.answer == r"\left( 3, \frac{\pi}{2} \right)"
    assert first.meta == {"subject": "Precalculus", "level": 2, "unique_id": "test/precalculus/807.json"}
    assert len(first.steps) == 3  # text, the whole [asy] figure, the boxed conclusion
    assert first.steps[1].startswith("[asy]") and first.steps[1].endswith("[/asy]")
    assert first.steps[2].endswith(r"\boxed{\left( 3, \frac{\pi}{2} \right)}.$")
    assert len(examples) == 3


def test_arc_fixture():
    examples = load("arc-challenge", "test", FIXTURES / "arc-challenge")
    first = examples[0]
    assert first.question == (
        "An astronomer observes that a planet rotates faster after a meteorite impact. "
        "Which is the most likely effect of this increase in rotation?\n"
        "Options:\n"
        "(A) Planetary density will decrease.\n"
        "(B) Planetary years will become longer.\n"
        "(C) Planetary days will become shorter.\n"
        "(D) Planetary gravity will become stronger."
    )
    assert first.answer == "C" and first.steps == []
    assert first.meta == {
        "options": {
            "A": "Planetary density will decrease.",
            "B": "Planetary years will become longer.",
            "C": "Planetary days will become shorter.",
            "D": "Planetary gravity will become stronger.",
        },
        "id": "Mercury_7175875",
    }
    assert sorted(examples[2].meta["options"]) == ["A", "B", "C", "D", "E"]
    assert len(load("arc-challenge", "train", FIXTURES / "arc-challenge")) == 2


def test_aqua_fixture():
    examples = load("aqua-rat", "test", FIXTURES / "aqua-rat")
    first = examples[0]
    assert first.answer == "A"
    assert first.meta["options"] == {
        "A": "5(√3 + 1)",
        "B": "6(√3 + √2)",
        "C": "7(√3 – 1)",
        "D": "8(√3 – 2)",
        "E": "None of these",
    }
    assert first.question.endswith(
        "Options:\n(A) 5(√3 + 1)\n(B) 6(√3 + √2)\n(C) 7(√3 – 1)\n(D) 8(√3 – 2)\n(E) None of these"
    )
    assert first.steps[0] == "Explanation :" and len(first.steps) > 3
    assert examples[1].steps[-1] == "Answer: E"
    assert len(load("aqua-rat", "dev", FIXTURES / "aqua-rat")) == 2


def test_bigbench_date_fixture():
    examples = load("bigbench-date", "test", FIXTURES / "bigbench-date")
    first = examples[0]
    assert first.question.startswith(
        "Yesterday was April 30, 2021. What is the date today in MM/DD/YYYY?\nOptions:\n(A) "
    )
    assert first.meta["options"][first.answer] == "05/01/2021"
    assert sorted(first.meta["options"].values()) == sorted(
        ["05/01/2021", "02/23/2021", "03/11/2021", "05/09/2021", "06/12/2021", "04/29/2021"]
    )
    assert len(examples[2].meta["options"]) == 5
    assert load("bigbench-date", "test", FIXTURES / "bigbench-date") == examples  # the option order is fixed
    assert [example.answer for example in examples] != ["A", "A", "A"]  # BIG-bench lists the right one first

    bbh = load("bigbench-date", "bbh", FIXTURES / "bigbench-date")
    assert bbh[0].answer == "B"
    assert bbh[0].meta["options"]["B"] == "12/25/1937" and len(bbh[0].meta["options"]) == 6
    assert bbh[0].question.endswith(
        "Options:\n(A) 12/11/1937\n(B) 12/25/1937\n(C) 01/04/1938\n(D) 12/04/1937\n(E) 12/25/2006\n(F) 07/25/1937"
    )


def test_strategyqa_fixture():
    examples = load("strategyqa", "train", FIXTURES / "strategyqa")
    first = examples[0]
    assert first.question == "Are more people today related to Genghis Khan than Julius Caesar?"
    assert first.answer == "True"
    assert first.steps[0].startswith("Julius Caesar had three children.")
    assert first.meta == {"qid": "2bc9c4f9c19c167187f2"}
    assert len(load("strategyqa", "dev", FIXTURES / "strategyqa")) == 3

    bigbench = load("strategyqa", "bigbench", FIXTURES / "strategyqa")
    assert [example.answer for example in bigbench] == ["True", "False", "False"]
    assert bigbench[0].question == "Is it common to see frost during some college commencements?"
    assert (
        bigbench[0].steps[0]
        == "College commencement ceremonies often happen during the months of December, May, and sometimes June."
    )


@pytest.mark.parametrize(
    "name, split",
    [
        ("gsm8k", "test"),
        ("gsm8k-aug", "valid"),
        ("math500", "test"),
        ("arc-challenge", "test"),
        ("aqua-rat", "test"),
        ("bigbench-date", "test"),
        ("bigbench-date", "bbh"),
        ("strategyqa", "dev"),
        ("strategyqa", "bigbench"),
    ],
)
def test_gold_answers_grade_right_and_others_wrong(name, split):
    task = tasks.get(name)
    examples = task.load(split, path=FIXTURES / name)
    for example in examples:
        assert task.grade("\n".join(example.steps + [f"#### {example.answer}"]), example)
        assert task.grade(f"Let me think step by step.\nThe answer is {example.answer}.", example)
    for example, other in zip(examples, examples[1:] + examples[:1]):
        if other.answer != example.answer:
            assert not task.grade(f"#### {other.answer}", example)


def test_gsm8k_grade_rejects_hedges_and_ignores_the_explanation():
    example = next(e for e in tasks.get("gsm8k").load("test", path=FIXTURES / "gsm8k") if e.answer == "70000")
    task, answer = tasks.get("gsm8k"), int(example.answer)
    for right in (f"The answer is {answer} because 3 + 4 = 7.", f"#### {answer:,}", f"The profit is ${answer}.",
                  f"The answer is 200000 - 130000 = {answer} dollars."):
        assert task.grade(right, example), right
    for wrong in (f"The answer is {answer} or {answer + 1}.", f"The answer is {answer - 1} or {answer}.",
                  f"The answer is between {answer - 1} and {answer + 1}.", f"#### {answer - 1}",
                  f"The answer is 7 because 3 + 4 = {answer}."):
        assert not task.grade(wrong, example), wrong


# ---- malformed records -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name, file, where, expected",
    [
        ("gsm8k", "gsm8k/bad_answer.jsonl", "line 2", "'#### <number>'"),
        ("gsm8k", "gsm8k/bad_json.jsonl", "line 3", "invalid JSON"),
        ("gsm8k-aug", "gsm8k-aug/bad.txt", "line 3", "'<question>||<steps> #### <answer>'"),
        ("math500", "math500/bad.jsonl", "line 2", "missing field 'answer'"),
        ("arc-challenge", "arc-challenge/bad.jsonl", "line 4", "answerKey 'F'"),
        ("aqua-rat", "aqua-rat/bad.json", "line 2", "expected options like 'A)125'"),
        ("bigbench-date", "bigbench-date/bad_task.json", "example 1", "exactly one option scored 1"),
        ("strategyqa", "strategyqa/bad.json", "index 2", "expected 'answer' to be true or false"),
    ],
)
def test_malformed_records_name_file_and_position(name, file, where, expected, capsys):
    path = FIXTURES / file
    with pytest.raises(DataError) as error:
        tasks.get(name).load("test", path=path)
    message = str(error.value)
    assert path.name in message and f", {where}:" in message and expected in message

    examples = tasks.get(name).load("test", path=path, skip_bad=True)
    assert len(examples) >= 1
    report = capsys.readouterr().err
    assert "skipped 1 bad record(s)" in report and path.name in report and where in report


def test_gsm8k_aug_rejects_a_line_without_the_answer_marker(tmp_path):
    path = tmp_path / "test.txt"
    path.write_text("Q one?||<<1+1=2>> #### 2\nQ two?||<<2+2=4>> 4\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"test\.txt, line 2: .*found no '####'"):
        load("gsm8k-aug", "test", path)


def test_non_numeric_gsm8k_answer_is_an_error(tmp_path):
    path = tmp_path / "test.jsonl"
    path.write_text('{"question": "Q?", "answer": "It is 2.\\n#### two"}\n', encoding="utf-8")
    with pytest.raises(DataError, match=r"line 1: expected a number after '####', got 'two'"):
        load("gsm8k", "test", path)


def test_bigbench_file_without_examples_is_an_error(tmp_path):
    path = tmp_path / "task.json"
    path.write_text('{"name": "date_understanding"}', encoding="utf-8")
    with pytest.raises(DataError, match=r"task\.json, top level: expected a BIG-bench task object"):
        load("bigbench-date", "test", path)


# ---- the shared data files (../shared/data; the conftest's `shared_data` skips where it is absent) ----

SHARED_COUNTS = [
    ("gsm8k", "train", 7473, None),
    ("gsm8k", "test", 1319, None),
    ("gsm8k-aug", "train", 6973, None),
    ("gsm8k-aug", "valid", 500, None),
    ("gsm8k-aug", "test", 1319, None),
    ("math500", "test", 500, None),
    ("arc-challenge", "train", 1056, None),
    ("arc-challenge", "test", 1172, {"A": 266, "B": 311, "C": 310, "D": 285}),
    ("aqua-rat", "dev", 254, None),
    ("aqua-rat", "test", 254, None),
    ("bigbench-date", "test", 369, None),
    ("bigbench-date", "bbh", 250, None),
    ("strategyqa", "train", 2061, {"True": 964, "False": 1097}),
    ("strategyqa", "dev", 229, {"True": 107, "False": 122}),
    ("strategyqa", "bigbench", 2290, {"True": 1071, "False": 1219}),
]


@pytest.mark.parametrize("name, split, count, answers", SHARED_COUNTS)
def test_shared_files_load_completely(name, split, count, answers, shared_data):
    examples = load(name, split, shared_data / name)
    assert len(examples) == count
    if answers is not None:
        assert collections.Counter(example.answer for example in examples) == answers


def test_shared_math500_subjects_and_levels(shared_data):
    examples = load("math500", "test", shared_data / "math500")
    assert collections.Counter(example.meta["level"] for example in examples) == {1: 43, 2: 90, 3: 105, 4: 128, 5: 134}
    assert collections.Counter(example.meta["subject"] for example in examples)["Algebra"] == 124


def test_shared_bigbench_date_option_counts(shared_data):
    examples = load("bigbench-date", "test", shared_data / "bigbench-date")
    assert collections.Counter(len(example.meta["options"]) for example in examples) == {6: 311, 5: 58}


# ---- hub layouts, mimicked by local parquet files ----------------------------------------------------


def test_gsm8k_hub_layout(tmp_path, hf_cache):
    rows = [{"question": "Q?", "answer": "It costs 2 * 600 = <<2*600=1200>>1200.\nSo 1,200.\n#### 1,200"}]
    examples = load("gsm8k", "test", write_parquet(rows, tmp_path / "gsm8k.parquet"))
    assert examples == [Example("Q?", ["It costs 2 * 600 = <<2*600=1200>>1200.", "So 1,200."], "1200")]


def test_gsm8k_aug_hub_layout(tmp_path, hf_cache):
    rows = [
        {"question": "Q one?", "steps": ["<<4-2=2>>", "<<2/.5=4>>"], "answer": "4"},
        {"question": "Q two?", "steps": [], "answer": "1,000"},
    ]
    examples = load("gsm8k-aug", "test", write_parquet(rows, tmp_path / "aug.parquet"))
    assert examples == [Example("Q one?", ["<<4-2=2>>", "<<2/.5=4>>"], "4"), Example("Q two?", [], "1000")]


def test_math500_hub_layout(tmp_path, hf_cache):
    rows = [
        {
            "problem": "What is $1+1$?",
            "solution": "We add.\n\nSo $1+1=\\boxed{2}$.",
            "answer": "2",
            "subject": "Prealgebra",
            "level": 1,
            "unique_id": "test/prealgebra/1.json",
        }
    ]
    [example] = load("math500", "test", write_parquet(rows, tmp_path / "math.parquet"))
    assert example.steps == ["We add.", "So $1+1=\\boxed{2}$."]
    assert example.meta == {"subject": "Prealgebra", "level": 1, "unique_id": "test/prealgebra/1.json"}


def test_arc_hub_layout_with_numeric_labels(tmp_path, hf_cache):
    rows = [
        {
            "id": "Q1",
            "question": "Pick two.",
            "choices": {"text": ["one", "two", "three"], "label": ["A", "B", "C"]},
            "answerKey": "B",
        },
        {
            "id": "NYSEDREGENTS_1",
            "question": "Pick four.",
            "choices": {"text": ["3", "4", "5", "6"], "label": ["1", "2", "3", "4"]},
            "answerKey": "2",
        },
    ]
    examples = load("arc-challenge", "test", write_parquet(rows, tmp_path / "arc.parquet"))
    assert examples[0].question == "Pick two.\nOptions:\n(A) one\n(B) two\n(C) three"
    assert examples[0].answer == "B"
    assert examples[1].answer == "B" and examples[1].meta["options"] == {"A": "3", "B": "4", "C": "5", "D": "6"}
    assert tasks.get("arc-challenge").grade("The answer is 4.", examples[1])


def test_aqua_hub_layout(tmp_path, hf_cache):
    rows = [
        {
            "question": "2+2?",
            "options": ["A)3", "B)4", "C)5", "D)6", "E)7"],
            "rationale": "2+2=4\nAnswer is B.",
            "correct": "B",
        }
    ]
    [example] = load("aqua-rat", "dev", write_parquet(rows, tmp_path / "aqua.parquet"))
    assert example == Example(
        "2+2?\nOptions:\n(A) 3\n(B) 4\n(C) 5\n(D) 6\n(E) 7",
        ["2+2=4", "Answer is B."],
        "B",
        {"options": {"A": "3", "B": "4", "C": "5", "D": "6", "E": "7"}},
    )


def test_bbh_hub_layout(tmp_path, hf_cache):
    rows = [
        {
            "input": "Today is 01/02/2000. What is the date tomorrow?\nOptions:\n(A) 01/03/2000\n(B) 01/01/2000",
            "target": "(A)",
        }
    ]
    [example] = load("bigbench-date", "bbh", write_parquet(rows, tmp_path / "bbh.parquet"))
    assert example.answer == "A" and example.meta["options"] == {"A": "01/03/2000", "B": "01/01/2000"}
    assert example.question == rows[0]["input"]


def test_strategyqa_hub_layout(tmp_path, hf_cache):
    rows = [
        {
            "qid": "abc",
            "term": "Frost",
            "description": "ice",
            "question": "Is frost cold?",
            "answer": True,
            "facts": ["Frost is ice.", "Ice is cold."],
            "decomposition": ["What is frost?", "Is #1 cold?"],
        }
    ]
    [example] = load("strategyqa", "train", write_parquet(rows, tmp_path / "sqa.parquet"))
    assert example == Example("Is frost cold?", ["Frost is ice.", "Ice is cold."], "True", {"qid": "abc"})


def test_bad_hub_row_names_the_row(tmp_path, hf_cache):
    rows = [{"question": "Q?", "answer": "#### 3"}, {"question": "Q?", "answer": "no marker"}]
    path = write_parquet(rows, tmp_path / "gsm8k.parquet")
    with pytest.raises(DataError, match=r"gsm8k\.parquet, row 1: expected the answer to end with"):
        load("gsm8k", "test", path)


# ---- the hub call itself (stubbed: no network) ------------------------------------------------------

HUB_ROWS = {
    "openai/gsm8k": [{"question": "Q?", "answer": "#### 3"}],
    "whynlp/gsm8k-aug": [{"question": "Q?", "steps": ["<<1+2=3>>"], "answer": "3"}],
    "HuggingFaceH4/MATH-500": [
        {"problem": "P?", "solution": "$\\boxed{3}$", "answer": "3", "subject": "Algebra", "level": 1, "unique_id": "u"}
    ],
    "allenai/ai2_arc": [
        {"id": "i", "question": "Q?", "choices": {"text": ["x", "y"], "label": ["A", "B"]}, "answerKey": "A"}
    ],
    "deepmind/aqua_rat": [{"question": "Q?", "options": ["A)1", "B)3"], "rationale": "3", "correct": "B"}],
    "lukaemon/bbh": [{"input": "Q?\nOptions:\n(A) x\n(B) y", "target": "(B)"}],
    "ChilleD/StrategyQA": [{"qid": "q", "question": "Q?", "answer": False, "facts": ["f"]}],
}


@pytest.mark.parametrize(
    "name, split, hub_call, answer",
    [
        ("gsm8k", "test", ("openai/gsm8k", "main", "test"), "3"),
        ("gsm8k-aug", "valid", ("whynlp/gsm8k-aug", None, "validation"), "3"),
        ("math500", "test", ("HuggingFaceH4/MATH-500", None, "test"), "3"),
        ("arc-challenge", "train", ("allenai/ai2_arc", "ARC-Challenge", "train"), "A"),
        ("aqua-rat", "dev", ("deepmind/aqua_rat", "raw", "validation"), "B"),
        ("aqua-rat", "test", ("deepmind/aqua_rat", "raw", "test"), "B"),
        ("bigbench-date", "bbh", ("lukaemon/bbh", "date_understanding", "test"), "B"),
        ("strategyqa", "train", ("ChilleD/StrategyQA", None, "train"), "False"),
    ],
)
def test_load_without_path_asks_the_hub(name, split, hub_call, answer, monkeypatch):
    import datasets

    calls = []

    def fake_load_dataset(hub_id, config=None, split=None):
        calls.append((hub_id, config, split))
        return datasets.Dataset.from_list(HUB_ROWS[hub_id])

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    examples = tasks.get(name).load(split)
    assert calls == [hub_call]
    assert [example.answer for example in examples] == [answer]


def test_bigbench_date_hub_has_only_bbh():
    with pytest.raises(ValueError, match="only the BBH copy"):
        tasks.get("bigbench-date").load("test")

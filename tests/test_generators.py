"""Generators of multiplication, ProsQA and ProntoQA: determinism, exclusions, logical soundness, and a
statistical match with the official valid files (../shared/data; those tests skip where it is absent).

Tolerances, generated (n=2000) against official: means within 5%, standard deviations within 20%,
proportions within 0.1 (0.05 where the official count is large), distributions over a few values within
total variation 0.1, ranges and vocabularies equal where stated.
"""

import re
import statistics
from collections import Counter

import pytest

from latent_reasoning import tasks
from latent_reasoning.tasks import Example, multiplication, prontoqa, prosqa
from latent_reasoning.tasks.exclusions import official_hashes, question_hash
from latent_reasoning.tasks.exclusions.__main__ import SOURCES, hashes_of

GENERATED = [("multiplication", {"digits": 4}), ("multiplication", {"digits": 5}), ("prosqa", {}),
             ("prosqa", {"facts": "pairs"}), ("prosqa", {"facts": "lines"}), ("prontoqa", {})]
N = 2000


def distribution(values) -> dict:
    counts = Counter(values)
    return {value: count / len(values) for value, count in counts.items()}


def total_variation(a, b) -> float:
    p, q = distribution(a), distribution(b)
    return sum(abs(p.get(key, 0) - q.get(key, 0)) for key in set(p) | set(q)) / 2


def assert_close(generated, official, what):
    """Mean within 5% and standard deviation within 20% of the official values."""
    mean, official_mean = statistics.mean(generated), statistics.mean(official)
    spread, official_spread = statistics.pstdev(generated), statistics.pstdev(official)
    assert abs(mean - official_mean) <= 0.05 * official_mean, f"{what}: mean {mean:.2f} vs {official_mean:.2f}"
    assert abs(spread - official_spread) <= 0.2 * official_spread, \
        f"{what}: sd {spread:.2f} vs official {official_spread:.2f}"


def rate(flags) -> float:
    return sum(flags) / len(flags)


# ---- determinism and distinctness -----------------------------------------------------------------
@pytest.mark.parametrize("name, options", GENERATED)
def test_same_seed_same_examples_other_seed_other_examples(name, options):
    task = tasks.get(name, **options)
    first = task.generate(40, seed=11)
    assert task.generate(40, seed=11) == first
    assert tasks.get(name, **options).generate(40, seed=11) == first  # no state kept in the task object
    other = task.generate(40, seed=12)
    assert {e.question for e in other}.isdisjoint({e.question for e in first})


@pytest.mark.parametrize("name, options", GENERATED)
def test_questions_are_distinct_and_avoid_the_exclude_set(name, options):
    task = tasks.get(name, **options)
    examples = task.generate(200, seed=2)
    questions = [e.question for e in examples]
    assert len(set(questions)) == 200
    avoided = set(questions[:50])
    again = task.generate(200, seed=2, exclude=avoided)
    assert len(again) == 200 and avoided.isdisjoint(e.question for e in again)


def test_a_too_small_question_space_raises_instead_of_looping():
    one_digit = tasks.get("multiplication", digits=1)
    assert len({e.question for e in one_digit.generate(81, seed=0)}) == 81  # all of 1..9 x 1..9
    with pytest.raises(ValueError, match="distinct new questions"):
        one_digit.generate(82, seed=0)


# ---- exclusion of the official valid questions ----------------------------------------------------
@pytest.mark.parametrize("name, options, hash_list, size", [
    ("multiplication", {"digits": 4}, "multiplication_4x4_valid", 1000),
    ("multiplication", {"digits": 5}, "multiplication_5x5_valid", 1000),
    ("prosqa", {}, "prosqa_valid", 300),
    ("prontoqa", {}, "prontoqa_valid", 200),
])
def test_generated_questions_avoid_the_shipped_hashes(name, options, hash_list, size):
    hashes = official_hashes(hash_list)
    assert len(hashes) == size and all(re.fullmatch(r"[0-9a-f]{12}", h) for h in hashes)
    generated = tasks.get(name, **options).generate(N, seed=0)
    assert not {question_hash(e.question) for e in generated} & hashes


@pytest.mark.parametrize("module, name, options", [
    (multiplication, "multiplication", {"digits": 4}), (prosqa, "prosqa", {}), (prontoqa, "prontoqa", {}),
])
def test_generate_skips_a_question_whose_hash_is_listed(monkeypatch, module, name, options):
    task = tasks.get(name, **options)
    unlisted = task.generate(5, seed=7)
    listed = frozenset({question_hash(unlisted[2].question)})
    monkeypatch.setattr(module, "official_hashes", lambda list_name: listed)
    again = task.generate(5, seed=7)
    assert unlisted[2].question not in {e.question for e in again}
    assert again[:2] == unlisted[:2]


def test_prosqa_pairs_are_the_sentence_problems_rewritten_so_the_official_ones_stay_out():
    sentences = tasks.get("prosqa").generate(50, seed=4)
    pairs = tasks.get("prosqa", facts="pairs").generate(50, seed=4)
    assert pairs == [tasks.get("prosqa", facts="pairs").render(e) for e in sentences]
    assert all(p.question != s.question and p.answer == s.answer for p, s in zip(pairs, sentences))


@pytest.mark.parametrize("hash_list", sorted(SOURCES))
def test_shipped_hashes_are_those_of_the_official_valid_files(shared_data, hash_list):
    assert official_hashes(hash_list) == frozenset(hashes_of(shared_data, hash_list))


@pytest.mark.parametrize("name, options, file", [
    ("multiplication", {"digits": 4}, "icot-multiplication/4_by_4_mult/valid.txt"),
    ("multiplication", {"digits": 5}, "icot-multiplication/5_by_5_mult/valid.txt"),
    ("prosqa", {}, "prosqa/prosqa_valid.json"),
    ("prontoqa", {}, "prontoqa/prontoqa_valid.json"),
])
def test_no_generated_question_is_an_official_valid_question(shared_data, name, options, file):
    task = tasks.get(name, **options)
    official = {e.question for e in task.load(path=shared_data / file)}
    assert official.isdisjoint(e.question for e in task.generate(N, seed=0))


# ---- multiplication -----------------------------------------------------------------------------
def test_multiplication_example_is_the_icot_line():
    example = tasks.get("multiplication").example(2365, 4347)
    assert multiplication.format_line(example) == (
        "5 6 3 2 * 7 4 3 4||5 5 5 6 1 + 0 0 6 4 9 0 ( 5 5 1 1 1 1 ) + 0 0 5 9 0 7 0 ( 5 5 6 0 2 8 0 ) "
        "+ 0 0 0 0 6 4 9 0 #### 5 5 6 0 8 2 0 1")


def _operands(question: str) -> list[int]:
    return [int(side.replace(" ", "")[::-1]) for side in question.split(" * ")]


@pytest.mark.parametrize("digits", [4, 5])
def test_multiplication_reproduces_the_official_file_byte_for_byte(shared_data, tmp_path, digits):
    official = shared_data / "icot-multiplication" / f"{digits}_by_{digits}_mult" / "valid.txt"
    task = tasks.get("multiplication", digits=digits)
    rebuilt = [task.example(*_operands(e.question)) for e in task.load(path=official)]
    task.save(rebuilt, tmp_path / "valid.txt")
    assert (tmp_path / "valid.txt").read_bytes() == official.read_bytes()


@pytest.mark.parametrize("digits", [2, 3, 4, 5, 6])
def test_multiplication_products_are_right(digits):
    for example in tasks.get("multiplication", digits=digits).generate(300, seed=digits):
        a, b = _operands(example.question)
        assert 10 ** (digits - 1) <= min(a, b) and max(a, b) < 10**digits
        assert example.answer == " ".join(str(a * b).zfill(2 * digits)[::-1])
        assert len(example.steps) == digits


@pytest.mark.parametrize("digits", [4, 5])
def test_multiplication_operand_digits_match_the_official_file(shared_data, digits):
    task = tasks.get("multiplication", digits=digits)
    official = task.load("valid", path=shared_data / "icot-multiplication")
    generated = task.generate(N, seed=0)
    for side in (0, 1):
        for position in range(digits):  # least-significant first; the last is the leading digit
            column = [e.question.split(" * ")[side].split()[position] for e in official]
            ours = [e.question.split(" * ")[side].split()[position] for e in generated]
            assert total_variation(ours, column) < 0.1, f"operand {side} digit {position}"
            assert ("0" in ours) == ("0" in column)  # a leading zero never occurs in either


# ---- ProsQA -------------------------------------------------------------------------------------
def _prosqa_facts(example: Example) -> list[str]:
    return re.findall(r"[^.?]+\.", example.question.rsplit(" Is ", 1)[0])


def _prosqa_is_sound(example: Example) -> bool:
    """The answer follows from the facts: the gold steps are facts of the question forming a shortest
    chain from the person to the answer, and the other option cannot be reached at all."""
    person, right, wrong = re.fullmatch(r".* Is (\w+) a (\w+) or (\w+)\?", example.question).groups()
    if example.answer != f"{person} is a {right}.":
        right, wrong = wrong, right
    facts = [fact.strip() for fact in _prosqa_facts(example)]
    children: dict[str, list[str]] = {}
    for fact in facts:
        subject, category = re.fullmatch(r"(?:Every )?(\w+) is a (\w+)\.", fact).groups()
        children.setdefault(subject, []).append(category)
    hops, queue = {person: 0}, [person]
    for node in queue:  # breadth-first: the queue grows while we walk it
        for child in children.get(node, []):
            if child not in hops:
                hops[child] = hops[node] + 1
                queue.append(child)
    chain = [re.fullmatch(r"(?:Every )?(\w+) is a (\w+)\.", step).groups() for step in example.steps]
    linked = chain[0][0] == person and all(a[1] == b[0] for a, b in zip(chain, chain[1:]))
    return (example.answer == f"{person} is a {right}." and all(step in facts for step in example.steps)
            and linked and chain[-1][1] == right and hops.get(right) == len(chain) and wrong not in hops)


def test_generated_prosqa_is_sound():
    examples = tasks.get("prosqa").generate(300, seed=1)
    assert all(_prosqa_is_sound(e) for e in examples)


def test_official_prosqa_is_sound_by_the_same_check(shared_data):
    assert all(_prosqa_is_sound(e) for e in tasks.get("prosqa").load("valid", path=shared_data / "prosqa"))


def _prosqa_stats(examples: list[Example]) -> dict[str, list]:
    symbols = [e.meta["idx_to_symbol"] for e in examples]
    return {
        "nodes": [len(s) for s in symbols],
        "facts": [len(_prosqa_facts(e)) for e in examples],
        "people": [sum(word[0].isupper() for word in s) for s in symbols],
        "steps": [len(e.steps) for e in examples],
        "words": [len(e.question.split()) for e in examples],
        "answer first": [e.question.rsplit(" or ", 1)[0].endswith(" " + e.answer.split()[-1][:-1]) for e in examples],
        "root is node 1": [e.meta["root"] == 1 for e in examples],
        "names": {word for s in symbols for word in s if word[0].isupper()},
        "concepts": {word for s in symbols for word in s if word[0].islower()},
    }


def test_prosqa_statistics_match_the_official_file(shared_data):
    official = _prosqa_stats(tasks.get("prosqa").load("valid", path=shared_data / "prosqa"))
    ours = _prosqa_stats(tasks.get("prosqa").generate(N, seed=0))
    for what in ("nodes", "facts", "words"):
        assert_close(ours[what], official[what], what)
    assert max(ours["nodes"]) == max(official["nodes"])
    assert sorted(set(ours["steps"])) == sorted(set(official["steps"])) == [3, 4, 5, 6]
    assert total_variation(ours["steps"], official["steps"]) < 0.1
    assert total_variation(ours["people"], official["people"]) < 0.1 and min(ours["people"]) == 2
    assert abs(rate(ours["answer first"]) - rate(official["answer first"])) < 0.1
    assert abs(rate(ours["root is node 1"]) - rate(official["root is node 1"])) < 0.1
    assert ours["names"] == official["names"] == set(prosqa.NAMES)
    assert ours["concepts"] == official["concepts"] == set(prosqa.CONCEPTS)


# ---- ProntoQA -----------------------------------------------------------------------------------
def _singular(word: str) -> str:
    return word[:-2] if word.endswith("uses") else word


def _prontoqa_rules(example: Example) -> list[tuple[str, str, bool]]:
    """(subject, concept or property, negated) for every sentence before the query."""
    rules = []
    for sentence in re.findall(r"[^.]+\.", example.question.split(" True or false: ")[0]):
        subject, negated, predicate = re.fullmatch(
            r"\s*(?:Every |Each )?(\w+) (?:is|are) (not )?(?:an? )?(\w+)\.", sentence).groups()
        # "Tumpuses are ..." and "Every tumpus is ..." have subject tumpus; "Alex is ..." has Alex.
        subject = _singular(subject.lower()) if subject.endswith("uses") else subject
        rules.append((subject, _singular(predicate), bool(negated)))
    return rules


def _prontoqa_answer(example: Example) -> str | None:
    """The answer by forward chaining over the question's rules: what the person is and is not."""
    person, negated, prop = re.search(r"True or false: (\w+) is (not )?(\w+)\.$", example.question).groups()
    rules = _prontoqa_rules(example)
    kinds = {predicate for subject, predicate, _ in rules if subject == person}
    frontier = set(kinds)
    while frontier:
        frontier = {p for s, p, neg in rules if s in frontier and p.endswith("pus") and p not in kinds}
        kinds |= frontier
    known = {neg for s, p, neg in rules if s in kinds and p == prop}
    if len(known) != 1:
        return None  # unknown or contradictory: ProntoQA problems never are
    return "True" if known == {bool(negated)} else "False"


def test_generated_prontoqa_answers_follow_from_the_facts():
    for example in tasks.get("prontoqa").generate(300, seed=1):
        assert _prontoqa_answer(example) == example.answer
        assert all(step.split(". ")[1] in example.question for step in example.steps[:-1])


def test_official_prontoqa_answers_follow_by_the_same_check(shared_data):
    for example in tasks.get("prontoqa").load("valid", path=shared_data / "prontoqa"):
        assert _prontoqa_answer(example) == example.answer


def _wording(sentence: str) -> str:
    first = sentence.split()[0]
    form = first if first in ("Every", "Each") else "plural"
    kind = "concept" if re.search(r"pus(es)?\.$", sentence) else "property"
    return f"{form} {kind}{' not' if ' not ' in sentence else ''}"


def _prontoqa_stats(examples: list[Example]) -> dict[str, list]:
    facts = [e.question.split(" True or false: ")[0] for e in examples]
    sentences = [s.strip() for text in facts for s in re.findall(r"[^.]+\.", text)]
    rules = [s for s in sentences if not re.fullmatch(r"[A-Z][a-z]+ is an? \w+\.", s)]
    properties = [s for s in rules if _wording(s).split()[1] == "property"]
    families = {word: i for i, family in enumerate(prontoqa.PROPERTY_FAMILIES) for word in family}
    return {
        "sentences": [len(re.findall(r"[^.]+\.", e.question)) for e in examples],
        "steps": [len(e.steps) for e in examples],
        "words": [len(e.question.split()) for e in examples],
        "true": [e.answer == "True" for e in examples],
        "query negated": [" not " in e.question.split("True or false: ")[1] for e in examples],
        "wording": [_wording(s) for s in rules],
        "negated": [" not " in s for s in properties],
        "families used": [len({families[w] for w in re.findall(r"[a-z]+", e.question) if w in families})
                          for e in examples],
        "nodes": [len(e.meta["idx_to_symbol"]) for e in examples],
        "names": {e.meta["idx_to_symbol"][0] for e in examples},
        "concepts": {w for e in examples for w in re.findall(r"\b[a-z]+pus\b", e.question)},
        "properties": {s.rstrip(".").split()[-1] for s in properties},
    }


def test_prontoqa_statistics_match_the_official_file(shared_data):
    official = _prontoqa_stats(tasks.get("prontoqa").load("valid", path=shared_data / "prontoqa"))
    ours = _prontoqa_stats(tasks.get("prontoqa").generate(N, seed=0))
    for what, value in (("sentences", 26), ("steps", 6), ("families used", 11)):
        assert set(ours[what]) == set(official[what]) == {value}, what
    assert_close(ours["words"], official["words"], "question words")
    assert total_variation(ours["wording"], official["wording"]) < 0.05
    assert abs(rate(ours["negated"]) - rate(official["negated"])) < 0.05
    assert abs(rate(ours["true"]) - rate(official["true"])) < 0.1
    assert abs(rate(ours["query negated"]) - rate(official["query negated"])) < 0.1
    assert total_variation(ours["nodes"], official["nodes"]) < 0.1
    assert ours["names"] == official["names"] == set(prontoqa.NAMES)
    assert ours["concepts"] == official["concepts"] == set(prontoqa.CONCEPTS)
    assert ours["properties"] == official["properties"]

"""The parity task: its chain and answer, its file format both ways, its grader and its errors."""

import functools

import pytest

from latent_reasoning import tasks
from latent_reasoning.tasks import DataError


def test_steps_are_the_running_parities_and_generation_is_deterministic():
    task = tasks.get("parity", bits=12)
    examples = task.generate(200, seed=4)
    assert [e.question for e in examples] == [e.question for e in task.generate(200, seed=4)]
    assert len({e.question for e in examples}) == 200
    for example in examples:
        bits = [int(b) for b in example.question.split(" ")]
        assert len(bits) == 12
        assert [int(s) for s in example.steps] == [functools.reduce(int.__xor__, bits[: i + 1]) for i in range(12)]
        assert example.answer == str(sum(bits) % 2)
    held_out = task.generate(50, seed=5, exclude={e.question for e in examples})
    assert not {e.question for e in held_out} & {e.question for e in examples}


def test_file_round_trip_and_bad_lines_name_file_and_line(tmp_path):
    task = tasks.get("parity", bits=8)
    examples = task.generate(30, seed=0)
    path = tmp_path / "parity.txt"
    task.save(examples, path)
    assert task.load(path=path) == examples
    path.write_text(path.read_text() + "1 0 1||1 1 #### 0\n")  # two parities for three bits
    with pytest.raises(DataError, match=r"parity.txt, line 31: 3 bits but 2 running parities"):
        task.load(path=path)
    assert len(task.load(path=path, skip_bad=True)) == 30


def test_grader_reads_the_digit_after_the_last_marker():
    task = tasks.get("parity", bits=4)
    example = task.example([1, 0, 1, 1])
    assert example.answer == "1" and example.steps == ["1", "1", "0", "1"]
    assert task.grade("1 1 0 1 #### 1", example)
    assert not task.grade("1 1 0 1 #### 0", example)
    assert not task.grade("1 1 0 1", example)  # no answer marker


def test_min_bits_mixes_lengths_and_each_string_is_right_for_its_own_length():
    task = tasks.get("parity", bits=8, min_bits=2)
    examples = task.generate(300, seed=3)
    lengths = [len(e.question.split(" ")) for e in examples]
    assert set(lengths) == set(range(2, 9))
    for example in examples:
        bits = [int(b) for b in example.question.split(" ")]
        assert len(example.steps) == len(bits) and example.answer == str(sum(bits) % 2)
    fixed = tasks.get("parity", bits=8)
    assert tasks.get("parity", bits=8, min_bits=8).generate(20, seed=2) == fixed.generate(20, seed=2)
    with pytest.raises(ValueError, match=r"only 12 exist"):  # lengths 2 and 3 hold 4 + 8 strings
        tasks.get("parity", bits=3, min_bits=2).generate(13, seed=0)
    four_bits = tasks.get("parity", bits=4).generate(16, seed=0)  # every 4-bit string: excluding them leaves 12
    assert len(tasks.get("parity", bits=3, min_bits=2).generate(12, seed=0, exclude={e.question for e in four_bits})) == 12


def test_bad_options_are_named():
    for bad in (1, "16", True):
        with pytest.raises(ValueError, match="parity bits"):
            tasks.get("parity", bits=bad)
    with pytest.raises(ValueError, match="parity min_bits=9 is more than bits=8"):
        tasks.get("parity", bits=8, min_bits=9)
    with pytest.raises(ValueError, match="parity min_bits must be an integer of at least 2"):
        tasks.get("parity", bits=8, min_bits=1)


def test_named_chain_names_each_bit_and_round_trips(tmp_path):
    task = tasks.get("parity", bits=5, chain="named")
    example = task.example([1, 0, 1, 1, 0])
    assert example.question == "b1 1 b2 0 b3 1 b4 1 b5 0"
    assert example.steps == ["b1 1 1", "b2 0 1", "b3 1 0", "b4 1 1", "b5 0 1"] and example.answer == "1"
    assert task.step_separator == " ; " and tasks.get("parity", bits=5).step_separator == " "
    examples = task.generate(30, seed=2)
    path = tmp_path / "named.txt"
    task.save(examples, path)
    assert path.read_text().splitlines()[0].count(" ; ") == 4
    assert task.load(path=path) == examples
    path.write_text(path.read_text() + "b1 1 b2 0||b1 1 1 ; b2 0 0 #### 1\n")  # step 2's parity is wrong
    with pytest.raises(DataError, match=r"named.txt, line 31: step 2 should be 'b2 0 1', found 'b2 0 0'"):
        task.load(path=path)
    with pytest.raises(ValueError, match="parity chain"):
        tasks.get("parity", chain="words")


def test_suffix_chain_is_the_parity_of_the_last_bits_and_is_checked_on_reading(tmp_path):
    task = tasks.get("parity", bits=5, chain="suffix")
    example = task.example([1, 0, 1, 1, 0])
    assert example.steps == ["0", "1", "0", "0", "1"] and example.answer == "1"  # 0; 1 0; 1 1 0; 0 1 1 0; 1 0 1 1 0
    assert example.answer == tasks.get("parity", bits=5).example([1, 0, 1, 1, 0]).answer
    path = tmp_path / "suffix.txt"
    task.save(task.generate(20, seed=1), path)
    assert task.load(path=path) == task.generate(20, seed=1)
    with pytest.raises(DataError, match=r"suffix.txt, line 1: the running parities of"):  # read as the other chain
        tasks.get("parity", bits=5).load(path=path)

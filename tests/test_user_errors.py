"""A user's mistake ends `latent` with one line naming the key, file or line and what was expected, exit status 2,
before any work and without a traceback (`--debug` shows it)."""

import pytest

from latent_reasoning import tasks
from latent_reasoning.cli import main

TRAIN = ["train", "--method", "cot", "--task", "multiplication", "--model", "tiny-5m", "task.digits=2",
         "log_with=none", "save_every=0", "eval_size=0"]


def run_main(argv) -> int:
    try:
        return main(argv)
    except SystemExit as stop:  # argparse's own errors
        return stop.code


def one_line_error(capsys) -> str:
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1 and "Traceback" not in error, error
    return error


@pytest.mark.parametrize("value, named", [
    ("steps=inf", "steps"), ("steps=nan", "steps"), ("max_length=0", "max_length"), ("temperature=-1", "temperature"),
    ("samples=0", "samples"), ("eval_size=-5", "eval_size"), ("save_every=-1", "save_every"),
    ("warmup_steps=-5", "warmup_steps"), ("weight_decay=-1", "weight_decay"), ("lora_r=0", "lora_r"),
    ("lr=inf", "lr"), ("seed=-1", "seed"), ("train_split=bogus", "train_split"), ("max_new_tokens=0", "max_new_tokens"),
])
def test_a_bad_value_is_named_in_one_line_before_any_work(tmp_path, capsys, value, named):
    assert run_main([*TRAIN, "--out", str(tmp_path / "run"), value]) == 2
    assert f"{named}=" in one_line_error(capsys)
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("flag, value", [("--limit", "-1"), ("--batch-size", "0"), ("--seed", "-2")])
def test_a_bad_eval_option_is_named_in_one_line(tmp_path, capsys, flag, value):
    assert run_main(["eval", "--model", "tiny-5m", "--task", "multiplication", "--out", str(tmp_path), flag, value]) == 2
    assert flag in one_line_error(capsys)


def test_an_unknown_key_suggests_the_nearest_valid_one(tmp_path, capsys):
    assert run_main([*TRAIN, "--out", str(tmp_path / "run"), "stepz=3"]) == 2
    assert "did you mean 'steps'" in one_line_error(capsys)


def test_malformed_yaml_names_the_file_and_line(tmp_path, capsys):
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("method: cot\ntask: multiplication\nsteps: [3\nmodel: tiny-5m\n")
    assert run_main(["train", "--config", str(recipe), "--out", str(tmp_path / "run")]) == 2
    error = one_line_error(capsys)
    assert str(recipe) in error and "line 4" in error and "YAML" in error


def test_a_data_file_that_is_not_utf8_is_named_with_its_line_and_can_be_skipped(tmp_path, capsys):
    task = tasks.get("multiplication", digits=2)
    data = tmp_path / "train.txt"
    task.save(task.generate(20, seed=0), data)
    lines = data.read_bytes().splitlines(keepends=True)
    lines[2] = lines[2].replace(b"*", b"\xff*")
    data.write_bytes(b"".join(lines))
    keys = [f"train_data={data}", "steps=1", "batch_size=2", "max_new_tokens=2"]
    assert run_main([*TRAIN, "--out", str(tmp_path / "run"), *keys]) == 2
    error = one_line_error(capsys)
    assert f"{data}, line 3" in error and "UTF-8" in error and "--skip-bad" in error
    assert run_main([*TRAIN, "--out", str(tmp_path / "run"), *keys, "--skip-bad"]) == 0
    assert "skipped 1 bad record(s)" in capsys.readouterr().err


def test_a_hub_dataset_unreachable_offline_is_one_line(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert run_main(["train", "--method", "cot", "--task", "gsm8k", "--model", "tiny-5m", "--out",
                     str(tmp_path / "run"), "steps=1", "log_with=none"]) == 2
    error = one_line_error(capsys)
    assert "hub:openai/gsm8k" in error and "unreachable" in error and "train_data=" in error


def test_debug_shows_the_traceback(tmp_path):
    from latent_reasoning.config import ConfigError

    with pytest.raises(ConfigError, match="steps"):
        main([*TRAIN, "--out", str(tmp_path / "run"), "steps=inf", "--debug"])


def test_layers_for_a_model_of_fixed_depth_is_named(tmp_path, capsys):
    folder = tmp_path / "pretrained"
    folder.mkdir()
    argv = [*TRAIN, "--out", str(tmp_path / "run"), "layers=4"]
    argv[argv.index("tiny-5m")] = str(folder)
    assert run_main(argv) == 2
    assert "layers=4: builds a tiny preset" in one_line_error(capsys)
    assert not (tmp_path / "run").exists()

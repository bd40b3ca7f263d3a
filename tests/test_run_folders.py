"""Run folders from `latent train --out`: protected, resumed only with their own keys, evaluated as they are,
and local training data that never sends training to the hub."""

import json
import shutil
from pathlib import Path

import pytest

from latent_reasoning import checkpoint, tasks
from latent_reasoning.cli import main

FIXTURES = Path(__file__).resolve().parent / "fixtures"
TINY = ["task.digits=2", "steps=2", "batch_size=4", "train_size=40", "eval_size=2", "log_with=none",
        "max_new_tokens=4", "save_every=0"]


def run_main(argv) -> int:
    """main() as the shell sees it: argparse's own errors exit through SystemExit."""
    try:
        return main(argv)
    except SystemExit as stop:
        return stop.code


def saved_step(run) -> int:
    return json.loads((checkpoint.find(run / "checkpoint") / "trainer_state.json").read_text())["step"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A cot run of two steps, trained once; tests copy it."""
    run = tmp_path_factory.mktemp("trained") / "run"
    assert main(["train", "--method", "cot", "--task", "multiplication", "--model", "tiny-5m", "--out", str(run),
                 *TINY]) == 0
    return run


@pytest.fixture
def run(trained, tmp_path):
    copy = tmp_path / "run"
    shutil.copytree(trained, copy)
    return copy


def test_an_out_holding_a_run_is_refused_unless_resume_or_overwrite(run, capsys):
    before = (run / "checkpoint" / "model.safetensors").read_bytes()
    capsys.readouterr()
    base = ["train", "--method", "cot", "--task", "multiplication", "--model", "tiny-5m"]
    assert run_main([*base, "--out", str(run), *TINY]) == 2
    error = capsys.readouterr().err
    assert str(run) in error and "--resume" in error and "--overwrite" in error and "Traceback" not in error
    assert (run / "checkpoint" / "model.safetensors").read_bytes() == before  # the finished run is untouched

    # key=value may come before and after the options
    assert run_main([*base, *TINY[:3], "--out", str(run), *TINY[3:], "steps=3", "--overwrite"]) == 0
    assert saved_step(run) == 3 and not (run / "checkpoint.old").exists()


def test_resume_refuses_other_keys_naming_them_and_continues_with_its_own(run, capsys):
    capsys.readouterr()
    assert run_main(["train", "--out", str(run), "--resume", "--method", "no-cot", "task.digits=3"]) == 2
    error = capsys.readouterr().err
    assert "method='cot' -> 'no-cot'" in error and "task_options" in error and "Traceback" not in error
    assert saved_step(run) == 2

    # with no keys at all it reads them from config.yaml; steps=4 is a different run, so it is named too
    assert run_main(["train", "--out", str(run), "--resume", "steps=4"]) == 2
    assert "steps=2 -> 4" in capsys.readouterr().err
    assert run_main(["train", "--out", str(run), "--resume", "save_every=1", "compile=true"]) == 0


def test_eval_and_inspect_take_the_run_folder_and_record_the_eval_seed(run, tmp_path, capsys):
    data = tmp_path / "held_out.txt"
    task = tasks.get("multiplication", digits=2)
    task.save(task.generate(3, seed=9), data)
    assert run_main(["eval", "--checkpoint", str(run), "--data", str(data), "--seed", "7", "--out",
                     str(tmp_path / "ev"), "max_new_tokens=3"]) == 0
    summary = json.loads((tmp_path / "ev" / "summary.json").read_text())
    assert summary["eval_seed"] == 7 and summary["n"] == 3
    assert summary["max_new_tokens"] == 3  # the typed value, not the text "3"
    capsys.readouterr()
    assert run_main(["inspect", "--checkpoint", str(run), "--data", str(data), "--limit", "1"]) == 2
    assert "no continuous thoughts" in capsys.readouterr().err  # found the checkpoint; cot has no thoughts


def test_local_train_data_without_eval_data_holds_out_part_of_it_offline(tmp_path, capsys, monkeypatch):
    import datasets

    def no_hub(*args, **kwargs):
        raise AssertionError("training with local data reached for the hub")

    monkeypatch.setattr(datasets, "load_dataset", no_hub)
    records = [json.loads(line) for name in ("train", "test")
               for line in (FIXTURES / "gsm8k" / f"{name}.jsonl").read_text().splitlines()]
    data = tmp_path / "gsm8k.jsonl"
    data.write_text("".join(json.dumps(record) + "\n" for record in records))
    keys = ["steps=1", "batch_size=2", "log_with=none", "max_new_tokens=2", f"train_data={data}"]
    assert run_main(["train", "--method", "cot", "--task", "gsm8k", "--model", "tiny-5m", "--out",
                     str(tmp_path / "run"), *keys, "eval_size=2"]) == 0
    assert f"holding out 2 of the {len(records)} examples of {data}" in capsys.readouterr().err

    # a held-out set as large as the file: stop at once, naming the keys to set
    assert run_main(["train", "--method", "cot", "--task", "gsm8k", "--model", "tiny-5m", "--out",
                     str(tmp_path / "run2"), *keys, f"eval_size={len(records)}"]) == 2
    error = capsys.readouterr().err
    assert "eval_size" in error and "eval_data=" in error and not (tmp_path / "run2").exists()


def test_recipe_paths_are_relative_to_the_recipe(tmp_path, monkeypatch):
    from latent_reasoning.run import read_recipe

    (tmp_path / "recipes").mkdir()
    recipe = tmp_path / "recipes" / "r.yaml"
    recipe.write_text("train_data: ../data/train.txt\ninit_from: ../runs/cot\nmodel: openai-community/gpt2\n"
                      "assistant: ./runs/assistant\n")
    monkeypatch.chdir(tmp_path / "recipes")
    values = read_recipe("r.yaml")
    assert values["train_data"] == "../data/train.txt" and values["init_from"] == "../runs/cot"
    monkeypatch.chdir(tmp_path)
    values = read_recipe("recipes/r.yaml")
    assert values["train_data"] == "recipes/../data/train.txt" and values["init_from"] == "recipes/../runs/cot"
    assert values["model"] == "openai-community/gpt2"  # a hub id, not a path
    assert values["assistant"] == "recipes/runs/assistant"  # softcot's assistant run folder



@pytest.mark.parametrize("damage", ["truncate", "remove"])
def test_a_damaged_checkpoint_is_named_in_one_line(run, tmp_path, capsys, damage):
    weights = run / "checkpoint" / "model.safetensors"
    if damage == "truncate":
        weights.write_bytes(weights.read_bytes()[:1000])
    else:
        weights.unlink()
    capsys.readouterr()
    assert run_main(["eval", "--checkpoint", str(run), "--limit", "2", "--out", str(tmp_path / "ev")]) == 2
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1 and "Traceback" not in error
    assert str(run / "checkpoint") in error and "model.safetensors" in error


def test_a_malformed_config_yaml_in_a_checkpoint_is_named_with_its_line(run, tmp_path, capsys):
    config = run / "checkpoint" / "config.yaml"
    config.write_text(config.read_text().replace("method: cot", "method: [cot", 1))
    capsys.readouterr()
    assert run_main(["eval", "--checkpoint", str(run), "--limit", "2", "--out", str(tmp_path / "ev")]) == 2
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1 and str(config) in error and "line " in error and "YAML" in error


def test_every_recipe_in_configs_is_a_valid_run():
    from latent_reasoning.run import make_run, read_recipe

    recipes = sorted((Path(__file__).resolve().parents[1] / "configs").glob("*.yaml"))
    assert recipes
    for recipe in recipes:
        values = read_recipe(recipe)
        values.setdefault("model", "tiny-5m")  # recipes with init_from take the model of a checkpoint not made here
        make_run(values, check_model_name=False)

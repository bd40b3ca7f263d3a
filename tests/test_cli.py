"""The `latent` command, called in-process."""

import json

import pytest

from latent_reasoning import tasks
from latent_reasoning.cli import main


def test_data_generate_writes_what_the_loader_reads(tmp_path, capsys):
    out = tmp_path / "prosqa_train.json"
    assert main(["data", "generate", "prosqa", "--n", "30", "--seed", "3", "--out", str(out)]) == 0
    loaded = tasks.get("prosqa").load(path=out)
    assert [e.question for e in loaded] == [e.question for e in tasks.get("prosqa").generate(30, seed=3)]
    assert main(["data", "check", "prosqa", str(out)]) == 0
    assert "30 prosqa examples" in capsys.readouterr().out


def test_data_generate_never_repeats_a_question_of_an_excluded_file(tmp_path):
    train, held_out = tmp_path / "train.jsonl", tmp_path / "held_out.jsonl"
    options = ["--option", "terms=2", "--option", "digits=1"]  # 126 questions in all: a second draw repeats many
    assert main(["data", "generate", "arithmetic", "--n", "60", "--seed", "0", "--out", str(train), *options]) == 0
    assert main(["data", "generate", "arithmetic", "--n", "40", "--seed", "1", "--out", str(held_out), *options,
                 "--exclude", str(train)]) == 0
    task = tasks.get("arithmetic", terms=2, digits=1)
    seen = {e.question for e in task.load(path=train)}
    written = [e.question for e in task.load(path=held_out)]
    assert len(written) == 40 and not seen & set(written)
    assert written == [e.question for e in task.generate(40, seed=1, exclude=seen)]


def test_train_then_eval_with_a_sweep(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", "--method", "cot", "--task", "multiplication", "--model", "tiny-5m", "--out", str(run),
                 "task.digits=2", "steps=3", "batch_size=4", "train_size=50", "eval_size=4", "log_with=none",
                 "max_new_tokens=8"]) == 0
    assert (run / "checkpoint" / "config.yaml").exists()
    data = tmp_path / "held_out.txt"
    task = tasks.get("multiplication", digits=2)
    task.save(task.generate(6, seed=9), data)
    capsys.readouterr()
    assert main(["eval", "--checkpoint", str(run / "checkpoint"), "--data", str(data), "--out", str(tmp_path / "ev"),
                 "--sweep", "max_new_tokens=2,6"]) == 0
    short = json.loads((tmp_path / "ev" / "max_new_tokens=2" / "summary.json").read_text())
    long = json.loads((tmp_path / "ev" / "max_new_tokens=6" / "summary.json").read_text())
    assert short["n"] == long["n"] == 6
    assert short["generated_tokens"] <= 2 < long["generated_tokens"] <= 6
    assert (tmp_path / "ev" / "results.png").exists()

    # The same weights read as a plain model (a base model of a comparison) answer the same.
    assert main(["eval", "--model", str(run / "checkpoint"), "--task", "multiplication", "--data", str(data),
                 "--out", str(tmp_path / "as-model"), "task.digits=2", "max_new_tokens=6"]) == 0
    as_model = json.loads((tmp_path / "as-model" / "summary.json").read_text())
    assert {k: as_model[k] for k in ("n", "accuracy", "generated_tokens")} == \
           {k: long[k] for k in ("n", "accuracy", "generated_tokens")}
    read = [json.loads(line)["text"] for line in open(tmp_path / "as-model" / "predictions.jsonl")]
    assert read == [json.loads(line)["text"] for line in open(tmp_path / "ev" / "max_new_tokens=6" / "predictions.jsonl")]
    capsys.readouterr()
    assert main(["eval", "--model", str(run / "checkpoint"), "--out", str(tmp_path / "x")]) == 2
    assert "--task" in capsys.readouterr().err


def test_sigterm_saves_the_steps_done_and_resume_finishes(tmp_path, capsys, monkeypatch):
    """A `kill` (SIGTERM) stops training as Ctrl-C does: the steps done since the last save are kept."""
    import os
    import signal

    from latent_reasoning.methods.sft import CoT

    def terminated_in_step_six(self, step):
        if step == 5:
            os.kill(os.getpid(), signal.SIGTERM)
        return False

    run = tmp_path / "run"
    arguments = ["train", "--method", "cot", "--task", "multiplication", "--model", "tiny-5m", "--out", str(run),
                 "task.digits=2", "steps=8", "batch_size=4", "train_size=50", "save_every=4", "eval_size=0",
                 "log_with=none"]
    handler = signal.getsignal(signal.SIGTERM)
    with monkeypatch.context() as patched:
        patched.setattr(CoT, "on_step", terminated_in_step_six)
        assert main(arguments) == 128 + signal.SIGTERM
    assert signal.getsignal(signal.SIGTERM) is handler
    assert "terminated; checkpoint:" in capsys.readouterr().err
    state = json.loads((run / "checkpoint" / "trainer_state.json").read_text())
    assert state["step"] == 5  # the steps done, not 4 (the last periodic save)
    assert main(["train", "--out", str(run), "--resume"]) == 0
    assert json.loads((run / "checkpoint" / "trainer_state.json").read_text())["step"] == 8


def test_layers_trains_a_deeper_preset_and_its_checkpoint_keeps_the_depth(tmp_path):
    from latent_reasoning.run import load_saved

    run = tmp_path / "deep"
    assert main(["train", "--method", "cot", "--task", "multiplication", "--model", "tiny-1m", "--out", str(run),
                 "task.digits=2", "steps=2", "batch_size=4", "train_size=50", "eval_size=0", "log_with=none",
                 "layers=7"]) == 0
    model, _ = load_saved(run / "checkpoint")
    assert model.config.num_hidden_layers == 7 and len(model.model.layers) == 7  # tiny-1m has 4
    # its scores name the depth, so a results row cannot pass for the 4-layer preset's
    assert main(["eval", "--checkpoint", str(run), "--out", str(tmp_path / "ev"), "--limit", "2",
                 "max_new_tokens=2"]) == 0
    assert json.loads((tmp_path / "ev" / "summary.json").read_text())["model"] == "tiny-1m, 7 layers"


@pytest.mark.parametrize("arguments, named", [
    (["--method", "cott"], "cott"),
    (["--task", "gsm9k"], "gsm9k"),
    (["learning_rate=1"], "learning_rate"),
    (["decoding=beam"], "self-consistency"),
])
def test_bad_input_exits_2_naming_the_problem_before_any_work(tmp_path, capsys, arguments, named):
    base = {"--method": "cot", "--task": "multiplication", "--model": "tiny-5m"}
    flags = [a for key, value in base.items() if key not in arguments for a in (key, value)]
    assert main(["train", *flags, "--out", str(tmp_path / "run"), *arguments]) == 2
    assert named in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_train_help_lists_every_key_with_its_default(capsys):
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    text = capsys.readouterr().out
    for key in ("steps=500", "lr=0.001", "decoding='greedy'", "train_size=10000", "save_every=100"):
        assert key in text


def test_task_options_from_the_command_line_as_a_mapping_or_one_key_each(capsys):
    from latent_reasoning.config import ConfigError
    from latent_reasoning.run import parse_overrides

    parsed = parse_overrides(["task_options={digits: 2}", "task.extra=3", "steps=5"])
    assert parsed == {"task_options": {"digits": 2, "extra": 3}, "steps": "5"}
    with pytest.raises(ConfigError, match="task_options"):
        parse_overrides(["task_options=2"])
    assert main(["train", "--out", "unused", "method=cot", "task=multiplication", "model=tiny-5m", "task_options=2"]) == 2
    assert "task_options" in capsys.readouterr().err


def test_help_answers_without_importing_torch():
    """`latent --help` lists commands, methods and tasks from their names alone (bench/help_speed.py times it)."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    import latent_reasoning

    code = ("import sys\nfrom latent_reasoning.cli import main\ntry:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
            "print(sorted(name for name in ('torch', 'transformers', 'peft') if name in sys.modules))")
    source = str(Path(latent_reasoning.__file__).resolve().parents[1])
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                            env={**os.environ, "PYTHONPATH": source})
    assert "latent" in result.stdout and result.stdout.strip().splitlines()[-1] == "[]"

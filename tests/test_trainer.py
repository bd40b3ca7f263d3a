"""The trainer, checkpoints, the evaluator and the run builder, on tiny models trained for a few steps."""

import copy
import json
import os
import platform
import subprocess
import sys

import pytest
import torch

from latent_reasoning import checkpoint, tasks
from latent_reasoning.config import ConfigError
from latent_reasoning.evaluate import evaluate
from latent_reasoning.run import build_method, load_method, make_run, texts_of
from latent_reasoning.trainer import Trainer, TrainingDiverged


def tiny_run(**overrides):
    values = {"method": "cot", "task": "multiplication", "task_options": {"digits": 2}, "model": "tiny-5m",
              "steps": 8, "batch_size": 8, "lr": 3e-3, "warmup_steps": 2, "save_every": 4, "eval_size": 0,
              "log_with": "none", "mixed_precision": "no", "max_new_tokens": 40}
    values.update(overrides)
    return make_run(values)


@pytest.fixture(scope="module")
def examples():
    return tasks.get("multiplication", digits=2).generate(200, seed=0)


def weights(method):
    return {name: tensor.detach().clone() for name, tensor in method.model.state_dict().items()}


class Killed(Exception):
    pass


def test_kill_and_resume_ends_with_the_same_weights(tmp_path, examples, interrupt):
    run = tiny_run()
    whole = build_method(run, texts_of(examples))
    Trainer(whole, examples, run.train, tmp_path / "whole", {"method": "cot"}).fit()

    interrupted = build_method(run, texts_of(examples))
    interrupt(interrupted, 5, Killed)  # mid-run, after the step-4 checkpoint: as if the process were killed
    with pytest.raises(Killed):
        Trainer(interrupted, examples, run.train, tmp_path / "killed", run.describe("test")).fit()
    saved = checkpoint.find(tmp_path / "killed" / "checkpoint")
    state = json.loads((saved / "trainer_state.json").read_text())
    assert state["step"] == 4

    state["history"][-1]["seconds"] = 1000.0  # as if the first four steps had taken 1000 s
    (saved / "trainer_state.json").write_text(json.dumps(state))

    resumed = build_method(run, weights=saved)
    history = Trainer(resumed, examples, run.train, tmp_path / "killed", run.describe("test")).fit(resume=True)
    assert [record["step"] for record in history] == list(range(1, run.train.steps + 1))
    assert all(record["seconds"] >= 1000.0 for record in history[4:])  # training time adds up across the resume
    expected, got = weights(whole), weights(resumed)
    assert expected.keys() == got.keys()
    for name in expected:
        torch.testing.assert_close(got[name], expected[name], rtol=0, atol=0, msg=name)
    # and the run did move: the weights differ from a fresh model's
    fresh = weights(build_method(run, texts_of(examples)))
    assert any(not torch.equal(fresh[name], got[name]) for name in fresh)


def test_the_checkpoint_is_written_before_the_final_evaluation(tmp_path, examples):
    run = tiny_run(save_every=0, eval_size=4)  # no periodic saves: only the final one
    method = build_method(run, texts_of(examples))

    def evaluation_fails(method, examples, batch_size):
        raise RuntimeError("the final evaluation failed")

    trainer = Trainer(method, examples, run.train, tmp_path, run.describe("test"), evaluate=evaluation_fails)
    with pytest.raises(RuntimeError, match="final evaluation"):
        trainer.fit(eval_examples=examples[:4])
    saved = checkpoint.find(tmp_path / "checkpoint")
    assert json.loads((saved / "trainer_state.json").read_text())["step"] == run.train.steps
    reloaded = load_method(saved)
    for name, tensor in weights(method).items():
        torch.testing.assert_close(reloaded.model.state_dict()[name], tensor, rtol=0, atol=0, msg=name)


def test_ctrl_c_saves_the_steps_done_since_the_last_checkpoint(tmp_path, examples, interrupt):
    run = tiny_run()  # save_every=4
    method = build_method(run, texts_of(examples))
    interrupt(method, 5, KeyboardInterrupt)  # Ctrl-C in step six
    with pytest.raises(KeyboardInterrupt):
        Trainer(method, examples, run.train, tmp_path, run.describe("test")).fit()
    saved = checkpoint.find(tmp_path / "checkpoint")
    assert json.loads((saved / "trainer_state.json").read_text())["step"] == 5  # not 4, the last periodic save


def test_a_loss_that_turns_nan_stops_and_keeps_the_last_good_checkpoint(tmp_path, examples):
    run = tiny_run(save_every=2)
    method = build_method(run, texts_of(examples))
    real_loss = method.loss

    def nan_at_step_four(batch, step):
        loss, metrics = real_loss(batch, step)
        return (loss * float("nan") if step == 3 else loss), metrics

    method.loss = nan_at_step_four
    with pytest.raises(TrainingDiverged, match="step 4"):
        Trainer(method, examples, run.train, tmp_path, run.describe("test")).fit()
    saved = checkpoint.find(tmp_path / "checkpoint")
    assert json.loads((saved / "trainer_state.json").read_text())["step"] == 2
    reloaded = load_method(saved)
    assert all(torch.isfinite(p).all() for p in reloaded.model.parameters())


def test_checkpoint_round_trip_answers_the_same(tmp_path, examples):
    run = tiny_run(steps=4)
    method = build_method(run, texts_of(examples))
    Trainer(method, examples, run.train, tmp_path, run.describe("test")).fit()
    reloaded = load_method(tmp_path / "checkpoint")
    assert [p.text for p in reloaded.answer(examples[:4])] == [p.text for p in method.answer(examples[:4])]
    assert not (tmp_path / "checkpoint.tmp").exists() and not (tmp_path / "checkpoint.old").exists()


def test_evaluator_writes_predictions_and_a_result_row(tmp_path, examples):
    method = build_method(tiny_run(), texts_of(examples))
    summary = evaluate(method, examples[:10], batch_size=4, out=tmp_path, run={"command": "test", "model": "tiny-5m"})
    rows = [json.loads(line) for line in (tmp_path / "predictions.jsonl").read_text().splitlines()]
    assert len(rows) == 10 and summary["n"] == 10
    assert summary["accuracy"] == sum(r["correct"] for r in rows) / 10
    for key in ("task", "split", "n", "method", "model", "seed", "accuracy", "forward_passes", "generated_tokens",
                "seconds_per_example", "command"):
        assert key in summary
    # an untrained model rambles to the token limit: each generated token costs one forward pass
    assert all(1 <= r["forward_passes"] == r["generated_tokens"] <= 40 for r in rows)
    assert json.loads((tmp_path / "summary.json").read_text()) == summary


def test_self_consistency_costs_k_samples(examples):
    method = build_method(tiny_run(decoding="self-consistency", samples=3), texts_of(examples))
    greedy = build_method(tiny_run(), texts_of(examples))
    torch.manual_seed(0)
    sampled = method.answer(examples[:4])
    single = greedy.answer(examples[:4])
    assert sum(p.forward_passes for p in sampled) > sum(p.forward_passes for p in single)


@pytest.mark.parametrize("values, named", [
    ({"method": "cott"}, "cott"),
    ({"task": "gsm9k"}, "gsm9k"),
    ({"learning_rate": 1}, "learning_rate"),
    ({"decoding": "beam"}, "decoding"),
    ({"steps": "many"}, "steps"),
    ({"batch_size": 0}, "batch_size"),
    ({"lora": True}, "lora"),
    ({"model": "no-such-model-anywhere"}, "no-such-model-anywhere"),
    ({"method": "latro", "stop": None}, "stop"),  # YAML's `stop: ####` is a comment: None, not "None"
])
def test_config_errors_name_the_key_and_the_choices(values, named):
    base = {"method": "cot", "task": "multiplication", "model": "tiny-5m"}
    with pytest.raises(ConfigError, match=named) as error:
        make_run({**base, **values})
    if named == "cott":
        assert "no-cot" in str(error.value)
    if "decoding" in values:
        assert "self-consistency" in str(error.value)


def test_saving_and_answering_are_quiet(tmp_path, examples, capfd):
    """No progress bar of transformers' at each save, no FutureWarning from the library's own calls."""
    import warnings

    from latent_reasoning.backbones import add_lora

    with warnings.catch_warnings():
        warnings.simplefilter("error", FutureWarning)
        for name in ("cot", "coconut"):
            run = tiny_run(method=name, max_new_tokens=4)
            method = build_method(run, texts_of(examples))
            method.loss(examples[:2], 0)
            method.answer(examples[:2])
            capfd.readouterr()
            checkpoint.write(tmp_path / name, method, run.describe("test"))
            assert "Writing model shards" not in capfd.readouterr().err
        add_lora(method.model)


@pytest.mark.parametrize("schedule", ["constant", "cosine"])
def test_the_learning_rate_schedule_after_warmup(tmp_path, examples, schedule):
    run = tiny_run(steps=6, warmup_steps=2, save_every=0, lr_schedule=schedule)
    history = Trainer(build_method(run, texts_of(examples)), examples, run.train, tmp_path, run={}).fit()
    rates = [record["lr"] for record in history]  # the rate after each step's scheduler update
    assert rates[:2] == pytest.approx([1.5e-3, 3e-3])  # linear warmup
    if schedule == "constant":
        assert rates[1:] == pytest.approx([3e-3] * 5)
    else:
        assert rates[2] < 3e-3 and rates[-1] == pytest.approx(0.0)


@pytest.mark.parametrize("method_name", ["softcot", "softcot++", "lta-thinker"])
def test_frozen_backbone_methods_resume_to_the_same_trained_modules(tmp_path, interrupt, method_name):
    """What these methods train lives outside the backbone (projection, initial embeddings, generator):
    a killed run resumed from its checkpoint ends where an uninterrupted one does."""
    examples = tasks.get("parity", bits=6).generate(40, seed=0)
    run = make_run({"method": method_name, "task": "parity", "task_options": {"bits": 6}, "model": "tiny-1m",
                    "steps": 4, "batch_size": 4, "lr": 3e-3, "warmup_steps": 0, "save_every": 2, "eval_size": 0,
                    "log_with": "none", "mixed_precision": "no", "thoughts": 3, "max_new_tokens": 4})
    whole = build_method(run, texts_of(examples))
    Trainer(whole, examples, run.train, tmp_path / "whole", run.describe("test")).fit()

    interrupted = build_method(run, texts_of(examples))
    interrupt(interrupted, 3, Killed)  # in the last step, after the step-2 checkpoint
    with pytest.raises(Killed):
        Trainer(interrupted, examples, run.train, tmp_path / "killed", run.describe("test")).fit()
    resumed = build_method(run, weights=tmp_path / "killed" / "checkpoint")
    Trainer(resumed, examples, run.train, tmp_path / "killed", run.describe("test")).fit(resume=True)
    expected, got = whole.trainable_parameters(), resumed.trainable_parameters()
    assert len(expected) == len(got) > 0
    for want, have in zip(expected, got):
        torch.testing.assert_close(have, want, rtol=0, atol=0)
    fresh = build_method(run, texts_of(examples)).trainable_parameters()
    assert any(not torch.equal(a, b) for a, b in zip(fresh, got))  # the run did move them


def test_bf16_weights_step_equals_a_bf16_copy_updated_in_fp32(tmp_path, examples):
    """mixed_precision=bf16-weights: the forward and backward run on bf16 weights (under autocast), AdamW
    updates the fp32 weights with the gradients cast to fp32, and everything after the step sees fp32."""
    run = tiny_run(steps=1, warmup_steps=0, save_every=0, mixed_precision="bf16-weights")
    method = build_method(run, texts_of(examples))
    reference = copy.deepcopy(method)
    initial = [parameter.detach().clone() for parameter in method.model.parameters()]
    trainer = Trainer(method, examples, run.train, tmp_path, run={})
    batch = trainer.examples_for(0, 0)
    trainer.fit()

    fp32_model = reference.model
    fp32_model.set_attn_implementation("eager")  # what attention=auto picks on a CPU
    reference.model = copy.deepcopy(fp32_model)
    for parameter in reference.model.parameters():  # the parameters only: buffers (RoPE's frequencies) stay fp32
        parameter.data = parameter.data.to(torch.bfloat16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss, _ = reference.loss(batch, 0)
    loss.backward()
    for fp32, bf16 in zip(fp32_model.parameters(), reference.model.parameters()):
        fp32.grad = bf16.grad.float()
    torch.nn.utils.clip_grad_norm_(list(fp32_model.parameters()), run.train.max_grad_norm)
    optimizer = torch.optim.AdamW(fp32_model.parameters(), lr=run.train.lr, weight_decay=run.train.weight_decay)
    optimizer.step()

    assert trainer.history[0]["loss"] == pytest.approx(loss.item(), rel=1e-6)
    for (name, want), have in zip(fp32_model.named_parameters(), method.model.parameters()):
        assert have.dtype == torch.float32, name
        torch.testing.assert_close(have, want, rtol=1e-5, atol=1e-6, msg=name)
    assert any(not torch.equal(before, after) for before, after in zip(initial, method.model.parameters()))  # it moved


def test_eager_attention_gives_sdpas_loss_and_gradients_and_the_trainer_uses_it_on_a_cpu(tmp_path, examples):
    """attention=auto trains with eager attention on a CPU (faster there under bf16); the maths is SDPA's."""
    run = tiny_run(steps=1, warmup_steps=0, save_every=0, mixed_precision="no")
    method = build_method(run, texts_of(examples))
    batch = examples[:8]
    results = {}
    for attention in ("sdpa", "eager"):
        method.model.set_attn_implementation(attention)
        method.model.zero_grad(set_to_none=True)
        loss, _ = method.loss(batch, 0)
        loss.backward()
        results[attention] = (loss.item(), [p.grad.clone() for p in method.model.parameters() if p.grad is not None])
    assert results["eager"][0] == pytest.approx(results["sdpa"][0], rel=1e-5)
    assert len(results["eager"][1]) == len(results["sdpa"][1]) > 0
    for eager, sdpa in zip(results["eager"][1], results["sdpa"][1]):
        torch.testing.assert_close(eager, sdpa, rtol=1e-4, atol=1e-6)

    method.model.set_attn_implementation("sdpa")
    Trainer(method, examples, run.train, tmp_path, run={}).fit()
    assert method.model.config._attn_implementation == "eager"


def test_compiled_training_on_two_threads_repeats_to_the_bit(tmp_path, examples):
    """compile=true on a CPU: two runs of one seed end with the same weights to the bit, though inductor's kernels
    would sum the embedding's gradient with atomic adds across the threads; and torch's deterministic mode, set for
    the steps, is off again afterwards."""
    threads = torch.get_num_threads()
    torch.set_num_threads(2)  # the race needs two threads (the suite runs on one)
    try:
        weights = []
        for attempt in range(2):
            run = tiny_run(model="tiny-1m", steps=6, warmup_steps=0, save_every=0, eval_size=0, compile=True)
            method = build_method(run, texts_of(examples))
            Trainer(method, examples, run.train, tmp_path / str(attempt), run={}).fit()
            weights.append([p.detach().clone() for p in method.model.parameters()])
    finally:
        torch.set_num_threads(threads)
    assert not torch.are_deterministic_algorithms_enabled()
    assert len(weights[0]) == len(weights[1]) > 0
    for first, second in zip(*weights):
        assert torch.equal(first, second)


def test_compiled_training_steps_give_the_eager_losses_and_evaluation_runs(tmp_path, examples):
    """compile=true: the same losses as eager training (up to float rounding), and the evaluation inside training
    (which runs the model uncompiled) scores as eager training's does."""
    histories = {}
    for compiled in (False, True):
        run = tiny_run(model="tiny-1m", steps=3, warmup_steps=0, save_every=0, eval_size=4, compile=compiled)
        method = build_method(run, texts_of(examples))
        torch._dynamo.utils.counters.clear()
        histories[compiled] = Trainer(method, examples, run.train, tmp_path / str(compiled), run={},
                                      evaluate=evaluate).fit(examples[-4:])
        assert (method.model.get_decoder()._compiled_call_impl is not None) == compiled
        assert (torch._dynamo.utils.counters["stats"]["unique_graphs"] > 0) == compiled  # the steps ran compiled
    losses = {compiled: [record["loss"] for record in history] for compiled, history in histories.items()}
    assert losses[True] == pytest.approx(losses[False], rel=1e-4)
    for key in ("eval_accuracy", "eval_forward_passes"):
        assert histories[True][-1][key] == histories[False][-1][key]


CHURN = """
import resource, sys, torch
from latent_reasoning.trainer import Trainer, keep_freed_memory

def faults_per_page():  # minor page faults over 5 rounds of 40 touched 2 MB tensors made and freed, per page made
    def churn():
        blocks = [torch.ones(512 * 1024) for _ in range(40)]
        del blocks
    churn()
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(5):
        churn()
    return (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / (5 * 40 * 2 * 256)

print(faults_per_page())
if sys.argv[1] == "trainer":
    from latent_reasoning import tasks
    from latent_reasoning.run import build_method, make_run, texts_of
    run = make_run(dict(method="cot", task="multiplication", task_options={"digits": 2}, model="tiny-5m", steps=1,
                        batch_size=4, save_every=0, eval_size=0, log_with="none"))
    examples = tasks.get("multiplication", digits=2).generate(20, seed=0)
    Trainer(build_method(run, texts_of(examples)), examples, run.train, "out", {"method": "cot"}).fit()
else:
    print(keep_freed_memory())
print(faults_per_page())
"""


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="sets glibc's malloc options")
@pytest.mark.parametrize("caller", ["function", "trainer"])
def test_freed_memory_is_kept_for_reuse_so_tensors_made_again_fault_no_pages_in(tmp_path, caller):
    environment = {key: value for key, value in os.environ.items()  # glibc at its defaults: no setting for the function to defer to
                   if not key.startswith("MALLOC_") and key != "GLIBC_TUNABLES"}
    printed = subprocess.run([sys.executable, "-c", CHURN, caller], capture_output=True, text=True, check=True,
                             cwd=tmp_path, env=environment).stdout.split()
    before, after = float(printed[0]), float(printed[-1])
    assert before > 0.15  # glibc's default gives (some of) the 80 MB freed at the heap's top back to the system
    assert after < 0.08  # measured 0-0.035 with the setting, 0.2-1.0 without
    if caller == "function":
        assert printed[1] == "True"

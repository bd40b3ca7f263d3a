"""iCoT, stepwise internalization, on a tiny model: the removal schedule and its smoothing against a
hand computation, the layout and position ids of a partly removed chain, answering with moved
positions against a full recomputation, a loss that falls while tokens are removed, and the auxiliary
running-sum loss against a hand computation."""

import copy
import dataclasses
import math

import pytest
import torch

from latent_reasoning import checkpoint, methods, tasks
from latent_reasoning.backbones import load_backbone
from latent_reasoning.config import ConfigError
from latent_reasoning.methods.icot import smoothing_distribution
from latent_reasoning.run import build_method, load_method, make_run, texts_of
from latent_reasoning.trainer import TrainConfig, Trainer

PARITY = tasks.get("parity", bits=6)
EXAMPLES = PARITY.generate(64, seed=0)  # 6 steps of one token each: a 6-token chain


@pytest.fixture(scope="module")
def base():
    return load_backbone("tiny-5m", texts=texts_of(EXAMPLES), seed=0)


def make(base, **options):
    model, tokenizer = base
    options.setdefault("max_new_tokens", 16)
    config = methods.get("icot").Config(**options)
    return methods.get("icot")(config, copy.deepcopy(model), tokenizer, PARITY)


def ids(tokenizer, text):
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def test_removal_schedule_and_optimizer_resets_match_a_hand_computation(base):
    method = make(base, tokens_per_removal=8, steps_per_removal=10, first_removed=2)
    assert [method.removed_at(s) for s in (0, 9, 10, 19, 20, 35)] == [2, 2, 10, 10, 18, 26]
    assert [s for s in range(40) if method.on_step(s)] == [10, 20, 30]
    assert not any(make(base, steps_per_removal=10, reset_optimizer=False).on_step(s) for s in range(40))


def test_smoothing_distribution_is_the_truncated_geometric_of_icot():
    p = smoothing_distribution(4.0)
    assert p.shape == (100,)
    assert float(p.sum()) == pytest.approx(1.0)
    assert float(p[0]) == pytest.approx(1 - math.exp(-4))  # 98.2% drop exactly the scheduled count
    assert float(p[1]) == pytest.approx((1 - math.exp(-4)) * math.exp(-4))
    assert float(p[2] / p[1]) == pytest.approx(math.exp(-4))


def test_smoothed_removal_counts_follow_the_distribution_and_repeat_on_resume(base):
    method = make(base, tokens_per_removal=4, steps_per_removal=1, smoothing_lambda=1.0)
    examples = tasks.get("parity", bits=16).generate(2000, seed=3)
    counts = method.removal_counts(examples, step=2)
    assert counts == method.removal_counts(examples, step=2)  # a function of (step, position, question)
    extra = torch.tensor(counts) - 8
    assert int(extra.min()) == 0
    expected = smoothing_distribution(1.0)[:3]
    observed = torch.stack([(extra == o).double().mean() for o in range(3)])
    assert torch.allclose(observed, expected, atol=0.03)
    assert make(base, smoothing_lambda=None).removal_counts(examples[:50], 0) == [0] * 50


def test_partly_removed_chain_layout_labels_and_kept_positions(base):
    example = EXAMPLES[0]
    for keep in (False, True):
        method = make(base, keep_position=keep)
        tokenizer = method.tokenizer
        question = ids(tokenizer, example.question + "\n")
        full = ids(tokenizer, " ".join(example.steps + [f"#### {example.answer}"])) + [tokenizer.eos_token_id]
        chain, answer = method.split_target(example)
        assert chain + answer == full and len(chain) == len(example.steps)  # one token a step
        for r in (0, 5, 12, 40):  # beyond the chain: everything removed, the answer alone
            batch, positions, _, _ = method.encode([example], [r])
            kept = min(r, len(chain))
            target = full[kept:]
            assert batch.input_ids[0].tolist() == question + target
            assert batch.labels[0].tolist() == [-100] * len(question) + target
            skip = kept if keep else 0
            expected = list(range(len(question))) + [len(question) + skip + i for i in range(len(target))]
            assert positions[0].tolist() == expected


def test_kept_positions_at_answer_time_equal_a_full_recomputation(base):
    method = make(base, keep_position=True, max_new_tokens=5)
    method.model.eval()
    method.step_tokens.count = torch.tensor([4.0, 24.0, 48.0, 0.0], dtype=torch.float64)  # chains of 12 tokens seen in training
    examples = EXAMPLES[:3]
    predictions = method.answer(examples)
    tokenizer = method.tokenizer
    for example, prediction in zip(examples, predictions):
        question = ids(tokenizer, example.question + "\n")
        sequence = list(question)
        for _ in range(5):  # greedy, with every generated token placed after the 12 removed chain tokens
            positions = list(range(len(question))) + [len(question) + 12 + i for i in range(len(sequence) - len(question))]
            with torch.no_grad():
                logits = method.model(input_ids=torch.tensor([sequence]), position_ids=torch.tensor([positions])).logits
            sequence.append(int(logits[0, -1].argmax()))
            if sequence[-1] == tokenizer.eos_token_id:
                break
        generated = sequence[len(question):]
        assert prediction.generated_tokens == len(generated) == prediction.forward_passes
        assert prediction.text == tokenizer.decode(generated, skip_special_tokens=True)


def test_chain_weight_scales_the_kept_chain_against_a_reference_loss(base):
    """The loss is the weighted mean of the target tokens' cross-entropies, recomputed here by hand:
    chain_weight 1 is iCoT's plain mean over chain and answer, 0 leaves the answer alone."""
    examples = EXAMPLES[:4]
    for weight in (1.0, 0.25, 0.0):
        method = make(base, tokens_per_removal=2, steps_per_removal=10, smoothing_lambda=None, chain_weight=weight)
        method.model.eval()
        loss, metrics = method.loss(examples, step=10)  # 2 of the 6 chain tokens removed: 4 kept
        kept_total = answer_total = 0.0
        kept_count = answer_count = 0
        for example in examples:
            batch, positions, _, _ = method.encode([example], [2])
            with torch.no_grad():
                logits = method.model(input_ids=batch.input_ids, position_ids=positions).logits[0, :-1]
            labels = batch.labels[0, 1:]
            chain_tokens = len(method.split_target(example)[0]) - 2
            ce = torch.nn.functional.cross_entropy(logits[labels != -100], labels[labels != -100], reduction="none")
            kept_total += float(ce[:chain_tokens].sum())
            kept_count += chain_tokens
            answer_total += float(ce[chain_tokens:].sum())
            answer_count += len(ce) - chain_tokens
        expected = (weight * kept_total + answer_total) / (weight * kept_count + answer_count)
        assert float(loss.detach()) == pytest.approx(expected, rel=1e-4)
        assert metrics["answer_loss"] == pytest.approx(answer_total / answer_count, rel=1e-4)


def test_with_chain_weight_zero_the_kept_chain_labels_give_no_gradient(base):
    """Changing a kept chain token's label leaves the loss unchanged at weight 0 and changes it at 1."""
    example = EXAMPLES[0]
    for weight, moves in ((0.0, False), (1.0, True)):
        method = make(base, smoothing_lambda=None, chain_weight=weight)
        method.model.eval()
        original = method.encode

        def flipped(examples, removals):  # the first kept chain label swapped for another token
            batch, positions, answer_mask, chains = original(examples, removals)
            first = int((batch.labels[0] != -100).nonzero()[0])
            batch.labels[0, first] = (batch.labels[0, first] + 1) % len(method.tokenizer)
            return batch, positions, answer_mask, chains

        plain, _ = method.loss([example], step=0)
        method.encode = flipped
        changed, _ = method.loss([example], step=0)
        assert (float(changed.detach()) != pytest.approx(float(plain.detach()), rel=1e-6)) is moves


def test_tiny_icot_run_loss_falls_while_tokens_are_removed(base, tmp_path):
    method = make(base, tokens_per_removal=2, steps_per_removal=10)
    config = TrainConfig(steps=30, batch_size=16, lr=3e-3, warmup_steps=0, save_every=0, log_with="none")
    history = Trainer(method, EXAMPLES, config, tmp_path, run={"method": "icot"}).fit()
    assert [h["removed"] for h in history[::10]] == [0.0, 2.0, 4.0]
    first, last = history[0]["loss"], history[-1]["loss"]
    assert last < 0.6 * first, (first, last)
    assert method.step_tokens.expected(None) == 6  # every parity-6 chain is 6 tokens


def test_an_icot_checkpoint_saved_mid_course_answers_where_its_schedule_stood(tmp_path, base):
    """6 steps at 2 tokens a removal every 4 steps end with 2 of the 6 chain tokens removed: the loaded
    checkpoint answers after those 2 (as the run itself did), not after the whole chain."""
    run = make_run({"method": "icot", "task": "parity", "task_options": {"bits": 6}, "model": "tiny-5m", "steps": 6,
                    "batch_size": 8, "lr": 3e-3, "warmup_steps": 0, "save_every": 6, "eval_size": 0,
                    "log_with": "none", "mixed_precision": "no", "max_new_tokens": 16, "keep_position": True,
                    "tokens_per_removal": 2, "steps_per_removal": 4})
    trained = build_method(run, texts_of(EXAMPLES))
    Trainer(trained, EXAMPLES, run.train, tmp_path, run.describe("test")).fit()
    folder = checkpoint.find(tmp_path / "checkpoint")
    assert set(checkpoint.read_extras(folder)) == {"step_tokens.count", "step_tokens.by_step"}
    loaded = load_method(folder)
    assert loaded.step_tokens.count.tolist() == trained.step_tokens.count.tolist()
    assert loaded.step_tokens.expected(None) == 6
    assert loaded.answer_offset() == trained.answer_offset() == 2
    assert [p.text for p in loaded.answer(EXAMPLES[:4])] == [p.text for p in trained.answer(EXAMPLES[:4])]
    # checkpoints written by an earlier version hold the counts unprefixed, and the removal count: that is dropped,
    # the step gives it
    saved = {key.removeprefix("step_tokens."): value for key, value in checkpoint.read_extras(folder).items()}
    older = make(base, keep_position=True)
    older.load_extra_state({**saved, "removed": torch.tensor(5)})
    assert older.step_tokens.count.tolist() == trained.step_tokens.count.tolist()
    assert older.removed is None and older.answer_offset() == 6


def test_column_sums_match_a_hand_computation():
    task = tasks.get("multiplication", digits=4)
    example = task.example(2365, 4347)  # least significant first: 5 6 3 2 * 7 4 3 4
    # c0 = 5*7; c1 = 5*4 + 6*7 + 3; c2 = 5*3 + 6*4 + 3*7 + 6; c3 = 5*4 + 6*3 + 3*4 + 2*7 + 6; c4 = 6*4 + 3*3 + 2*4 + 7
    assert task.column_sums(example) == [35, 65, 66, 70, 48, 22, 10, 1]
    assert " ".join(str(c % 10) for c in task.column_sums(example)) == example.answer


MULTIPLICATION = tasks.get("multiplication", digits=2)
PRODUCTS = MULTIPLICATION.generate(8, seed=0)


def running_sum_method(weight):
    model, tokenizer = load_backbone("tiny-5m", texts=texts_of(PRODUCTS), seed=0)  # 5 layers: the middle is the 3rd
    config = methods.get("icot").Config(running_sum_weight=weight, tokens_per_removal=3, steps_per_removal=10,
                                        smoothing_lambda=None)
    return methods.get("icot")(config, model, tokenizer, MULTIPLICATION)


def test_running_sum_loss_regresses_each_digits_column_sum_where_the_digit_is_predicted():
    """The auxiliary loss against a hand computation: the head on the 3rd layer's output at the token before each
    answer digit, against that digit's column sum / 100; added with its weight to the plain icot loss."""
    method = running_sum_method(0.5)
    method.model.eval()
    loss, metrics = method.loss(PRODUCTS, step=10)  # 3 chain tokens removed
    plain = methods.get("icot")(dataclasses.replace(method.config, running_sum_weight=0.0), method.model,
                                method.tokenizer, MULTIPLICATION)
    errors = []
    with torch.no_grad():
        plain_loss, _ = plain.loss(PRODUCTS, step=10)
        for example in PRODUCTS:
            batch, positions, _, _ = method.encode([example], [3])
            ids = batch.input_ids[0].tolist()
            middle = method.model(input_ids=batch.input_ids, position_ids=positions,
                                  output_hidden_states=True).hidden_states[3][0]
            digits = example.answer.split()
            for k, column_sum in enumerate(MULTIPLICATION.column_sums(example)):
                before = len(ids) - 1 - len(digits) + k - 1  # the sequence ends with the digits, then EOS
                assert method.tokenizer.decode([ids[before + 1]]).strip() == digits[k]
                errors.append(float((method.running_sum_head(middle[before]) - column_sum / 100) ** 2))
    expected = sum(errors) / len(errors)
    assert metrics["running_sum_loss"] == pytest.approx(expected, rel=1e-4)
    assert float(loss.detach()) == pytest.approx(float(plain_loss) + 0.5 * expected, rel=1e-4)


def test_running_sum_gradient_reaches_the_head_and_the_layers_up_to_the_middle_only():
    method = running_sum_method(1.0)
    batch, positions, answer_mask, _ = method.encode(PRODUCTS, [0] * len(PRODUCTS))
    output = method.model(input_ids=batch.input_ids, attention_mask=batch.attention_mask, position_ids=positions,
                          output_hidden_states=True)
    method.running_sum_loss(PRODUCTS, batch.input_ids, answer_mask, output.hidden_states).backward()
    assert float(method.running_sum_head.weight.grad.abs().sum()) > 0
    layers = method.model.model.layers
    reached = [any(p.grad is not None and float(p.grad.abs().sum()) > 0 for p in layer.parameters())
               for layer in layers]
    assert reached == [True, True, True, False, False]
    assert any(p is method.running_sum_head.weight for p in method.trainable_parameters())


def test_running_sum_head_is_saved_and_loaded_and_needs_a_task_with_column_sums(base):
    trained = running_sum_method(1.0)
    torch.nn.init.normal_(trained.running_sum_head.weight)
    fresh = running_sum_method(1.0)
    fresh.load_extra_state(trained.extra_state())
    assert torch.equal(fresh.running_sum_head.weight, trained.running_sum_head.weight)
    with pytest.raises(ValueError, match="running_sum_weight"):
        running_sum_method(0.0).load_extra_state(trained.extra_state())
    # a plain icot checkpoint starts a run that adds the head: the chain counts load, the head stays as it was
    plain = running_sum_method(0.0)
    plain.step_tokens.count += 1
    fresh.load_extra_state(plain.extra_state())
    assert fresh.step_tokens.count.tolist() == plain.step_tokens.count.tolist()
    assert torch.equal(fresh.running_sum_head.weight, trained.running_sum_head.weight)
    with pytest.raises(ConfigError, match="multiplication"):
        make(base, running_sum_weight=1.0)  # parity has no column sums


def test_config_rejects_bad_values():
    for bad in (dict(tokens_per_removal=0), dict(steps_per_removal=0), dict(smoothing_lambda=-1.0),
                dict(first_removed=-1), dict(chain_weight=-0.5), dict(running_sum_weight=-1.0),
                dict(decoding="self-consistency")):
        with pytest.raises(ConfigError, match=next(iter(bad))):
            methods.get("icot").Config(**bad)

"""GRPO: the advantages and the objective against hand computations, the on-policy ratio and the REINFORCE
gradient on a real rollout, zero-spread groups, the KL to the reference, reused rollouts, pass@k at
evaluation, and short runs through the trainer that log the diagnostics."""

import dataclasses
import json

import pytest
import torch

from latent_reasoning import backbones, tasks
from latent_reasoning.config import ConfigError
from latent_reasoning.evaluate import evaluate
from latent_reasoning.methods import grpo as grpo_module
from latent_reasoning.methods.base import (
    distinct_per_group,
    filter_logits,
    shared_prompt_log_softmax,
    tail_log_softmax,
    zero_spread,
)
from latent_reasoning.methods.grpo import (
    GRPO,
    GRPOConfig,
    aggregate,
    clipped_surrogate,
    group_advantages,
    kl_penalty,
    states_answer,
)
from latent_reasoning.run import build_method, make_run, texts_of
from latent_reasoning.trainer import Trainer


@pytest.fixture(scope="module")
def task():
    return tasks.get("multiplication", digits=2)


@pytest.fixture(scope="module")
def examples(task):
    return task.generate(100, seed=0)



def tiny(examples, seed=0):
    return backbones.load_backbone("tiny-5m", texts=texts_of(examples), seed=seed)


def grpo(model, tokenizer, task, **options):
    values = dict(rollouts=4, completion_tokens=8, max_new_tokens=8)
    values.update(options)
    return GRPO(GRPOConfig(**values), model, tokenizer, task)


def gradients(loss, model):
    params = [p for p in model.parameters() if p.requires_grad]
    return torch.autograd.grad(loss, params, allow_unused=True, materialize_grads=True)


# ---- configuration -------------------------------------------------------------------------------------


@pytest.mark.parametrize("values, named", [
    ({"rollouts": 1}, "rollouts"),
    ({"top_p": 0}, "top_p"),
    ({"top_p": 1.5}, "top_p"),
    ({"clip": 0}, "clip"),
    ({"updates_per_rollout": 0}, "updates_per_rollout"),
    ({"aggregation": "batch"}, "aggregation"),
    ({"beta": -1}, "beta"),
])
def test_config_errors_name_the_key(values, named):
    with pytest.raises(ConfigError, match=named):
        make_run({"method": "grpo", "task": "multiplication", "model": "tiny-5m", **values})


def test_config_defaults_follow_the_lepo_configs():
    config = make_run({"method": "grpo", "task": "multiplication", "model": "tiny-5m"}).method_config
    assert (config.rollouts, config.rollout_temperature, config.top_k, config.top_p) == (8, 1.0, 30, 0.95)
    assert (config.advantage_eps, config.beta, config.format_weight, config.updates_per_rollout) == (1e-4, 0.0, 0.0, 1)


# ---- the objective by hand -----------------------------------------------------------------------------


def test_advantages_are_group_normalised_rewards():
    rewards = torch.tensor([[1.0, 0.0, 0.0, 1.0], [1.0, 1.0, 1.0, 1.0], [0.0, 0.0, 0.0, 1.5]])
    # group 1: mean 0.5, std sqrt(4 * 0.25 / 3); group 2: no spread; group 3: mean 0.375, std sqrt((3 * 0.140625 + 1.265625) / 3)
    std1, std3 = (1 / 3) ** 0.5, (1.6875 / 3) ** 0.5
    expected = torch.tensor([
        [0.5 / (std1 + 1e-4), -0.5 / (std1 + 1e-4), -0.5 / (std1 + 1e-4), 0.5 / (std1 + 1e-4)],
        [0.0, 0.0, 0.0, 0.0],
        [-0.375 / (std3 + 1e-4)] * 3 + [1.125 / (std3 + 1e-4)],
    ])
    torch.testing.assert_close(group_advantages(rewards, 1e-4), expected)
    assert zero_spread(rewards) == pytest.approx(1 / 3)
    assert distinct_per_group(["7", "7", None, "8", "1", "1", "1", "1"], 4) == 2.0  # (7, None, 8) and (1)


def test_clipped_surrogate_kl_and_aggregation_by_hand():
    logp = torch.tensor([[0.0, -1.0, -2.0], [-0.5, -0.5, 0.0]], requires_grad=True)
    old = torch.tensor([[-0.5, -1.0, -1.0], [-0.5, 0.0, 0.0]])
    advantages = torch.tensor([2.0, -1.0])
    per_token = clipped_surrogate(logp, old, advantages, clip=0.2)
    e = torch.e
    # row 0, A = 2: ratios e^0.5 (clipped to 1.2), 1, e^-1 (min takes the unclipped); row 1, A = -1: 1, e^-0.5 (clipped to 0.8), 1
    expected = torch.tensor([[-2 * 1.2, -2.0, -2 * e ** -1], [1.0, 0.8, 1.0]])
    torch.testing.assert_close(per_token, expected)
    mask = torch.tensor([[True, True, True], [True, True, False]])
    torch.testing.assert_close(aggregate(per_token, mask, "sequence"), (expected[0].sum() / 3 + 1.8 / 2) / 2)
    torch.testing.assert_close(aggregate(per_token, mask, "token"), (expected[0].sum() + 1.8) / 5)
    aggregate(per_token, mask, "sequence").backward()
    # clipped tokens get no gradient; the others -A rho / (|o| G)
    torch.testing.assert_close(logp.grad, torch.tensor([[0.0, -2 / 6, -2 * e ** -1 / 6], [1 / 4, 0.0, 0.0]]))

    reference = torch.tensor([[0.0, -2.0, -1.0], [-0.5, -0.5, 0.0]])
    log_ratio = reference - logp.detach()  # [[0, -1, 1], [0, 0, 0]]
    torch.testing.assert_close(kl_penalty(logp.detach(), reference), log_ratio.exp() - log_ratio - 1)
    assert kl_penalty(logp.detach(), reference)[0, 1] == pytest.approx(e ** -1)  # e^-1 + 1 - 1
    assert (kl_penalty(logp.detach(), reference)[1] == 0).all()


def test_groups_without_spread_get_no_gradient():
    rewards = torch.tensor([[1.0, 0.0, 1.0], [0.0, 0.0, 0.0]])
    logp = torch.randn(6, 5, generator=torch.Generator().manual_seed(0)).requires_grad_()
    advantages = group_advantages(rewards, 1e-4).flatten()
    aggregate(clipped_surrogate(logp, logp.detach(), advantages, 0.2), torch.ones(6, 5, dtype=torch.bool),
              "token").backward()
    assert (logp.grad[3:] == 0).all() and (logp.grad[:3].abs() > 0).all()


def test_the_format_reward_and_the_filters():
    assert states_answer("2 * 3 = 6\n#### 6") and not states_answer("#### ") and not states_answer("6")
    logits = torch.tensor([[3.0, 2.0, 1.0, 0.0, -1.0]])
    assert torch.isinf(filter_logits(logits, top_k=2)).tolist() == [[False, False, True, True, True]]
    probs = logits.softmax(-1)[0]  # 0.64, 0.24, 0.09, ...: 0.64 < 0.8 <= 0.88
    assert torch.isinf(filter_logits(logits, top_p=0.8)).tolist() == [[False, False, True, True, True]]
    assert torch.isinf(filter_logits(logits, top_p=float(probs[0]) - 1e-3)).sum() == 4
    assert torch.equal(filter_logits(logits), logits)


# ---- a real rollout ------------------------------------------------------------------------------------


@pytest.mark.parametrize("aggregation", ["sequence", "token"])
def test_on_policy_the_ratio_is_one_and_the_gradient_is_reinforce(task, examples, aggregation, graded_by):
    model, tokenizer = tiny(examples, seed=1)
    method = grpo(model, tokenizer, graded_by(task, lambda text: "1" in text), aggregation=aggregation)
    torch.manual_seed(0)
    loss, metrics = method.loss(examples[:3], 0, generator=torch.Generator().manual_seed(0))
    rollout = method._rollouts[0]
    assert metrics["zero_spread"] < 1 and metrics["clipped"] == 0.0
    mask = rollout.completion_mask
    # the stored pi_old is the sampling policy: its log-probs are those the sampler drew with (up to rounding)
    torch.testing.assert_close(rollout.old["tokens"][mask], rollout.samples.logprobs[mask], atol=1e-4, rtol=1e-4)

    # REINFORCE by hand: each completion alone (no padding), -A_i log pi(o_i,t), averaged as `aggregation` says
    prompts = [tokenizer(f"{e.question}\n", add_special_tokens=False)["input_ids"] for e in examples[:3]]
    terms, counts = [], []
    for row in range(12):
        prompt = prompts[row // 4]
        completion = rollout.samples.ids[row, : rollout.samples.lengths[row]]
        ids = torch.tensor(prompt + completion.tolist()).unsqueeze(0)
        log_probs = torch.log_softmax(model(input_ids=ids).logits[0, len(prompt) - 1 : -1].float(), -1)
        logp = log_probs.gather(1, completion.unsqueeze(1)).squeeze(1)
        terms.append(-(rollout.advantages[row] * logp).sum())
        counts.append(len(completion))
    if aggregation == "sequence":
        by_hand = sum(term / count for term, count in zip(terms, counts)) / 12
    else:
        by_hand = sum(terms) / sum(counts)
    # on policy every ratio is 1, so the loss is -agg(A) while its gradient is REINFORCE's
    torch.testing.assert_close(loss, aggregate(-rollout.advantages.unsqueeze(1).expand_as(mask), mask, aggregation))
    expected = gradients(by_hand, model)
    for got, want in zip(gradients(loss, model), expected):
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-3)
    assert max(float(g.abs().max()) for g in expected) > 1e-4


def test_no_spread_no_gradient_on_a_real_rollout(task, examples, graded_by):
    model, tokenizer = tiny(examples)
    method = grpo(model, tokenizer, graded_by(task, lambda text: True))
    loss, metrics = method.loss(examples[:2], 0, generator=torch.Generator().manual_seed(0))
    assert metrics["reward"] == 1.0 and metrics["zero_spread"] == 1.0
    assert all(float(g.abs().max()) == 0.0 for g in gradients(loss, model))


def test_the_kl_term_vanishes_at_the_reference_and_grows_after_an_update(task, examples, graded_by):
    model, tokenizer = tiny(examples, seed=2)
    stub = graded_by(task, lambda text: "1" in text)
    plain = grpo(model, tokenizer, stub)
    penalised = grpo(model, tokenizer, stub, beta=0.5, updates_per_rollout=2)
    loss, _ = plain.loss(examples[:2], 0, generator=torch.Generator().manual_seed(3))
    kl_loss, metrics = penalised.loss(examples[:2], 0, generator=torch.Generator().manual_seed(3))
    assert metrics["kl"] == 0.0  # the frozen copy is the policy itself at the first step
    torch.testing.assert_close(kl_loss, loss, rtol=0, atol=0)
    for got, expected in zip(gradients(kl_loss, model), gradients(loss, model)):
        torch.testing.assert_close(got, expected, rtol=0, atol=1e-7)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    optimizer.zero_grad()
    penalised.loss(examples[:2], 0, generator=torch.Generator().manual_seed(3))[0].backward()
    optimizer.step()
    _, after = penalised.loss(examples[:2], 1)  # the same rollout, a moved policy
    assert after["kl"] > 1e-6


def test_a_rollout_is_reused_for_its_updates_against_the_policy_that_sampled_it(task, examples, graded_by):
    model, tokenizer = tiny(examples, seed=3)
    method = grpo(model, tokenizer, graded_by(task, lambda text: "1" in text), updates_per_rollout=2, clip=0.05)
    optimizer = torch.optim.SGD(model.parameters(), lr=1.0)
    seen = []
    for step in range(3):
        optimizer.zero_grad()
        loss, metrics = method.loss(examples[2 * step : 2 * step + 2], step)
        loss.backward()
        optimizer.step()
        seen.append((method._rollouts[0], dict(method._rollouts[0].old), metrics))
    (first, old, before), (second, old_again, reused), (third, _, fresh) = seen
    assert second is first and third is not first  # steps 0 and 1 share a rollout; step 2 samples anew
    assert torch.equal(old_again["tokens"], old["tokens"])  # pi_old stays the sampling policy
    assert before["clipped"] == 0.0 and reused["clipped"] > 0.0 and fresh["clipped"] == 0.0


# ---- the teacher-forced pass: each prompt once, its completions over its cache ----------------------------


def one_pass(model, prompt_ids, prompt_mask, completion, completion_mask):
    """The reference: one forward over [prompt repeated k times | completion] (`tail_log_softmax`)."""
    k = completion.shape[0] // prompt_ids.shape[0]
    prompt = prompt_ids if completion.dim() == 2 else model.get_input_embeddings()(prompt_ids)
    mask = torch.cat([prompt_mask.long().repeat_interleave(k, 0), completion_mask.long()], dim=1)
    return tail_log_softmax(model, torch.cat([prompt.repeat_interleave(k, 0), completion], dim=1), mask,
                            completion.shape[1])


def prompts_and_completions(model, tokenizer, prompt_lengths, completion_lengths, width, seed=0):
    """Random left-padded prompts [B, P] (mask [B, P]) and right-padded completions [B*k, width] (mask [B*k, width])."""
    generator = torch.Generator().manual_seed(seed)
    vocab, pad = model.get_input_embeddings().weight.shape[0], tokenizer.pad_token_id
    longest = max(prompt_lengths)
    prompt_ids = torch.full((len(prompt_lengths), longest), pad)
    prompt_mask = torch.zeros(len(prompt_lengths), longest, dtype=torch.long)
    for row, length in enumerate(prompt_lengths):
        prompt_ids[row, longest - length :] = torch.randint(vocab, (length,), generator=generator)
        prompt_mask[row, longest - length :] = 1
    lengths = torch.tensor(completion_lengths)
    completion_mask = torch.arange(width).unsqueeze(0) < lengths.unsqueeze(1)
    completion = torch.randint(vocab, (len(lengths), width), generator=generator).masked_fill(~completion_mask, pad)
    return prompt_ids, prompt_mask, completion, completion_mask


@pytest.mark.parametrize("preset", ["tiny-5m", "tiny-gpt2"])
@pytest.mark.parametrize("given", ["ids", "embeddings"])
def test_the_shared_prompt_pass_equals_the_one_pass_and_its_gradients(examples, preset, given):
    """Prompts of 7, 1 and 5 tokens, 3 completions each of 1 to 6 tokens; as embeddings, the first two
    positions hold free vectors (lepo's soft tokens). Every position's log-softmax and the gradient of a
    scalar of them match the one pass (which runs each prompt 3 times)."""
    model, tokenizer = backbones.load_backbone(preset, texts=texts_of(examples), seed=0)
    prompt_ids, prompt_mask, ids, completion_mask = prompts_and_completions(
        model, tokenizer, [7, 1, 5], [6, 1, 3, 2, 6, 5, 4, 1, 6], 6)
    soft = torch.randn(9, 2, model.config.hidden_size, generator=torch.Generator().manual_seed(1))

    def completion():  # built anew for each pass, so that each has its own graph
        if given == "ids":
            return ids
        return torch.cat([soft, model.get_input_embeddings()(ids[:, 2:])], dim=1)

    calls = []
    model.register_forward_hook(lambda *_: calls.append(1))
    shared = shared_prompt_log_softmax(model, prompt_ids, prompt_mask, completion(), completion_mask)
    assert len(calls) == 2  # the prompts once, then the completions: the shared path, not the fallback
    one = one_pass(model, prompt_ids, prompt_mask, completion(), completion_mask)
    assert shared.shape == one.shape == (9, 6, model.get_input_embeddings().weight.shape[0])
    torch.testing.assert_close(shared, one, atol=1e-5, rtol=1e-5)

    weights = torch.randn(one.shape, generator=torch.Generator().manual_seed(2)) * completion_mask.unsqueeze(2)
    expected = gradients((one * weights).sum(), model)
    for got, want in zip(gradients((shared * weights).sum(), model), expected):  # fp32 rounding, to each tensor's scale
        torch.testing.assert_close(got, want, atol=1e-5 * float(want.abs().max()), rtol=1e-4)
    assert max(float(g.abs().max()) for g in expected) > 1e-3


def test_under_gradient_checkpointing_the_shared_prompt_pass_falls_back_to_the_one_pass(examples):
    """Training with gradient checkpointing, transformers drops the cache: the function takes the one pass."""
    model, tokenizer = tiny(examples)
    model.activation_checkpointing_enable()
    model.train()
    inputs = prompts_and_completions(model, tokenizer, [4, 2], [3, 1, 2, 3], 3)
    calls = []
    model.register_forward_hook(lambda *_: calls.append(1))
    shared = shared_prompt_log_softmax(model, *inputs)
    assert len(calls) == 1
    torch.testing.assert_close(shared, one_pass(model, *inputs), rtol=0, atol=0)


@pytest.mark.parametrize("aggregation", ["sequence", "token"])
def test_the_loss_and_its_gradient_are_those_of_the_one_pass(task, examples, aggregation, graded_by, monkeypatch):
    """grpo's loss (with the reference's KL) through the shared prompt pass and through the one pass, on the same
    rollout of prompts of different lengths, a policy moved from its reference."""
    model, tokenizer = tiny(examples, seed=9)
    stub = graded_by(task, lambda text: "1" in text)
    asked = [examples[0], dataclasses.replace(examples[1], question=examples[1].question * 2), examples[2]]
    shared = grpo(model, tokenizer, stub, beta=0.3, aggregation=aggregation)
    with shared.reference():  # make the frozen copy now, then move the policy away from it
        pass
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(0.02 * torch.randn_like(parameter))
    loss, metrics = shared.loss(asked, 0, generator=torch.Generator().manual_seed(5))
    rollout = shared._rollouts[0]
    assert len(set(rollout.prompt_mask.sum(1).tolist())) > 1 and metrics["kl"] > 0 and metrics["zero_spread"] < 1

    monkeypatch.setattr(grpo_module, "shared_prompt_log_softmax", one_pass)
    reference = grpo(model, tokenizer, stub, beta=0.3, aggregation=aggregation)
    reference._reference_model = shared._reference_model
    expected, expected_metrics = reference.loss(asked, 0, generator=torch.Generator().manual_seed(5))
    assert torch.equal(reference._rollouts[0].samples.ids, rollout.samples.ids)
    torch.testing.assert_close(rollout.old["reference"], reference._rollouts[0].old["reference"], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(loss, expected, atol=1e-6, rtol=1e-5)
    assert metrics["kl"] == pytest.approx(expected_metrics["kl"], rel=1e-4, abs=1e-7)
    for got, want in zip(gradients(loss, model), gradients(expected, model)):
        torch.testing.assert_close(got, want, atol=1e-6, rtol=1e-4)


# ---- answering and evaluation ----------------------------------------------------------------------------


def test_answers_are_greedy_or_voted_and_the_evaluator_reports_pass_at_k(tmp_path, task, examples, graded_by):
    model, tokenizer = tiny(examples, seed=4)
    stub = graded_by(task, lambda text: "1" in text)
    greedy = grpo(model, tokenizer, stub)
    first = greedy.answer(examples[:3])
    assert [p.text for p in first] == [p.text for p in greedy.answer(examples[:3])]
    assert all(p.samples is None and 1 <= p.forward_passes == p.generated_tokens <= 8 for p in first)
    assert "pass_at_k" not in evaluate(greedy, examples[:3])

    voted = grpo(model, tokenizer, stub, decoding="self-consistency", samples=4, temperature=1.0)
    torch.manual_seed(0)
    summary = evaluate(voted, examples[:6], out=tmp_path)
    rows = [json.loads(line) for line in (tmp_path / "predictions.jsonl").read_text().splitlines()]
    graded = [row["samples_correct"] for row in rows]
    assert all(len(g) == 4 for g in graded) and summary["pass_k"] == 4
    assert summary["pass_at_1"] == pytest.approx(sum(map(sum, graded)) / 24)
    assert summary["pass_at_k"] == pytest.approx(sum(map(any, graded)) / 6)
    assert 0 < summary["pass_at_1"] < summary["pass_at_k"]


# ---- training ----------------------------------------------------------------------------------------------


def test_a_short_run_raises_the_reward_and_logs_the_diagnostics(tmp_path, examples, graded_by):
    """A learnable stand-in reward (the completion holds a '7') through the real trainer; the last step scores
    held-out questions by self-consistency, so the evaluation's pass@k is logged too."""
    run = make_run({"method": "grpo", "task": "multiplication", "task_options": {"digits": 2}, "model": "tiny-5m",
                    "steps": 12, "batch_size": 4, "lr": 3e-3, "warmup_steps": 0, "save_every": 0, "eval_size": 4,
                    "log_with": "none", "mixed_precision": "no", "rollouts": 4, "completion_tokens": 6,
                    "max_new_tokens": 6, "decoding": "self-consistency", "samples": 2})
    method = build_method(run, texts_of(examples))
    method.task = graded_by(method.task, lambda text: "7" in text)
    trainer = Trainer(method, examples, run.train, tmp_path, run.describe("test"), evaluate=evaluate)
    history = trainer.fit(examples[:4])
    for record in history:
        assert 0.0 <= record["zero_spread"] <= 1.0 and 1.0 <= record["distinct_answers"] <= 4.0
        assert 0.0 <= record["reward"] <= 1.0 and record["clipped"] == 0.0 and record["sampled_tokens"] > 0
    rewards = [record["reward"] for record in history]
    assert sum(rewards[-4:]) / 4 > sum(rewards[:4]) / 4 + 0.1, rewards
    assert 0.0 <= history[-1]["eval_pass_at_1"] <= history[-1]["eval_pass_at_k"] <= 1.0

"""GRPO: the advantages and the objective against hand computations, the on-policy ratio and the REINFORCE
gradient on a real rollout, zero-spread groups, the KL to the reference, reused rollouts, pass@k at
evaluation, and short runs through the trainer that log the diagnostics."""

import json

import pytest
import torch

from latent_reasoning import backbones, tasks
from latent_reasoning.config import ConfigError
from latent_reasoning.evaluate import evaluate
from latent_reasoning.methods.base import distinct_per_group, filter_logits, zero_spread
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

"""LEPO: the soft-token rollout (deterministic without noise, greedy decoding as tau -> 0, the visible
token and the stored label), both latent estimators against hand computations, gradients through the latent
and the discrete terms, lepo without soft steps = grpo, answering, and short runs through the trainer."""

import dataclasses
import math

import pytest
import torch

from latent_reasoning import backbones, tasks
from latent_reasoning.config import ConfigError
from latent_reasoning.latent import gumbel_noise, gumbel_noise_log_density, soft_token
from latent_reasoning.methods import grpo as grpo_module
from latent_reasoning.methods.base import filter_logits, sample, tail_log_softmax
from latent_reasoning.methods.grpo import GRPO, GRPOConfig, aggregate, token_values
from latent_reasoning.methods.lepo import LEPO, LEPOConfig
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


def lepo(model, tokenizer, task, **options):
    values = dict(rollouts=4, completion_tokens=8, max_new_tokens=8, latent_steps=3)
    values.update(options)
    return LEPO(LEPOConfig(**values), model, tokenizer, task)


def seeded(seed):
    return torch.Generator().manual_seed(seed)


def gradients(loss, model):
    params = [p for p in model.parameters() if p.requires_grad]
    return torch.autograd.grad(loss, params, retain_graph=True, allow_unused=True, materialize_grads=True)


def alone(model, tokenizer, example, rollout, row):
    """log pi at each completion position of `row`, from the row alone (no padding): the prompt's token
    embeddings, the stored soft tokens, then the sampled tokens' embeddings; [length, V]."""
    embedding = model.get_input_embeddings()
    prompt = tokenizer(f"{example.question}\n", add_special_tokens=False)["input_ids"]
    samples = rollout.samples
    length, soft = int(samples.lengths[row]), int(samples.soft_mask[row].sum())
    pieces = [embedding(torch.tensor(prompt)), samples.soft_embeds[row, :soft],
              embedding(samples.ids[row, soft:length])]
    logits = model(inputs_embeds=torch.cat(pieces).unsqueeze(0)).logits[0, len(prompt) - 1 : len(prompt) - 1 + length]
    return torch.log_softmax(logits.float(), -1)


# ---- configuration -------------------------------------------------------------------------------------


@pytest.mark.parametrize("values, named", [
    ({"top_k": 0}, "top_k"),
    ({"estimator": "gumbel_density", "noise": "none"}, "estimator"),
    ({"tau": 0}, "tau"),
    ({"noise": "gaussian"}, "noise"),
    ({"estimator": "reinforce"}, "estimator"),
    ({"rollouts": 1}, "rollouts"),
])
def test_config_errors_name_the_key(values, named):
    with pytest.raises(ConfigError, match=named):
        make_run({"method": "lepo", "task": "multiplication", "model": "tiny-5m", **values})


def test_config_defaults_follow_the_official_configs():
    config = make_run({"method": "lepo", "task": "multiplication", "model": "tiny-5m"}).method_config
    assert (config.latent_steps, config.tau, config.noise, config.estimator) == (32, 0.5, "gumbel", "soft_label")
    assert (config.rollouts, config.top_k, config.top_p, config.rollout_temperature) == (8, 30, 0.95, 1.0)


# ---- the rollout ---------------------------------------------------------------------------------------


def test_without_noise_the_soft_tokens_are_deterministic_and_with_gumbel_they_are_not(task, examples):
    model, tokenizer = tiny(examples, seed=1)
    deterministic = lepo(model, tokenizer, task, noise="none")
    first, second = (deterministic.rollout(examples[:2], seeded(seed)).samples for seed in (0, 1))
    assert torch.equal(first.soft_embeds, second.soft_embeds) and torch.equal(first.label_probs, second.label_probs)
    assert torch.equal(first.ids[:, :3], second.ids[:, :3])
    assert torch.equal(first.soft_embeds[:4], first.soft_embeds[:1].expand(4, -1, -1))  # one path per question
    assert not torch.equal(first.ids, second.ids)  # ... the tokens after the soft steps are still sampled

    noisy = lepo(model, tokenizer, task, noise="gumbel")
    first, second = (noisy.rollout(examples[:2], seeded(seed)).samples for seed in (0, 1))
    assert (first.soft_embeds - second.soft_embeds).abs().max() > 1e-3
    assert (first.soft_embeds[:4] - first.soft_embeds[:1]).abs().amax((1, 2))[1:].min() > 1e-3  # a group explores
    again = noisy.rollout(examples[:2], seeded(0)).samples
    assert torch.equal(first.soft_embeds, again.soft_embeds)  # the generator decides


def test_no_noise_and_tau_to_zero_is_greedy_decoding(task, examples):
    model, tokenizer = tiny(examples, seed=2)
    method = lepo(model, tokenizer, task, noise="none", tau=1e-6, latent_steps=6, completion_tokens=6, rollouts=2)
    rollout = method.rollout(examples[:3], seeded(0))
    greedy = sample(model, tokenizer, rollout.prompt_ids, rollout.prompt_mask, 1, 6, temperature=0.0)
    samples = rollout.samples
    assert torch.equal(samples.ids[::2], greedy.ids) and torch.equal(samples.lengths[::2], greedy.lengths)
    embedding = model.get_input_embeddings().weight
    soft = samples.soft_mask
    torch.testing.assert_close(samples.soft_embeds[soft], embedding[samples.ids[:, :6][soft]], rtol=0, atol=1e-6)
    assert (samples.label_probs[..., 0][soft] > 1 - 1e-6).all()


def test_the_visible_token_is_the_argmax_and_the_label_holds_the_whole_soft_token(task, examples):
    model, tokenizer = tiny(examples, seed=3)
    method = lepo(model, tokenizer, task, top_k=5, top_p=0.6, tau=0.7)
    samples = method.rollout(examples[:3], seeded(0)).samples
    soft = samples.soft_mask
    assert samples.label_ids.shape[-1] == 5 and soft.sum() > 6  # a visible EOS ends a row early
    assert torch.equal(samples.ids[:, :3][soft], samples.label_ids[..., 0][soft])  # argmax y (labels sorted)
    probs, scores = samples.label_probs[soft], samples.label_scores[soft]
    torch.testing.assert_close(probs.sum(-1), torch.ones(len(probs)))  # top_k keeps all of y's support ...
    outside = torch.isinf(scores)
    assert outside.any() and bool((probs[outside] == 0).all())  # ... and top-p cut some of the 5
    torch.testing.assert_close(probs, torch.softmax(scores / 0.7, -1))  # y = softmax(z / tau)
    embedding = model.get_input_embeddings().weight
    torch.testing.assert_close(samples.soft_embeds[soft], torch.einsum("nk,nkh->nh", probs, embedding[samples.label_ids[soft]]))


# ---- the objective ---------------------------------------------------------------------------------------


def test_the_soft_label_term_and_the_gradient_equal_a_hand_computation(task, examples, graded_by):
    model, tokenizer = tiny(examples, seed=4)
    method = lepo(model, tokenizer, graded_by(task, lambda text: "1" in text))
    loss, metrics = method.loss(examples[:3], 0, generator=seeded(0))
    rollout = method._rollouts[0]
    samples, advantages = rollout.samples, rollout.advantages
    assert metrics["zero_spread"] < 1 and 0 < metrics["latent_steps"] <= 3 and metrics["clipped"] == 0.0

    latent = method.latent_loss(rollout, method.log_softmax(model, rollout)[:, :3])
    by_hand = []
    for row in range(12):
        log_probs = alone(model, tokenizer, examples[row // 4], rollout, row)
        soft = int(samples.soft_mask[row].sum())
        terms = []
        for t in range(soft):  # -A sum_k y_k log pi(k)
            terms.append(-advantages[row] * sum(float(y) * log_probs[t, int(k)]
                                                for y, k in zip(samples.label_probs[row, t], samples.label_ids[row, t])))
        torch.testing.assert_close(latent[row, :soft], torch.stack(terms), atol=1e-5, rtol=1e-4)
        discrete = -advantages[row] * log_probs[soft:].gather(1, samples.ids[row, soft : len(log_probs)].unsqueeze(1))
        by_hand.append((sum(terms) + discrete.sum()) / len(log_probs))
    by_hand = sum(by_hand) / 12
    expected = gradients(by_hand, model)
    for got, want in zip(gradients(loss, model), expected):
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-3)
    assert max(float(g.abs().max()) for g in expected) > 1e-4


def test_gradients_reach_the_model_through_both_terms(task, examples, graded_by):
    model, tokenizer = tiny(examples, seed=5)
    for estimator in ("soft_label", "gumbel_density"):
        method = lepo(model, tokenizer, graded_by(task, lambda text: "1" in text), estimator=estimator)
        rollout = method.rollout(examples[:3], seeded(1))
        log_probs = method.log_softmax(model, rollout)
        per_token = method.policy_loss(rollout, log_probs, token_values(log_probs, rollout.samples.ids))
        mask = rollout.completion_mask
        soft = torch.zeros_like(mask)
        soft[:, :3] = rollout.samples.soft_mask
        for part in (mask & soft, mask & ~soft):
            assert part.any()
            largest = max(float(g.abs().max()) for g in gradients(aggregate(per_token, part, "token"), model))
            assert largest > 1e-4, (estimator, part.sum())


def test_the_gumbel_density_equals_a_hand_computation_for_one_soft_token():
    logits, temperature, tau = torch.tensor([[2.0, 1.0, 0.5, -1.0, -3.0]]), 0.8, 0.4
    scores = filter_logits(logits / temperature, top_k=3)
    _, y, z = soft_token(scores, torch.eye(5), tau, generator=seeded(7))
    g = gumbel_noise(logits, seeded(7))  # the noise soft_token drew
    kept = [0, 1, 2]
    assert torch.isinf(z[0, 3:]).all() and (y[0, 3:] == 0).all()
    total = math.log(sum(math.exp(float(logits[0, k]) / temperature) for k in kept))
    density = 0.0
    for k in kept:
        eps = float(z[0, k]) - (float(logits[0, k]) / temperature - total)  # z - log p~
        assert eps == pytest.approx(float(g[0, k]), abs=1e-5)  # the noise z implies is the noise drawn
        density += -eps - math.exp(-eps)
    assert float(gumbel_noise_log_density(z, logits / temperature)) == pytest.approx(density, abs=1e-5)
    top = y.topk(3).indices  # as stored: the label's ids, z there
    assert float(gumbel_noise_log_density(z.gather(1, top), (logits / temperature).gather(1, top))) == pytest.approx(density, abs=1e-5)


def test_the_gumbel_density_score_has_mean_zero():
    logits = torch.tensor([[1.0, 0.0, -0.5, -2.0]]).repeat(20000, 1).requires_grad_()
    _, _, z = soft_token(filter_logits(logits.detach(), top_k=3), torch.eye(4), 0.5, generator=seeded(3))
    gumbel_noise_log_density(z, logits).sum().backward()
    score = logits.grad.mean(0)  # E[d log q(z) / d logits] = 0 under the noise
    assert score.abs().max() < 0.03 and logits.grad[:, :3].abs().mean() > 0.3
    assert (logits.grad[:, 3] == 0).all()  # filtered out: no part in the density


def test_the_gumbel_density_estimator_on_a_rollout(task, examples, graded_by):
    """The stored density at one soft token equals the formula on an independent pass, and on policy the
    latent term is -A times a ratio of exactly 1."""
    model, tokenizer = tiny(examples, seed=6)
    method = lepo(model, tokenizer, graded_by(task, lambda text: "1" in text), estimator="gumbel_density",
                  rollout_temperature=0.9)
    loss, _ = method.loss(examples[:2], 0, generator=seeded(2))
    rollout = method._rollouts[0]
    samples = rollout.samples
    log_probs = alone(model, tokenizer, examples[0], rollout, 0)
    for t in range(3):
        ids, z = samples.label_ids[0, t], samples.label_scores[0, t]
        support = torch.isfinite(z)
        log_p = torch.log_softmax(log_probs[t, ids[support]] / 0.9, -1)
        eps = z[support] - log_p
        torch.testing.assert_close(rollout.old["density"][0, t], (-eps - torch.exp(-eps)).sum(), atol=1e-4, rtol=1e-5)
    latent = method.latent_loss(rollout, method.log_softmax(model, rollout)[:, :3])
    torch.testing.assert_close(latent, -rollout.advantages.unsqueeze(1).expand_as(latent), rtol=0, atol=0)


def one_pass(model, prompt_ids, prompt_mask, completion, completion_mask):
    """The reference teacher-forced pass: one forward over [prompt embeddings repeated k times | completion]."""
    k = completion.shape[0] // prompt_ids.shape[0]
    prompt = model.get_input_embeddings()(prompt_ids).repeat_interleave(k, 0)
    mask = torch.cat([prompt_mask.long().repeat_interleave(k, 0), completion_mask.long()], dim=1)
    return tail_log_softmax(model, torch.cat([prompt, completion], dim=1), mask, completion.shape[1])


@pytest.mark.parametrize("estimator", ["soft_label", "gumbel_density"])
def test_the_loss_and_its_gradient_are_those_of_the_one_pass(task, examples, estimator, graded_by, monkeypatch):
    """lepo's loss through the shared prompt pass (each prompt once, the completions' embeddings over its cache)
    and through the one pass over [prompt | completion] embeddings, on the same rollout, prompts of different
    lengths."""
    model, tokenizer = tiny(examples, seed=9)
    stub = graded_by(task, lambda text: "1" in text)
    asked = [examples[0], dataclasses.replace(examples[1], question=examples[1].question * 2)]
    shared = lepo(model, tokenizer, stub, estimator=estimator)
    loss, metrics = shared.loss(asked, 0, generator=seeded(6))
    rollout = shared._rollouts[0]
    assert len(set(rollout.prompt_mask.sum(1).tolist())) > 1 and metrics["latent_steps"] > 0 and metrics["zero_spread"] < 1

    monkeypatch.setattr(grpo_module, "shared_prompt_log_softmax", one_pass)
    reference = lepo(model, tokenizer, stub, estimator=estimator)
    expected, _ = reference.loss(asked, 0, generator=seeded(6))
    assert torch.equal(reference._rollouts[0].samples.ids, rollout.samples.ids)
    torch.testing.assert_close(loss, expected, atol=1e-6, rtol=1e-5)
    for got, want in zip(gradients(loss, model), gradients(expected, model)):
        torch.testing.assert_close(got, want, atol=1e-6, rtol=1e-4)


def test_without_soft_steps_lepo_is_grpo(task, examples, graded_by):
    model, tokenizer = tiny(examples, seed=7)
    stub = graded_by(task, lambda text: "1" in text)
    options = dict(rollouts=4, completion_tokens=8, max_new_tokens=8)
    plain = GRPO(GRPOConfig(**options), model, tokenizer, stub)
    latent = lepo(model, tokenizer, stub, latent_steps=0)
    loss, metrics = plain.loss(examples[:2], 0, generator=seeded(4))
    same, latent_metrics = latent.loss(examples[:2], 0, generator=seeded(4))
    assert latent_metrics["latent_steps"] == 0.0 and metrics["reward"] == latent_metrics["reward"]
    torch.testing.assert_close(same, loss, rtol=0, atol=0)
    for got, want in zip(gradients(same, model), gradients(loss, model)):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-7)


# ---- answering and training ------------------------------------------------------------------------------


def test_answers_think_softly_then_decode(task, examples):
    model, tokenizer = tiny(examples, seed=8)
    method = lepo(model, tokenizer, task, latent_steps=4)
    first = method.answer(examples[:3])
    assert [p.text for p in first] == [p.text for p in method.answer(examples[:3])]  # greedy: no noise
    assert all(p.forward_passes == p.generated_tokens <= 8 for p in first)
    plain = GRPO(GRPOConfig(max_new_tokens=8), model, tokenizer, task).answer(examples[:3])
    assert [p.text for p in lepo(model, tokenizer, task, eval_latent_steps=0).answer(examples[:3])] == [p.text for p in plain]
    voted = lepo(model, tokenizer, task, decoding="self-consistency", samples=3)
    assert all(len(p.samples) == 3 for p in voted.answer(examples[:2]))


@pytest.mark.parametrize("estimator", ["soft_label", "gumbel_density"])
def test_a_short_run_logs_the_diagnostics(tmp_path, examples, estimator, graded_by):
    run = make_run({"method": "lepo", "task": "multiplication", "task_options": {"digits": 2}, "model": "tiny-5m",
                    "steps": 6, "batch_size": 4, "lr": 3e-3, "warmup_steps": 0, "save_every": 0, "eval_size": 0,
                    "log_with": "none", "mixed_precision": "no", "rollouts": 4, "completion_tokens": 6,
                    "max_new_tokens": 6, "latent_steps": 3, "estimator": estimator})
    method = build_method(run, texts_of(examples))
    method.task = graded_by(method.task, lambda text: "7" in text)
    history = Trainer(method, examples, run.train, tmp_path, run.describe("test")).fit()
    for record in history:
        assert 0.0 < record["latent_steps"] <= 3.0 and 0.0 < record["latent_entropy"] < math.log(30)
        assert 0.0 <= record["zero_spread"] <= 1.0 and 1.0 <= record["distinct_answers"] <= 4.0
        assert 0.0 <= record["reward"] <= 1.0 and record["sampled_tokens"] > 0
    if estimator == "soft_label":  # the official estimator learns the stand-in reward within these steps
        rewards = [record["reward"] for record in history]
        assert sum(rewards[-2:]) / 2 > sum(rewards[:2]) / 2 + 0.2, rewards

"""LaTRO: the objective against a hand computation, its gradients, the rollout machinery against
independent references (per-copy prefill, text-level stop detection, teacher forcing), the reference
model, and a short training run on a tiny model."""

import copy
import dataclasses
from types import SimpleNamespace

import pytest
import torch
from safetensors.torch import load_file
from transformers import LlamaConfig

from latent_reasoning import backbones, tasks
from latent_reasoning.config import ConfigError
from latent_reasoning.methods.base import prompt_text
from latent_reasoning.methods.latro import (
    LaTRO,
    LaTROConfig,
    latro_objective,
    pack,
    sample,
    token_logprobs,
)
from latent_reasoning.run import build_method, make_run, texts_of
from latent_reasoning.trainer import Trainer


@pytest.fixture(scope="module")
def task():
    return tasks.get("multiplication", digits=2)


@pytest.fixture(scope="module")
def examples(task):
    return task.generate(100, seed=0)


def tiny(name, examples, seed=0):
    return backbones.load_backbone(name, texts=texts_of(examples), seed=seed)


def latro(model, tokenizer, task, **options):
    values = dict(rollouts=3, rationale_tokens=10, max_new_tokens=16)
    values.update(options)
    return LaTRO(LaTROConfig(**values), model, tokenizer, task)


# ---- configuration ---------------------------------------------------------------------------------


@pytest.mark.parametrize("values, named", [
    ({"rollouts": 1}, "rollouts"),
    ({"beta": -0.1}, "beta"),
    ({"answer_format": "{stop}"}, "answer_format"),
    ({"answer_format": "{stop} {gold}"}, "answer_format"),
    ({"stop": ""}, "stop"),
    ({"reward_norm": "max"}, "reward_norm"),
    ({"rollout_temperature": 0}, "rollout_temperature"),
])
def test_config_errors_name_the_key(values, named):
    with pytest.raises(ConfigError, match=named):
        make_run({"method": "latro", "task": "multiplication", "model": "tiny-5m", **values})


def test_config_defaults_follow_the_paper():
    values = {"method": "latro", "task": "gsm8k", "model": "tiny-5m", "unfinished_penalty": "none"}
    config = make_run(values).method_config
    assert (config.rollouts, config.rationale_tokens, config.beta, config.rollout_temperature) == (16, 500, 0.05, 1.0)
    assert config.answer_weight == 1.0 and config.stop == "####" and config.unfinished_penalty is None


# ---- the objective by hand -------------------------------------------------------------------------


@pytest.mark.parametrize("answer_weight", [0.5, 0.0])
def test_leave_one_out_advantages_and_loss_equal_a_hand_computation(answer_weight):
    answer = torch.tensor([[-1.0, -2.0, -4.0], [-3.0, -0.5, -6.0]], requires_grad=True)
    rationale = torch.tensor([[-5.0, -6.0, -7.0], [-2.0, -3.0, -4.0]], requires_grad=True)
    reference = torch.tensor([[-5.5, -6.0, -6.0], [-2.0, -2.0, -5.0]])
    finished = torch.tensor([[True, True, False], [True, True, True]])
    out = latro_objective(answer, rationale, reference, finished, beta=0.1, answer_weight=answer_weight,
                          unfinished_penalty=2.0)
    # R: the unfinished sample gets 2 x the batch mean (-16.5 / 6 = -2.75) -> -5.5
    # KL = rationale - reference = [[0.5, 0, -1], [0, -1, 1]];  r = R - 0.1 KL
    rewards = torch.tensor([[-1.05, -2.0, -5.4], [-3.0, -0.4, -6.1]])
    # A_k = r_k - mean of the other two, e.g. -1.05 - (-2 - 5.4) / 2 = 2.65
    advantages = torch.tensor([[2.65, 1.225, -3.875], [0.25, 4.15, -4.4]])
    torch.testing.assert_close(out.rewards, rewards)
    torch.testing.assert_close(out.advantages, advantages)
    torch.testing.assert_close(out.kl, torch.tensor([[0.5, 0.0, -1.0], [0.0, -1.0, 1.0]]))
    # policy: -(1/6) sum A * log pi(z|x) = -(6.525 + 4.65) / 6;  answer: -(1/6) sum log pi(y|x+z) = 2.75
    torch.testing.assert_close(out.policy_loss, torch.tensor(-11.175 / 6))
    torch.testing.assert_close(out.answer_loss, torch.tensor(2.75))
    torch.testing.assert_close(out.loss, torch.tensor(-11.175 / 6 + answer_weight * 2.75))
    out.loss.backward()
    # the rewards are constants: the answer log-probs get exactly -lambda / (B K), nothing through A
    torch.testing.assert_close(answer.grad, torch.full((2, 3), -answer_weight / 6), rtol=0, atol=0)
    torch.testing.assert_close(rationale.grad, -advantages / 6)


def test_without_beta_or_penalty_the_reward_is_the_answer_log_likelihood():
    answer = torch.tensor([[-1.0, -3.0]])
    out = latro_objective(answer, torch.tensor([[-2.0, -2.0]]), None, torch.tensor([[True, False]]),
                          beta=0.05, answer_weight=1.0, unfinished_penalty=None)
    torch.testing.assert_close(out.rewards, answer)
    torch.testing.assert_close(out.advantages, torch.tensor([[2.0, -2.0]]))


# ---- rollouts against independent references ----------------------------------------------------------


class Bigram(torch.nn.Module):
    """A stand-in LM whose next-token log-probs depend on the current token only: table[token]."""

    def __init__(self, table: torch.Tensor):
        super().__init__()
        self.table = torch.nn.Parameter(table)
        self.config = LlamaConfig(vocab_size=table.shape[0], hidden_size=8, num_hidden_layers=1,
                                  num_attention_heads=1, intermediate_size=8)

    def forward(self, input_ids, logits_to_keep=0, **ignored):
        logits = self.table[input_ids]
        return SimpleNamespace(logits=logits[:, -logits_to_keep:] if logits_to_keep else logits)


def test_rationales_stop_where_the_text_reaches_the_stop_string(task, examples):
    """After a newline the stand-in writes '####' (the stop), EOS, or (2/3) '5' and a newline again:
    every row is checked against a text-level reading of what it sampled."""
    _, tokenizer = tiny("tiny-5m", examples)
    vocab = tokenizer.get_vocab()
    hash_, five, newline, eos = vocab["#"], vocab["5"], vocab["\n"], tokenizer.eos_token_id
    table = torch.full((len(tokenizer), len(tokenizer)), -1e9)
    table[:, five] = 0.0  # from anything (the prompt's last token included): '5'
    table[five] = -1e9
    table[five, newline] = 0.0
    table[newline] = -1e9
    table[newline, [hash_, eos, five]] = torch.tensor([1.0, 1.0, 4.0]).log()
    table[hash_] = -1e9
    table[hash_, hash_] = 0.0
    model = Bigram(table)
    prompts = [prompt_text(e) for e in examples[:4]]
    inputs = tokenizer(prompts, return_tensors="pt", padding=True, padding_side="left")
    k, limit = 8, 10
    out = sample(model, tokenizer, inputs["input_ids"], inputs["attention_mask"], k, limit, temperature=1.0,
                 stop="####", stop_on_eos=False, generator=torch.Generator().manual_seed(3))
    outcomes = set()
    for row in range(len(prompts) * k):
        ids = out.ids[row, : out.lengths[row]].tolist()
        text = tokenizer.decode(ids)
        if "####" in tokenizer.decode(ids, skip_special_tokens=True):
            outcomes.add("stop")
            assert ids[-4:] == [hash_] * 4 and bool(out.finished[row])
            assert out.kept[row] == ids.index(hash_) == len(ids) - 4
        elif ids[-1] == eos:
            outcomes.add("eos")
            assert out.kept[row] == len(ids) - 1 and not out.finished[row]  # stop_on_eos=False
        else:
            outcomes.add("unfinished")
            assert len(ids) == limit and out.kept[row] == limit and not out.finished[row], text
        assert (out.ids[row, out.lengths[row] :] == tokenizer.pad_token_id).all()
    assert outcomes == {"stop", "eos", "unfinished"}  # the draw exercised every ending

    # [x, z, y]: each packed row reads prompt + kept rationale + "#### answer" + EOS, masks on exactly z and y
    method = latro(model, tokenizer, task, rollouts=k)
    assert set(method.seams(out)) == {""}  # '#' carries no text before the stop
    answers = [method.answer_ids(examples[row // k]) for row in range(len(prompts) * k)]
    packed = pack(inputs["input_ids"], inputs["attention_mask"], out, answers, k, tokenizer.pad_token_id)
    for row in range(len(prompts) * k):
        z = out.ids[row, : out.kept[row]].tolist()
        y = answers[row]
        assert packed.targets[row][packed.rationale_mask[row]].tolist() == z
        assert packed.targets[row][packed.answer_mask[row]].tolist() == y
        real = packed.input_ids[row][packed.attention_mask[row].bool()].tolist()
        assert tokenizer.decode(real, skip_special_tokens=True) == (
            prompts[row // k] + tokenizer.decode(z) + f"#### {examples[row // k].answer}")


def test_the_answer_continues_the_rationale_as_the_model_wrote_it():
    """Parity's chain ends '1 #### 0' ('▁1' '▁#' '#' '#' '#' '▁0'); the stand-in writes '▁1' then ' ####': y must begin
    with those sampled tokens, not with '#' (what "#### 0" tokenises to on its own, never written after a word)."""
    task = tasks.get("parity", bits=8)
    examples = task.generate(50, seed=0)
    _, tokenizer = backbones.load_backbone("tiny-1m", texts=["1 0 1 1 #### 1"])  # the CoT data's pieces
    vocab = tokenizer.get_vocab()
    one, space_hash, hash_ = vocab["▁1"], vocab["▁#"], vocab["#"]
    table = torch.full((len(tokenizer), len(tokenizer)), -1e9)
    table[:, one] = 0.0
    table[one] = -1e9
    table[one, [one, space_hash]] = 0.0
    table[space_hash] = -1e9
    table[space_hash, hash_] = 0.0
    table[hash_] = -1e9
    table[hash_, hash_] = 0.0
    method = latro(Bigram(table), tokenizer, task, rollouts=4, rationale_tokens=12)
    rollout = method.rollout(examples[:2], generator=torch.Generator().manual_seed(0))
    samples, packed = rollout.samples, rollout.packed
    assert samples.finished.all() and set(method.seams(samples)) == {" "}
    assert method.answer_ids(examples[0])[0] == hash_  # on its own: the seam token
    for row in range(8):
        kept, length = int(samples.kept[row]), int(samples.lengths[row])
        y = packed.targets[row][packed.answer_mask[row]].tolist()
        assert y[: length - kept] == samples.ids[row, kept:length].tolist() == [space_hash, hash_, hash_, hash_]
        z = samples.ids[row, :kept].tolist()
        written = tokenizer.decode(z) + f" #### {examples[row // 4].answer}"
        assert tokenizer.decode(z + y, skip_special_tokens=True) == written
        assert rollout.answer_lengths[row] == len(y)


def test_a_rationale_may_be_empty(task, examples):
    """A model that writes the stop string at once gives empty rationales: z = (), y right after x."""
    _, tokenizer = tiny("tiny-5m", examples)
    table = torch.full((len(tokenizer), len(tokenizer)), -1e9)
    table[:, tokenizer.get_vocab()["#"]] = 0.0
    method = latro(Bigram(table), tokenizer, task, rollouts=2, reward_norm="mean")
    rollout = method.rollout(examples[:3])
    assert rollout.samples.kept.tolist() == [0] * 6 and rollout.samples.finished.all()
    assert rollout.packed.rationale_width == 0
    loss, metrics = method.loss(examples[:3], 0)
    assert torch.isfinite(loss) and metrics["kl"] == 0.0 and metrics["rationale_tokens"] == 0.0
    # reward_norm=mean: the answer log-likelihood per token of y ("#### d d d d" + EOS: 9 tokens)
    summed = (token_logprobs(method.model, rollout.packed) * rollout.packed.answer_mask).sum(1)
    assert rollout.packed.answer_mask.sum(1).tolist() == [9] * 6
    torch.testing.assert_close(method.sequence_logprobs(rollout)[1].flatten(), summed / 9)


@pytest.mark.parametrize("name", ["tiny-5m", "tiny-gpt2"])
def test_shared_prompt_cache_samples_and_scores_like_separate_prompts(name, examples):
    model, tokenizer = tiny(name, examples, seed=1)
    prompts = [prompt_text(e) for e in (examples[0], examples[7], examples[3])]
    prompts[1] = "Question : " + prompts[1]  # different lengths: left padding in play
    inputs = tokenizer(prompts, return_tensors="pt", padding=True, padding_side="left")
    ids, mask = inputs["input_ids"], inputs["attention_mask"]
    assert len(set(mask.sum(1).tolist())) > 1
    runs = [sample(model, tokenizer, ids, mask, 4, 12, generator=torch.Generator().manual_seed(5), share_prompt=share)
            for share in (True, False)]
    shared, separate = runs
    assert torch.equal(shared.ids, separate.ids) and torch.equal(shared.lengths, separate.lengths)
    torch.testing.assert_close(shared.logprobs, separate.logprobs, atol=1e-4, rtol=1e-4)
    assert shared.forward_passes == separate.forward_passes and shared.ids.shape[1] > 1

    # teacher forcing the sampled rationales in one pass reproduces their sampling log-probs
    answers = [tokenizer("#### 1 2", add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]] * 12
    packed = pack(ids, mask, shared, answers, 4, tokenizer.pad_token_id)
    forced = token_logprobs(model, packed)
    width = packed.rationale_width
    keep = packed.rationale_mask[:, :width]
    torch.testing.assert_close(forced[:, :width][keep], shared.logprobs[:, :width][keep], atol=1e-4, rtol=1e-4)


def test_scoring_runs_each_prompt_once_for_its_k_rows_with_the_same_numbers_and_gradients(task, examples):
    model, tokenizer = tiny("tiny-5m", examples, seed=4)
    method = latro(model, tokenizer, task, rollouts=4, rationale_tokens=8)
    asked = [examples[0], dataclasses.replace(examples[1], question=examples[1].question * 2)]
    packed = method.rollout(asked, generator=torch.Generator().manual_seed(0)).packed
    assert len(set(packed.attention_mask[:, : packed.prompt_width].sum(1).tolist())) > 1  # left padding in play
    calls = []
    hook = model.register_forward_hook(lambda *_: calls.append(1))
    shared = token_logprobs(model, packed, k=4)
    hook.remove()
    assert len(calls) == 2  # the prompts once, then every row's tail
    one = token_logprobs(model, packed)
    scored = packed.attention_mask[:, packed.prompt_width :].bool()
    torch.testing.assert_close(shared[scored], one[scored], atol=1e-5, rtol=1e-5)
    params = [p for p in model.parameters() if p.requires_grad]
    got = torch.autograd.grad(shared[scored].sum(), params)
    want = torch.autograd.grad(one[scored].sum(), params)
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, atol=1e-5 * float(w.abs().max()), rtol=1e-4)
    assert max(float(w.abs().max()) for w in want) > 1e-3


# ---- gradients through the model --------------------------------------------------------------------


def test_answer_term_gradient_reaches_the_weights_and_vanishes_with_lambda_zero(task, examples):
    model, tokenizer = tiny("tiny-5m", examples, seed=2)
    method = latro(model, tokenizer, task, beta=0.0, rollouts=2, rationale_tokens=6)
    rollout = method.rollout(examples[:2], generator=torch.Generator().manual_seed(0))
    rationale, answer = method.sequence_logprobs(rollout)
    finished = rollout.samples.finished.view(-1, 2)
    params = [p for p in model.parameters() if p.requires_grad]

    def grads(value):
        return torch.autograd.grad(value, params, retain_graph=True, allow_unused=True, materialize_grads=True)

    policy_only = grads(latro_objective(answer, rationale, None, finished, 0.0, 0.0).policy_loss)
    for weight in (0.0, 1.0):
        total = grads(latro_objective(answer, rationale, None, finished, 0.0, weight).loss)
        contribution = [t - p for t, p in zip(total, policy_only)]  # the answer-likelihood term's share
        largest = max(float(c.abs().max()) for c in contribution)
        if weight == 0.0:
            assert largest == 0.0
        else:
            assert largest > 1e-4
            direct = grads(-answer.mean())
            for c, d in zip(contribution, direct):
                torch.testing.assert_close(c, d, atol=1e-4, rtol=1e-3)  # up to the rounding of t - p


# ---- the reference model ------------------------------------------------------------------------------


def test_reference_is_the_base_model_with_the_adapter_disabled(task, examples):
    model, tokenizer = tiny("tiny-5m", examples, seed=3)
    base = copy.deepcopy(model)
    model = backbones.add_lora(model, r=4, alpha=8)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "lora_B" in name:
                parameter.copy_(0.5 * torch.randn(parameter.shape, generator=generator))
    method = latro(model, tokenizer, task)
    rollout = method.rollout(examples[:2], generator=torch.Generator().manual_seed(1))
    reference = method.reference_logprobs(rollout)
    width = rollout.packed.rationale_width
    with torch.no_grad():
        expected = (token_logprobs(base, rollout.packed, width) * rollout.packed.rationale_mask[:, :width]).sum(1)
        policy, _ = method.sequence_logprobs(rollout)
    torch.testing.assert_close(reference.flatten(), expected, atol=1e-4, rtol=1e-4)
    assert (policy.flatten() - expected).abs().max() > 1e-2  # the adapter is on outside the reference
    assert method.extra_state() == {}  # LoRA: nothing to keep


def test_without_lora_the_reference_is_a_frozen_copy_kept_in_checkpoints(task, examples):
    model, tokenizer = tiny("tiny-5m", examples, seed=4)
    method = latro(model, tokenizer, task)
    rollout = method.rollout(examples[:2], generator=torch.Generator().manual_seed(1))
    before = method.reference_logprobs(rollout)
    policy, _ = method.sequence_logprobs(rollout)
    torch.testing.assert_close(before, policy.detach(), atol=1e-4, rtol=1e-4)
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-2)
    method.loss(examples[:2], 0, generator=torch.Generator().manual_seed(2))[0].backward()
    optimizer.step()
    after, _ = method.sequence_logprobs(rollout)
    assert (after.detach() - before).abs().max() > 1e-3  # the policy moved ...
    torch.testing.assert_close(method.reference_logprobs(rollout), before)  # ... the reference did not
    assert all(not p.requires_grad for p in method._reference_model.parameters())
    resumed = latro(model, tokenizer, task)
    resumed.load_extra_state(method.extra_state())
    torch.testing.assert_close(resumed.reference_logprobs(rollout), before)


# ---- answering -----------------------------------------------------------------------------------------


def test_answers_count_their_cost_and_parse_after_the_stop(task, examples):
    model, tokenizer = tiny("tiny-5m", examples, seed=5)
    greedy = latro(model, tokenizer, task, max_new_tokens=8)
    predictions = greedy.answer(examples[:3])
    assert [p.text for p in predictions] == [p.text for p in greedy.answer(examples[:3])]
    assert all(1 <= p.forward_passes == p.generated_tokens <= 8 for p in predictions)
    voted = latro(model, tokenizer, task, max_new_tokens=8, decoding="self-consistency", samples=3)
    torch.manual_seed(0)
    assert sum(p.generated_tokens for p in voted.answer(examples[:3])) > sum(p.generated_tokens for p in predictions)
    assert greedy.parse("7 7 1\n#### 7 1 7 3\n5") == "7 1 7 3"
    words = latro(model, tokenizer, task, stop="The answer is")
    assert words.parse("so The answer is 42.\nmore") == "42"


# ---- training ------------------------------------------------------------------------------------------


def test_a_short_run_raises_the_reward_and_checkpoints_the_reference(tmp_path, examples):
    run = make_run({"method": "latro", "task": "multiplication", "task_options": {"digits": 2}, "model": "tiny-5m",
                    "steps": 12, "batch_size": 2, "lr": 3e-3, "warmup_steps": 0, "save_every": 0, "eval_size": 0,
                    "log_with": "none", "mixed_precision": "no", "rollouts": 4, "rationale_tokens": 6,
                    "max_new_tokens": 8})
    method = build_method(run, texts_of(examples))
    history = Trainer(method, examples, run.train, tmp_path, run.describe("test")).fit()
    rewards = [record["reward"] for record in history]
    assert all(0.0 <= record["finished"] <= 1.0 and record["sampled_tokens"] > 0 for record in history)
    assert all(0.0 <= record["zero_spread"] <= 1.0 and 1.0 <= record["distinct_rationales"] <= 4.0 for record in history)
    assert any(record["distinct_rationales"] > 1.0 for record in history)
    assert sum(rewards[-4:]) / 4 > sum(rewards[:4]) / 4 + 1.0, rewards
    extras = load_file(tmp_path / "checkpoint" / "extras.safetensors")
    assert extras and all(name.startswith("reference.") for name in extras)


def test_a_killed_run_resumes_to_the_same_weights(tmp_path, examples, interrupt):
    """Rollouts draw from the checkpointed RNG and the frozen reference travels in the checkpoint's extras."""
    run = make_run({"method": "latro", "task": "multiplication", "task_options": {"digits": 2}, "model": "tiny-5m",
                    "steps": 4, "batch_size": 2, "lr": 3e-3, "warmup_steps": 0, "save_every": 2, "eval_size": 0,
                    "log_with": "none", "mixed_precision": "no", "rollouts": 2, "rationale_tokens": 4,
                    "max_new_tokens": 4})
    whole = build_method(run, texts_of(examples))
    Trainer(whole, examples, run.train, tmp_path / "whole", run.describe("test")).fit()

    interrupted = build_method(run, texts_of(examples))
    interrupt(interrupted, 2, KeyboardInterrupt)  # dies in step three
    with pytest.raises(KeyboardInterrupt):
        Trainer(interrupted, examples, run.train, tmp_path / "killed", run.describe("test")).fit()
    resumed = build_method(run, weights=tmp_path / "killed" / "checkpoint")
    Trainer(resumed, examples, run.train, tmp_path / "killed", run.describe("test")).fit(resume=True)
    expected, got = whole.model.state_dict(), resumed.model.state_dict()
    for name in expected:
        torch.testing.assert_close(got[name], expected[name], rtol=0, atol=0, msg=name)

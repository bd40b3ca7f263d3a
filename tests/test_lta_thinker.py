"""LTA-Thinker on a tiny random backbone: only the generator trains, its thoughts land at the placeholders, N at
answer time differs from N in training, each loss equals a hand computation, the focus loss's positive is the
documented step, answer-time variance scaling, and a short run through the real trainer and the command line."""

import copy
import json
import math
import random

import pytest
import torch

from latent_reasoning import methods, tasks
from latent_reasoning.backbones import load_backbone
from latent_reasoning.cli import main
from latent_reasoning.config import ConfigError
from latent_reasoning.methods.lta_thinker import alignment_cosine, alignment_kl, choose_positive, focus_infonce
from latent_reasoning.run import texts_of
from latent_reasoning.trainer import TrainConfig, Trainer, adamw

TASK = tasks.get("multiplication", digits=2)
EXAMPLES = TASK.generate(64, seed=0)  # two gold steps each


@pytest.fixture(scope="module")
def base():
    return load_backbone("tiny-1m", texts=texts_of(EXAMPLES), seed=0)


def make(base, **options):
    model, tokenizer = base
    options = {"thoughts": 4, "eval_thoughts": 2, "max_new_tokens": 6, **options}
    config = methods.get("lta-thinker").Config(**options)
    return methods.get("lta-thinker")(config, copy.deepcopy(model), tokenizer, TASK)


def backbone_inputs(method):
    """Records the inputs_embeds of every backbone call made with embeddings (hooked on the decoder, which training's
    loss calls without the head)."""
    seen = []

    def hook(module, args, kwargs):
        if kwargs.get("inputs_embeds") is not None:
            seen.append(kwargs["inputs_embeds"].detach().clone())

    return seen, method.model.get_decoder().register_forward_pre_hook(hook, with_kwargs=True)


# ---- what trains ---------------------------------------------------------------------------------


def test_gradients_reach_only_the_generator_and_a_step_leaves_the_backbone_unchanged(base):
    method = make(base)
    generator = list(method.extras["generator"].parameters())
    assert {id(p) for p in method.trainable_parameters()} == {id(p) for p in generator}
    before = {name: p.detach().clone() for name, p in method.model.named_parameters()}
    optimizer = adamw(method.trainable_parameters(), lr=1e-2, weight_decay=0.0)
    loss, _ = method.loss(EXAMPLES[:4], 0)
    loss.backward()
    assert all(p.grad is None and not p.requires_grad for p in method.model.parameters())
    assert all(p.grad is not None and bool(p.grad.abs().sum() > 0) for p in generator)
    old_generator = [p.detach().clone() for p in generator]
    optimizer.step()
    assert all(torch.equal(p, before[name]) for name, p in method.model.named_parameters())
    assert all(not torch.equal(p, old) for p, old in zip(generator, old_generator))


# ---- the losses ----------------------------------------------------------------------------------


def test_alignment_losses_equal_a_hand_computation():
    anchor = torch.tensor([[0.5, -1.0, 2.0], [1.0, 0.0, 0.0]])
    thoughts = torch.tensor([[[1.0, 1.0, 1.0], [0.0, 2.0, -1.0]], [[3.0, 0.0, 1.0], [1.0, 0.0, 0.0]]])

    def softmax(v):
        e = [math.exp(x) for x in v]
        return [x / sum(e) for x in e]

    kl, cosine = 0.0, 0.0
    for b in range(2):
        p = softmax(anchor[b].tolist())
        for j in range(2):
            q = softmax(thoughts[b, j].tolist())
            kl += sum(pi * (math.log(pi) - math.log(qi)) for pi, qi in zip(p, q)) / 4
            a, t = anchor[b].tolist(), thoughts[b, j].tolist()
            dot = sum(x * y for x, y in zip(a, t))
            cosine += (1 - dot / math.sqrt(sum(x * x for x in a) * sum(y * y for y in t))) / 4
    assert float(alignment_kl(anchor, thoughts)) == pytest.approx(kl, abs=1e-6)
    assert float(alignment_cosine(anchor, thoughts)) == pytest.approx(cosine, abs=1e-6)
    assert float(alignment_kl(anchor, anchor.unsqueeze(1) + 3.0)) == pytest.approx(0.0, abs=1e-6)  # softmax ignores shifts


def test_focus_infonce_equals_a_hand_computation():
    anchor = torch.tensor([1.0, 0.0, 1.0])
    candidates = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [1.0, 1.0, 1.0]])
    cosines = [1 / math.sqrt(2), 0.0, 2 / math.sqrt(6)]
    for positive in range(3):
        expected = -cosines[positive] / 0.1 + math.log(sum(math.exp(c / 0.1) for c in cosines))
        assert float(focus_infonce(anchor, candidates, positive, 0.1)) == pytest.approx(expected, rel=1e-5)


def test_positive_step_rules_pick_the_documented_step():
    candidates = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0], [-1.0, 0.2]])
    assert choose_positive("answer", candidates, torch.tensor([0.1, 2.0])) == 1  # the most cosine-similar step
    assert choose_positive("answer", candidates, torch.tensor([3.0, 2.9])) == 2
    assert [choose_positive("middle", candidates[:m]) for m in (1, 2, 3, 4)] == [0, 0, 1, 1]
    draws = [choose_positive("random", candidates, rng=random.Random(seed)) for seed in range(40)]
    assert draws == [random.Random(seed).randrange(4) for seed in range(40)] and set(draws) == {0, 1, 2, 3}


def test_the_method_combines_its_losses_with_their_weights_and_picks_the_answer_similar_step(base):
    method = make(base, sft_weight=0.5, alignment_weight=0.25, focus_weight=2.0)
    examples = EXAMPLES[:3]
    loss, metrics = method.loss(examples, 0)
    assert float(loss.detach()) == pytest.approx(0.5 * metrics["ce"] + 0.25 * metrics["alignment"] + 2.0 * metrics["focus"],
                                        rel=1e-5)
    with torch.no_grad():
        read = method.generate(examples, 4, with_steps=True)
    assert float(alignment_kl(read.anchor, read.thoughts)) == pytest.approx(metrics["alignment"], rel=1e-5)
    embeddings = method.model.get_input_embeddings().weight
    terms = []
    for b, example in enumerate(examples):
        candidates = read.states[b, read.step_ends[b]]
        assert len(candidates) == len(example.steps) == 2
        answer = embeddings[method.tokenizer(example.answer, add_special_tokens=False)["input_ids"]].mean(0)
        similarity = torch.nn.functional.cosine_similarity(candidates, answer.unsqueeze(0), dim=-1)
        terms.append(focus_infonce(read.anchor[b], candidates, int(similarity.argmax()), 0.1))
    assert metrics["focus"] == pytest.approx(float(torch.stack(terms).mean()), rel=1e-5)
    # each step's candidate is the generator's output at that step's last token
    steps, ends = method.step_tokens(examples[0])
    last = method.tokenizer.convert_ids_to_tokens([steps[e] for e in ends])
    assert [example_step.split()[-1] for example_step in examples[0].steps] == [t.lstrip("▁") for t in last]
    sft_only = make(base, alignment_weight=0, focus_weight=0)
    loss, metrics = sft_only.loss(examples, 0)
    assert set(metrics) == {"ce", "tokens", "thought_variance"} and float(loss.detach()) == pytest.approx(metrics["ce"] / 3)


def test_random_positive_is_a_function_of_step_and_question(base):
    method = make(base, focus_positive="random", sft_weight=0, alignment_weight=0, focus_weight=1)
    examples = EXAMPLES[:8]
    with torch.no_grad():
        read = method.generate(examples, 4, with_steps=True)
        first = float(method.focus_loss(examples, read, step=3))
        assert float(method.focus_loss(examples, read, step=3)) == first
        assert any(float(method.focus_loss(examples, read, step=s)) != first for s in range(4, 10))


# ---- where the thoughts go -----------------------------------------------------------------------


def test_thoughts_land_at_the_placeholders_with_n_set_apart_for_training_and_answering(base):
    method = make(base, thoughts=5, eval_thoughts=2)
    latent = method.tokens.latent
    examples = [EXAMPLES[0], TASK.generate(1, seed=7)[0]]
    seen, hook = backbone_inputs(method)
    try:
        method.loss(examples, 0)
        method.answer(examples)
    finally:
        hook.remove()
    for inputs, n, prompts in ((seen[0], 5, False), (seen[1], 2, True)):  # training's pass, the answer's prefill
        rows = method.prompts(examples, n)
        with torch.no_grad():
            thoughts = method.generate(examples, n, with_steps=False).thoughts
        for b, row in enumerate(rows):
            offset = inputs.shape[1] - len(row) if prompts else 0  # answer prompts are left-padded
            where = [offset + i for i, token in enumerate(row) if token == latent]
            assert len(where) == n
            torch.testing.assert_close(inputs[b, where], thoughts[b], rtol=0, atol=1e-6)
            others = [offset + i for i, token in enumerate(row) if token != latent]
            embedded = method.model.get_input_embeddings()(torch.tensor([row[i - offset] for i in others]))
            torch.testing.assert_close(inputs[b, others], embedded)


def test_hidden_steps_leave_the_training_thoughts_equal_to_the_answer_time_ones(base):
    examples = EXAMPLES[:3]
    hidden = make(base)
    with torch.no_grad():
        trained = hidden.generate(examples, 4, with_steps=True)
        answered = hidden.generate(examples, 4, with_steps=False)
    torch.testing.assert_close(trained.thoughts, answered.thoughts, rtol=0, atol=1e-5)
    torch.testing.assert_close(trained.anchor, answered.anchor, rtol=0, atol=1e-5)
    shown = make(base, steps_in_prompt=True)
    with torch.no_grad():  # what answering runs: the generator's queries at the placeholders alone
        alone = hidden.thoughts(examples, 4)[:, 0]
        mixed = examples[:2] + tasks.get("multiplication", digits=3).generate(1, seed=0)  # rows of unequal length
        full_mixed = hidden.generate(mixed, 4, with_steps=False)
        alone_mixed = hidden.thoughts(mixed, 4)[:, 0]
    assert alone.shape == answered.thoughts.shape
    torch.testing.assert_close(alone, answered.thoughts, rtol=0, atol=1e-5)
    assert len(set(full_mixed.thought_positions[:, 0].tolist())) > 1
    torch.testing.assert_close(alone_mixed, full_mixed.thoughts, rtol=0, atol=1e-5)
    with torch.no_grad():
        assert not torch.allclose(shown.generate(examples, 4, with_steps=True).thoughts,
                                  shown.generate(examples, 4, with_steps=False).thoughts, atol=1e-3)


def test_answer_time_variance_scale_moves_the_thoughts_around_their_mean(base):
    method = make(base, eval_thoughts=3)
    example = EXAMPLES[:1]
    with torch.no_grad():
        thoughts = method.thoughts(example, 3)[0, 0]
    mean = thoughts.mean(0)
    for scale in (0.0, 4.0):
        method.config.thought_variance_scale = scale
        seen, hook = backbone_inputs(method)
        try:
            prediction = method.answer(example)[0]
        finally:
            hook.remove()
        where = [i for i, t in enumerate(method.prompts(example, 3)[0]) if t == method.tokens.latent]
        torch.testing.assert_close(seen[0][0, where], mean + math.sqrt(scale) * (thoughts - mean), rtol=0, atol=1e-5)
        expected = float(thoughts.var(0, unbiased=False).mean()) * scale
        assert prediction.thought_variance == pytest.approx(expected, rel=1e-4, abs=1e-9)
    assert prediction.forward_passes == pytest.approx(prediction.generated_tokens + method.thought_cost())
    assert 0 < method.thought_cost() < 1  # one block against the backbone's four layers


def test_generator_can_start_from_a_backbone_layer(base):
    method = make(base, generator_init="backbone", generator_layer=2)
    layer = method.model.get_decoder().layers[2]
    generator = method.extras["generator"]
    q, k, v = generator.attention.in_proj_weight.chunk(3)
    assert torch.equal(q, layer.self_attn.q_proj.weight) and torch.equal(k, layer.self_attn.k_proj.weight)
    assert torch.equal(generator.attention.out_proj.weight, layer.self_attn.o_proj.weight)
    assert torch.equal(generator.feed_forward[2].weight, layer.mlp.down_proj.weight)
    with pytest.raises(ConfigError, match="generator_layer=9"):
        make(base, generator_init="backbone", generator_layer=9)


@pytest.mark.parametrize("values, named", [
    ({"focus_positive": "first"}, "focus_positive"), ({"alignment": "l2"}, "alignment"),
    ({"eval_thoughts": 0}, "eval_thoughts"), ({"focus_temperature": 0}, "focus_temperature"),
])
def test_config_errors_name_the_key(values, named):
    with pytest.raises(ConfigError, match=named):
        methods.get("lta-thinker").Config(**values)


# ---- training ------------------------------------------------------------------------------------


def test_a_tiny_run_through_the_trainer_lowers_the_loss(base, tmp_path):
    method = make(base)
    batch = EXAMPLES[:16]
    with torch.no_grad():
        before, first = method.loss(batch, 0)
    config = TrainConfig(steps=24, batch_size=8, lr=3e-3, warmup_steps=0, save_every=0, log_with="none",
                         mixed_precision="no")
    history = Trainer(method, EXAMPLES, config, tmp_path, run={"method": "lta-thinker"}).fit()
    assert all("thought_variance" in record and "focus" in record for record in history)
    with torch.no_grad():
        after, last = method.loss(batch, 0)
    assert float(after) < 0.9 * float(before) and last["ce"] < first["ce"] - 0.1, (first, last)


def test_train_then_sweep_the_variance_scale_from_the_command_line(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", "--method", "lta-thinker", "--task", "parity", "--model", "tiny-1m", "--out", str(run),
                 "task.bits=6", "steps=2", "batch_size=4", "train_size=40", "eval_size=0", "log_with=none",
                 "thoughts=3", "max_new_tokens=4"]) == 0
    assert main(["eval", "--checkpoint", str(run), "--out", str(tmp_path / "eval"), "--limit", "4",
                 "--sweep", "thought_variance_scale=0,4"]) == 0
    capsys.readouterr()
    zero, four = (json.loads((tmp_path / "eval" / f"thought_variance_scale={v}" / "summary.json").read_text())
                  for v in (0, 4))
    assert zero["thought_variance"] == pytest.approx(0.0, abs=1e-9) and four["thought_variance"] > 0

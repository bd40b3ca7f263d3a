"""COCONUT and Stable Latent Reasoning on a tiny model: the curriculum's layout, each stabiliser's
switch, training through the stages, per-example halting, loop-LoRA gradients, checkpoints."""

import copy

import pytest
import torch
import torch.nn.functional as F

from latent_reasoning import checkpoint, methods, tasks
from latent_reasoning.backbones import load_backbone, thought_token_ids
from latent_reasoning.config import ConfigError
from latent_reasoning.inspect_thoughts import inspect
from latent_reasoning.methods.base import split_chain, step_cuts, step_ends
from latent_reasoning.methods.coconut import Plan
from latent_reasoning.run import build_method, load_method, make_run, texts_of
from latent_reasoning.trainer import Trainer

TWO = tasks.get("multiplication", digits=2).generate(64, seed=0)  # 2 reasoning steps each
THREE = tasks.get("multiplication", digits=3).generate(8, seed=0)  # 3 reasoning steps each
ALL_OFF = dict(timestep="none", loop_lora=False, residual=0.0, normalize=False, halting="none")


@pytest.fixture(scope="module")
def base():
    """A tiny random Llama and its word tokenizer, built once; each method gets a fresh copy."""
    return load_backbone("tiny-5m", texts=texts_of(TWO + THREE), seed=0)


def make(base, name, **options):
    model, tokenizer = base
    options.setdefault("max_new_tokens", 8)
    config = methods.get(name).Config(**options)
    return methods.get(name)(config, copy.deepcopy(model), tokenizer, tasks.get("multiplication", digits=2))


def ids(tokenizer, text):
    return tokenizer(text, add_special_tokens=False)["input_ids"]


# ---- the curriculum ------------------------------------------------------------------------------


def test_remembered_tokenization_cuts_chains_as_a_fresh_one(base):
    """Each chain is tokenized once per run; the cuts at every k, asked twice, equal a fresh tokenization's."""
    method = make(base, "coconut", c=1, stages=3)
    for _ in range(2):
        for example in THREE:
            for k in range(len(example.steps) + 1):
                assert method._split(example, k) == split_chain(method.tokenizer, example, k, "\n")
            assert method._ids(example.question) == ids(method.tokenizer, example.question)
    assert len(method._chain_memo) == len(THREE)


def test_stage_k_replaces_the_first_k_steps_and_labels_only_the_language_after_eot(base):
    method = make(base, "coconut", c=2, stages=2, steps_per_stage=3)
    tokenizer, special = method.tokenizer, thought_token_ids(method.tokenizer)
    example = THREE[0]
    question = ids(tokenizer, example.question + "\n")
    # (trainer step, stage, latent steps, thoughts): stage 3 = K + 1 makes every step latent with K c thoughts
    for step, stage, latent, n in [(0, 0, 0, 0), (3, 1, 1, 2), (5, 1, 1, 2), (6, 2, 2, 4), (9, 3, 3, 4), (99, 3, 3, 4)]:
        plans = method.plans([example], step)
        assert plans == [Plan(stage, latent, n)], step
        batch = method.encode([example], plans)
        sequence, labels = batch.sequence(0, special.latent)
        rest = ids(tokenizer, "\n".join(example.steps[latent:] + [f"#### {example.answer}"])) + [tokenizer.eos_token_id]
        assert sequence == question + [special.bot] + [special.latent] * n + [special.eot] + rest
        assert labels == [-100] * (len(question) + 1 + n + 1) + rest  # question, <bot>, thoughts, <eot>: no loss
    # the trainer resets AdamW on the first step of each new stage, and only then
    assert [step for step in range(14) if method.on_step(step)] == [3, 6, 9]
    no_reset = make(base, "coconut", stages=2, steps_per_stage=3, reset_optimizer=False)
    assert not any(no_reset.on_step(step) for step in range(14))


def test_merged_steps_are_replaced_together_by_c_thoughts_and_keep_the_chain_text(base):
    method = make(base, "coconut", c=1, stages=2, steps_per_stage=1, merge_steps=2)
    tokenizer, special = method.tokenizer, thought_token_ids(method.tokenizer)
    example = THREE[0]  # steps s1, s2, s3 become (s1 s2), (s3)
    (merged,) = method.merged([example])
    assert merged.steps == ["\n".join(example.steps[:2]), example.steps[2]]
    question = ids(tokenizer, example.question + "\n")
    for step, rest_steps, n in [(0, example.steps, 0), (1, example.steps[2:], 1), (2, [], 2)]:
        plans = method.plans([merged], step)
        sequence, _ = method.encode([merged], plans).sequence(0, special.latent)
        rest = ids(tokenizer, "\n".join(rest_steps + [f"#### {example.answer}"])) + [tokenizer.eos_token_id]
        assert sequence == question + [special.bot] + [special.latent] * n + [special.eot] + rest, step
    # the loss reads the merged layout: stage 1 has one thought in place of two steps
    method.on_step(1)
    _, metrics = method.loss([example], 1)
    assert metrics["thoughts"] == 1.0
    assert make(base, "coconut").merged([example]) == [example]


def test_step_decoding_loss_is_each_latent_steps_cross_entropy_read_from_its_own_thoughts(base):
    method = make(base, "coconut", c=2, stages=2, steps_per_stage=1, step_weight=0.5)
    method.model.eval()  # no dropout: the reference below reads the same numbers
    examples = THREE[:2]
    method.on_step(2)
    plans = method.plans(examples, 2)  # stage 2: steps 1 and 2 latent, 4 thoughts each
    _, thinking, _ = method.read(examples, plans, training=True)
    embed = method.model.get_input_embeddings()
    losses = []  # by hand, one step at a time: thoughts 2i, 2i+1 then the step's tokens, unpadded
    for b, example in enumerate(examples):
        for i in range(2):
            step = torch.tensor(ids(method.tokenizer, example.steps[i]))
            inputs = torch.cat([thinking.loop.thoughts[b, 2 * i : 2 * i + 2], embed(step)]).unsqueeze(0)
            logits = method.model(inputs_embeds=inputs).logits[0]
            losses.append(-F.log_softmax(logits[1:-1], -1).gather(1, step.unsqueeze(1)).squeeze(1))
    expected = torch.cat(losses).mean()
    assert torch.allclose(method.step_decoding(examples, thinking.loop), expected, atol=1e-5)
    loss, metrics = method.loss(examples, 2)
    assert metrics["step_ce"] == pytest.approx(float(expected.detach()), abs=1e-5)
    assert float(loss) == pytest.approx(metrics["ce"] + 0.5 * metrics["step_ce"], abs=1e-5)
    # the step loss reaches every thought that stands for a step
    (grad,) = torch.autograd.grad(method.step_decoding(examples, thinking.loop), thinking.loop.thoughts)
    assert bool((grad.abs().sum(-1) > 0).all())
    assert "step_ce" not in make(base, "coconut", c=2, stages=2, steps_per_stage=1).loss(examples, 2)[1]


def test_merged_steps_decode_all_their_steps_or_only_the_last(base):
    """step_decode=last: a thought standing for g steps spells only the last of them (the chain's state)."""
    examples = THREE[:2]  # 3 steps each: merged by 2 into [s1 s2, s3]
    decoded = {}
    for target in ("all", "last"):
        method = make(base, "coconut", c=1, stages=2, steps_per_stage=1, merge_steps=2, step_weight=1.0,
                      step_decode=target)
        method.model.eval()
        merged = method.merged(examples)
        method.on_step(3)  # the last stage: both merged steps latent, 2 thoughts
        _, thinking, _ = method.read(merged, method.plans(merged, 3), training=True)
        embed, losses = method.model.get_input_embeddings(), []
        for b, example in enumerate(examples):
            texts = ([method.task.step_separator.join(example.steps[:2]), example.steps[2]] if target == "all"
                     else [example.steps[1], example.steps[2]])
            for i, text in enumerate(texts):
                step = torch.tensor(ids(method.tokenizer, text))
                inputs = torch.cat([thinking.loop.thoughts[b, i : i + 1], embed(step)]).unsqueeze(0)
                logits = method.model(inputs_embeds=inputs).logits[0]
                losses.append(-F.log_softmax(logits[:-1], -1).gather(1, step.unsqueeze(1)).squeeze(1))
        decoded[target] = method.step_decoding(merged, thinking.loop)
        assert torch.allclose(decoded[target], torch.cat(losses).mean(), atol=1e-5), target
    assert not torch.allclose(decoded["all"], decoded["last"])


def continuation_positions(method, example, step):
    """The position ids the model received for the continuation ([pauses] <eot> rest <eos>) at `step`."""
    method.on_step(step)
    plans = method.plans([example], step)
    seen = []
    hook = method.model.register_forward_pre_hook(
        lambda module, args, kwargs: seen.append(kwargs["position_ids"][0].tolist()), with_kwargs=True)
    try:
        batch, _, _ = method.read([example], plans, training=True)
    finally:
        hook.remove()
    return seen[-1], batch, plans[0]


@pytest.mark.parametrize("reserve", [False, True])
def test_kept_positions_give_the_language_after_the_latent_span_its_cot_positions(base, reserve):
    example = THREE[0]
    method = make(base, "coconut", c=1, stages=2, steps_per_stage=1, keep_position=True, reserve_slots=reserve)
    tokenizer, special = method.tokenizer, thought_token_ids(method.tokenizer)
    question = len(ids(tokenizer, example.question + "\n"))
    slots = 2 if reserve else 0
    chain = ids(tokenizer, "\n".join(example.steps + [f"#### {example.answer}"])) + [tokenizer.eos_token_id]
    for step in range(4):  # stages 0, 1, 2 and 3 = K + 1 (all three steps latent, two thoughts)
        positions, batch, plan = continuation_positions(method, example, step)
        sequence, _ = batch.sequence(0, special.latent)
        assert sequence.count(special.latent) == (slots if reserve else plan.thoughts)  # thoughts + pauses
        removed, rest = split_chain(method.tokenizer, example, plan.latent_steps)
        assert removed + rest + [tokenizer.eos_token_id] == chain
        pauses = max(slots - plan.thoughts, 0)
        # <eot> then chain token t (counted in the full chain) at q + t, as in the plain CoT sequence
        expected_eot = question + len(removed) - 1
        assert positions[pauses:] == [expected_eot + i for i in range(len(rest) + 2)], step
    shifted = make(base, "coconut", c=1, stages=2, steps_per_stage=1)
    first, _, _ = continuation_positions(shifted, example, 0)
    later, _, plan = continuation_positions(shifted, example, 1)
    removed, _ = split_chain(shifted.tokenizer, example, plan.latent_steps)
    assert later[1] != first[1 + len(removed)]  # without the option the remaining steps move
    for option in (dict(keep_position=True), dict(reserve_slots=True), dict(keep_position=True, reserve_slots=True)):
        answering = make(base, "coconut", c=1, stages=2, eval_thoughts=1, **option)
        answering.extras.to(answering.device)
        predictions = answering.answer(THREE[:2])
        assert [p.forward_passes for p in predictions] == [
            1 + 1 + ("reserve_slots" in option) + p.generated_tokens for p in predictions]


def test_without_markers_thoughts_take_their_steps_slots_and_the_last_thought_predicts_the_language(base):
    example = THREE[0]
    method = make(base, "coconut", c=1, stages=2, steps_per_stage=1, markers=False, keep_position=True)
    method.model.eval()  # no dropout: the references below read the same numbers
    tokenizer, special = method.tokenizer, thought_token_ids(method.tokenizer)
    question = ids(tokenizer, example.question + "\n")
    chain = ids(tokenizer, "\n".join(example.steps + [f"#### {example.answer}"])) + [tokenizer.eos_token_id]
    for step in range(4):
        positions, batch, plan = continuation_positions(method, example, step)
        removed, rest = split_chain(tokenizer, example, plan.latent_steps)
        sequence, labels = batch.sequence(0, special.latent)
        assert sequence == question + [special.latent] * plan.thoughts + rest + [tokenizer.eos_token_id]
        assert labels == [-100] * (len(question) + plan.thoughts) + rest + [tokenizer.eos_token_id]
        assert positions == [len(question) + len(removed) + i for i in range(len(rest) + 1)], step
    # stage 0 is the CoT sequence, and its loss the CoT token loss
    loss, _ = method.loss([example], 0)
    with torch.no_grad():
        logits = method.model(input_ids=torch.tensor([question + chain])).logits[0]
    targets = torch.tensor([-100] * len(question) + chain)
    torch.testing.assert_close(loss.detach(), F.cross_entropy(logits[:-1], targets[1:], ignore_index=-100),
                               atol=1e-4, rtol=0)
    # stage 1: the state after the question is read in step 1's slot, and its pass predicts what follows
    plain = make(base, "coconut", c=1, stages=2, steps_per_stage=1, markers=False)
    plain.model.eval()
    loss, _ = plain.loss([example], 1)
    _, rest = split_chain(tokenizer, example, 1)
    embed = plain.model.get_input_embeddings()
    with torch.no_grad():
        h = plain.model(input_ids=torch.tensor([question]), output_hidden_states=True).hidden_states[-1][:, -1:]
        inputs = torch.cat([embed(torch.tensor([question])), h, embed(torch.tensor([rest + chain[-1:]]))], dim=1)
        logits = plain.model(inputs_embeds=inputs).logits[0]
    targets = torch.tensor([-100] * (len(question) + 1) + rest + chain[-1:])
    torch.testing.assert_close(loss.detach(), F.cross_entropy(logits[:-1], targets[1:], ignore_index=-100),
                               atol=1e-4, rtol=0)
    # answering: no <eot> is fed, so the first answer token costs no pass of its own
    for sampling in ({}, dict(decoding="self-consistency", samples=3)):
        answering = make(base, "coconut", c=1, stages=2, eval_thoughts=1, markers=False, **sampling)
        predictions = answering.answer(THREE[:2])
        assert [p.forward_passes for p in predictions] == [1 + 1 + p.generated_tokens - (3 if sampling else 1)
                                                            for p in predictions]
    with pytest.raises(ConfigError, match="reserve_slots"):
        methods.get("coconut").Config(markers=False, reserve_slots=True).check()


def thought_positions(method, examples, step):
    """The position ids each thought pass received at `step` (one list per pass) and the training loss."""
    method.on_step(step)
    seen = []
    hook = method.model.register_forward_pre_hook(
        lambda module, args, kwargs: seen.append(kwargs["position_ids"].tolist()), with_kwargs=True)
    try:
        loss, _ = method.loss(examples, step)
    finally:
        hook.remove()
    return seen, loss


def test_without_markers_kept_positions_put_each_thought_on_its_steps_last_token(base):
    """A step of several tokens done in one thought is done where the CoT model finished it."""
    example = THREE[0]  # 3 steps of several tokens each
    method = make(base, "coconut", c=1, stages=3, steps_per_stage=1, markers=False, keep_position=True)
    method.model.eval()
    tokenizer = method.tokenizer
    question = ids(tokenizer, example.question + "\n")
    q = len(question)
    through = [len(split_chain(tokenizer, example, i + 1)[0]) for i in range(3)]  # with each step's newline
    ends = step_ends(tokenizer, example, "\n")  # up to each step's last word
    assert ends == [n - 1 for n in through] and ends[0] > 1  # multi-token steps, each closed by a newline token
    seen, loss = thought_positions(method, [example], 2)
    assert [passed[0] for passed in seen[1:3]] == [[q + ends[0] - 1], [q + ends[1] - 1]]
    assert seen[3][0][0] == q + through[1]  # the language after: its CoT positions
    # the stage-1 loss against a hand-laid sequence: question, h on step 1's last slot, the rest after it
    _, loss = thought_positions(method, [example], 1)
    _, rest = split_chain(tokenizer, example, 1)
    rest = rest + [tokenizer.eos_token_id]
    embed = method.model.get_input_embeddings()
    with torch.no_grad():
        h = method.model(input_ids=torch.tensor([question]), output_hidden_states=True).hidden_states[-1][:, -1:]
        inputs = torch.cat([embed(torch.tensor([question])), h, embed(torch.tensor([rest]))], dim=1)
        positions = list(range(q)) + [q + ends[0] - 1] + [q + through[0] + i for i in range(len(rest))]
        logits = method.model(inputs_embeds=inputs, position_ids=torch.tensor([positions])).logits[0]
    targets = torch.tensor([-100] * (q + 1) + rest)
    torch.testing.assert_close(loss.detach(), F.cross_entropy(logits[:-1], targets[1:], ignore_index=-100),
                               atol=1e-4, rtol=0)
    # several thoughts a step sit on the step's last tokens, never before the previous one; padding follows on
    assert method.thought_offsets([4, 8], 3) == [3, 6, 6]
    two = make(base, "coconut", c=2, stages=3, markers=False, keep_position=True)
    assert two.thought_offsets([4, 8], 4) == [2, 2, 4, 4] and two.thought_offsets([1, 2], 4) == [0, 0, 0, 0]
    # answering: thoughts at the training mean of the steps' ends (this one example's)
    answering = make(base, "coconut", c=1, stages=2, eval_thoughts=2, markers=False, keep_position=True)
    answering.on_step(0)
    answering.loss([example], 0)  # records the example's step tokens
    answering.stage = None  # trained: every step latent
    seen = []
    hook = answering.model.register_forward_pre_hook(
        lambda module, args, kwargs: seen.append(kwargs["position_ids"].tolist()), with_kwargs=True)
    try:
        answering.answer([example])
    finally:
        hook.remove()
    mean = answering.extras["step_tokens"].expected_end
    assert mean(3) == ends[2]  # one example seen: through all its steps, its own end
    assert [passed[0] for passed in seen[1:3]] == [[q + mean(1) - 1], [q + mean(2) - 1]]


def test_examples_with_fewer_steps_than_the_stage_pad_like_coconut_or_cap(base):
    padded = make(base, "coconut", c=2, stages=4, steps_per_stage=1)
    capped = make(base, "coconut", c=2, stages=4, steps_per_stage=1, pad_thoughts=False)
    example = THREE[0]  # 3 steps
    assert padded.plans([example], 4) == [Plan(4, 3, 8)]  # COCONUT: k c thoughts whatever the step count
    assert capped.plans([example], 4) == [Plan(4, 3, 6)]
    assert padded.plans([example], 5) == [Plan(5, 3, 8)] and capped.plans([example], 5) == [Plan(5, 3, 6)]
    assert padded.plans([example], 2) == capped.plans([example], 2) == [Plan(2, 2, 4)]


def test_mixing_probability_zero_keeps_the_schedule_and_one_draws_stages_from_zero_to_the_step_count(base):
    fixed = make(base, "coconut", stages=2, steps_per_stage=1, mix_probability=0.0)
    mixed = make(base, "coconut", stages=2, steps_per_stage=1, mix_probability=1.0)
    assert {plan.stage for plan in fixed.plans(TWO, 1)} == {1}
    drawn = mixed.plans(TWO, 1)
    assert {plan.stage for plan in drawn} == {0, 1, 2}  # uniform over 0 .. len(steps) = 2, as COCONUT
    assert all(plan.thoughts == plan.stage for plan in drawn)
    assert mixed.plans(TWO, 1) == drawn  # a function of (step, example): a resumed run draws the same
    assert mixed.plans(TWO, 2) != drawn


def test_stage_zero_loss_is_the_token_loss_of_the_laid_out_sequences(base):
    method = make(base, "coconut", stages=2)
    examples = THREE[:3]
    loss, metrics = method.loss(examples, step=0)
    batch = method.encode(examples, method.plans(examples, 0))
    total, count = 0.0, 0
    with torch.no_grad():
        for b in range(len(examples)):
            sequence, labels = batch.sequence(b, thought_token_ids(method.tokenizer).latent)
            logits = method.model(input_ids=torch.tensor([sequence])).logits[0]
            total += F.cross_entropy(logits[:-1], torch.tensor(labels[1:]), ignore_index=-100, reduction="sum")
            count += sum(label != -100 for label in labels)
    torch.testing.assert_close(loss.detach(), total / count, atol=1e-4, rtol=0)
    assert metrics["stage"] == 0 and metrics["thoughts"] == 0


# ---- the stabilisers -----------------------------------------------------------------------------


def test_each_stabiliser_switch_changes_the_thoughts_and_nothing_before_them(base):
    examples = THREE[:3]
    reference = make(base, "coconut", stages=3).think(examples, 3)
    prompt_ids, prompt_mask = make(base, "coconut").prompts(examples)
    with torch.no_grad():
        base_logits = base[0](input_ids=prompt_ids, attention_mask=prompt_mask).logits

    def thoughts_of(**options):
        perturb = options.pop("perturb", True)
        method = make(base, "slr", stages=3, **{**ALL_OFF, **options})
        if method.config.loop_lora and perturb:
            with torch.no_grad():
                for b in method.extras["loop_lora"].B:
                    b.normal_(std=0.05)
        return method, method.think(examples, 3)

    # all off: exactly COCONUT; each "neutral" setting too
    for neutral in [{}, dict(residual=0.0, residual_mode="previous"), dict(loop_lora=True, perturb=False),
                    dict(halting="delta", halt_threshold=0.0)]:
        _, got = thoughts_of(**neutral)
        torch.testing.assert_close(got.loop.thoughts, reference.loop.thoughts, atol=0, rtol=0, msg=str(neutral))
        assert got.loop.n_thoughts.tolist() == [3, 3, 3]

    # each switch on: the prefill (h_0) is untouched, the thoughts move from where the switch acts
    for options, first_changed in [(dict(timestep="add"), 0), (dict(timestep="concat"), 0), (dict(normalize=True), 0),
                                   (dict(residual=0.5), 1), (dict(residual=0.5, residual_mode="previous"), 1),
                                   (dict(loop_lora=True), 1)]:
        method, got = thoughts_of(**options)
        torch.testing.assert_close(got.states[:, 0], reference.states[:, 0], atol=1e-5, rtol=0, msg=str(options))
        if first_changed:
            torch.testing.assert_close(got.loop.thoughts[:, 0], reference.loop.thoughts[:, 0], atol=1e-5, rtol=0)
        assert not torch.allclose(got.loop.thoughts[:, first_changed], reference.loop.thoughts[:, first_changed],
                                  atol=1e-3), options
        with torch.no_grad():  # outside the loop the backbone is the base model (loop adapters off)
            after = method.model(input_ids=prompt_ids, attention_mask=prompt_mask).logits
        torch.testing.assert_close(after, base_logits, atol=1e-5, rtol=0, msg=str(options))
    # the two residual modes differ from the third thought on
    _, initial = thoughts_of(residual=0.5)
    _, previous = thoughts_of(residual=0.5, residual_mode="previous")
    torch.testing.assert_close(initial.loop.thoughts[:, :2], previous.loop.thoughts[:, :2], atol=1e-5, rtol=0)
    assert not torch.allclose(initial.loop.thoughts[:, 2], previous.loop.thoughts[:, 2], atol=1e-3)
    # normalisation puts every fed state at the mean input-embedding norm
    method, normalised = thoughts_of(normalize=True)
    scale = method.model.get_input_embeddings().weight.norm(dim=-1).mean()
    torch.testing.assert_close(normalised.loop.thoughts.norm(dim=-1), scale.expand(3, 3), atol=1e-4, rtol=1e-4)


def test_adaptive_termination_stops_some_examples_and_leaves_the_others_as_they_were(base):
    examples = TWO[:6]
    T = 4
    free = make(base, "slr", stages=T, **ALL_OFF).think(examples, T)
    states = free.states  # identity feedback: halt sees h_t, h_{t-1} of these very states
    change = ((states[:, 1:T] - states[:, : T - 1]).norm(dim=-1) / states[:, : T - 1].norm(dim=-1))
    lowest = change.min(dim=1).values.sort().values
    gap = int((lowest[1:] - lowest[:-1]).argmax())
    threshold = float((lowest[gap] + lowest[gap + 1]) / 2)  # some examples dip below it, the others never do
    assert float(lowest[gap + 1] - lowest[gap]) > 1e-3
    halting = make(base, "slr", stages=T, **{**ALL_OFF, "halting": "delta", "halt_threshold": threshold})

    batch = halting.think(examples, T)
    n = batch.loop.n_thoughts.tolist()
    stopped = [b for b in range(len(examples)) if n[b] < T]
    assert stopped and len(stopped) < len(examples)
    for b in range(len(examples)):
        if b in stopped:  # stopped before thought t exactly when its change first fell below the threshold
            assert n[b] == 1 + int((change[b] < threshold).nonzero()[0])
        torch.testing.assert_close(batch.loop.thoughts[b, : n[b]], free.loop.thoughts[b, : n[b]], atol=1e-5, rtol=0)

    answers = halting.answer(examples)
    unhalted = make(base, "slr", stages=T, **ALL_OFF).answer(examples)
    for b, prediction in enumerate(answers):
        alone = halting.answer([examples[b]])[0]
        assert (prediction.text, len(prediction.thoughts)) == (alone.text, len(alone.thoughts))
        assert prediction.forward_passes == 1 + n[b] + prediction.generated_tokens
        if b not in stopped:
            assert prediction.text == unhalted[b].text and prediction.forward_passes == unhalted[b].forward_passes


def test_answer_counts_its_passes_and_eval_thoughts_sets_the_loop_length(base):
    method = make(base, "coconut", c=2, stages=2)
    for thoughts in (None, 0, 1):
        method.config.eval_thoughts = thoughts
        for prediction in method.answer(THREE[:3]):
            assert len(prediction.thoughts) == (4 if thoughts is None else thoughts)
            assert 1 <= prediction.generated_tokens <= 8
            assert prediction.forward_passes == 1 + len(prediction.thoughts) + prediction.generated_tokens
    sampled = make(base, "coconut", c=1, stages=2, decoding="self-consistency", samples=3).answer(THREE[:2])
    assert all(p.forward_passes == 1 + 2 + p.generated_tokens and p.generated_tokens >= 3 for p in sampled)


def test_loop_lora_and_the_other_extras_get_gradients_for_every_loop_index_used(base):
    method = make(base, "slr", c=1, stages=3, steps_per_stage=1, halting="learned", distill_weight=1.0,
                  timestep="concat")
    lora = method.extras["loop_lora"]
    assert lora.names and all(p in set(method.trainable_parameters()) for p in method.extras.parameters())
    with torch.no_grad():
        for b in lora.B:
            b.normal_(std=0.05)  # B = 0 at init leaves A without gradient; move it so both show up
    for step, used in [(1, 1), (3, 3)]:
        method.model.zero_grad(set_to_none=True)
        method.extras.zero_grad(set_to_none=True)
        loss, metrics = method.loss(THREE[:4], step)
        loss.backward()
        assert metrics["thoughts"] == used and metrics["halt_bce"] > 0 and metrics["distill"] > 0
        for a, b in zip(lora.A, lora.B):
            for t in range(lora.loops):
                assert bool(a.grad[t].abs().sum() > 0) == (t < used), (step, t)
                assert bool(b.grad[t].abs().sum() > 0) == (t < used), (step, t)
        for name in ("timestep", "halt_head"):
            assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in method.extras[name].parameters()), name
        assert lora.active is None


# ---- training and checkpoints --------------------------------------------------------------------


def tiny_run(method, **overrides):
    values = {"method": method, "task": "multiplication", "task_options": {"digits": 2}, "model": "tiny-5m",
              "steps": 18, "batch_size": 8, "lr": 3e-3, "warmup_steps": 2, "save_every": 0, "eval_size": 0,
              "log_with": "none", "mixed_precision": "no", "max_new_tokens": 8}
    if method != "cot":
        values.update(c=1, stages=1, steps_per_stage=6)
    values.update(overrides)
    return make_run(values)


def test_a_tiny_coconut_run_learns_within_every_stage(tmp_path):
    run = tiny_run("coconut")
    train = TWO[:8]  # one fixed batch: within each stage the loss on it must fall
    method = build_method(run, texts_of(TWO))
    history = Trainer(method, train, run.train, tmp_path, run.describe("test")).fit()
    losses = [record["loss"] for record in history]
    assert [record["stage"] for record in history] == [0.0] * 6 + [1.0] * 6 + [2.0] * 6
    assert [record["thoughts"] for record in history[::6]] == [0.0, 1.0, 1.0]
    for stage in range(3):
        chunk = losses[stage * 6 : (stage + 1) * 6]
        assert sum(chunk[-2:]) / 2 < sum(chunk[:2]) / 2, (stage, chunk)
    assert losses[-1] < losses[0] / 2


def test_a_coconut_checkpoint_saved_mid_course_answers_at_its_stage(tmp_path):
    """6 steps of 4 a stage end at stage 1 of 2: the loaded checkpoint thinks 1 thought, as the run did at
    its end, not the 2 of the last stage."""
    run = tiny_run("coconut", stages=2, steps_per_stage=4, steps=6, save_every=6)
    trained = build_method(run, texts_of(TWO))
    Trainer(trained, TWO[:8], run.train, tmp_path, run.describe("test")).fit()
    loaded = load_method(tmp_path / "checkpoint")
    assert loaded.eval_thoughts() == trained.eval_thoughts() == 1
    before, after = trained.answer(TWO[20:24]), loaded.answer(TWO[20:24])
    assert [(p.text, p.forward_passes) for p in after] == [(p.text, p.forward_passes) for p in before]


def test_slr_checkpoint_round_trip_keeps_its_extras_and_answers(tmp_path, base):
    run = tiny_run("slr", steps=3, steps_per_stage=1, halting="learned", save_every=3)
    method = build_method(run, texts_of(TWO))
    Trainer(method, TWO[:8], run.train, tmp_path, run.describe("test")).fit()
    folder = checkpoint.find(tmp_path / "checkpoint")
    saved = checkpoint.read_extras(folder)
    assert saved.keys() == method.extra_state().keys() and any("loop_lora" in key for key in saved)
    assert any(float(t.abs().sum()) > 0 for key, t in saved.items() if key.startswith("loop_lora.B"))

    reloaded = load_method(folder)
    for key, tensor in method.extra_state().items():
        torch.testing.assert_close(reloaded.extra_state()[key], tensor, atol=0, rtol=0, msg=key)
    before, after = method.answer(TWO[20:24]), reloaded.answer(TWO[20:24])
    assert [(p.text, p.forward_passes) for p in after] == [(p.text, p.forward_passes) for p in before]
    for a, b in zip(after, before):
        assert a.thoughts == pytest.approx(b.thoughts, abs=1e-3)

    text = inspect(folder, TWO[20:22], top_k=3, png_path=tmp_path / "thoughts.png", overrides={"halting": "none"})
    assert "thought 0" in text and "lm head" in text and "nearest" in text and (tmp_path / "thoughts.png").exists()
    with pytest.raises(ValueError, match="a config key differs"):
        make(base, "slr", stages=1, halting="learned", loop_lora_r=2).load_extra_state(saved)


def test_a_cot_checkpoint_is_a_starting_point(tmp_path):
    cot_run = tiny_run("cot")
    cot = build_method(cot_run, texts_of(TWO))
    checkpoint.write(tmp_path / "cot", cot, cot_run.describe("test"))
    run = tiny_run("slr", init_from=str(tmp_path / "cot"), first_stage=1)
    method = build_method(run)  # as run.train builds a new run with init_from
    for name, tensor in cot.model.state_dict().items():
        torch.testing.assert_close(method.model.state_dict()[name], tensor, atol=0, rtol=0, msg=name)
    assert all(not b.detach().any() for b in method.extras["loop_lora"].B)  # extras start fresh
    assert method.plans(TWO[:1], 0) == [Plan(1, 1, 1)]
    loss, _ = method.loss(TWO[:4], 0)
    assert torch.isfinite(loss)


def test_a_latent_checkpoint_to_start_from_gives_its_extras_but_not_its_step_counts(tmp_path):
    """A coconut or slr run from another's checkpoint (3 hops there, 6 here) places latent answers by the step
    means of its own training data; resuming a run keeps them."""
    run = tiny_run("slr", steps=4, keep_position=True)
    first = build_method(run, texts_of(TWO))
    Trainer(first, TWO[:8], run.train, tmp_path / "first", run.describe("test")).fit()
    saved = first.extras["step_tokens"]
    assert saved.count[0] == 32 and saved.by_step[0, 0] == 32  # 4 batches of 8 examples recorded
    checkpoint.write(tmp_path / "first", first, run.describe("test"))

    started = build_method(tiny_run("slr", keep_position=True, init_from=str(tmp_path / "first")))
    counts = started.extras["step_tokens"]
    assert not counts.count.any() and not counts.by_step.any()
    for name, tensor in first.extras.state_dict().items():
        if not name.startswith("step_tokens."):
            torch.testing.assert_close(started.extras.state_dict()[name], tensor, atol=0, rtol=0, msg=name)
    resumed = build_method(run, weights=tmp_path / "first")
    torch.testing.assert_close(resumed.extras["step_tokens"].by_step, saved.by_step, atol=0, rtol=0)


def test_slr_extras_saved_for_fewer_loops_widen_to_the_same_function_with_an_adapter_per_loop(base):
    """A 3-hop slr model (3 loop adapters) starting a 6-hop run: the new loops start as the last trained one."""
    short = make(base, "slr", c=1, stages=2)
    with torch.no_grad():
        for tensor in [*short.extras["loop_lora"].A, *short.extras["loop_lora"].B]:
            tensor.normal_()
    saved = short.extra_state()
    long = make(base, "slr", c=1, stages=4)
    long.load_extra_state(saved)
    for short_a, long_a in zip(short.extras["loop_lora"].A, long.extras["loop_lora"].A):
        torch.testing.assert_close(long_a[:2], short_a, atol=0, rtol=0)
        torch.testing.assert_close(long_a[2:], short_a[1:].expand(2, -1, -1), atol=0, rtol=0)
    tokens = torch.tensor([ids(short.tokenizer, "1 2 * 3 4")])
    for loop in (1, 3):  # a trained loop, and one past the saved adapters (which used the last)
        short.extras["loop_lora"].active = long.extras["loop_lora"].active = loop
        torch.testing.assert_close(long.model(tokens).logits, short.model(tokens).logits)
    with pytest.raises(ValueError, match="a config key differs"):  # fewer loops than saved: no adapter to drop
        make(base, "slr", c=1, stages=1).load_extra_state(saved)


@pytest.mark.parametrize("values, named, choice", [
    ({"c": 0}, "c", None),
    ({"mix_probability": 1.5}, "mix_probability", None),
    ({"method": "slr", "timestep": "multiply"}, "timestep", "concat"),
    ({"method": "slr", "halting": "sometimes"}, "halting", "learned"),
    ({"method": "slr", "residual_mode": "last"}, "residual_mode", "initial"),
    ({"timestep": "add"}, "timestep", None),  # a stabiliser is not a coconut key
])
def test_config_errors_name_the_key(values, named, choice):
    base_values = {"method": "coconut", "task": "multiplication", "model": "tiny-5m"}
    with pytest.raises(ConfigError, match=named) as error:
        make_run({**base_values, **values})
    if choice:
        assert choice in str(error.value)


def test_step_counts_saved_before_the_trailing_count_still_load(base):
    method = make(base, "coconut", keep_position=True)
    method.load_extra_state({"step_tokens.count": torch.tensor([2.0, 6.0, 12.0], dtype=torch.float64)})
    assert method.extras["step_tokens"].count.tolist() == [2.0, 6.0, 12.0, 0.0]
    assert method.extras["step_tokens"].expected_end(3) == 6  # 3 steps of 2 tokens, nothing after the last


def test_steps_whose_length_depends_on_their_place_are_answered_at_their_own_training_ends():
    """Named parity: 'b9 1 0' is 5 tokens with its separator, 'b10 1 0' 6 ('b10' is b, 1, 0). At answer time
    each thought sits where its own step ended in training, and the language after it at its CoT position,
    not at a multiple of the mean step length."""
    task = tasks.get("parity", bits=11, chain="named")
    examples = task.generate(8, seed=0)
    model, tokenizer = load_backbone("tiny-1m", texts=texts_of(examples), seed=0)
    config = methods.get("coconut").Config(c=1, stages=11, steps_per_stage=1, markers=False, keep_position=True,
                                           max_new_tokens=4)
    method = methods.get("coconut")(config, model, tokenizer, task)
    thought_positions(method, examples, 10)  # stage 11: every step latent; records the steps' tokens
    ends, cuts = step_ends(tokenizer, examples[0], " ; "), step_cuts(tokenizer, examples[0], " ; ")
    assert ends == [5 * k - 1 for k in range(1, 10)] + [50, 56] and cuts == [5 * k for k in range(1, 10)] + [51, 57]
    counts = method.extras["step_tokens"]
    assert [counts.expected_end(k) for k in range(1, 12)] == ends
    assert [counts.expected(k) for k in range(1, 12)] == cuts
    assert round(5 * 57 / 11) != cuts[4]  # what the mean tokens a step would give

    q = len(tokenizer(f"{examples[0].question}\n", add_special_tokens=False)["input_ids"])
    seen = []
    hook = method.model.register_forward_pre_hook(
        lambda module, args, kwargs: seen.append(kwargs["position_ids"].tolist()), with_kwargs=True)
    method.stage = None  # trained: every step latent
    try:
        method.answer(examples[:1])
    finally:
        hook.remove()
    assert [passed[0] for passed in seen[1:12]] == [[q + end - 1] for end in ends]
    assert seen[12][0][0] == q + cuts[-1]  # the answer's first token: where the CoT model wrote it

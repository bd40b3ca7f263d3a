"""slr with loop=depth on a tiny model: one loop with every stabiliser off is the plain model, cached decoding
equals full recomputation, per-token halting, `latent inspect`'s per-token trace, each stabiliser's switch,
truncated back-propagation, training through the real trainer, and the command line's sweep over test-time
loops and inspect."""

import copy
import json
import re
from dataclasses import replace

import pytest
import torch

from latent_reasoning import checkpoint, methods, tasks
from latent_reasoning.backbones import add_lora, load_backbone
from latent_reasoning.cli import main
from latent_reasoning.config import ConfigError
from latent_reasoning.inspect_thoughts import DepthTrace, depth_report, inspect
from latent_reasoning.methods.base import encode_prompts, prompt_text
from latent_reasoning.methods.coconut import relative_change
from latent_reasoning.methods.looped import Caches, DepthLoop
from latent_reasoning.run import make_run, texts_of
from latent_reasoning.trainer import TrainConfig, Trainer, adamw

PARITY = tasks.get("parity", bits=6)
EXAMPLES = PARITY.generate(64, seed=0)
SHORT = tasks.get("parity", bits=3).generate(4, seed=0)  # shorter questions: left padding in a batch
ALL_OFF = dict(timestep="none", loop_lora=False, injection=False, normalize=False)
SWITCHES = {"timestep": dict(timestep="none"), "loop_lora": dict(loop_lora=False), "injection": dict(injection=False),
            "normalize": dict(normalize=False)}


@pytest.fixture(scope="module")
def base():
    """A tiny random Llama (4 layers) and its word tokenizer, built once; each method gets a fresh copy."""
    return load_backbone("tiny-1m", texts=texts_of(EXAMPLES + SHORT), seed=0)


def make(base, **options):
    model, tokenizer = base
    options.setdefault("max_new_tokens", 6)
    config = methods.get("slr").Config(loop="depth", **options)
    method = methods.get("slr")(config, copy.deepcopy(model), tokenizer, PARITY)
    if "loop_lora" in method.extras:  # B = 0 at init makes the adapters do nothing; give them a seeded value
        generator = torch.Generator().manual_seed(0)
        with torch.no_grad():
            for b in method.extras["loop_lora"].B:
                b.copy_(0.05 * torch.randn(b.shape, generator=generator))
    method.model.eval()
    return method


def prompts(method, examples):
    inputs = encode_prompts(method.tokenizer, [prompt_text(e) for e in examples], method.device)
    return inputs["input_ids"], inputs["attention_mask"]


def alone(method, example, tokens=()):
    """Example's prompt ids (no padding) followed by `tokens`, as a batch of one, and its mask."""
    ids = torch.tensor([method.tokenizer(prompt_text(example), add_special_tokens=False)["input_ids"] + list(tokens)])
    return ids, torch.ones_like(ids)


@pytest.mark.parametrize("prelude, coda", [(0, 0), (1, 2)])
def test_one_loop_with_every_stabiliser_off_is_the_plain_model(base, prelude, coda):
    method = make(base, loops=1, prelude=prelude, coda=coda, **ALL_OFF)
    assert isinstance(method, DepthLoop) and not list(method.extras.parameters())
    ids, mask = prompts(method, [EXAMPLES[0], SHORT[0], EXAMPLES[1]])
    with torch.no_grad():
        got = method.run(ids, mask, loops=1).logits
        plain = base[0](input_ids=ids, attention_mask=mask,
                        position_ids=(mask.cumsum(-1) - 1).clamp(min=0)).logits  # positions as generate gives them
    real = mask.bool()
    torch.testing.assert_close(got[real], plain[real], atol=1e-5, rtol=0)
    with torch.no_grad():  # a second loop is not the plain model
        assert not torch.allclose(method.run(ids, mask, loops=2).logits[real], plain[real], atol=1e-3)


# as answering runs: the cached passes take e_t once (Caches.constants) and the loop adapters merged into the weights
@torch.no_grad()
def test_cached_decoding_equals_full_recomputation(base):
    T = 3
    method = make(base, loops=T, prelude=1, coda=1)  # every stabiliser on
    examples = [EXAMPLES[0], SHORT[0], EXAMPLES[1]]
    ids, mask = prompts(method, examples)
    assert not bool(mask.all())  # left padding
    caches = method.new_caches()
    step = method.run(ids, mask, T, caches, keep=1)
    cached, picked = [step.logits[:, -1]], []
    for _ in range(4):
        picked.append(cached[-1].argmax(-1))
        mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)
        cached.append(method.run(picked[-1].unsqueeze(1), mask, T, caches).logits[:, -1])
    assert all(cache.get_seq_length(1) == mask.shape[1] for cache in caches.loops)
    for b, example in enumerate(examples):
        tokens = [int(p[b]) for p in picked]
        full_ids, full_mask = alone(method, example, tokens)
        full = method.run(full_ids, full_mask, T).logits[0, -len(cached):]
        torch.testing.assert_close(torch.stack([c[b] for c in cached]), full, atol=1e-4, rtol=0)

    # answer() decodes greedily what the full recomputation would pick, and counts T passes a token
    method.config = replace(method.config, max_new_tokens=4)
    for example, prediction in zip(examples, method.answer(examples)):
        sequence = alone(method, example)[0][0].tolist()
        prompt_length = len(sequence)
        for _ in range(4):
            full_ids, full_mask = alone(method, example, sequence[prompt_length:])
            sequence.append(int(method.run(full_ids, full_mask, T).logits[0, -1].argmax()))
            if sequence[-1] == method.tokenizer.eos_token_id:
                break
        generated = sequence[prompt_length:]
        assert prediction.text == method.tokenizer.decode(generated, skip_special_tokens=True)
        assert prediction.thoughts == [T] * len(generated) and prediction.generated_tokens == len(generated)
        assert prediction.forward_passes == pytest.approx(len(generated) * (1 + 2 * T + 1) / 4)


@pytest.mark.parametrize("backbone_lora", [False, True])
def test_answering_merges_the_loop_adapters_into_the_weights_and_follows_training_and_loading(base, backbone_lora):
    T = 2
    method = make(base, loops=T, **{**ALL_OFF, "loop_lora": True})
    if backbone_lora:  # under a peft adapter on the same projections, which must still add its own update
        model, tokenizer = base
        model = add_lora(copy.deepcopy(model), r=2, alpha=4)
        with torch.no_grad():
            for name, parameter in model.named_parameters():
                if "lora_B" in name:
                    parameter.normal_(0, 0.05, generator=torch.Generator().manual_seed(1))
        lora = method.extras["loop_lora"]
        method = methods.get("slr")(method.config, model, tokenizer, PARITY)
        method.extras["loop_lora"].load_state_dict(lora.state_dict())
        method.model.eval()
    ids, mask = prompts(method, [EXAMPLES[0], SHORT[0]])
    real = mask.bool()
    weights = dict(method.model.named_parameters())

    @torch.no_grad()
    def answered():  # answering's cached pass (W + s B_t A_t) against the hooks' (W x + s B_t A_t x)
        merged = method.run(ids, mask, T, method.new_caches()).logits
        torch.testing.assert_close(merged[real], method.run(ids, mask, T).logits[real], atol=1e-5, rtol=0)
        return merged

    first = answered()
    lora = method.extras["loop_lora"]
    assert len(lora.merged) == T * len(lora.bases)  # one merged weight per loop index and adapted layer
    optimizer = adamw(method.trainable_parameters(), lr=1e-2, weight_decay=0.0)  # the trainer's (fused)
    method.loss(EXAMPLES[:4], step=0)[0].backward()
    optimizer.step()
    trained = answered()  # the step shows in the merged weights
    assert not torch.allclose(trained[real], first[real], atol=1e-4)
    method.load_extra_state({key: value + 0.05 if ".B." in key else value for key, value in method.extra_state().items()})
    assert not torch.allclose(answered()[real], trained[real], atol=1e-4)  # and so does a load
    assert all(p is weights[name] for name, p in method.model.named_parameters())  # the model's own weights are back
    if backbone_lora:  # the backbone's adapter counts in what the merged weights gave (its update is not zero)
        with torch.no_grad(), method.model.disable_adapter():
            without = method.run(ids, mask, T, method.new_caches()).logits
        assert not torch.allclose(without[real], trained[real], atol=1e-3)


def first_decoding_step(method, examples, T):
    """The caches after the prompts' pass, the greedy first token and the mask of the pass that reads it."""
    ids, mask = prompts(method, examples)
    caches = method.new_caches()
    token = method.run(ids, mask, T, caches, keep=1).logits[:, -1].argmax(-1)
    return caches, token.unsqueeze(1), torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)


@torch.no_grad()
@pytest.mark.parametrize("halt_on", ["change", "kl"])
def test_a_converged_token_stops_iterating_and_the_other_rows_are_unchanged(base, halt_on):
    T = 6
    method = make(base, loops=T, prelude=1, coda=1, halt_on=halt_on, halt_threshold=0.0)
    examples = EXAMPLES[:8]
    caches, token, mask = first_decoding_step(method, examples, T)
    watched, divergence = [], method.divergence
    method.divergence = lambda now, before: watched.append(divergence(now, before)) or watched[-1]
    free = method.run(token, mask, T, copy.deepcopy(caches), halt=True)
    unhalted = method.run(token, mask, T, copy.deepcopy(caches))
    assert free.iterations.tolist() == [T] * len(examples)  # threshold 0: nothing halts, nothing changes
    torch.testing.assert_close(free.logits, unhalted.logits, atol=0, rtol=0)

    measured = torch.stack(watched, 1)  # [B, T - 2]: what halting watched after iterations 2 .. T - 1
    lowest = measured.min(1).values.sort().values
    gap = int((lowest[1:] - lowest[:-1]).argmax())
    assert float(lowest[gap + 1] - lowest[gap]) > 1e-4 * float(lowest[gap + 1])
    method.config = replace(method.config, halt_threshold=float((lowest[gap] + lowest[gap + 1]) / 2))
    below = measured < method.config.halt_threshold
    expected = [2 + int(row.nonzero()[0]) if bool(row.any()) else T for row in below]
    assert 0 < sum(n < T for n in expected) < len(examples)

    halting = copy.deepcopy(caches)
    step = method.run(token, mask, T, halting, halt=True)
    assert step.iterations.tolist() == expected
    assert step.coda_runs.tolist() == (expected if halt_on == "kl" else [1] * len(examples))
    for b, n in enumerate(expected):
        if n == T:  # a row that did not halt computed what it computes without halting
            torch.testing.assert_close(step.logits[b], unhalted.logits[b], atol=1e-6, rtol=0)
            continue
        # a halted token answers from h_n: as if the loop had n iterations
        short = Caches(copy.deepcopy(caches.outer), copy.deepcopy(caches.loops[:n]))
        torch.testing.assert_close(step.logits[b], method.run(token, mask, n, short).logits[b], atol=1e-5, rtol=0)
        for t in range(n + 1, T + 1):  # the iterations it skipped hold its last iteration's keys and values
            for i in method.core:
                for name in ("keys", "values"):
                    later = getattr(halting.loops[t - 1].layers[i], name)[b, :, -1]
                    torch.testing.assert_close(later, getattr(halting.loops[n - 1].layers[i], name)[b, :, -1],
                                               atol=0, rtol=0)


@torch.no_grad()
@pytest.mark.parametrize("halt_on", ["change", "kl"])
def test_halting_counts_the_iterations_each_token_ran(base, halt_on):
    T = 4
    examples = EXAMPLES[:3]
    method = make(base, loops=T, prelude=1, coda=1)
    plain = method.answer(examples)
    method.config = replace(method.config, halt_on=halt_on, halt_threshold=0.0)
    assert [(p.text, p.forward_passes, p.thoughts) for p in method.answer(examples)] == \
           [(p.text, p.forward_passes, p.thoughts) for p in plain]

    # every generated token halts as soon as it may (after 2 iterations); the prompt's pass runs all T
    method.config = replace(method.config, halt_threshold=1e9)
    caches, token, mask = first_decoding_step(method, examples, T)
    step = method.run(token, mask, T, caches, halt=True)  # no core runs after iteration 2: entries are copied
    assert step.iterations.tolist() == [2] * len(examples)
    assert len({cache.get_seq_length(1) for cache in caches.loops}) == 1
    for prediction in method.answer(examples):
        n = prediction.generated_tokens
        assert prediction.thoughts == [T] + [2] * (n - 1)
        codas = 2 if halt_on == "kl" else 1
        assert prediction.forward_passes == pytest.approx((1 + 2 * T + 1) / 4 + (n - 1) * (1 + 2 * 2 + codas) / 4)
    assert sum(p.forward_passes for p in method.answer(examples)) < sum(p.forward_passes for p in plain)


def shown(report: str) -> list[list[tuple[int, list[float]]]]:
    """Per question of an inspect report, each token's iterations and the relative changes printed for it."""
    questions = []
    for line in report.splitlines():
        if re.match(r"\[\d+\] ", line):
            questions.append([])
        elif found := re.match(r" +token \d+: (\d+) iterations", line):
            questions[-1].append((int(found[1]), []))
        elif found := re.match(r" +change ([^;]+);", line):
            questions[-1][-1][1].extend(float(c) for c in found[1].split())
    return questions


@torch.no_grad()
def test_inspect_shows_the_iterations_each_token_used_with_and_without_halting(base, tmp_path):
    T, options = 4, dict(loops=4, prelude=1, coda=1, max_new_tokens=6)
    method = make(base, **options)
    run = make_run({"method": "slr", "task": "parity", "task_options": {"bits": 6}, "model": "tiny-1m",
                    "loop": "depth", **options})
    folder = checkpoint.write(tmp_path / "checkpoint", method, run.describe("test"))
    examples = EXAMPLES[:4]

    text = inspect(folder, examples, png_path=tmp_path / "depth.png")
    predictions = method.answer(examples)
    assert [[n for n, _ in tokens] for tokens in shown(text)] == [p.thoughts for p in predictions]
    assert all(p.thoughts == [T] * p.generated_tokens for p in predictions)
    assert all(len(changes) == T - 1 for tokens in shown(text) for _, changes in tokens)
    for p in predictions:
        assert f"{p.forward_passes:.2f} forward passes" in text and ("correct" in text or "wrong" in text)
    assert (tmp_path / "depth.png").exists()

    # halting: a threshold between the changes the tokens show, so that some halt early and others do not
    watched = sorted(min(changes[: T - 2]) for tokens in shown(text) for _, changes in tokens[1:])
    middle = len(watched) // 2
    assert watched[middle - 1] < watched[middle]
    threshold = (watched[middle - 1] + watched[middle]) / 2
    overrides = {"halt_on": "change", "halt_threshold": threshold}
    text = inspect(folder, examples, overrides=overrides)
    method.config = replace(method.config, **overrides)
    predictions = method.answer(examples)
    assert [[n for n, _ in tokens] for tokens in shown(text)] == [p.thoughts for p in predictions]
    generated = [n for p in predictions for n in p.thoughts[1:]]  # the prompt's pass runs all T
    assert 0 < sum(n < T for n in generated) < len(generated)
    for tokens in shown(text):  # the changes printed (3 digits) agree with where halting stopped
        for n, changes in tokens[1:]:
            assert len(changes) == n - 1
            assert all(c >= threshold * (1 - 5e-3) for c in changes[: n - 2])  # watched after t = 2 .. n - 1
            assert n == T or changes[-1] < threshold * (1 + 5e-3)  # halted after iteration n


@torch.no_grad()
@pytest.mark.parametrize("halt_on", ["change", "kl"])
def test_the_inspected_trace_is_what_each_iteration_computes(base, halt_on):
    T = 4
    method = make(base, loops=T, prelude=1, coda=1, max_new_tokens=4, halt_on=halt_on, halt_threshold=1e-9)
    examples = [EXAMPLES[0], SHORT[0]]
    watched, divergence = [], method.divergence
    method.divergence = lambda now, before: watched.append(divergence(now, before)) or watched[-1]
    plain = method.answer(examples)
    untraced, watched[:] = watched[:], []
    trace = DepthTrace()
    predictions = method.answer(examples, on_iteration=trace)
    assert predictions == plain and len(watched) == len(untraced)  # tracing changes nothing
    assert all(torch.equal(a, b) for a, b in zip(watched, untraced))

    # the trace holds what halting watched after iterations 2 .. T - 1 of each generated token's pass
    assert len(watched) == (len(trace.passes) - 1) * (T - 2)
    for k, value in enumerate(watched):
        iterations = trace.passes[1 + k // (T - 2)]
        t = 2 + k % (T - 2)
        (state, *_, kl), (before, *_) = iterations[t - 1], iterations[t - 2]
        torch.testing.assert_close(value, kl if halt_on == "kl" else relative_change(state, before), atol=0, rtol=0)

    text = depth_report(method, examples)
    for b, (example, prediction) in enumerate(zip(examples, predictions)):
        # on the prompt's pass, iteration t reads what a T = t loop gives (every position has run t iterations)
        _, top, p, kl = trace.token(b, 0, T)
        log_p = torch.stack([method.run(*alone(method, example), t).logits[0, -1].float().log_softmax(-1)
                             for t in range(1, T + 1)])
        assert top.tolist() == log_p.argmax(-1).tolist()
        torch.testing.assert_close(p, log_p.max(-1).values.exp(), atol=1e-5, rtol=0)
        torch.testing.assert_close(kl, (log_p[:-1].exp() * (log_p[:-1] - log_p[1:])).sum(-1), atol=1e-5, rtol=0)
        tokens = [trace.token(b, index, n) for index, n in enumerate(prediction.thoughts)]
        # the last iteration's read is the token written
        assert method.tokenizer.decode([int(top[-1]) for _, top, _, _ in tokens],
                                       skip_special_tokens=True) == prediction.text
        for (states, *_), (n, printed) in zip(tokens, shown(text)[b]):  # the relative change, by hand
            assert printed == pytest.approx([float((states[t] - states[t - 1]).norm() / states[t - 1].norm())
                                             for t in range(1, n)], rel=5e-3)


def test_each_stabiliser_switch_changes_the_output_and_nothing_else(base):
    ids, mask = prompts(make(base), [EXAMPLES[0], SHORT[0]])
    real = mask.bool()
    on = make(base, loops=2)
    parameters = dict(on.extras.named_parameters())
    assert {name.split(".")[0] for name in parameters} == {"timestep", "loop_lora"}
    with torch.no_grad():
        reference = on.run(ids, mask, 2).logits
    trained = on.config
    for name, off in SWITCHES.items():
        built = make(base, loops=2, **off)
        own = dict(built.extras.named_parameters())
        assert own.keys() == {key for key in parameters if not key.startswith(name + ".")}, name
        for key, parameter in own.items():  # the other stabilisers start where they would with it on
            torch.testing.assert_close(parameter, parameters[key], atol=0, rtol=0, msg=key)
        on.config = replace(trained, **off)  # switched off at answer time: as if never trained with it
        with torch.no_grad():
            got, ablated = built.run(ids, mask, 2).logits, on.run(ids, mask, 2).logits
        assert not torch.allclose(got[real], reference[real], atol=1e-3), name
        torch.testing.assert_close(ablated[real], got[real], atol=1e-5, rtol=0, msg=name)
    on.config = trained


@pytest.mark.parametrize("backprop_loops", [None, 1, 2])
def test_truncated_backprop_reaches_only_the_last_k_iterations(base, backprop_loops):
    T = 3
    method = make(base, loops=T, prelude=1, backprop_loops=backprop_loops)
    method.model.train()
    loss, metrics = method.loss(EXAMPLES[:4], step=0)
    loss.backward()
    assert metrics["loops"] == T
    reached = T if backprop_loops is None else backprop_loops
    for b in method.extras["loop_lora"].B:
        assert [bool(b.grad[t].abs().sum() > 0) for t in range(T)] == [t >= T - reached for t in range(T)]
    prelude = method.model.get_decoder().layers[0].mlp.down_proj.weight
    assert prelude.grad is not None and prelude.grad.abs().sum() > 0  # through h_0, injected in every iteration

    without = make(base, loops=T, prelude=1, backprop_loops=1, injection=False)
    without.model.train()
    without.loss(EXAMPLES[:4], step=0)[0].backward()
    prelude = without.model.get_decoder().layers[0].mlp.down_proj.weight
    assert prelude.grad is None or not prelude.grad.any()  # no injection: the prelude feeds the first iteration only


def test_freeze_backbone_trains_only_the_stabilisers(base):
    method = make(base, loops=2, prelude=1, freeze_backbone=True)
    before = {name: p.detach().clone() for name, p in method.model.named_parameters()}
    trained = method.trainable_parameters()
    assert {id(p) for p in trained} == {id(p) for p in method.extras.parameters()}
    optimizer = torch.optim.AdamW(trained, lr=1e-2)
    method.model.train()
    losses = []
    for _ in range(15):
        loss, _ = method.loss(EXAMPLES[:8], step=0)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(float(loss))
    assert losses[-1] < losses[0]  # the loop-wise LoRA and e_t alone lower the loss
    assert all(torch.equal(p, before[name]) for name, p in method.model.named_parameters())
    with pytest.raises(ConfigError, match="freeze_backbone=true with lora=true"):  # it would freeze the adapter
        methods.get("slr").Config(loop="depth", freeze_backbone=True, lora=True).check()


@pytest.mark.parametrize("step_readout", ["question", "answer"])
def test_step_weight_trains_each_iteration_readout_on_its_gold_step(base, step_readout):
    T = 3
    method = make(base, loops=T, step_weight=0.5, step_readout=step_readout)
    examples = EXAMPLES[:4] + SHORT[:2]  # rows of different lengths: each question ends at its own position
    # the reference: a separate pass over the questions alone (or followed by the answer marker "####", after which
    # the answer's value comes), read at their last position
    read = [prompt_text(e) + ("####" if step_readout == "answer" else "") for e in examples]
    readouts = []
    inputs = encode_prompts(method.tokenizer, read, method.device)
    method.run(inputs["input_ids"], inputs["attention_mask"], T, keep=1, readouts=readouts)
    first = lambda text: method.tokenizer(text, add_special_tokens=False)["input_ids"][0]  # noqa: E731
    reference = torch.stack([
        torch.nn.functional.cross_entropy(readouts[t][b : b + 1], torch.tensor([first(e.steps[t])]))
        for t in range(T - 1) for b, e in enumerate(examples) if t < len(e.steps)]).mean()  # the last is the answer's
    plain, _ = make(base, loops=T).loss(examples, step=0)
    method.model.train()
    loss, metrics = method.loss(examples, step=0)  # the readouts come from the training pass itself
    assert metrics["step_ce"] == pytest.approx(float(reference.detach()), rel=1e-5)
    torch.testing.assert_close(loss, plain + 0.5 * reference, atol=1e-5, rtol=1e-5)
    loss.backward()  # iteration T - 1's readout reaches the core through every iteration before it
    assert all(b.grad[t].abs().sum() > 0 for b in method.extras["loop_lora"].B for t in range(T))
    one, _ = make(base, loops=1, step_weight=1.0).loss(examples, step=0)
    torch.testing.assert_close(one, make(base, loops=1).loss(examples, step=0)[0])  # T = 1: nothing to supervise


def test_step_hold_reads_every_iteration_as_an_answer_and_holds_it_past_the_last_step(base):
    T = 5
    method = make(base, loops=T, step_weight=0.5, step_readout="answer", step_hold=True)
    examples = EXAMPLES[:3] + SHORT[:3]  # 6 steps: T cannot reach the answer; 3 steps: held for iterations 4 and 5
    as_answer = lambda text: method.tokenizer(f"#### {text}", add_special_tokens=False)["input_ids"][4]  # noqa: E731
    assert as_answer("1") != method.tokenizer("1", add_special_tokens=False)["input_ids"][0]  # the form matters here
    read = [prompt_text(e) + "####" for e in examples]
    readouts = []
    inputs = encode_prompts(method.tokenizer, read, method.device)
    method.run(inputs["input_ids"], inputs["attention_mask"], T, keep=1, readouts=readouts)
    held = lambda e, t: e.steps[t] if t < len(e.steps) else e.answer  # noqa: E731
    reference = torch.stack([
        torch.nn.functional.cross_entropy(readouts[t][b : b + 1], torch.tensor([as_answer(held(e, t))]))
        for t in range(T - 1) for b, e in enumerate(examples)]).mean()
    # the last iteration answers: with the answer where T reaches it, with step T where it does not
    answers = [replace(e, answer=e.steps[T - 1]) if len(e.steps) >= T else e for e in examples]
    assert [a.answer == e.answer for a, e in zip(answers, examples)] != [True] * 6  # some answers do change
    plain, _ = make(base, loops=T).loss(answers, step=0)
    method.model.train()
    loss, metrics = method.loss(examples, step=0)
    assert metrics["step_ce"] == pytest.approx(float(reference.detach()), rel=1e-5)
    torch.testing.assert_close(loss, plain + 0.5 * reference, atol=1e-5, rtol=1e-5)
    with pytest.raises(ConfigError, match="step_readout=answer"):
        methods.get("slr").Config(loop="depth", step_weight=1.0, step_hold=True).check()


def test_a_tiny_depth_run_learns_through_the_trainer(base, tmp_path):
    method = make(base, loops=2, loops_random="uniform", prelude=1, backprop_loops=2)
    config = TrainConfig(steps=24, batch_size=8, lr=3e-3, warmup_steps=0, save_every=0, log_with="none",
                         mixed_precision="no")
    history = Trainer(method, EXAMPLES, config, tmp_path, run={"method": "slr"}).fit()
    drawn = [record["loops"] for record in history]
    assert drawn == [method.training_loops(step) for step in range(24)]  # a function of the step
    assert set(drawn) == {1.0, 2.0, 3.0}  # uniform on 1 .. 2 loops - 1
    first, last = history[0]["loss"], sum(record["loss"] for record in history[-4:]) / 4
    assert last < 0.5 * first, (first, last)
    poisson = make(base, loops=3, loops_random="poisson")
    assert sum(poisson.training_loops(step) for step in range(400)) / 400 == pytest.approx(3, abs=0.25)
    for kind in ("uniform", "poisson"):  # at least loops_min, the mean kept
        drawn = [make(base, loops=6, loops_min=4, loops_random=kind).training_loops(step) for step in range(400)]
        assert min(drawn) == 4 and sum(drawn) / 400 == pytest.approx(6, abs=0.3)
    assert max(make(base, loops=6, loops_min=4, loops_random="uniform").training_loops(s) for s in range(400)) == 8


def test_a_depth_curriculum_grows_T_on_its_schedule_in_one_run(base, tmp_path):
    method = make(base, loops=5, loops_from=1, loops_by=2, loops_every=3)
    config = TrainConfig(steps=9, batch_size=8, lr=3e-3, warmup_steps=0, save_every=0, log_with="none",
                         mixed_precision="no")
    history = Trainer(method, EXAMPLES, config, tmp_path, run={"method": "slr"}).fit()
    assert [record["loops"] for record in history] == [1, 1, 1, 3, 3, 3, 5, 5, 5]
    assert method.training_loops(1000) == 5 and method.eval_loops() == 5  # it stops at loops, and answers there


def test_train_then_sweep_test_time_loops_and_inspect_from_the_command_line(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", "--method", "slr", "--task", "parity", "--model", "tiny-1m", "--out", str(run),
                 "loop=depth", "loops=2", "task.bits=6", "steps=2", "batch_size=4", "train_size=40", "eval_size=0",
                 "log_with=none", "max_new_tokens=4"]) == 0
    capsys.readouterr()
    assert main(["eval", "--checkpoint", str(run), "--out", str(tmp_path / "ev"), "--limit", "4",
                 "--sweep", "eval_loops=1,3"]) == 0
    one, three = (json.loads((tmp_path / "ev" / f"eval_loops={n}" / "summary.json").read_text()) for n in (1, 3))
    assert one["eval_loops"] == 1 and three["eval_loops"] == 3 and one["n"] == three["n"] == 4
    assert one["forward_passes"] == pytest.approx(one["generated_tokens"])  # the whole model looped: T per token
    assert three["forward_passes"] == pytest.approx(3 * three["generated_tokens"])
    assert (tmp_path / "ev" / "results.png").exists()

    capsys.readouterr()
    assert main(["inspect", "--checkpoint", str(run), "--limit", "2", "--png", str(tmp_path / "depth.png"),
                 "eval_loops=3", "halt_on=change", "halt_threshold=0.5"]) == 0
    text = capsys.readouterr().out
    assert "up to 3 core iterations per generated token (halt_on=change below 0.5" in text
    assert len(shown(text)) == 2 and all(tokens and tokens[0][0] == 3 for tokens in shown(text))
    assert "forward passes" in text and (tmp_path / "depth.png").exists()


@pytest.mark.parametrize("values, named", [
    ({"loops": 2}, "loops"),  # a depth key under loop=thoughts
    ({"loop": "depth", "stages": 2}, "stages"),  # a thoughts key under loop=depth
    ({"loop": "depth", "halt_on": "sometimes"}, "halt_on"),
    ({"loop": "depth", "loops": 0}, "loops"),
    ({"loop": "depth", "loops_random": "normal"}, "loops_random"),
    ({"loop": "depth", "loops_random": "uniform", "loops": 3, "loops_min": 4}, "loops_min=4 is above loops=3"),
    ({"loop": "depth", "loops_min": 2}, "loops_random=none"),
    ({"loop": "depth", "loops": 3, "loops_from": 4}, "loops_from=4 is above loops=3"),
    ({"loop": "depth", "loops_from": 1, "loops_random": "uniform"}, "choose one"),
    ({"loop": "depth", "loops_every": 0}, "loops_every"),
    ({"loops_from": 1}, "loops_from"),  # a depth key under loop=thoughts
])
def test_config_errors_name_the_key(values, named):
    with pytest.raises(ConfigError, match=named):
        make_run({"method": "slr", "task": "parity", "model": "tiny-1m", **values})


def test_a_core_needs_a_layer(base):
    with pytest.raises(ConfigError, match="prelude=2, coda=2"):
        make(base, prelude=2, coda=2)

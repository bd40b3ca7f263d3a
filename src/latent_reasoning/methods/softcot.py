"""Soft thoughts for a frozen backbone: SoftCoT (Xu et al., 2025, arXiv 2502.12134), SoftCoT++ (arXiv 2505.11484),
and the layout LTA-Thinker (lta_thinker.py) shares with them.

The layout. N thought vectors v_1 .. v_N, of the backbone's width, replace the input embeddings of N <latent>
placeholders (latent.splice) in the frozen backbone's sequence

    question <bot> v_1 .. v_N <eot> steps #### answer <eos>

and what makes the thoughts is trained by the cross-entropy of everything after <eot>,

    L_SFT = - mean_{i > <eot>} log p(y_i | question, <bot>, v_1 .. v_N, <eot>, y_<i).

The backbone's weights never change (with lora=true an adapter on it trains as well). N is `thoughts` in
training and `eval_thoughts` at answer time (the papers train with 32 and answer with fewer). At answer time
the backbone reads "question <bot> v_1 .. v_N <eot>" and writes the steps and the answer;
`thought_variance_scale` s first moves each thought away from (s > 1) or towards (s < 1) the mean of its N
thoughts, v_j <- m + sqrt(s) (v_j - m), which multiplies their variance by s (the critics' check of "more
variance is closer to the truth"). The variance logged (training metric `thought_variance`, and each
prediction's) is that of the N thoughts around their mean, averaged over the hidden dimensions.

SoftCoT. A frozen assistant model A reads "question <latent> x N" (tokenised by its own tokenizer); its last-layer
states h_1 .. h_N at the placeholders pass through the one trained module, a projection,

    v_j = W h_j + b,        W: d_assistant -> d_backbone.

`assistant` is "backbone" (the default: the frozen backbone itself, so nothing else is loaded; under lora its
adapter is off while it assists), a run folder or checkpoint (e.g. a smaller tiny model trained with `cot`), or
a name `load_backbone` takes without training text (smollm2-135m-instruct, a folder, a hub id). A random tiny
preset is refused: it would have no tokenizer of its own (build one by training it first).

SoftCoT++ (`softcot++`, K = `chains`). K learned initial-token embeddings e_1 .. e_K (of the assistant's width,
drawn like untrained embedding rows) each fill all N placeholders of the assistant's input, giving K thought chains
v^k_1 .. v^k_N. Each chain is trained by L_SFT, and an InfoNCE term keeps the chains apart: with z_k the
flattened chain k, normalised, and z'_k the same of a dropout (p = 0.5) view of it,

    L_NCE = - 1/K sum_k log softmax_k'(20 z_k . z'_k')[k]
    L     = 1/K sum_k L_SFT^k + contrast_weight L_NCE            (L_NCE averaged over the batch)

At answer time each chain is decoded (greedily, or `samples` per chain under decoding=self-consistency) and the
answers are voted on. Ours: the official code runs the assistant without gradient, so its e_k never move from their
initial rows; here they train through the frozen assistant. Its sum of the chains' L_SFT and InfoNCE / K is
replaced by the mean and a weight.

Cost (Prediction.forward_passes, in passes of the backbone): the backbone's passes (the prefill of the prompt
gives the first token, each further token one pass, as for cot) plus, per chain, the pass that made the thoughts,
counted as its network's size beyond the embedding matrices over the backbone's (1 for assistant=backbone).
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from .. import backbones, checkpoint
from ..backbones import thought_token_ids
from ..config import ConfigError
from ..latent import LoopResult, decode, splice, thought_loop
from ..tasks import Example
from .base import (ExtraModules, Method, MethodConfig, Prediction, chain_text, majority_vote, next_token_cross_entropy,
                   pad_pairs, prompt_text)

CONTRAST_SCALE = 20.0  # SoftCoT++: the InfoNCE logits are cosine similarities times this
CONTRAST_DROPOUT = 0.5  # SoftCoT++: dropout of the second view of each chain


# ---- what every soft-thought method shares -------------------------------------------------------


@dataclass
class SoftThoughtConfig(MethodConfig):
    thoughts: int = 32  # N in training
    eval_thoughts: int | None = 4  # N at answer time; none: as in training
    thought_variance_scale: float = 1.0  # answer time: the thoughts' variance around their mean times this
    keep_position: bool = False  # what follows <eot> keeps the position ids it has without the span (docstring)

    positive_keys = MethodConfig.positive_keys + ("thoughts", "eval_thoughts")


def thought_variance(vectors: torch.Tensor) -> torch.Tensor:
    """[..., N, H] -> [...]: the variance of the N thoughts around their mean, averaged over the H dimensions."""
    return vectors.float().var(dim=-2, unbiased=False).mean(-1)


def scale_variance(vectors: torch.Tensor, scale: float) -> torch.Tensor:
    """v_j <- m + sqrt(scale) (v_j - m), m the mean of the N thoughts (dim -2): their variance times `scale`."""
    mean = vectors.mean(dim=-2, keepdim=True)
    return mean + math.sqrt(scale) * (vectors - mean)


def body_size(model: nn.Module) -> int:
    """Parameters beyond the input and output embedding matrices: what a pass computes per position."""
    skip = set()
    for getter in ("get_input_embeddings", "get_output_embeddings"):
        layer = getattr(model, getter, lambda: None)()
        if layer is not None:
            skip.add(id(layer.weight))
    return sum(p.numel() for p in model.parameters() if id(p) not in skip)


def untrained_rows(weight: torch.Tensor, n: int, seed: int = 0) -> torch.Tensor:
    """n vectors drawn like untrained embedding rows: the rows' mean plus their per-dimension deviation times
    N(0, I) noise; row k depends only on (seed, k), so the first rows are the same whatever n is."""
    rows = weight.detach().float()
    noise = torch.stack([torch.randn(rows.shape[1], generator=torch.Generator().manual_seed(seed * 100_003 + k))
                         for k in range(n)])
    return rows.mean(0) + rows.std(0) * noise.to(rows.device)


class SoftThoughtMethod(ExtraModules, Method):
    """A frozen backbone reading N thought vectors at its placeholders (module docstring). A subclass makes the
    thoughts (`thoughts`, with trained modules in `self.extras`), says what that costs (`thought_cost`) and
    writes its loss."""

    Config = SoftThoughtConfig

    def __init__(self, config: SoftThoughtConfig, model, tokenizer, task):
        super().__init__(config, model, tokenizer, task)
        self.tokens = thought_token_ids(tokenizer)
        self.extras = nn.ModuleDict()
        if not config.lora:
            model.requires_grad_(False)  # the backbone stays frozen (under lora, peft has frozen all but the adapter)

    # -- to be given by a subclass -------------------------------------------------------------------
    def thoughts(self, examples: list[Example], n: int) -> torch.Tensor:
        """[B, C, n, H]: n thoughts for each of C chains (1 but for softcot++) of each example."""
        raise NotImplementedError

    def thought_cost(self) -> float:
        """Backbone passes one chain's thoughts cost to make."""
        raise NotImplementedError

    # -- the backbone's layout -----------------------------------------------------------------------
    def _ids(self, text: str, tokenizer=None) -> list[int]:
        return (tokenizer or self.tokenizer)(text, add_special_tokens=False)["input_ids"]

    def question_ids(self, examples: list[Example], n: int, tokenizer=None) -> list[list[int]]:
        """Each question's ids, cut from the left so that it and n thoughts with <bot> <eot> fit in max_length;
        all tokenized in one call."""
        rows = (tokenizer or self.tokenizer)([prompt_text(e) for e in examples], add_special_tokens=False)["input_ids"]
        return [row[-max(self.config.max_length - n - 2, 1) :] for row in rows]

    def prompts(self, examples: list[Example], n: int) -> list[list[int]]:
        """question <bot> <latent> x n <eot>, for each example"""
        span = [self.tokens.bot] + [self.tokens.latent] * n + [self.tokens.eot]
        return [question + span for question in self.question_ids(examples, n)]

    def embed(self, ids: torch.Tensor, mask: torch.Tensor, vectors: torch.Tensor) -> torch.Tensor:
        """The backbone's input embeddings of `ids` with the rows of `vectors` [R, n, H] at each row's placeholders."""
        placeholders = (ids == self.tokens.latent) & mask.bool()
        return splice(self.model.get_input_embeddings()(ids), placeholders, vectors)

    def thought_cross_entropy(self, examples: list[Example], vectors: torch.Tensor) -> tuple[torch.Tensor, float]:
        """L_SFT of the chains `vectors` [B, C, n, H]: the mean cross-entropy of every token after <eot>, over
        all chains (each example's sequence read once per chain); and the number of positions the backbone read."""
        n, chains = vectors.shape[2], vectors.shape[1]
        pairs = []
        for example, prompt in zip(examples, self.prompts(examples, n)):
            target = self._ids(chain_text(example, self.task.step_separator)) + [self.tokenizer.eos_token_id]
            ids = (prompt + target)[: max(self.config.max_length, len(prompt) + 1)]
            pairs += [(ids, [-100] * len(prompt) + ids[len(prompt) :])] * chains
        batch = pad_pairs(pairs, self.tokenizer.pad_token_id)
        ids, mask, labels = (t.to(self.device) for t in (batch.input_ids, batch.attention_mask, batch.labels))
        positions = torch.arange(ids.shape[1], device=self.device).expand_as(ids)
        if self.config.keep_position:  # right-padded: every row's span ends at its first label
            after_span = (labels != -100).long().cummax(dim=1).values
            positions = positions - after_span * (n + 2)
        summed = next_token_cross_entropy(self.model, labels, inputs_embeds=self.embed(ids, mask, vectors.flatten(0, 1)),
                                          attention_mask=mask, position_ids=positions)
        return summed / (labels[:, 1:] != -100).sum().clamp(min=1), float(mask.sum())

    # -- answering -----------------------------------------------------------------------------------
    def answer_thoughts(self) -> int:
        return self.config.eval_thoughts or self.config.thoughts

    def prefill(self, examples: list[Example], n: int) -> tuple[torch.Tensor, LoopResult]:
        """The thoughts [B, C, n, H] (variance scaled) and the backbone's cache after reading
        "question <bot> v_1 .. v_n <eot>" once per chain (rows example-major)."""
        self._extras_on_device()
        vectors = scale_variance(self.thoughts(examples, n), self.config.thought_variance_scale)
        rows = [prompt for prompt in self.prompts(examples, n) for _ in range(vectors.shape[1])]
        width = max(map(len, rows))
        pad = self.tokenizer.pad_token_id
        ids = torch.tensor([[pad] * (width - len(r)) + r for r in rows], device=self.device)
        mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows], device=self.device)
        state = thought_loop(self.model, self.embed(ids, mask, vectors.flatten(0, 1)), mask, 0)
        if self.config.keep_position:
            state.position_offset = torch.full((len(rows),), -(n + 2), device=self.device)
        return vectors, state

    @torch.no_grad()
    def answer(self, examples: list[Example]) -> list[Prediction]:
        """question <bot> v_1 .. v_N <eot>, then decoded per chain (k samples under self-consistency); the
        chains' (and samples') answers are voted on."""
        if not examples:
            return []
        vectors, state = self.prefill(examples, self.answer_thoughts())
        chains = vectors.shape[1]
        pad = self.tokenizer.pad_token_id
        sampling = self.config.decoding == "self-consistency"
        k = self.config.samples if sampling else 1
        if k > 1:  # a chain's samples share its prefill
            state.past_key_values.batch_repeat_interleave(k)
            state.attention_mask = state.attention_mask.repeat_interleave(k, dim=0)
            state.logits = state.logits.repeat_interleave(k, dim=0)
        decoded = decode(self.model, state, None, self.config.max_new_tokens, self.tokenizer.eos_token_id,
                         temperature=self.config.temperature if sampling else 0.0, pad_token_id=pad)
        lengths = decoded.n_tokens.tolist()
        texts = [self.tokenizer.decode(row[:length], skip_special_tokens=True)
                 for row, length in zip(decoded.ids.tolist(), lengths)]
        variance = thought_variance(vectors).mean(1).tolist()  # [B], over the chains
        per_example, predictions = chains * k, []
        for i in range(len(examples)):
            own = slice(i * per_example, (i + 1) * per_example)
            samples, cost = texts[own], lengths[own]
            chosen = majority_vote(samples) if per_example > 1 else 0
            norms = vectors[i, chosen // k].float().norm(dim=-1).tolist()
            predictions.append(Prediction(
                text=samples[chosen],
                answer=self.parse(samples[chosen]),
                # a backbone pass per generated token (the prefill gives the first), plus each chain's thought making
                forward_passes=sum(cost) + chains * self.thought_cost(),
                generated_tokens=sum(cost),
                thoughts=[round(x, 4) for x in norms],
                thought_variance=variance[i],
            ))
        return predictions


# ---- SoftCoT -------------------------------------------------------------------------------------


@dataclass
class SoftCoTConfig(SoftThoughtConfig):
    assistant: str = "backbone"  # the frozen assistant: backbone, a run folder/checkpoint, smollm2-135m-instruct, ...


def load_assistant(name: str):
    """The frozen assistant model and its tokenizer, by a name other than "backbone" (module docstring)."""
    if name in backbones.PRESETS:
        raise ConfigError(f"assistant={name!r}: a random tiny preset has no tokenizer of its own here; train one "
                          f"(e.g. with cot) and pass its run folder")
    found = checkpoint.find(Path(name)) or checkpoint.find(Path(name) / "checkpoint")
    if found is not None and checkpoint.is_peft(found):
        raise ConfigError(f"assistant={name!r} holds a LoRA adapter; give a checkpoint of full weights")
    try:
        model, tokenizer = backbones.load_backbone(str(found or name))
    except (OSError, ValueError) as error:
        raise ConfigError(f"assistant={name!r}: cannot load it ({type(error).__name__}: "
                          f"{str(error).splitlines()[0]})") from None
    return model.requires_grad_(False), tokenizer


class SoftCoT(SoftThoughtMethod):
    """A frozen assistant's last-layer states at N placeholders, projected into the frozen backbone's placeholders."""

    name = "softcot"
    Config = SoftCoTConfig

    def __init__(self, config: SoftCoTConfig, model, tokenizer, task):
        super().__init__(config, model, tokenizer, task)
        if config.assistant == "backbone":
            self.assistant, self.assistant_tokenizer = model, tokenizer
        else:
            self.assistant, self.assistant_tokenizer = load_assistant(config.assistant)
        self.assistant_latent = thought_token_ids(self.assistant_tokenizer).latent
        width = self.assistant.get_input_embeddings().weight.shape[1]
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(1234)  # the projection's initialisation does not depend on what ran before
            self.extras["projection"] = nn.Linear(width, model.get_input_embeddings().weight.shape[1])
        self.extras.to(self.device)

    def thought_cost(self) -> float:
        return body_size(self.assistant) / body_size(self.model)

    def reading(self):
        """The assistant as it reads: the backbone's own weights have their LoRA adapter off."""
        if self.assistant is self.model and hasattr(self.model, "disable_adapter"):
            return self.model.disable_adapter()
        return contextlib.nullcontext()

    def assistant_states(self, examples: list[Example], n: int, fill: torch.Tensor | None = None) -> torch.Tensor:
        """[B, n, d_assistant]: the assistant's last-layer states at the placeholders of "question <latent> x n".
        With `fill` [B, d_assistant], row b's placeholders read fill[b] instead of <latent>'s embedding (and the
        states carry its gradient); without it they are computed without gradient."""
        self.assistant.to(self.device)
        rows = [question + [self.assistant_latent] * n
                for question in self.question_ids(examples, n, self.assistant_tokenizer)]
        width = max(map(len, rows))
        ids = torch.tensor([r + [self.assistant_latent] * (width - len(r)) for r in rows], device=self.device)
        mask = torch.tensor([[1] * len(r) + [0] * (width - len(r)) for r in rows], device=self.device)
        placeholders = (ids == self.assistant_latent) & mask.bool()
        embeds = self.assistant.get_input_embeddings()(ids)
        if fill is not None:
            embeds = torch.where(placeholders.unsqueeze(-1), fill.unsqueeze(1).to(embeds.dtype), embeds)
        with self.reading(), torch.set_grad_enabled(fill is not None and torch.is_grad_enabled()):
            hidden = self.assistant(inputs_embeds=embeds, attention_mask=mask, output_hidden_states=True,
                                    logits_to_keep=1).hidden_states[-1]
        return hidden[placeholders].view(len(examples), n, -1)

    def thoughts(self, examples: list[Example], n: int) -> torch.Tensor:
        projection = self._extras_on_device()["projection"]
        states = self.assistant_states(examples, n)
        return projection(states.to(projection.weight.dtype)).unsqueeze(1)

    def loss(self, examples: list[Example], step: int):
        vectors = self.thoughts(examples, self.config.thoughts)
        ce, tokens = self.thought_cross_entropy(examples, vectors)
        return ce, {"ce": float(ce.detach()), "thought_variance": float(thought_variance(vectors.detach()).mean()),
                    "tokens": tokens}


# ---- SoftCoT++ -----------------------------------------------------------------------------------


@dataclass
class SoftCoTPlusPlusConfig(SoftCoTConfig):
    chains: int = 10  # K: thought chains, one per learned initial-token embedding
    contrast_weight: float = 1.0  # weight of the InfoNCE that keeps the chains apart

    positive_keys = SoftCoTConfig.positive_keys + ("chains",)


def chain_infonce(chains: torch.Tensor, views: torch.Tensor) -> torch.Tensor:
    """SoftCoT++'s contrast of one example's K chains [K, n, H] with a second view of them [K, n, H]:
    - 1/K sum_k log softmax_k'(20 z_k . z'_k')[k], z and z' the flattened, normalised chains and views."""
    z = F.normalize(chains.flatten(1).float(), dim=-1)
    z_view = F.normalize(views.flatten(1).float(), dim=-1)
    logits = CONTRAST_SCALE * z @ z_view.T
    return F.cross_entropy(logits, torch.arange(len(z), device=z.device))


class SoftCoTPlusPlus(SoftCoT):
    """SoftCoT with K thought chains from K learned initial-token embeddings, kept apart by an InfoNCE and voted on."""

    name = "softcot++"
    Config = SoftCoTPlusPlusConfig

    def __init__(self, config: SoftCoTPlusPlusConfig, model, tokenizer, task):
        super().__init__(config, model, tokenizer, task)
        initial = nn.Embedding(config.chains, self.assistant.get_input_embeddings().weight.shape[1])
        with torch.no_grad():
            initial.weight.copy_(untrained_rows(self.assistant.get_input_embeddings().weight, config.chains, seed=1))
        self.extras["initial"] = initial.to(self.device)

    def thoughts(self, examples: list[Example], n: int) -> torch.Tensor:
        extras = self._extras_on_device()
        chains = self.config.chains
        repeated = [example for example in examples for _ in range(chains)]
        fill = extras["initial"].weight.repeat(len(examples), 1)  # row b * K + k reads e_k
        states = self.assistant_states(repeated, n, fill)
        projection = extras["projection"]
        return projection(states.to(projection.weight.dtype)).view(len(examples), chains, n, -1)

    def loss(self, examples: list[Example], step: int):
        vectors = self.thoughts(examples, self.config.thoughts)
        ce, tokens = self.thought_cross_entropy(examples, vectors)
        views = F.dropout(vectors, CONTRAST_DROPOUT, training=True)
        contrast = torch.stack([chain_infonce(vectors[b], views[b]) for b in range(len(examples))]).mean()
        return ce + self.config.contrast_weight * contrast, {
            "ce": float(ce.detach()), "contrast": float(contrast.detach()),
            "thought_variance": float(thought_variance(vectors.detach()).mean()), "tokens": tokens}


__all__ = ["SoftCoT", "SoftCoTConfig", "SoftCoTPlusPlus", "SoftCoTPlusPlusConfig", "SoftThoughtConfig",
           "SoftThoughtMethod", "body_size", "chain_infonce", "scale_variance", "thought_variance", "untrained_rows"]

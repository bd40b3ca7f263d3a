"""What every method shares: its config fields, the Prediction it returns, text layout and batching; and
what the methods that learn from their own samples share (latro, grpo, lepo): groups of rollouts drawn
from one shared prefill (`sample`), the teacher-forced pass that scores them, the reference model, the
per-step diagnostics of a group (`RolloutMethod`)."""

from __future__ import annotations

import copy
import itertools
import math
from collections import Counter
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Hashable

import torch
from torch import nn
from transformers import DynamicCache
from transformers.cache_utils import DynamicLayer

from ..config import Config, choices
from ..latent import growing_cache, soft_token
from ..tasks import Example, Task
from ..tasks.answers import extract_final

ANSWER_MARKER = "####"  # the model writes its final answer after this marker (iCoT / GSM8K convention)


@dataclass
class MethodConfig(Config):
    """Fields every method has. Subclasses add their own."""

    max_length: int = 512  # prompt + target tokens kept for training
    max_new_tokens: int = 128
    decoding: str = choices("greedy", "self-consistency", default="greedy")
    samples: int = 5  # self-consistency: answers sampled per question, majority vote
    temperature: float = 0.7  # self-consistency sampling temperature
    lora: bool = False
    lora_r: int = 8
    lora_alpha: int = 16
    init_from: str | None = None  # a checkpoint (or run folder) whose weights training starts from
    layers: int | None = None  # a tiny preset built with this many decoder layers (none: the preset's own)

    positive_keys = ("layers", "max_length", "max_new_tokens", "samples", "temperature", "lora_r", "lora_alpha")


@dataclass
class Prediction:
    """One answered question and what it cost."""

    text: str
    answer: str | None  # the final answer parsed out of `text`
    forward_passes: float  # whole passes of the backbone; a fraction where a pass runs part of it (slr loop=depth)
    generated_tokens: int
    # coconut, slr, softcot, lta-thinker: the thoughts' norms; slr loop=depth: core iterations per pass
    thoughts: list[Any] | None = None
    thought_variance: float | None = None  # softcot, lta-thinker: the thoughts' variance around their mean
    samples: list[str] | None = None  # self-consistency: every sampled text (the evaluator's pass@k), where given


@dataclass
class Batch:
    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    labels: torch.Tensor

    @property
    def target_tokens(self) -> int:
        return int((self.labels != -100).sum())


class StepTokens(nn.Module):
    """Counts the training examples seen, their gold steps, the steps' tokens and the tokens after the last
    step's own text (its separator), and, per step index, the chain tokens through that step and up to the end
    of its own text (buffers, so checkpoints keep them): under keep_position, the tokens an answer's latent
    steps stand for, and where each of those steps' text ends. Per step index because steps of one task may
    differ in length by position (named parity: 'b9 1 0' is five tokens, 'b10 1 0' six)."""

    tracked_steps = 256  # steps further on use the mean tokens a step
    saved_keys = ("count", "by_step", "step_tokens.count", "step_tokens.by_step")  # as a method saves them

    def __init__(self):
        super().__init__()
        self.register_buffer("count", torch.zeros(4, dtype=torch.float64))  # [examples, steps, tokens, trailing]
        # [examples with step i, their chain tokens through step i, ... up to the end of step i's text]
        self.register_buffer("by_step", torch.zeros(3, self.tracked_steps, dtype=torch.float64))

    def record(self, examples: list[Example], chain_tokens: list[int], cuts: list[list[int]] | None = None,
               ends: list[list[int]] | None = None) -> None:
        """`chain_tokens[j]`: example j's chain tokens (its steps with their separators); `cuts[j][i]`: those
        through step i (step_cuts); `ends[j][i]`: up to the end of step i's own text (step_ends)."""
        trailing = sum(cut[-1] - end[-1] for cut, end in zip(cuts or [], ends or []) if end)
        seen = [len(examples), sum(len(e.steps) for e in examples), sum(chain_tokens), trailing]
        self.count += torch.tensor(seen, dtype=torch.float64, device=self.count.device)
        for example_cuts, example_ends in zip(cuts or [], ends or []):
            n = min(len(example_cuts), self.tracked_steps)
            self.by_step[0, :n] += 1
            self.by_step[1, :n] += torch.tensor(example_cuts[:n], dtype=torch.float64, device=self.by_step.device)
            self.by_step[2, :n] += torch.tensor(example_ends[:n], dtype=torch.float64, device=self.by_step.device)

    def _by_step(self, row: int, steps_through: int) -> float | None:
        """The mean of by_step[row] at step `steps_through` (1-based), or None where it was never seen."""
        if not 0 < steps_through <= self.tracked_steps or not self.by_step[0, steps_through - 1]:
            return None
        return float(self.by_step[row, steps_through - 1] / self.by_step[0, steps_through - 1])

    def expected(self, latent_steps: int | None) -> int:
        """Mean tokens of the first `latent_steps` steps (with their separators); None: of a whole chain."""
        examples, steps, tokens, _ = self.count.tolist()
        if not steps:
            return 0
        if latent_steps is None:
            return round(tokens / examples)
        seen = self._by_step(1, latent_steps)
        return round(seen if seen is not None else latent_steps * tokens / steps)

    def expected_end(self, steps_through: int) -> int:
        """Mean chain tokens up to the end of step `steps_through`'s own text (step_ends, on average)."""
        examples, steps, tokens, trailing = self.count.tolist()
        if not steps:
            return 0
        seen = self._by_step(2, steps_through)
        return round(seen if seen is not None else steps_through * tokens / steps - trailing / examples)

    @staticmethod
    def upgraded(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """A saved state from before the per-step counts (and, older, the trailing-token count: 3 entries), with
        those counts at 0, which answer as that checkpoint did (the mean tokens a step)."""
        out = {}
        for key, value in state.items():
            if key == "count" or key.endswith("step_tokens.count"):
                if value.numel() == 3:
                    value = torch.cat([value, value.new_zeros(1)])
                by_step = key[: -len("count")] + "by_step"
                if by_step not in state:
                    out[by_step] = value.new_zeros(3, StepTokens.tracked_steps)
            out[key] = value
        return out

    @staticmethod
    def cleared(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """A saved state with its counts at 0: a run starting from another run's checkpoint (init_from) counts
        its own training data, which may have chains of another length (3 hops there, 6 here)."""
        return {key: torch.zeros_like(value) if key in StepTokens.saved_keys else value
                for key, value in StepTokens.upgraded(state).items()}


def prompt_text(example: Example) -> str:
    return f"{example.question}\n"


def answer_text(example: Example) -> str:
    return f"{ANSWER_MARKER} {example.answer}"


def chain_text(example: Example, separator: str = "\n") -> str:
    """Gold reasoning then the answer: the CoT target, one step a line (or as the task separates them)."""
    return separator.join(example.steps + [answer_text(example)])


def split_chain(tokenizer, example: Example, k: int, separator: str = "\n",
                memo: dict | None = None) -> tuple[list[int], list[int]]:
    """The CoT target's ids cut where step k starts (k = len(steps): where the answer starts):
    (steps 1..k with their separators, the rest). Tokenized as one text, so the rest is exactly what
    a CoT model reads there; a token holding the separator and the next step's start (a word-level
    "▁1") goes with the rest. `memo` (a dict the caller keeps) tokenizes each chain once across calls."""
    ids, ends = _chain_tokens(tokenizer, example, separator, memo)
    boundary = sum(len(step) + len(separator) for step in example.steps[:k])
    cut = sum(1 for end in ends if end <= boundary)
    return ids[:cut], ids[cut:]


def step_cuts(tokenizer, example: Example, separator: str = "\n", memo: dict | None = None) -> list[int]:
    """For each gold step k, the chain tokens of steps 1..k with their separators: where split_chain cuts."""
    _, ends = _chain_tokens(tokenizer, example, separator, memo)
    out, boundary = [], 0
    for step in example.steps:
        boundary += len(step) + len(separator)
        out.append(sum(1 for end in ends if end <= boundary))
    return out


def step_ends(tokenizer, example: Example, separator: str = "\n", memo: dict | None = None) -> list[int]:
    """For each gold step, how many chain tokens end at or before the end of its own text (its separator
    not counted): the token that finishes step i is number step_ends[i] - 1 of the chain."""
    _, ends = _chain_tokens(tokenizer, example, separator, memo)
    out, boundary = [], 0
    for step in example.steps:
        out.append(sum(1 for end in ends if end <= boundary + len(step)))
        boundary += len(step) + len(separator)
    return out


def _chain_tokens(tokenizer, example: Example, separator: str, memo: dict | None) -> tuple[list[int], list[int]]:
    """The CoT target's ids and each token's end offset in its text, tokenized once per text with a memo."""
    text = chain_text(example, separator)
    encoded = memo.get(text) if memo is not None else None
    if encoded is None:
        tokens = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        encoded = (tokens["input_ids"], [end for _, end in tokens["offset_mapping"]])
        if memo is not None:
            memo[text] = encoded
    return encoded


def pair_ids(tokenizer, prompt: str, target: str, max_length: int) -> tuple[list[int], list[int]]:
    """Prompt+target ids and their labels: -100 on the prompt, the target's ids (and the closing EOS) after.

    A pair longer than max_length keeps its prompt's end and the target's start: the prompt is
    cut from the left so that the question's last tokens (where the answer is asked) survive.
    """
    prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    target_ids = tokenizer(target, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    room = max(max_length - len(target_ids), 1)
    prompt_ids = prompt_ids[-room:]
    ids = (prompt_ids + target_ids)[:max_length]
    labels = ([-100] * len(prompt_ids) + target_ids)[:max_length]
    return ids, labels


def pad_pairs(pairs: list[tuple[list[int], list[int]]], pad_token_id: int) -> Batch:
    """Right-padded ids, attention mask and labels (-100 on padding) of (ids, labels) pairs."""
    width = max(len(ids) for ids, _ in pairs)
    input_ids = torch.tensor([ids + [pad_token_id] * (width - len(ids)) for ids, _ in pairs])
    attention_mask = torch.tensor([[1] * len(ids) + [0] * (width - len(ids)) for ids, _ in pairs])
    labels = torch.tensor([labels + [-100] * (width - len(labels)) for _, labels in pairs])
    return Batch(input_ids, attention_mask, labels)


def encode_pairs(tokenizer, prompts: list[str], targets: list[str], max_length: int) -> Batch:
    """Right-padded prompt+target ids with labels only on the target (and the closing EOS); see `pair_ids`."""
    pairs = [pair_ids(tokenizer, prompt, target, max_length) for prompt, target in zip(prompts, targets)]
    return pad_pairs(pairs, tokenizer.pad_token_id)


def length_buckets(lengths: list[int], pass_cost: int = 64) -> list[list[int]]:
    """Indices of `lengths` grouped into batches of similar length, so little compute goes to padding.

    Sorted by length, then cut where it minimises the positions computed (rows x longest row, summed over
    batches) plus `pass_cost` positions per batch: the fixed cost of one more forward and backward pass.
    """
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    best = [0] + [math.inf] * len(order)  # best[end]: cheapest cost of order[:end]
    cut = [0] * (len(order) + 1)  # where the last batch of that cheapest split starts
    for end in range(1, len(order) + 1):
        for start in range(end):
            cost = best[start] + pass_cost + (end - start) * lengths[order[end - 1]]
            if cost < best[end]:
                best[end], cut[end] = cost, start
    buckets, end = [], len(order)
    while end:
        buckets.append(order[cut[end] : end])
        end = cut[end]
    return buckets[::-1]


# Model types whose logits are exactly lm_head(final hidden state): a bias-free Linear, no scale or soft cap.
PLAIN_HEAD_TYPES = ("llama", "mistral", "qwen2", "qwen3", "gpt2")
LOGIT_CHUNK_BYTES = 2**24  # fp32 logits of one chunk of rows: 16 MiB, so that the allocator reuses its memory


def plain_head(model) -> nn.Linear | None:
    """The output layer, if the model's logits are that layer applied to its decoder's final hidden state."""
    head = model.get_output_embeddings()
    if model.config.model_type in PLAIN_HEAD_TYPES and type(head) is nn.Linear and head.bias is None:
        return head
    return None


class LinearCrossEntropy(torch.autograd.Function):
    """sum_i -log softmax(h_i W^T)[y_i] over the rows i with y_i != -100, and its gradients, computed in the
    forward pass a chunk of rows at a time:

        dL/dh = G W,   dL/dW = G^T h,   G_i = softmax(h_i W^T) - onehot(y_i)   (G_i = 0 where y_i = -100)

    so the [rows, vocab] logits never exist whole in fp32 and backward has only to scale. With SmolLM2's 49k-token
    vocabulary those fp32 logits, their log-softmax and gradients were ~1.2 GB of fresh memory a step: a SmolLM2
    pass took 344-358k page faults and 2.36 s, now 28.6k and 2.15 s (bench/README.md "Trainer speed"). The logits
    are formed as `h @ W^T` is under the ambient autocast, and reduced in fp32, as F.cross_entropy(logits.float())
    reduces them."""

    @staticmethod
    def forward(ctx, hidden: torch.Tensor, weight: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        rows, vocab = hidden.shape[0], weight.shape[0]
        chunk = max(1, LOGIT_CHUNK_BYTES // (4 * vocab))
        total = torch.zeros((), dtype=torch.float32, device=hidden.device)
        grad_logits = None
        for start in range(0, rows, chunk):
            logits = hidden[start : start + chunk] @ weight.T
            if grad_logits is None:
                grad_logits = logits.new_empty(rows, vocab)
            scores, target = logits.float(), labels[start : start + chunk]
            scored = target != -100
            target = target.clamp(min=0)
            log_norm = scores.logsumexp(-1)
            total += ((log_norm - scores.gather(1, target[:, None]).squeeze(1)) * scored).sum()
            probs = scores.sub_(log_norm[:, None]).exp_()
            probs[torch.arange(len(target), device=probs.device), target] -= 1
            grad_logits[start : start + chunk] = probs.masked_fill_(~scored[:, None], 0)
        grad_hidden = grad_weight = None
        if grad_logits is not None and ctx.needs_input_grad[0]:
            grad_hidden = (grad_logits @ weight).to(hidden.dtype)
        if grad_logits is not None and ctx.needs_input_grad[1]:
            grad_weight = (grad_logits.T @ hidden).to(weight.dtype)
        ctx.save_for_backward(grad_hidden, grad_weight)
        return total

    @staticmethod
    def backward(ctx, grad_total: torch.Tensor):
        grad_hidden, grad_weight = ctx.saved_tensors
        return (None if grad_hidden is None else grad_hidden * grad_total,
                None if grad_weight is None else grad_weight * grad_total, None)


def linear_cross_entropy(hidden: torch.Tensor, weight: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """F.cross_entropy(hidden @ weight.T, labels, ignore_index=-100, reduction="sum") without whole logits
    (`LinearCrossEntropy`); hidden [N, H], weight [V, H], labels [N]."""
    return LinearCrossEntropy.apply(hidden, weight, labels)


def next_token_cross_entropy(model, labels: torch.Tensor, **inputs) -> torch.Tensor:
    """sum_t -log p(labels[:, t+1] | inputs up to t) over the labels that are not -100: the model's final hidden
    states at just the positions that predict one, through `linear_cross_entropy` where the head allows it;
    otherwise the logits from the first such position on (the prompt before it is read, its logits never formed)."""
    targets = labels[:, 1:]
    scored = targets != -100
    head = plain_head(model)
    if head is None:
        first = int(scored.any(0).int().argmax())
        logits = model(**inputs, logits_to_keep=labels.shape[1] - first).logits
        return nn.functional.cross_entropy(logits[:, :-1].flatten(0, 1).float(), targets[:, first:].flatten(),
                                           ignore_index=-100, reduction="sum")
    hidden = model.get_decoder()(**inputs).last_hidden_state[:, :-1]
    return linear_cross_entropy(hidden[scored], head.weight, targets[scored])


def encode_prompts(tokenizer, prompts: list[str], device) -> dict[str, torch.Tensor]:
    """Left-padded prompts for batched generation."""
    side = tokenizer.padding_side
    tokenizer.padding_side = "left"
    try:
        encoded = tokenizer(prompts, return_tensors="pt", padding=True, add_special_tokens=False)
    finally:
        tokenizer.padding_side = side
    return {key: value.to(device) for key, value in encoded.items()}


def generated_lengths(new_ids: torch.Tensor, eos_token_id: int, pad_token_id: int) -> list[int]:
    """Tokens each row really generated: up to and including its first EOS (HF pads finished rows)."""
    lengths = []
    for row in new_ids.tolist():
        length = len(row)
        for position, token in enumerate(row):
            if token == eos_token_id:
                length = position + 1
                break
        else:
            while length and row[length - 1] == pad_token_id and pad_token_id != eos_token_id:
                length -= 1
        lengths.append(length)
    return lengths


def majority_vote(texts: list[str]) -> int:
    """Index of the sample whose parsed answer is the most common (ties: the earliest); CoT-SC's vote."""
    return vote([normalise_answer(extract_final(text)) for text in texts])


def vote(answers: list[str | None]) -> int:
    """Index of the most common parsed answer (ties: the earliest); 0 when none parsed."""
    counts = Counter(answer for answer in answers if answer)
    if not counts:
        return 0
    best = max(counts.values())
    return next(i for i, answer in enumerate(answers) if answer and counts[answer] == best)


def normalise_answer(answer: str | None) -> str | None:
    if answer is None:
        return None
    return " ".join(answer.replace(",", "").strip().rstrip(".").split()) or None


class Method:
    """A training objective plus an answering procedure over one backbone.

    `loss(batch, step)` returns (loss tensor, metrics dict); RL methods roll out inside it.
    `answer(examples)` returns one Prediction per example.
    A method with a curriculum overrides `on_step(step)`; returning True asks the trainer to reset
    the optimizer (COCONUT resets it per stage).
    """

    name = ""
    Config = MethodConfig

    def __init__(self, config: MethodConfig, model, tokenizer, task: Task):
        self.config, self.model, self.tokenizer, self.task = config, model, tokenizer, task

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def trainable_parameters(self) -> list[torch.nn.Parameter]:
        return [p for p in self.model.parameters() if p.requires_grad]

    def extra_state(self) -> dict[str, torch.Tensor]:
        """Tensors beyond the backbone's weights that a checkpoint must keep (saved as safetensors)."""
        return {}

    def load_extra_state(self, state: dict[str, torch.Tensor]) -> None:
        if state:
            raise ValueError(f"method {self.name!r} has no extra state, but the checkpoint holds {sorted(state)}")

    def on_step(self, step: int) -> bool:
        return False

    def loss(self, examples: list[Example], step: int) -> tuple[torch.Tensor, dict[str, float]]:
        raise NotImplementedError

    def answer(self, examples: list[Example]) -> list[Prediction]:
        raise NotImplementedError

    def parse(self, text: str) -> str | None:
        return normalise_answer(extract_final(text))


class ExtraModules:
    """For a Method that trains modules beyond the backbone, held in `self.extras` (an nn.ModuleDict that
    its __init__ creates; the chain counts of COCONUT and icot, SLR's stabilisers, icot's running-sum head): they
    are trained with the backbone's parameters and saved in its checkpoints. Put it before Method among the bases."""

    extras: nn.ModuleDict

    def _extras_on_device(self) -> nn.ModuleDict:
        # .to() walks every submodule even when nothing moves; the extras move together, so one tensor tells (a
        # buffer where there is no parameter: coconut's step_tokens)
        first = next(itertools.chain(self.extras.parameters(), self.extras.buffers()), None)
        if first is not None and first.device != self.device:
            self.extras.to(self.device)
        return self.extras

    def trainable_parameters(self) -> list[torch.nn.Parameter]:
        return super().trainable_parameters() + list(self._extras_on_device().parameters())

    def extra_state(self) -> dict[str, torch.Tensor]:
        return {name: tensor.detach() for name, tensor in self.extras.state_dict().items()}

    def load_extra_state(self, state: dict[str, torch.Tensor]) -> None:
        """Load saved extras; an empty state (e.g. a `cot` checkpoint to start from) keeps the initial ones."""
        if not state:
            return
        state = StepTokens.upgraded(state)
        for name, module in self.extras.items():  # a module may widen what was saved for a smaller config
            if hasattr(module, "fit_saved"):
                state = module.fit_saved(state, f"{name}.")
        own = self.extras.state_dict()
        missing, unexpected = sorted(set(own) - set(state)), sorted(set(state) - set(own))
        if missing or unexpected:
            raise ValueError(f"method {self.name!r}: checkpoint extras do not match this config "
                             f"(missing {missing[:5]}, unexpected {unexpected[:5]})")
        for key, tensor in state.items():
            if own[key].shape != tensor.shape:
                raise ValueError(f"method {self.name!r}: extra {key!r} has shape {tuple(tensor.shape)} in the "
                                 f"checkpoint but {tuple(own[key].shape)} here (a config key differs)")
        self.extras.load_state_dict(state)


# ---- rollouts: K samples per prompt on one shared prefill (latro, grpo, lepo) ------------------------


@dataclass
class SoftThinking:
    """The first `steps` positions of a rollout are soft tokens (LEPO; `latent.soft_token`): y = softmax(z / tau)
    over the filtered scores, z perturbed by Gumbel noise (`noise`) or not; the model reads e = y E there, the
    visible token is argmax y, and the `label_k` largest entries of y are kept as the step's soft label."""

    steps: int
    tau: float
    noise: bool
    label_k: int


@dataclass
class Samples:
    """B*K sampled continuations, rows grouped by prompt (rows b*K .. b*K+K-1 belong to prompt b).

    ids:        [N, T] sampled tokens, `pad` after each row's end (T = the longest row); at a soft step, its visible token
    lengths:    [N] tokens sampled per row (including the EOS or the token that completed `stop`)
    kept:       [N] tokens before the one where `stop` begins, or before EOS; = lengths if neither came
    finished:   [N] bool, reached `stop` (or EOS, with stop_on_eos)
    logprobs:   [N, T] log pi(token | prefix) of each sampled token at temperature 1 (0 after the end)
    forward_passes: model calls made (one prefill + one per decoding step), for the whole batch
    With soft steps (`SoftThinking`), over the first L = min(steps, T) positions (zeros after a row's end):
    soft_embeds: [N, L, H] the embeddings e = y E read there;  label_ids, label_probs: [N, L, label_k] the
    largest entries of y;  label_scores: [N, L, label_k] the perturbed log-probabilities z at those ids
    (-inf outside the kept set).
    """

    ids: torch.Tensor
    lengths: torch.Tensor
    kept: torch.Tensor
    finished: torch.Tensor
    logprobs: torch.Tensor
    forward_passes: int
    soft_embeds: torch.Tensor | None = None
    label_ids: torch.Tensor | None = None
    label_probs: torch.Tensor | None = None
    label_scores: torch.Tensor | None = None

    @property
    def sampled_tokens(self) -> int:
        return int(self.lengths.sum())

    @property
    def soft_mask(self) -> torch.Tensor:
        """[N, L] True at the soft steps each row really took (before its end)."""
        columns = torch.arange(self.label_ids.shape[1], device=self.lengths.device)
        return columns.unsqueeze(0) < self.lengths.unsqueeze(1)


def eos_ids(tokenizer, model) -> list[int]:
    ids = {tokenizer.eos_token_id}
    configured = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    if configured is not None:
        ids.update(configured if isinstance(configured, (list, tuple)) else [configured])
    return sorted(i for i in ids if i is not None)


def _stop_start(tokenizer, window: list[int], stop: str) -> int:
    """Index in `window` of the token where `stop` begins, for a window whose text contains `stop`:
    the last token from which the decoded text still holds it."""
    for first in range(len(window) - 1, -1, -1):
        if stop in tokenizer.decode(window[first:], skip_special_tokens=True):
            return first
    return 0


def filter_logits(scores: torch.Tensor, top_k: int = 0, top_p: float = 1.0) -> torch.Tensor:
    """-inf outside the `top_k` largest scores (0: all) and outside the smallest set of the largest whose
    probability reaches `top_p` (1: all), top-k first (Hugging Face's order). [B, V] -> [B, V]."""
    if 0 < top_k < scores.shape[-1]:
        kth = scores.topk(top_k, dim=-1).values[:, -1:]
        scores = scores.masked_fill(scores < kth, -math.inf)
    if top_p < 1.0:
        ordered, order = scores.sort(dim=-1, descending=True)
        probs = ordered.softmax(dim=-1)
        beyond = probs.cumsum(-1) - probs >= top_p  # the mass before the token already reaches top_p
        scores = scores.masked_fill(beyond.scatter(1, order, beyond), -math.inf)
    return scores


@torch.no_grad()
def sample(
    model,
    tokenizer,
    prompt_ids: torch.Tensor,
    prompt_mask: torch.Tensor,
    k: int,
    max_tokens: int,
    temperature: float = 1.0,
    stop: str | None = None,
    stop_on_eos: bool = True,
    generator: torch.Generator | None = None,
    share_prompt: bool = True,
    top_k: int = 0,
    top_p: float = 1.0,
    soft: SoftThinking | None = None,
) -> Samples:
    """Sample k continuations of each LEFT-padded prompt [B, L], batched over all B*k rows.

    The prompts are prefilled once and their KV cache repeated k times (`share_prompt=False`
    prefills every copy instead: the reference the shared cache must match). Each step feeds the
    last token of every unfinished row; a row ends at EOS, at the token that completes `stop` in
    its decoded text, or after `max_tokens`, and leaves the batch (its cache rows are dropped).
    Tokens are drawn from softmax(s), s = `filter_logits`(logits / temperature, top_k, top_p), with
    `generator` (default: the global RNG); temperature 0 decodes greedily (s = filtered logits).
    With `soft`, the first soft.steps positions are soft tokens (`latent.soft_token` of s): the model
    reads y E there and the visible token, argmax y, counts for the endings as any token. No gradients.
    """
    device = prompt_ids.device
    n = prompt_ids.shape[0] * k
    eos = torch.tensor(eos_ids(tokenizer, model), device=device)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else int(eos[0])
    mask = prompt_mask.long()
    cache = growing_cache(model)
    ids = prompt_ids if share_prompt else prompt_ids.repeat_interleave(k, 0)
    first_mask = mask if share_prompt else mask.repeat_interleave(k, 0)
    positions = (first_mask.cumsum(-1) - 1).clamp(min=0)
    logits = model(input_ids=ids, attention_mask=first_mask, position_ids=positions, cache=cache,
                   use_cache=True, logits_to_keep=1).logits[:, -1].float()
    if share_prompt:
        cache.batch_repeat_interleave(k)
        logits = logits.repeat_interleave(k, 0)
    mask = mask.repeat_interleave(k, 0)
    prompt_length = mask.sum(-1)
    passes = 1

    tokens = torch.full((n, max_tokens), pad, dtype=torch.long, device=device)
    logprobs = torch.zeros(n, max_tokens, device=device)
    lengths = torch.full((n,), max_tokens, dtype=torch.long, device=device)
    kept = torch.full((n,), max_tokens, dtype=torch.long, device=device)
    finished = torch.zeros(n, dtype=torch.bool, device=device)
    soft_steps = min(soft.steps, max_tokens) if soft else 0
    if soft:
        embedding = model.get_input_embeddings().weight
        soft_embeds = embedding.new_zeros(n, soft_steps, embedding.shape[1])
        label_ids = torch.zeros(n, soft_steps, soft.label_k, dtype=torch.long, device=device)
        label_probs = torch.zeros(n, soft_steps, soft.label_k, device=device)
        label_scores = torch.zeros(n, soft_steps, soft.label_k, device=device)
    alive = torch.arange(n, device=device)  # rows still sampling, in cache order
    window = len(stop) + 2 if stop else 0
    steps = 0
    for t in range(max_tokens):
        log_probs = torch.log_softmax(logits, dim=-1)
        scores = filter_logits(logits / temperature if temperature > 0 else logits, top_k, top_p)
        if t < soft_steps:
            embedded, y, z = soft_token(scores, embedding, soft.tau, soft.noise, generator)
            picked = y.argmax(-1)
            label_probs[alive, t], label_ids[alive, t] = y.topk(soft.label_k, dim=-1)
            label_scores[alive, t] = z.gather(1, label_ids[alive, t])
            soft_embeds[alive, t] = embedded
            feed = {"inputs_embeds": embedded.unsqueeze(1)}
        else:
            if temperature > 0:
                picked = torch.multinomial(torch.softmax(scores, dim=-1), 1, generator=generator).squeeze(1)
            else:
                picked = scores.argmax(-1)
            feed = {"input_ids": picked.unsqueeze(1)}
        tokens[alive, t] = picked
        logprobs[alive, t] = log_probs.gather(1, picked.unsqueeze(1)).squeeze(1)
        steps = t + 1

        ended = torch.isin(picked, eos)
        done = ended.clone()
        kept[alive[ended]] = t
        finished[alive[ended]] = stop_on_eos or not stop
        if stop:
            # A stop string of s characters spans at most s tokens ending at the newest one (every
            # token decodes to at least one character), so only a short window is decoded.
            start = max(0, t + 1 - window)
            windows = tokens[alive, start : t + 1].tolist()
            texts = tokenizer.batch_decode(windows, skip_special_tokens=True)
            for i, (text, eos_here) in enumerate(zip(texts, ended.tolist())):
                if not eos_here and stop in text:
                    row = alive[i]
                    done[i], finished[row] = True, True
                    kept[row] = start + _stop_start(tokenizer, windows[i], stop)
        lengths[alive[done]] = t + 1
        if t + 1 == max_tokens or bool(done.all()):
            break
        if bool(done.any()):
            keep = (~done).nonzero().squeeze(1)
            cache.batch_select_indices(keep)
            alive, mask = alive[keep], mask[keep]
            feed = {name: value[keep] for name, value in feed.items()}
        mask = torch.cat([mask, mask.new_ones(mask.shape[0], 1)], dim=1)
        position = (prompt_length[alive] + t).unsqueeze(1)
        logits = model(**feed, attention_mask=mask, position_ids=position, cache=cache,
                       use_cache=True).logits[:, -1].float()
        passes += 1
    samples = Samples(tokens[:, :steps], lengths, kept, finished, logprobs[:, :steps], passes)
    if soft:
        taken = min(soft_steps, steps)
        samples.soft_embeds, samples.label_ids = soft_embeds[:, :taken], label_ids[:, :taken]
        samples.label_probs, samples.label_scores = label_probs[:, :taken], label_scores[:, :taken]
    return samples


def tail_log_softmax(model, inputs: torch.Tensor, attention_mask: torch.Tensor, width: int) -> torch.Tensor:
    """log pi(. | everything before) at the last `width` positions of rows [left-padded prompt | right-padded
    tail]: [N, width, V], where [:, t] predicts tail position t. `inputs` are ids [N, S] or embeddings
    [N, S, H]. One forward pass that computes only those logits; differentiable (call under torch.no_grad()
    for a reference)."""
    positions = (attention_mask.cumsum(-1) - 1).clamp(min=0)
    given = {"input_ids": inputs} if inputs.dim() == 2 else {"inputs_embeds": inputs}
    logits = model(**given, attention_mask=attention_mask, position_ids=positions, use_cache=False,
                   logits_to_keep=width + 1).logits[:, :-1]
    return torch.log_softmax(logits.float(), dim=-1)


def shared_prompt_log_softmax(model, prompt_ids: torch.Tensor, prompt_mask: torch.Tensor, completion: torch.Tensor,
                              completion_mask: torch.Tensor) -> torch.Tensor:
    """`tail_log_softmax` over rows [prompt b | completion n] with each of the B left-padded prompts [B, P] run once
    for its k = N / B completions [N, T] (ids, or embeddings [N, T, H]; right-padded, `completion_mask` [N, T]).

    Why: a group's k rows share their prompt, and the one-pass form runs it (forward and backward) k times. Here
    the prompts but their last token go through the model once, with gradient, into a DynamicCache; each layer's
    keys and values are repeated k times along the batch (repeat_interleave: their gradients sum back over the
    group, so the maths is unchanged); then [the prompt's last token | completion tokens 0..T-2] run against them,
    with the mask over [prompt | completion] and the one pass's position ids, and give all T logits (the prompt's
    last token predicts completion token 0; the completion's last token predicts nothing we score). The last
    prompt token runs k times so that every logit comes from that one pass: [N, T, V]; differentiable.

    Falls back to the one pass where the cache cannot be trusted to reproduce it: a cache layer other than the
    plain full-attention DynamicLayer (sliding windows drop keys, linear-attention or hybrid layers keep other
    states), or activation checkpointing while training (transformers then drops the cache); and for one-token
    prompts, which leave nothing to share.
    """
    k = completion.shape[0] // prompt_ids.shape[0]
    length, width = prompt_ids.shape[1], completion.shape[1]
    mask = torch.cat([prompt_mask.long().repeat_interleave(k, 0), completion_mask.long()], dim=1)
    cache = DynamicCache(config=model.config)
    checkpointing = model.training and torch.is_grad_enabled() and any(
        getattr(module, "gradient_checkpointing", False) for module in model.modules())
    if length < 2 or checkpointing or any(type(layer) is not DynamicLayer for layer in cache.layers):
        prompt = prompt_ids if completion.dim() == 2 else model.get_input_embeddings()(prompt_ids)
        return tail_log_softmax(model, torch.cat([prompt.repeat_interleave(k, 0), completion], dim=1), mask, width)
    positions = (mask.cumsum(-1) - 1).clamp(min=0)  # the one pass's
    model(input_ids=prompt_ids[:, :-1], attention_mask=prompt_mask[:, :-1].long(),
          position_ids=positions[::k, : length - 1], cache=cache, use_cache=True, logits_to_keep=1)
    cache.batch_repeat_interleave(k)
    last = prompt_ids[:, -1:].repeat_interleave(k, 0)  # a real token in every row: the prompts are left-padded
    if completion.dim() == 2:
        given = {"input_ids": torch.cat([last, completion[:, : width - 1]], dim=1)}
    else:
        given = {"inputs_embeds": torch.cat([model.get_input_embeddings()(last), completion[:, : width - 1]], dim=1)}
    seen = length + width - 1
    logits = model(**given, attention_mask=mask[:, :seen], position_ids=positions[:, length - 1 : seen], cache=cache,
                   use_cache=True).logits
    return torch.log_softmax(logits.float(), dim=-1)


# ---- what a group of rollouts says --------------------------------------------------------------------


def zero_spread(rewards: torch.Tensor) -> float:
    """Fraction of the groups (rows of `rewards` [B, K]) whose K rewards are all equal: no signal for a
    baseline taken within the group."""
    flat = rewards.max(1).values - rewards.min(1).values
    return float(torch.isclose(flat, torch.zeros_like(flat)).float().mean())


def distinct_per_group(keys: list[Hashable], k: int) -> float:
    """Mean number of distinct `keys` (answers, rationales) among each group of k consecutive rows."""
    groups = [keys[first : first + k] for first in range(0, len(keys), k)]
    return sum(len(set(group)) for group in groups) / max(len(groups), 1)


class RolloutMethod(Method):
    """A method that learns from its own samples (latro, grpo, lepo): left-padded prompts, rollouts drawn
    with `sample`, a reference model pi_ref, and answers drawn the same way (greedy, or self-consistency).

    pi_ref costs no second copy under LoRA: it is the same weights with the adapter disabled (`with
    model.disable_adapter():`). Without LoRA it is a frozen deep copy of the model as it was when first
    asked for (the first training step): one more full set of weights in memory (SmolLM2-135M: 538 MB in
    fp32), also written to each checkpoint's extras so that a resumed run keeps the same reference.
    """

    def __init__(self, config: MethodConfig, model, tokenizer, task: Task):
        super().__init__(config, model, tokenizer, task)
        self._reference_model = None  # the frozen copy (no LoRA), made on first use
        self._reference_state: dict[str, torch.Tensor] | None = None  # a checkpoint's copy, loaded on first use

    # -- the reference -----------------------------------------------------------------------------
    @property
    def uses_lora(self) -> bool:
        from peft import PeftModel

        return isinstance(self.model, PeftModel)

    @contextmanager
    def reference(self):
        """The reference model pi_ref: the adapter-disabled model under LoRA, else the frozen copy."""
        if self.uses_lora:
            with self.model.disable_adapter():
                yield self.model
            return
        if self._reference_model is None:
            reference = copy.deepcopy(self.model)
            if self._reference_state is not None:
                reference.load_state_dict(self._reference_state)
                self._reference_state = None
            self._reference_model = reference.requires_grad_(False).eval()
        if next(self._reference_model.parameters()).device != self.device:
            self._reference_model.to(self.device)
        yield self._reference_model

    def extra_state(self) -> dict[str, torch.Tensor]:
        """The frozen reference copy, when there is one, so that a resumed run keeps its reference."""
        if self._reference_model is not None:
            state = self._reference_model.state_dict()
        elif self._reference_state is not None:
            state = self._reference_state
        else:
            return {}
        return {f"reference.{name}": tensor.detach().clone() for name, tensor in state.items()}

    def load_extra_state(self, state: dict[str, torch.Tensor]) -> None:
        unknown = sorted(name for name in state if not name.startswith("reference."))
        if unknown:
            raise ValueError(f"method {self.name!r} keeps only reference.* extras, but the checkpoint holds {unknown[:3]}")
        if state:
            self._reference_state = {name[len("reference.") :]: tensor for name, tensor in state.items()}
            self._reference_model = None

    # -- prompts and answers --------------------------------------------------------------------------
    def prompts(self, examples: list[Example]) -> tuple[torch.Tensor, torch.Tensor]:
        """Left-padded prompts, cut from the left to `max_length` tokens."""
        inputs = encode_prompts(self.tokenizer, [prompt_text(e) for e in examples], self.device)
        ids, mask = inputs["input_ids"], inputs["attention_mask"]
        return ids[:, -self.config.max_length :], mask[:, -self.config.max_length :]

    def answer_options(self, sampling: bool) -> dict[str, Any]:
        """Further `sample` arguments for answering (lepo: its soft steps)."""
        return {}

    @torch.no_grad()
    def answer(self, examples: list[Example]) -> list[Prediction]:
        """Zero-shot, greedy or by self-consistency (majority vote over `samples` texts drawn at `temperature`).

        Cost per example: the tokens generated for it over all its samples (one forward position
        each, the first coming from the prefill), as the CoT baselines count."""
        config = self.config
        sampling = config.decoding == "self-consistency"
        k = config.samples if sampling else 1
        prompt_ids, prompt_mask = self.prompts(examples)
        samples = sample(self.model, self.tokenizer, prompt_ids, prompt_mask, k, config.max_new_tokens,
                         config.temperature if sampling else 0.0, **self.answer_options(sampling))
        rows = [ids[:length] for ids, length in zip(samples.ids.tolist(), samples.lengths.tolist())]
        texts = self.tokenizer.batch_decode(rows, skip_special_tokens=True)
        predictions = []
        for b in range(len(examples)):
            group = texts[b * k : (b + 1) * k]
            answers = [self.parse(text) for text in group]
            chosen = vote(answers)
            cost = int(samples.lengths[b * k : (b + 1) * k].sum())
            predictions.append(Prediction(group[chosen], answers[chosen], cost, cost, samples=group if sampling else None))
        return predictions

"""What every method shares: its config fields, the Prediction it returns, text layout and batching."""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ..config import Config, choices
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

    positive_keys = ("max_length", "max_new_tokens", "samples", "temperature", "lora_r", "lora_alpha")


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


@dataclass
class Batch:
    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    labels: torch.Tensor

    @property
    def target_tokens(self) -> int:
        return int((self.labels != -100).sum())


class StepTokens(nn.Module):
    """Counts the training examples seen, their gold steps and the steps' tokens (a buffer, so
    checkpoints keep it): under keep_position, the tokens an answer's latent steps stand for."""

    def __init__(self):
        super().__init__()
        self.register_buffer("count", torch.zeros(3, dtype=torch.float64))  # [examples, steps, tokens]

    def record(self, examples: list[Example], chains: list[list[int]]) -> None:
        seen = [len(examples), sum(len(e.steps) for e in examples), sum(map(len, chains))]
        self.count += torch.tensor(seen, dtype=torch.float64, device=self.count.device)

    def expected(self, latent_steps: int | None) -> int:
        """Mean tokens of `latent_steps` steps; None: of a whole chain (every step latent)."""
        examples, steps, tokens = self.count.tolist()
        if not steps:
            return 0
        return round(tokens / examples) if latent_steps is None else round(latent_steps * tokens / steps)


def prompt_text(example: Example) -> str:
    return f"{example.question}\n"


def answer_text(example: Example) -> str:
    return f"{ANSWER_MARKER} {example.answer}"


def chain_text(example: Example, separator: str = "\n") -> str:
    """Gold reasoning then the answer: the CoT target, one step a line (or as the task separates them)."""
    return separator.join(example.steps + [answer_text(example)])


def split_chain(tokenizer, example: Example, k: int, separator: str = "\n") -> tuple[list[int], list[int]]:
    """The CoT target's ids cut where step k starts (k = len(steps): where the answer starts):
    (steps 1..k with their separators, the rest). Tokenized as one text, so the rest is exactly what
    a CoT model reads there; a token holding the separator and the next step's start (a word-level
    "▁1") goes with the rest."""
    boundary = sum(len(step) + len(separator) for step in example.steps[:k])
    encoded = tokenizer(chain_text(example, separator), add_special_tokens=False, return_offsets_mapping=True)
    cut = sum(1 for _, end in encoded["offset_mapping"] if end <= boundary)
    return encoded["input_ids"][:cut], encoded["input_ids"][cut:]


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
    answers = [normalise_answer(extract_final(text)) for text in texts]
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
    its __init__ creates; COCONUT's step counter, SLR's stabilisers): they are trained with the backbone's
    parameters and saved in its checkpoints. Put it before Method among the bases."""

    extras: nn.ModuleDict

    def _extras_on_device(self) -> nn.ModuleDict:
        return self.extras.to(self.device)

    def trainable_parameters(self) -> list[torch.nn.Parameter]:
        return super().trainable_parameters() + list(self._extras_on_device().parameters())

    def extra_state(self) -> dict[str, torch.Tensor]:
        return {name: tensor.detach() for name, tensor in self.extras.state_dict().items()}

    def load_extra_state(self, state: dict[str, torch.Tensor]) -> None:
        """Load saved extras; an empty state (e.g. a `cot` checkpoint to start from) keeps the initial ones."""
        if not state:
            return
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

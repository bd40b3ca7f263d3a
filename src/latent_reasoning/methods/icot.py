"""Implicit chain of thought by stepwise internalization (iCoT-SI; Deng et al. 2024, arXiv 2405.14838).

The model is trained on the CoT target with its first chain tokens removed, more of them as
training goes on, until it answers with no reasoning tokens at all. With z_1 .. z_m the chain's
tokens (the gold steps, each followed by its separator) and y the answer ("#### answer <eos>"),

    removed(step) = first_removed + tokens_per_removal * floor(step / steps_per_removal)
    r_i           = removed(step) + o_i,    o_i ~ p(o) = (1 - e^-lambda) e^(-lambda o),  o = 0 .. 99
    L(theta)      = - sum_i sum_{t > r_i} log p_theta(z_t | x, z_{r_i < s < t})
                    - sum_i log p_theta(y | x, z_{> r_i})

(the smoothing offset o_i is drawn per example; p puts the tail mass beyond 99 on o = 99, as iCoT's
code does; `smoothing_lambda` None switches it off). Once removed(step) >= m the target is the
answer alone. With `reset_optimizer` AdamW's moments are cleared each time removed(step) grows
(iCoT resets at every removal). With `keep_position` the tokens after the removed span keep the
position ids they had in the full sequence: x at 0 .. q-1, z_t at q + t - 1, y after z_m,
whatever is removed, so the layout a CoT model learned never moves.

Answering is greedy decoding from the question. Under `keep_position` the generated tokens are
placed after the tokens the current schedule removes, min(removed, m); m is not known for a new
question, so the mean chain length of the training examples seen is used (saved in the
checkpoint): exact on tasks whose chains have a fixed length (parity, multiplication, graph).

From iCoT's epochs to our steps: iCoT removes 8 tokens an epoch, one at a time, so
steps_per_removal = steps_per_epoch / 8 with tokens_per_removal = 1; removing 8 tokens per stage
is tokens_per_removal = 8 with steps_per_removal = the steps of a stage.
"""

from __future__ import annotations

import math
import random
import zlib
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..config import ConfigError
from ..latent import decode, thought_loop
from ..tasks import Example
from .base import Method, MethodConfig, Prediction, encode_prompts, prompt_text, split_chain

SMOOTHING_SUPPORT = 100  # offsets 0 .. 99, as in iCoT's code


@dataclass
class ICoTConfig(MethodConfig):
    tokens_per_removal: int = 8  # chain tokens removed at each removal
    steps_per_removal: int = 100  # optimizer steps between removals
    first_removed: int = 0  # chain tokens removed from step 0
    smoothing_lambda: float | None = 4.0  # removal smoothing; None: every example drops exactly removed(step)
    reset_optimizer: bool = True  # clear AdamW's moments at each removal
    keep_position: bool = False  # tokens after the removed span keep their full-sequence position ids

    positive_keys = MethodConfig.positive_keys + ("tokens_per_removal", "steps_per_removal", "smoothing_lambda")

    def check(self) -> None:
        if self.decoding != "greedy":
            raise ConfigError(f"decoding={self.decoding!r}: icot answers greedily; use decoding=greedy")


def smoothing_distribution(lam: float, support: int = SMOOTHING_SUPPORT) -> torch.Tensor:
    """p(o) = (1 - e^-lam) e^(-lam o) for o = 0 .. support-1, the tail's mass added to the last."""
    o = torch.arange(support, dtype=torch.float64)
    p = (1 - math.exp(-lam)) * torch.exp(-lam * o)
    p[-1] += 1 - p.sum()
    return p


class ICoT(Method):
    """CoT tokens removed from the left, a few at a time, until the model answers without them."""

    name = "icot"
    Config = ICoTConfig

    def __init__(self, config: ICoTConfig, model, tokenizer, task):
        super().__init__(config, model, tokenizer, task)
        self.removed: int | None = None  # the schedule's removal count at the current step
        self.smoothing = None if config.smoothing_lambda is None else smoothing_distribution(config.smoothing_lambda)
        # chain tokens of the training examples seen: their mean places answers under keep_position
        self.chain_count = torch.zeros(2, dtype=torch.float64)  # [examples, tokens]

    def extra_state(self) -> dict[str, torch.Tensor]:
        return {"chain_count": self.chain_count.clone()}

    def load_extra_state(self, state: dict[str, torch.Tensor]) -> None:
        """A checkpoint of this method holds the chain counts; a `cot` checkpoint to start from holds nothing."""
        unexpected = sorted(set(state) - {"chain_count"})
        if unexpected:
            raise ValueError(f"method 'icot': unexpected extras in the checkpoint: {unexpected}")
        if "chain_count" in state:
            self.chain_count = state["chain_count"].to(torch.float64).clone()

    # -- the schedule -------------------------------------------------------------------------------
    def removed_at(self, step: int) -> int:
        c = self.config
        return c.first_removed + c.tokens_per_removal * (step // c.steps_per_removal)

    def on_step(self, step: int) -> bool:
        """Set the removal count of `step`; True (reset AdamW) when it grew since the previous step."""
        self.removed = self.removed_at(step)
        return bool(self.config.reset_optimizer and step > 0 and self.removed != self.removed_at(step - 1))

    def removal_counts(self, examples: list[Example], step: int) -> list[int]:
        """removed(step) + o_i per example; o_i drawn from (step, position, question), so a resumed run draws the same."""
        counts = []
        for position, example in enumerate(examples):
            offset = 0
            if self.smoothing is not None:
                rng = random.Random(zlib.crc32(f"{step}:{position}:{example.question}".encode()))
                offset = _draw(self.smoothing, rng.random())
            counts.append(self.removed_at(step) + offset)
        return counts

    # -- the data ---------------------------------------------------------------------------------
    def split_target(self, example: Example) -> tuple[list[int], list[int]]:
        """The CoT target's ids as (chain, answer): chain = the steps with their separators, answer =
        "#### answer" and EOS; exactly the ids `cot` trains on."""
        chain, answer = split_chain(self.tokenizer, example, len(example.steps), self.task.step_separator)
        return chain, answer + [self.tokenizer.eos_token_id]

    def encode(self, examples: list[Example], removals: list[int]):
        """Right-padded ids, mask, labels and position ids of question + chain[r:] + answer, per example."""
        rows, labels, positions, chain_lengths = [], [], [], []
        for example, r in zip(examples, removals):
            question = self.tokenizer(prompt_text(example), add_special_tokens=False)["input_ids"]
            chain, answer = self.split_target(example)
            r = min(r, len(chain))
            target = chain[r:] + answer
            room = max(self.config.max_length - len(target), 1)
            question = question[-room:]
            skip = r if self.config.keep_position else 0
            rows.append((question + target)[: self.config.max_length])
            labels.append(([-100] * len(question) + target)[: self.config.max_length])
            positions.append((list(range(len(question))) +
                              list(range(len(question) + skip, len(question) + skip + len(target))))[: self.config.max_length])
            chain_lengths.append(len(chain))
        width = max(map(len, rows))
        pad = self.tokenizer.pad_token_id

        def padded(values, fill):
            return torch.tensor([v + [fill] * (width - len(v)) for v in values])

        mask = padded([[1] * len(r) for r in rows], 0)
        return padded(rows, pad), mask, padded(labels, -100), padded(positions, 0), chain_lengths

    def loss(self, examples: list[Example], step: int):
        ids, mask, labels, positions, chain_lengths = self.encode(examples, self.removal_counts(examples, step))
        self.chain_count += torch.tensor([len(chain_lengths), sum(chain_lengths)], dtype=torch.float64)
        device = self.device
        logits = self.model(input_ids=ids.to(device), attention_mask=mask.to(device),
                            position_ids=positions.to(device)).logits
        loss = F.cross_entropy(logits[:, :-1].flatten(0, 1).float(), labels[:, 1:].flatten().to(device),
                               ignore_index=-100)
        return loss, {"removed": float(self.removed_at(step)), "tokens": float(mask.sum())}

    # -- answering --------------------------------------------------------------------------------
    def answer_offset(self) -> int:
        """Positions the answer skips under keep_position: the chain tokens the schedule removes now
        (all of them once training ends), capped at the mean chain length seen in training."""
        if not self.config.keep_position:
            return 0
        examples, tokens = self.chain_count.tolist()
        chain = round(tokens / examples) if examples else 0
        removed = self.removed if self.removed is not None else chain  # after training: everything
        return min(removed, chain)

    @torch.no_grad()
    def answer(self, examples: list[Example]) -> list[Prediction]:
        if not examples:
            return []
        inputs = encode_prompts(self.tokenizer, [prompt_text(e) for e in examples], self.device)
        state = thought_loop(self.model, inputs["input_ids"], inputs["attention_mask"], 0)
        state.position_offset = torch.full((len(examples),), self.answer_offset(), device=self.device)
        decoded = decode(self.model, state, None, self.config.max_new_tokens, self.tokenizer.eos_token_id,
                         pad_token_id=self.tokenizer.pad_token_id)
        predictions = []
        for row, length in zip(decoded.ids.tolist(), decoded.n_tokens.tolist()):
            text = self.tokenizer.decode(row[:length], skip_special_tokens=True)
            # as for cot: the prefill yields the first token, each later token costs one pass
            predictions.append(Prediction(text, self.parse(text), length, length))
        return predictions


def _draw(distribution: torch.Tensor, u: float) -> int:
    """The offset o with P(O < o) <= u < P(O <= o): inverse-CDF sampling from a uniform u in [0, 1)."""
    cumulative = 0.0
    for o, p in enumerate(distribution.tolist()):
        cumulative += p
        if u < cumulative:
            return o
    return len(distribution) - 1

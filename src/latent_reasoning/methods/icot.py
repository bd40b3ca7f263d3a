"""Implicit chain of thought by stepwise internalization (iCoT-SI; Deng et al. 2024, arXiv 2405.14838).

The model is trained on the CoT target with its first chain tokens removed, more of them as
training goes on, until it answers with no reasoning tokens at all. With z_1 .. z_m the chain's
tokens (the gold steps, each followed by its separator) and y the answer ("#### answer <eos>"),

    removed(step) = first_removed + tokens_per_removal * floor(step / steps_per_removal)
    r_i           = removed(step) + o_i,    o_i ~ p(o) = (1 - e^-lambda) e^(-lambda o),  o = 0 .. 99
    L(theta)      = - sum_i sum_{t > r_i} w log p_theta(z_t | x, z_{r_i < s < t})
                    - sum_i log p_theta(y | x, z_{> r_i})

averaged over the weighted tokens (the smoothing offset o_i is drawn per example; p puts the tail mass
beyond 99 on o = 99, as iCoT's code does; `smoothing_lambda` None switches it off). iCoT's loss has
w = 1 (`chain_weight`). With w = 0 the chain left after the removed span is input only: the loss
falls on the answer, and the model is never asked to write the first kept chain token from the
question alone (on 4x4 multiplication, a running sum's top digits with its lower digits removed);
there it did worse than w = 1 (bench/README.md). Once removed(step) >= m the target is the answer
alone. With `reset_optimizer` AdamW's moments are cleared each time removed(step) grows (iCoT resets
at every removal). With `keep_position` the tokens after the removed span keep the position ids
they had in the full sequence: x at 0 .. q-1, z_t at q + t - 1, y after z_m, whatever is removed,
so the layout a CoT model learned never moves.

On multiplication, `running_sum_weight` u > 0 adds Bai et al.'s auxiliary loss (arXiv 2510.00184; their
head reads attention heads, this one the residual stream): a linear head on h_k, the output of layer
ceil(L/2) of L at the position that predicts the answer's digit k, regresses the running column sum
c_k = sum_{i+j=k} a_i b_j + floor(c_{k-1} / 10) (the digit is c_k mod 10),

    L_aux = u * mean_k (w . h_k + b - c_k / 100)^2,

the quantity they found a model must carry to get the middle digits right without a chain.

Answering is greedy decoding from the question. Under `keep_position` the generated tokens are
placed after the tokens the current schedule removes, min(removed, m) (a loaded checkpoint's schedule
stands at the step it was saved). m is not known for a new question, so the mean chain length of the
training examples seen (saved with each checkpoint) is used: exact on tasks whose chains have a fixed
length (parity, multiplication, graph).

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
from .base import (ExtraModules, Method, MethodConfig, Prediction, StepTokens, encode_prompts, pad_pairs, prompt_text,
                   split_chain)

SMOOTHING_SUPPORT = 100  # offsets 0 .. 99, as in iCoT's code


@dataclass
class ICoTConfig(MethodConfig):
    tokens_per_removal: int = 8  # chain tokens removed at each removal
    steps_per_removal: int = 100  # optimizer steps between removals
    first_removed: int = 0  # chain tokens removed from step 0
    smoothing_lambda: float | None = 4.0  # removal smoothing; None: every example drops exactly removed(step)
    reset_optimizer: bool = True  # clear AdamW's moments at each removal
    keep_position: bool = False  # tokens after the removed span keep their full-sequence position ids
    chain_weight: float = 1.0  # weight of the remaining chain tokens in the loss (the answer's is 1)
    running_sum_weight: float = 0.0  # multiplication: weight of the auxiliary running-sum regression (0: off)

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


class ICoT(ExtraModules, Method):
    """CoT tokens removed from the left, a few at a time, until the model answers without them."""

    name = "icot"
    Config = ICoTConfig

    def __init__(self, config: ICoTConfig, model, tokenizer, task):
        super().__init__(config, model, tokenizer, task)
        self.removed: int | None = None  # the schedule's removal count at the current step
        self.smoothing = None if config.smoothing_lambda is None else smoothing_distribution(config.smoothing_lambda)
        # the chains of the training examples seen: their mean length places answers under keep_position
        self.extras = torch.nn.ModuleDict({"step_tokens": StepTokens()})
        self.step_tokens = self.extras["step_tokens"]
        self.running_sum_head = None  # the auxiliary loss's linear probe, trained and saved with the model
        if config.running_sum_weight:
            if not hasattr(task, "column_sums"):
                raise ConfigError(f"running_sum_weight={config.running_sum_weight}: the auxiliary running-sum loss "
                                  f"needs a task with column sums (multiplication), not {task.name!r}")
            self.running_sum_head = self.extras["running_sum_head"] = torch.nn.Linear(model.config.hidden_size, 1)

    def load_extra_state(self, state: dict[str, torch.Tensor]) -> None:
        """Checkpoints from before the extras were one ModuleDict hold the chain counts unprefixed, and some the
        removal count at their step, which the step itself now gives (dropped). One with no running-sum head (a
        plain icot run's) may start a run that adds one: the head starts fresh."""
        state = {(f"step_tokens.{key}" if key in ("count", "by_step") else key): value
                 for key, value in state.items() if key != "removed"}
        saved_head = any(key.startswith("running_sum_head.") for key in state)
        if saved_head and self.running_sum_head is None:
            raise ValueError("method 'icot': the checkpoint holds a running-sum head; set running_sum_weight")
        if state and self.running_sum_head is not None and not saved_head:
            state.update(self.running_sum_head.state_dict(prefix="running_sum_head."))
        super().load_extra_state(state)

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
        """question + chain[r:] + answer per example: the right-padded Batch (labels on the target),
        its position ids, a mask of the answer's labels, and each example's chain ids."""
        pairs, positions, answers, chains = [], [], [], []
        length = self.config.max_length
        for example, r in zip(examples, removals):
            question = self.tokenizer(prompt_text(example), add_special_tokens=False)["input_ids"]
            chain, answer = self.split_target(example)
            r = min(r, len(chain))
            target = chain[r:] + answer
            question = question[-max(length - len(target), 1):]  # cut from the left, as for cot
            skip = r if self.config.keep_position else 0
            pairs.append(((question + target)[:length], ([-100] * len(question) + target)[:length]))
            start = len(question) + skip
            positions.append([*range(len(question)), *range(start, start + len(target))][:length])
            answers.append(([False] * (len(question) + len(chain) - r) + [True] * len(answer))[:length])
            chains.append(chain)
        batch = pad_pairs(pairs, self.tokenizer.pad_token_id)
        width = batch.input_ids.shape[1]
        positions = torch.tensor([p + [0] * (width - len(p)) for p in positions])
        return batch, positions, torch.tensor([a + [False] * (width - len(a)) for a in answers]), chains

    def loss(self, examples: list[Example], step: int):
        batch, positions, answer_mask, chains = self.encode(examples, self.removal_counts(examples, step))
        self.step_tokens.record(examples, [len(chain) for chain in chains])
        device = self.device
        output = self.model(input_ids=batch.input_ids.to(device), attention_mask=batch.attention_mask.to(device),
                            position_ids=positions.to(device), output_hidden_states=self.running_sum_head is not None)
        logits = output.logits
        labels = batch.labels[:, 1:].flatten().to(device)
        token_losses = F.cross_entropy(logits[:, :-1].flatten(0, 1).float(), labels, ignore_index=-100, reduction="none")
        on_answer = answer_mask[:, 1:].flatten().to(device)
        on_chain = (labels != -100) & ~on_answer
        weights = on_answer.float() + self.config.chain_weight * on_chain.float()
        loss = (token_losses * weights).sum() / weights.sum()
        answer_loss = token_losses[on_answer].mean()
        metrics = {"removed": float(self.removed_at(step)), "tokens": float(batch.attention_mask.sum()),
                   "answer_loss": float(answer_loss.detach())}
        if self.running_sum_head is not None:
            running_sum_loss = self.running_sum_loss(examples, batch.input_ids, answer_mask, output.hidden_states)
            loss = loss + self.config.running_sum_weight * running_sum_loss
            metrics["running_sum_loss"] = float(running_sum_loss.detach())
        return loss, metrics

    def running_sum_loss(self, examples: list[Example], input_ids, answer_mask, hidden_states) -> torch.Tensor:
        """The head on the middle layer, at the position before each answer digit, regresses that digit's
        running column sum / 100 (mean squared error)."""
        rows, columns, targets = [], [], []
        for row, example in enumerate(examples):
            digits = example.answer.split()
            eos = int(answer_mask[row].nonzero().max())  # the answer's digits sit just before its EOS
            if self.tokenizer.decode(input_ids[row, eos - len(digits):eos]).split() != digits:
                raise ConfigError("running_sum_weight: the answer's digits must be one token each, then EOS "
                                  f"(this tokenizer writes {example.answer!r} otherwise)")
            rows += [row] * len(digits)
            columns += range(eos - len(digits) - 1, eos - 1)
            targets += self.task.column_sums(example)
        middle = hidden_states[(self.model.config.num_hidden_layers + 1) // 2]
        predicted = self.running_sum_head(middle[rows, columns].float()).squeeze(-1)
        return F.mse_loss(predicted.float(), torch.tensor(targets, dtype=torch.float32, device=predicted.device) / 100)

    # -- answering --------------------------------------------------------------------------------
    def answer_offset(self) -> int:
        """Positions the answer skips under keep_position: the chain tokens the schedule removes now,
        capped at the mean chain length seen in training."""
        if not self.config.keep_position:
            return 0
        chain = self.step_tokens.expected(None)
        removed = self.removed if self.removed is not None else chain  # no schedule step yet: everything
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

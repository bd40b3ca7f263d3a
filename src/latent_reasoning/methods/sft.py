"""The explicit baselines: no-CoT, CoT (SFT on gold steps + answer) and CoT with self-consistency.

All three minimise the token cross-entropy of a target given the question,
    L(theta) = - sum_t log p_theta(y_t | x, y_<t),
where the target y is `#### answer` (no-cot) or `steps \\n #### answer` (cot, cot-sc).
They differ at answer time only in the target they learned and in decoding: greedy, or
CoT-SC (Wang et al. 2022): k sampled chains, majority vote over their parsed answers.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..config import choices
from ..tasks import Example
from .base import (
    Batch,
    Method,
    MethodConfig,
    Prediction,
    answer_text,
    chain_text,
    encode_prompts,
    generated_lengths,
    length_buckets,
    majority_vote,
    next_token_cross_entropy,
    pad_pairs,
    pair_ids,
    prompt_text,
)


class SFTMethod(Method):
    """Supervised fine-tuning on a text target; `target(example)` says which."""

    def __init__(self, config, model, tokenizer, task):
        super().__init__(config, model, tokenizer, task)
        self._pairs: dict[tuple[str, str, int], tuple[list[int], list[int]]] = {}

    def target(self, example: Example) -> str:
        raise NotImplementedError

    def pairs(self, examples: list[Example]) -> list[tuple[list[int], list[int]]]:
        """Each example's (ids, labels), tokenised once: training revisits every example each epoch."""
        pairs = []
        for example in examples:
            key = (prompt_text(example), self.target(example), self.config.max_length)
            if key not in self._pairs:
                self._pairs[key] = pair_ids(self.tokenizer, *key)
            pairs.append(self._pairs[key])
        return pairs

    def loss(self, examples: list[Example], step: int):
        """The mean cross-entropy over every target token of the batch, as one padded batch would give it,
        computed on batches of similar length (`length_buckets`) so that little compute goes to padding."""
        pairs = self.pairs(examples)
        scored = sum(label != -100 for _, labels in pairs for label in labels[1:])
        total = 0.0
        for bucket in length_buckets([len(ids) for ids, _ in pairs]):
            batch = pad_pairs([pairs[i] for i in bucket], self.tokenizer.pad_token_id)
            total = total + self.summed_cross_entropy(batch, [examples[i] for i in bucket])
        return total / max(scored, 1), {"tokens": float(sum(len(ids) for ids, _ in pairs))}

    def summed_cross_entropy(self, batch: Batch, examples: list[Example]) -> torch.Tensor:
        """Summed over the target tokens (`next_token_cross_entropy`). `examples` are the batch's rows, for a method
        that also scores something else in the same pass (slr's step_weight)."""
        return next_token_cross_entropy(self.model, batch.labels.to(self.device),
                                        input_ids=batch.input_ids.to(self.device),
                                        attention_mask=batch.attention_mask.to(self.device))

    @torch.no_grad()
    def answer(self, examples: list[Example]) -> list[Prediction]:
        sampling = self.config.decoding == "self-consistency"
        k = self.config.samples if sampling else 1
        inputs = encode_prompts(self.tokenizer, [prompt_text(e) for e in examples], self.device)
        options = dict(do_sample=True, temperature=self.config.temperature, top_k=0) if sampling else dict(do_sample=False)
        output = self.model.generate(
            **inputs,
            max_new_tokens=self.config.max_new_tokens,
            num_return_sequences=k,
            eos_token_id=self.tokenizer.eos_token_id,
            pad_token_id=self.tokenizer.pad_token_id,
            **options,
        )
        new_ids = output[:, inputs["input_ids"].shape[1] :]
        lengths = generated_lengths(new_ids, self.tokenizer.eos_token_id, self.tokenizer.pad_token_id)
        texts = self.tokenizer.batch_decode(new_ids, skip_special_tokens=True)
        predictions = []
        for i in range(len(examples)):
            samples = texts[i * k : (i + 1) * k]
            cost = lengths[i * k : (i + 1) * k]
            chosen = majority_vote(samples) if sampling else 0
            # each generated token is one forward pass (the prefill yields the first)
            predictions.append(Prediction(samples[chosen], self.parse(samples[chosen]), sum(cost), sum(cost),
                                          samples=samples if sampling else None))
        return predictions


class NoCoT(SFTMethod):
    """Question -> answer directly."""

    name = "no-cot"

    def target(self, example: Example) -> str:
        return answer_text(example)


class CoT(SFTMethod):
    """Question -> gold reasoning steps -> answer."""

    name = "cot"

    def target(self, example: Example) -> str:
        return chain_text(example, self.task.step_separator)


@dataclass
class CoTSCConfig(MethodConfig):
    decoding: str = choices("greedy", "self-consistency", default="self-consistency")


class CoTSC(CoT):
    """CoT trained the same way, answered by self-consistency (k samples, majority vote)."""

    name = "cot-sc"
    Config = CoTSCConfig

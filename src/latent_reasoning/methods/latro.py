"""LaTRO: self-rewarding latent reasoning optimisation (Chen et al. 2024, "Language Models are Hidden
Reasoners", arXiv 2411.04282).

The rationale z is a latent variable between question x and answer y: with rationales drawn from
the model before training (pi_ref, the prior), the answer likelihood is
p(y | x) = sum_z pi_ref(z|x) pi_theta(y | x+z). For any proposal q(z|x), Jensen's inequality gives

    log p(y | x) = log E_{z ~ q} [ pi_theta(y | x+z) pi_ref(z|x) / q(z|x) ]
                >= E_{z ~ q} [ log pi_theta(y | x+z) ]  -  KL( q(z|x) || pi_ref(z|x) ),

and LaTRO takes the model itself as the proposal, q = pi_theta (it is its own reasoner), and
weights the KL by beta:

    J(theta) = E_{z ~ pi_theta(.|x)} [ log pi_theta(y | x+z) ]  -  beta KL( pi_theta(z|x) || pi_ref(z|x) ).

LaTRO climbs J. Its gradient has two terms (the score of the KL's own log pi_theta has mean zero),

    grad J = E_z [ grad log pi_theta(z|x) * ( log pi_theta(y|x+z) - beta * log(pi_theta(z|x) / pi_ref(z|x)) ) ]   (1)
           + E_z [ grad log pi_theta(y|x+z) ]                                                                  (2)

(1) is a REINFORCE term: the model samples its own rationales and rewards each by how likely it
makes the gold answer (no reward model). (2) is supervised learning of the answer given the
model's own rationale. Per question, K rationales z_1..z_K ~ pi_theta(.|x) (temperature 1) give

    R_k = log pi_theta(y | x+z_k)                       summed over the answer tokens (`reward_norm`: or their mean)
    r_k = R_k - beta * [log pi_theta(z_k|x) - log pi_ref(z_k|x)]          (held constant: no gradient)
    A_k = r_k - 1/(K-1) sum_{j != k} r_j                                   leave-one-out baseline (RLOO)
    L   = -(1/K) sum_k A_k log pi_theta(z_k|x)  -  lambda (1/K) sum_k log pi_theta(y | x+z_k)

averaged over the questions of the batch; lambda is `answer_weight`. lambda = 1 is the paper's
objective (term 2); lambda = 0 is what the authors' released trainer runs by default
(`sft_penalty=0`, with K=16, kl_coef=0.05, temperature 1, penalty_reward_value=2). Without term (2)
the update ignores how moving the shared weights moves the reward itself: on a randomly initialised
tiny model lambda = 0 makes the mean reward fall (raising the sampled rationale tokens' probability
takes mass from the answer tokens) where lambda = 1 makes it rise.

A rationale is sampled until the text it decodes to contains `stop` (default "####", this
project's answer marker); z is the tokens before the token where `stop` begins (that token and
anything after it are dropped), and y is `answer_format` ("{stop} {answer}", i.e. "#### 1 2 3",
plus EOS) appended to z's ids, so the reward covers exactly the answer tokens. y is tokenised as the
model wrote it: after the text the stop token carried before `stop` (its seam, e.g. the space of "▁#" or
"ĠThe"), so y's first token is the one the model samples there and not one it never writes after a
word (tokenised on its own, "####" after "1" cost a tiny parity model ~6 nats that no rationale can
earn back, and the answer term trained a token that answering never produces). A rationale that did
not reach `stop` gets y with no seam. A rationale that ends with EOS first ends there (and counts as
finished when `stop_on_eos`, as the released trainer's stop set includes EOS). One that reaches
`rationale_tokens` without stopping keeps all its tokens but its reward R_k is replaced by
`unfinished_penalty` times the mean R over the whole rollout batch (the released trainer:
`penalty_reward_value * rewards.mean()` with value 2; rewards are log-likelihoods, below zero, so
twice the mean is worse than average). Term (2) still covers every sample, as in that trainer.

The reference pi_ref is the adapter-disabled model under LoRA, else a frozen copy of the model at the
first training step, kept in checkpoints (`RolloutMethod`); beta = 0 skips it entirely.

One step (`loss`) is: prefill the B prompts once, repeat their KV cache K times and sample all B*K
rationales in one batch (rows that stop leave the batch; `base.sample`); then one teacher-forced pass
with gradients over [x, z_k, y] gives log pi(z_k|x) and log pi(y|x+z_k) for all samples at once, and
one pass without gradients gives log pi_ref(z_k|x); both run each prompt x once for its K rows. The
rollout pieces are module functions (`pack`, `token_logprobs`, `latro_objective`) so that tests can call
them.

Logged each step, beside the loss terms: the mean reward r, `zero_spread` (the fraction of questions
whose K rewards are all equal: no signal for the baseline) and `distinct_rationales` (distinct
rationales z per question; LaTRO samples no answers, it scores the gold one).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..config import ConfigError, choices
from ..tasks import Example
from .base import (
    ANSWER_MARKER,
    MethodConfig,
    RolloutMethod,
    Samples,
    distinct_per_group,
    normalise_answer,
    sample,
    shared_prompt_log_softmax,
    tail_log_softmax,
    zero_spread,
)


@dataclass
class LaTROConfig(MethodConfig):
    rollouts: int = 16  # K: rationales sampled per question (paper: 16)
    rationale_tokens: int = 500  # longest rationale sampled (paper: 500)
    rollout_temperature: float = 1.0  # sampling temperature of the rationales (paper: 1)
    beta: float = 0.05  # KL weight (paper: 0.05); 0 skips the reference model
    answer_weight: float = 1.0  # lambda: weight of the answer log-likelihood term (2); 0 = released script
    reward_norm: str = choices("sum", "mean", default="sum")  # log pi(y|x+z) summed over answer tokens, or their mean
    stop: str = ANSWER_MARKER  # the string that ends a rationale and introduces the answer
    answer_format: str = "{stop} {answer}"  # the answer text y scored after a rationale
    stop_on_eos: bool = True  # an EOS before `stop` ends the rationale and counts as finished
    unfinished_penalty: float | None = 2.0  # R of a rationale that never stops := this x batch-mean R; none: keep R

    positive_keys = MethodConfig.positive_keys + ("rationale_tokens", "rollout_temperature")

    def check(self) -> None:
        if self.rollouts < 2:
            raise ConfigError(f"rollouts={self.rollouts}: the leave-one-out baseline needs at least 2")
        if not self.stop:
            raise ConfigError("stop='': a rationale needs a stop string that introduces the answer")
        try:
            filled = self.answer_format.format(stop=self.stop, answer="42")
        except (KeyError, IndexError, ValueError) as error:
            raise ConfigError(
                f"answer_format={self.answer_format!r}: only the fields {{stop}} and {{answer}} may appear ({error})"
            ) from None
        if "42" not in filled:
            raise ConfigError(f"answer_format={self.answer_format!r}: must contain {{answer}}")


# ---- teacher forcing: [x, z, y] in one batch --------------------------------------------------------


@dataclass
class Packed:
    """Rows [prompt (left-padded, width L) | z_k | y | right padding]: y follows each row's z directly.

    input_ids, attention_mask: [N, L + T];  rationale_mask, answer_mask: [N, T] over the tail columns.
    """

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    prompt_width: int
    rationale_mask: torch.Tensor
    answer_mask: torch.Tensor

    @property
    def targets(self) -> torch.Tensor:
        return self.input_ids[:, self.prompt_width :]

    @property
    def rationale_width(self) -> int:
        """Tail columns that hold rationale tokens in some row (what the reference must score)."""
        used = self.rationale_mask.any(0).nonzero()
        return int(used.max()) + 1 if used.numel() else 0


def pack(
    prompt_ids: torch.Tensor,
    prompt_mask: torch.Tensor,
    samples: Samples,
    answers: list[list[int]],
    k: int,
    pad_token_id: int,
) -> Packed:
    """One row per sample: its prompt, the kept rationale tokens z, then that sample's answer ids y (`answers`: one
    list per sample row)."""
    device = prompt_ids.device
    n = samples.ids.shape[0]
    z_len = samples.kept
    z_width = int(z_len.max()) if n else 0
    y_width = max(map(len, answers))
    y = torch.full((n, y_width), pad_token_id, dtype=torch.long, device=device)
    y_len = torch.tensor([len(a) for a in answers], device=device)
    for row, ids in enumerate(answers):
        y[row, : len(ids)] = torch.tensor(ids, device=device)

    columns = torch.arange(z_width + y_width, device=device)
    rationale_mask = columns.unsqueeze(0) < z_len.unsqueeze(1)
    tail = torch.full((n, z_width + y_width), pad_token_id, dtype=torch.long, device=device)
    tail[:, :z_width] = torch.where(rationale_mask[:, :z_width], samples.ids[:, :z_width], pad_token_id)
    y_columns = z_len.unsqueeze(1) + torch.arange(y_width, device=device)  # y starts right after each z
    y_valid = torch.arange(y_width, device=device).unsqueeze(0) < y_len.unsqueeze(1)
    tail.scatter_(1, y_columns, torch.where(y_valid, y, pad_token_id))
    answer_mask = torch.zeros_like(rationale_mask).scatter_(1, y_columns, y_valid)
    tail_mask = (rationale_mask | answer_mask).long()
    return Packed(
        input_ids=torch.cat([prompt_ids.repeat_interleave(k, 0), tail], dim=1),
        attention_mask=torch.cat([prompt_mask.long().repeat_interleave(k, 0), tail_mask], dim=1),
        prompt_width=prompt_ids.shape[1],
        rationale_mask=rationale_mask,
        answer_mask=answer_mask,
    )


def token_logprobs(model, packed: Packed, width: int | None = None, k: int = 1) -> torch.Tensor:
    """log pi(tail token t | everything before it) for the first `width` tail columns (default all), [N, width].

    One forward pass; only the logits that predict tail tokens are computed. With k > 1 (the rows in groups of k
    that share their prompt, as `pack` lays them out) each prompt runs once for its group
    (`shared_prompt_log_softmax`: the same numbers). Differentiable (call under torch.no_grad() for rewards or the
    reference)."""
    width = packed.targets.shape[1] if width is None else width
    start, end = packed.prompt_width, packed.prompt_width + width
    ids, mask = packed.input_ids, packed.attention_mask
    if k > 1:
        log_probs = shared_prompt_log_softmax(model, ids[::k, :start], mask[::k, :start], ids[:, start:end],
                                              mask[:, start:end])
    else:
        log_probs = tail_log_softmax(model, ids[:, :end], mask[:, :end], width)
    return log_probs.gather(2, packed.targets[:, :width].unsqueeze(2)).squeeze(2)


# ---- the objective ---------------------------------------------------------------------------------


@dataclass
class Objective:
    loss: torch.Tensor
    policy_loss: torch.Tensor  # -(1/BK) sum A_k log pi(z_k|x)
    answer_loss: torch.Tensor  # -(1/BK) sum log pi(y|x+z_k); loss = policy_loss + lambda * answer_loss
    rewards: torch.Tensor  # [B, K] r_k (after the unfinished penalty and the KL term)
    advantages: torch.Tensor  # [B, K]
    kl: torch.Tensor  # [B, K] log pi(z|x) - log pi_ref(z|x) (zeros without a reference)


def latro_objective(
    answer_logp: torch.Tensor,
    rationale_logp: torch.Tensor,
    reference_logp: torch.Tensor | None,
    finished: torch.Tensor,
    beta: float,
    answer_weight: float,
    unfinished_penalty: float | None = 2.0,
) -> Objective:
    """The LaTRO loss from per-sample sequence log-probabilities, all [B, K] (see the module docstring).

    `answer_logp` = log pi(y|x+z_k) and `rationale_logp` = log pi(z_k|x) carry gradients;
    `reference_logp` = log pi_ref(z_k|x) (None when beta = 0); `finished` bool.
    The rewards and advantages are constants (detached): gradients come only from the two loss terms.
    """
    k = answer_logp.shape[1]
    reward = answer_logp.detach()
    if unfinished_penalty is not None:
        reward = torch.where(finished, reward, unfinished_penalty * reward.mean())
    kl = (rationale_logp.detach() - reference_logp.detach()) if reference_logp is not None else torch.zeros_like(reward)
    reward = reward - beta * kl
    baseline = (reward.sum(1, keepdim=True) - reward) / (k - 1)
    advantages = reward - baseline
    policy_loss = -(advantages * rationale_logp).mean()
    answer_loss = -answer_logp.mean()
    loss = policy_loss + answer_weight * answer_loss
    return Objective(loss, policy_loss, answer_loss, reward, advantages, kl)


# ---- the method ------------------------------------------------------------------------------------


@dataclass
class Rollout:
    """One step's rollouts for B questions: the samples, the packed teacher-forcing batch and where they came from."""

    prompt_ids: torch.Tensor
    prompt_mask: torch.Tensor
    samples: Samples
    packed: Packed
    answer_lengths: torch.Tensor  # [B*K] tokens of y (EOS included)


class LaTRO(RolloutMethod):
    """Self-rewarding variational RL on sampled rationales; answers like CoT (greedy or self-consistency)."""

    name = "latro"
    Config = LaTROConfig

    # -- one step -----------------------------------------------------------------------------------
    def answer_ids(self, example: Example, seam: str = "") -> list[int]:
        """Token ids of y for `example`: `answer_format` after `seam` (`seams`), tokenised together, then EOS."""
        text = seam + self.config.answer_format.format(stop=self.config.stop, answer=example.answer)
        return self.tokenizer(text, add_special_tokens=False)["input_ids"] + [self.tokenizer.eos_token_id]

    def seams(self, samples: Samples) -> list[str]:
        """Per sample, the text its stop token(s) carried before `stop` (" " for "▁#" or "ĠThe"); "" where none."""
        stop, seams = self.config.stop, []
        for ids, kept, length in zip(samples.ids.tolist(), samples.kept.tolist(), samples.lengths.tolist()):
            tail = self.tokenizer.decode(ids[kept:length], skip_special_tokens=True)
            seams.append(tail[: tail.find(stop)] if stop in tail else "")
        return seams

    def rollout(self, examples: list[Example], generator: torch.Generator | None = None) -> Rollout:
        """Sample K rationales per question (shared prefill) and pack [x, z_k, y] for teacher forcing."""
        config = self.config
        prompt_ids, prompt_mask = self.prompts(examples)
        samples = sample(self.model, self.tokenizer, prompt_ids, prompt_mask, config.rollouts, config.rationale_tokens,
                         config.rollout_temperature, config.stop, config.stop_on_eos, generator)
        answers = [self.answer_ids(examples[row // config.rollouts], seam)
                   for row, seam in enumerate(self.seams(samples))]
        packed = pack(prompt_ids, prompt_mask, samples, answers, config.rollouts, self.tokenizer.pad_token_id)
        lengths = torch.tensor([len(a) for a in answers], device=self.device)
        return Rollout(prompt_ids, prompt_mask, samples, packed, lengths)

    def sequence_logprobs(self, rollout: Rollout) -> tuple[torch.Tensor, torch.Tensor]:
        """(log pi(z_k|x), log pi(y|x+z_k)) for every sample, [B, K] each, from one differentiable pass."""
        packed, k = rollout.packed, self.config.rollouts
        token = token_logprobs(self.model, packed, k=k)
        rationale = (token * packed.rationale_mask).sum(1)
        answer = (token * packed.answer_mask).sum(1)
        if self.config.reward_norm == "mean":
            answer = answer / rollout.answer_lengths
        return rationale.view(-1, k), answer.view(-1, k)

    @torch.no_grad()
    def reference_logprobs(self, rollout: Rollout) -> torch.Tensor:
        """log pi_ref(z_k|x), [B, K]: one pass of the reference over the prompts and rationales only."""
        packed = rollout.packed
        width = packed.rationale_width
        if width == 0:
            return torch.zeros(packed.input_ids.shape[0], device=self.device).view(-1, self.config.rollouts)
        with self.reference() as reference:
            token = token_logprobs(reference, packed, width, k=self.config.rollouts)
        return (token * packed.rationale_mask[:, :width]).sum(1).view(-1, self.config.rollouts)

    def loss(self, examples: list[Example], step: int, generator: torch.Generator | None = None):
        config = self.config
        rollout = self.rollout(examples, generator)
        rationale_logp, answer_logp = self.sequence_logprobs(rollout)
        reference_logp = self.reference_logprobs(rollout) if config.beta > 0 else None
        finished = rollout.samples.finished.view(-1, config.rollouts)
        objective = latro_objective(answer_logp, rationale_logp, reference_logp, finished, config.beta,
                                    config.answer_weight, config.unfinished_penalty)
        samples = rollout.samples
        metrics = {
            "reward": float(objective.rewards.mean()),
            "answer_logp": float(answer_logp.detach().mean()),
            "kl": float(objective.kl.mean()),
            "finished": float(samples.finished.float().mean()),
            "sampled_tokens": float(samples.sampled_tokens),
            "rationale_tokens": float(samples.kept.float().mean()),
            "zero_spread": zero_spread(objective.rewards),
            "distinct_rationales": distinct_per_group(
                [tuple(ids[:kept]) for ids, kept in zip(samples.ids.tolist(), samples.kept.tolist())], config.rollouts),
            "policy_loss": float(objective.policy_loss.detach()),
            "answer_loss": float(objective.answer_loss.detach()),
            "tokens": float(rollout.packed.attention_mask.sum()),
        }
        return objective.loss, metrics

    # -- answering (greedy or self-consistency: RolloutMethod.answer) ----------------------------------
    def parse(self, text: str) -> str | None:
        """The answer after the last `stop` (to the end of its line), else the task-agnostic parser's."""
        stop = self.config.stop
        if stop in text:
            line = text.rsplit(stop, 1)[1].strip(" \t:").split("\n", 1)[0]
            return normalise_answer(line)
        return super().parse(text)


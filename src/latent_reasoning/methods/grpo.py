"""GRPO: group relative policy optimisation (Shao et al. 2024, "DeepSeekMath", arXiv 2402.03300), the
reinforcement-learning baseline that LEPO (`lepo.py`) must beat.

Per question x, G completions o_1..o_G (`rollouts`) are sampled from the policy as it is before the
update, pi_old: one shared prefill, as latro, tokens drawn from softmax(s) with s the logits after
temperature, top-k and top-p (`rollout_temperature`, `top_k`, `top_p`), to EOS or `completion_tokens`.
Each completion is scored by the task's grader, plus an optional format reward:

    r_i = 1[grade(o_i, x) is right] + w_f 1[o_i states an answer after "####"]       w_f = `format_weight`
    A_i = (r_i - mean_j r_j) / (std_j r_j + eps)      within the group; std with Bessel's correction, eps = `advantage_eps`

and the policy climbs

    J(theta) = agg_{i,t} [ min( rho_{i,t} A_i, clip(rho_{i,t}, 1 - eps_c, 1 + eps_c) A_i )  -  beta D_{i,t} ]

    rho_{i,t} = pi_theta(o_{i,t} | x, o_{i,<t}) / pi_old(o_{i,t} | x, o_{i,<t})           eps_c = `clip`
    D_{i,t}   = pi_ref / pi_theta - log(pi_ref / pi_theta) - 1     at o_{i,t}: the k3 estimator of KL(pi_theta || pi_ref), >= 0

over the completion tokens (EOS included), with agg the `aggregation`: `sequence` = (1/G) sum_i (1/|o_i|)
sum_t (the GRPO paper's), `token` = sum_{i,t} / sum_i |o_i| (every token weighs the same: DAPO's).
The loss is -J. On the first update of a rollout pi_old is pi_theta itself (its values, detached), so
rho = 1 exactly and the gradient is REINFORCE's with group-normalised advantages,

    grad J = agg_{i,t} [ A_i grad log pi_theta(o_{i,t} | x, o_{i,<t}) ]  -  beta grad D.

With `updates_per_rollout` = mu > 1 a rollout is reused for mu optimizer steps (the steps in between
use no new examples); pi_old stays the policy that sampled it, so the ratio and its clip act from the
second update on. A group whose G rewards are equal has A = 0: it adds nothing but the KL term.

The reference pi_ref (beta > 0) is the adapter-disabled model under LoRA, else a frozen copy of the
model at the first training step, kept in checkpoints (`base.RolloutMethod`); beta = 0 skips it.

Choices of ours, where the sources leave room (LEPO's official code runs TRL's GRPOTrainer: G = 8,
temperature 1, top-k 30, top-p 0.95, eps 1e-4, beta effectively 0, mu = 2):
- pi_theta, pi_old and pi_ref are the model's own next-token distributions at temperature 1 (as latro);
  TRL divides the logits by the sampling temperature first (the same at temperature 1). top-k and
  top-p shape the sampling only, as in TRL.
- "States an answer" (the format reward) is: the text holds the answer marker "####" with something
  after it; the reward reads the decoded completion without special tokens.
- A rollout cut at `completion_tokens` keeps its tokens and its graded reward (TRL's default).
- log pi_theta and log pi_ref of the completions come from each question's prompt run once and its G
  completions over its KV cache (`base.shared_prompt_log_softmax`): the values of one pass over
  [prompt | completion] per row up to rounding, at about 1/G of the prompt's cost (TRL runs it G times).
- The cached rollouts of mu > 1 are not checkpointed: a run resumed between their updates samples
  afresh.

Logged each step: `reward` (mean r), `accuracy` (mean correctness of the rollouts), `zero_spread` (the
fraction of questions whose G rewards are equal), `distinct_answers` (distinct parsed answers per
question, no answer counting as one), `clipped` (fraction of tokens whose ratio lies outside the clip
range), `kl` (mean D, beta > 0), completion lengths and sampled tokens.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from ..config import ConfigError, choices
from ..tasks import Example
from .base import (
    ANSWER_MARKER,
    MethodConfig,
    RolloutMethod,
    Samples,
    SoftThinking,
    distinct_per_group,
    sample,
    shared_prompt_log_softmax,
    zero_spread,
)


@dataclass
class GRPOConfig(MethodConfig):
    rollouts: int = 8  # G: completions sampled per question (LEPO's configs: 8)
    completion_tokens: int = 256  # longest completion sampled in training (LEPO's configs: 2048)
    rollout_temperature: float = 1.0  # sampling temperature of the rollouts (LEPO's configs: 1)
    top_k: int = 30  # rollouts sample among the top_k most likely tokens (0: all; LEPO's configs: 30)
    top_p: float = 0.95  # ... and the fewest of those whose probability reaches top_p (1: all; LEPO's configs: 0.95)
    format_weight: float = 0.0  # w_f: reward for stating an answer after "####" (0: correctness only, as LEPO)
    advantage_eps: float = 1e-4  # eps in A = (r - mean) / (std + eps) (LEPO's code: 1e-4)
    clip: float = 0.2  # eps_c: the ratio is clipped to [1 - clip, 1 + clip]
    beta: float = 0.0  # weight of the KL to the reference (LEPO: effectively 0); 0 skips the reference
    aggregation: str = choices("sequence", "token", default="sequence")  # the mean over tokens: per completion first, or over all
    updates_per_rollout: int = 1  # mu: optimizer steps on each rollout (LEPO's configs: 2)

    positive_keys = MethodConfig.positive_keys + (
        "completion_tokens", "rollout_temperature", "advantage_eps", "clip", "updates_per_rollout")

    def check(self) -> None:
        if self.rollouts < 2:
            raise ConfigError(f"rollouts={self.rollouts}: group-normalised advantages need at least 2 completions")
        if not 0 < self.top_p <= 1:
            raise ConfigError(f"top_p={self.top_p}: must be in (0, 1] (1: no top-p filtering)")


# ---- the objective -----------------------------------------------------------------------------------


def group_advantages(rewards: torch.Tensor, eps: float) -> torch.Tensor:
    """A = (r - mean) / (std + eps) within each group (row) of `rewards` [B, G]; std with Bessel's correction."""
    return (rewards - rewards.mean(1, keepdim=True)) / (rewards.std(1, keepdim=True) + eps)


def clipped_surrogate(logp: torch.Tensor, old_logp: torch.Tensor, advantages: torch.Tensor, clip: float) -> torch.Tensor:
    """The per-token loss -min(rho A, clip(rho, 1 - clip, 1 + clip) A), rho = exp(logp - old_logp);
    `logp`, `old_logp` [N, T], `advantages` [N] (one per completion)."""
    ratio = torch.exp(logp - old_logp)
    a = advantages.unsqueeze(1)
    return -torch.min(ratio * a, ratio.clamp(1 - clip, 1 + clip) * a)


def kl_penalty(logp: torch.Tensor, reference_logp: torch.Tensor) -> torch.Tensor:
    """D = pi_ref/pi - log(pi_ref/pi) - 1 per token (k3: unbiased for KL(pi || pi_ref) on tokens drawn from pi, >= 0)."""
    log_ratio = reference_logp - logp
    return torch.exp(log_ratio) - log_ratio - 1


def aggregate(per_token: torch.Tensor, mask: torch.Tensor, how: str) -> torch.Tensor:
    """The mean of `per_token` [N, T] over the tokens in `mask`: per completion then over completions
    (`sequence`), or over all tokens at once (`token`)."""
    mask = mask.to(per_token.dtype)
    if how == "sequence":
        return ((per_token * mask).sum(1) / mask.sum(1).clamp(min=1)).mean()
    return (per_token * mask).sum() / mask.sum().clamp(min=1)


def states_answer(text: str) -> bool:
    """The format reward's test: the text holds the answer marker with something after it."""
    return ANSWER_MARKER in text and bool(text.rsplit(ANSWER_MARKER, 1)[1].strip())


# ---- the method --------------------------------------------------------------------------------------


@dataclass
class Rollout:
    """One step's completions for B questions, graded, and the policy's values on them at the first update.

    rewards, correct: [B, G];  advantages: [B*G];  old: name -> [B*G, ...] detached values of pi_old
    (the token log-probs; lepo's soft-token densities; the reference's token log-probs)."""

    prompt_ids: torch.Tensor
    prompt_mask: torch.Tensor
    samples: Samples
    texts: list[str]
    answers: list[str | None]
    rewards: torch.Tensor
    correct: torch.Tensor
    advantages: torch.Tensor
    old: dict[str, torch.Tensor] = field(default_factory=dict)

    @property
    def completion_mask(self) -> torch.Tensor:
        """[N, T] True on each completion's tokens (EOS included)."""
        columns = torch.arange(self.samples.ids.shape[1], device=self.samples.ids.device)
        return columns.unsqueeze(0) < self.samples.lengths.unsqueeze(1)

    @property
    def attention_mask(self) -> torch.Tensor:
        """[N, P + T] over [prompt (left-padded) | completion (right-padded)]."""
        k = self.samples.ids.shape[0] // self.prompt_ids.shape[0]
        return torch.cat([self.prompt_mask.long().repeat_interleave(k, 0), self.completion_mask.long()], dim=1)

    def at_rollout(self, name: str, value: torch.Tensor) -> torch.Tensor:
        """`value` as the policy that sampled the rollout gave it: stored, detached, on the first update."""
        return self.old.setdefault(name, value.detach())


def token_values(log_probs: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """log pi of the tokens `ids` [N, T] from log-softmaxes [N, T, V]."""
    return log_probs.gather(2, ids.unsqueeze(2)).squeeze(2)


class GRPO(RolloutMethod):
    """Group relative policy optimisation on the task's 0/1 reward; answers greedily or by self-consistency."""

    name = "grpo"
    Config = GRPOConfig

    def __init__(self, config: GRPOConfig, model, tokenizer, task):
        super().__init__(config, model, tokenizer, task)
        self._rollouts: dict[int, Rollout] = {}  # per micro-batch: the rollout its next updates reuse
        self._step, self._micro = -1, 0

    # -- rollouts ----------------------------------------------------------------------------------
    def soft_thinking(self) -> SoftThinking | None:
        """Soft steps at the start of each rollout (lepo); none here."""
        return None

    def rollout(self, examples: list[Example], generator: torch.Generator | None = None) -> Rollout:
        """Sample G completions per question (shared prefill), grade them, and normalise the rewards per group."""
        config = self.config
        prompt_ids, prompt_mask = self.prompts(examples)
        samples = sample(self.model, self.tokenizer, prompt_ids, prompt_mask, config.rollouts, config.completion_tokens,
                         config.rollout_temperature, generator=generator, top_k=config.top_k, top_p=config.top_p,
                         soft=self.soft_thinking())
        rows = [ids[:length] for ids, length in zip(samples.ids.tolist(), samples.lengths.tolist())]
        texts = self.tokenizer.batch_decode(rows, skip_special_tokens=True)
        asked = [e for e in examples for _ in range(config.rollouts)]
        correct = torch.tensor([float(self.task.grade(text, e)) for text, e in zip(texts, asked)], device=self.device)
        formatted = torch.tensor([float(states_answer(text)) for text in texts], device=self.device)
        rewards = (correct + config.format_weight * formatted).view(-1, config.rollouts)
        advantages = group_advantages(rewards, config.advantage_eps).flatten()
        return Rollout(prompt_ids, prompt_mask, samples, texts, [self.parse(text) for text in texts], rewards,
                       correct.view(-1, config.rollouts), advantages)

    def rollout_for(self, examples: list[Example], step: int, generator: torch.Generator | None = None) -> Rollout:
        """A fresh rollout every `updates_per_rollout` steps, one per micro-batch; the steps in between reuse it."""
        if step != self._step:
            self._step, self._micro = step, 0
        micro, self._micro = self._micro, self._micro + 1
        if step % self.config.updates_per_rollout == 0 or micro not in self._rollouts:
            self._rollouts[micro] = self.rollout(examples, generator)
        return self._rollouts[micro]

    # -- the teacher-forced pass ---------------------------------------------------------------------
    def completion_inputs(self, model, rollout: Rollout) -> torch.Tensor:
        """What the teacher-forced pass reads after the prompt: the completion ids [N, T] (lepo: embeddings, its
        soft tokens spliced in)."""
        return rollout.samples.ids

    def log_softmax(self, model, rollout: Rollout) -> torch.Tensor:
        """log pi(. | x, o_<t) at every completion position, [N, T, V]: each prompt run once, its G completions
        over its cache."""
        return shared_prompt_log_softmax(model, rollout.prompt_ids, rollout.prompt_mask,
                                         self.completion_inputs(model, rollout), rollout.completion_mask)

    @torch.no_grad()
    def reference_logprobs(self, rollout: Rollout) -> torch.Tensor:
        """log pi_ref of the sampled tokens [N, T], computed once per rollout."""
        if "reference" not in rollout.old:
            with self.reference() as reference:
                rollout.old["reference"] = token_values(self.log_softmax(reference, rollout), rollout.samples.ids)
        return rollout.old["reference"]

    # -- one step -------------------------------------------------------------------------------------
    def policy_loss(self, rollout: Rollout, log_probs: torch.Tensor, token_logp: torch.Tensor) -> torch.Tensor:
        """The per-token loss before the KL term, [N, T]: the clipped surrogate on every sampled token."""
        old = rollout.at_rollout("tokens", token_logp)
        return clipped_surrogate(token_logp, old, rollout.advantages, self.config.clip)

    def loss(self, examples: list[Example], step: int, generator: torch.Generator | None = None):
        config = self.config
        rollout = self.rollout_for(examples, step, generator)
        log_probs = self.log_softmax(self.model, rollout)
        token_logp = token_values(log_probs, rollout.samples.ids)
        per_token = self.policy_loss(rollout, log_probs, token_logp)
        mask = rollout.completion_mask
        metrics = self.metrics(rollout)
        if config.beta > 0:
            kl = kl_penalty(token_logp, self.reference_logprobs(rollout))
            per_token = per_token + config.beta * kl
            metrics["kl"] = float(kl.detach()[mask].mean())
        ratio = torch.exp(token_logp.detach() - rollout.old["tokens"])[mask]
        metrics["clipped"] = float(((ratio - 1).abs() > config.clip).float().mean())
        return aggregate(per_token, mask, config.aggregation), metrics

    def metrics(self, rollout: Rollout) -> dict[str, float]:
        samples, k = rollout.samples, self.config.rollouts
        return {
            "reward": float(rollout.rewards.mean()),
            "accuracy": float(rollout.correct.mean()),
            "zero_spread": zero_spread(rollout.rewards),
            "distinct_answers": distinct_per_group(rollout.answers, k),
            "finished": float(samples.finished.float().mean()),
            "completion_tokens": float(samples.lengths.float().mean()),
            "sampled_tokens": float(samples.sampled_tokens),
            "tokens": float(rollout.attention_mask.sum()),
        }

"""LEPO: latent reasoning policy optimisation (arXiv 2604.17892; official code YuyanZhou/lepo), grpo with
stochastic soft tokens. Without sampling, a latent thought is a deterministic function of the question,
so a group of rollouts cannot explore; LEPO draws the first L thoughts as Gumbel-Softmax samples and
optimises them together with the discrete tokens that follow.

Rollout (`base.sample` with `SoftThinking`). The first L = `latent_steps` completion positions are soft
tokens. At step t <= L, with s_t the logits after temperature, top-k and top-p (`rollout_temperature`,
`top_k`, `top_p`; -inf outside the kept set S_t):

    z_t = log softmax(s_t) + g_t,    g_{t,k} ~ Gumbel(0, 1) iid     (noise=gumbel; noise=none: g_t = 0)
    y_t = softmax(z_t / tau)                                         the soft token: gumbel_softmax(s_t, tau)
    e_t = y_t E                                                      what the model reads next (E: input embeddings)
    v_t = argmax_k y_{t,k}                                           its visible token

The top-k entries of y_t (k = `top_k`, so all of y_t's support S_t) are stored as the step's soft label,
with z_t at those ids and e_t. After L soft steps, tokens are sampled to EOS as in grpo. The reward
grades the text of all visible tokens (v_1..v_L, then the sampled ones), and advantages A_i are grpo's.
noise=none is deterministic soft thinking, the latent baseline: y_t = softmax(s_t / tau), one path per
question, so every group has zero spread unless the discrete tail differs.

Objective. A teacher-forced pass over the stored inputs (the prompt, run once per question as in grpo,
e_t for t <= L, detached, and the sampled tokens after) gives log pi_theta at every completion position, and

    J = agg_{i,t} [ 1[t <= L] J^lat_{i,t} + 1[t > L] J^disc_{i,t} - beta D_{i,t} ],
    J^disc_{i,t} = min( rho_{i,t} A_i, clip(rho_{i,t}, 1 - eps_c, 1 + eps_c) A_i )      grpo's term on the sampled tokens

with agg, rho, D as in grpo (D on the visible tokens; at a soft step v_t is a sample of softmax(s_t) by
the Gumbel-max trick). The latent term has two estimators (`estimator`):

soft_label (the official code's): the advantage-weighted log-likelihood of the stored soft label,

    J^lat_{i,t} = A_i sum_{k in top-k(y_t)} y_{t,k} log pi_theta(k | x, e_<t),

soft-label cross-entropy weighted by A, without a ratio (also when a rollout is reused);

gumbel_density (SofT-GRPO, arXiv 2511.06411): the reparameterised log-density of the Gumbel noise that
the stored z_t implies under the current policy, inside grpo's clipped ratio,

    eps_{t,k}    = z_{t,k} - log p~_theta(k),    p~_theta = softmax(logits_theta / temperature) renormalised over S_t
    log q_theta(z_t) = sum_{k in S_t} ( -eps_{t,k} - exp(-eps_{t,k}) )
    J^lat_{i,t}  = min( rho^lat A_i, clip(rho^lat, 1 - eps_c, 1 + eps_c) A_i ),   rho^lat = q_theta(z_t) / q_old(z_t)

(`latent.gumbel_noise_log_density`): a score-function estimator for the perturbed scores z_t, exact for
the distribution the rollout drew from; its ratio is 1 on the first update.

Facts from the official code we follow: soft label = top-k of y with k = the sampling top-k (30), so all
of y; the soft-label log-likelihood reads the logits at temperature 1; an EOS as a visible token ends
the completion there (its stopping rule reads the visible tokens); the reward grades every visible
token's text; latent and discrete terms are averaged together over the completion's positions.
Choices of ours, where the paper or its code leaves room or differs:
- The visible token is argmax y_t (a sample of softmax(s_t)); the official code (do_latent_sample=false)
  shows argmax s_t, the noise-free mode.
- noise=none is softmax(s_t / tau) with tau as the sharpness (tau -> 0: greedy decoding); the official
  code's deterministic kind ("soft") is softmax(s_t) with Gaussian noise added to e_t.
- The forward pass reads the prompt and the sampled tokens as ids (their embeddings get gradients, as
  in grpo) and only the soft tokens' e_t as stored, detached vectors; the official code feeds every
  position's stored embedding, detached.
- gumbel_density sums the exact Gumbel log-density over S_t; SofT-GRPO clamps eps to [-1.5, 3] and
  averages over the entries with p~ > e^-3.
- The KL term (beta > 0, off in the official configs) scores the visible tokens at every position.
- Answering: `eval_latent_steps` soft steps (default: latent_steps; 0: plain decoding, as the
  official MATH-500 evaluation), deterministic (noise none) under greedy decoding and with the
  training noise under self-consistency. top_k and top_p filter every step as in the rollouts (a soft
  token is defined on the filtered logits); grpo, latro and cot-sc sample unfiltered when answering,
  so their pass@k at equal temperature differs from lepo's by that filter (greedy answers do not).

Logged each step, beside grpo's: `latent_entropy`, the mean entropy -sum_k y_k log y_k of the soft
tokens (over their stored top-k), and `latent_steps`, the mean soft steps a rollout took.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..config import ConfigError, choices
from ..latent import gumbel_noise_log_density, splice
from .base import SoftThinking
from .grpo import GRPO, GRPOConfig, Rollout, clipped_surrogate


@dataclass
class LEPOConfig(GRPOConfig):
    latent_steps: int = 32  # L: soft tokens at the start of each rollout (LEPO's configs: 32 or 64)
    tau: float = 0.5  # Gumbel-Softmax temperature, the "noise strength" (LEPO's configs: 0.3 or 0.5)
    noise: str = choices("gumbel", "none", default="gumbel")  # none: deterministic soft thinking (the latent baseline)
    estimator: str = choices("soft_label", "gumbel_density", default="soft_label")  # the latent term (module docstring)
    eval_latent_steps: int | None = None  # soft steps when answering; none: latent_steps, 0: plain decoding

    positive_keys = GRPOConfig.positive_keys + ("tau",)

    def check(self) -> None:
        super().check()
        if self.top_k < 1:
            raise ConfigError(f"top_k={self.top_k}: lepo keeps a soft token's top_k entries as its label; give 1 or more")
        if self.estimator == "gumbel_density" and self.noise != "gumbel":
            raise ConfigError(f"estimator=gumbel_density scores a soft token's Gumbel noise; noise={self.noise!r} draws none")


class LEPO(GRPO):
    """grpo whose rollouts start with L stochastic soft tokens, trained through both terms; answers like grpo
    after `eval_latent_steps` soft steps."""

    name = "lepo"
    Config = LEPOConfig

    def soft_thinking(self, steps: int | None = None, noise: bool | None = None) -> SoftThinking:
        config = self.config
        return SoftThinking(
            steps=config.latent_steps if steps is None else steps,
            tau=config.tau,
            noise=config.noise == "gumbel" if noise is None else noise,
            label_k=min(config.top_k, self.model.get_input_embeddings().weight.shape[0]),
        )

    def completion_inputs(self, model, rollout: Rollout) -> torch.Tensor:
        """Completion embeddings [N, T, H] with each soft step's stored e_t (detached) in place of its visible token."""
        samples = rollout.samples
        soft = torch.zeros_like(samples.ids, dtype=torch.bool)
        soft[:, : samples.soft_mask.shape[1]] = samples.soft_mask
        return splice(model.get_input_embeddings()(samples.ids), soft, samples.soft_embeds[samples.soft_mask])

    def policy_loss(self, rollout: Rollout, log_probs: torch.Tensor, token_logp: torch.Tensor) -> torch.Tensor:
        """grpo's clipped term on the sampled tokens, the latent term on the soft steps."""
        discrete = super().policy_loss(rollout, log_probs, token_logp)
        soft = rollout.samples.soft_mask
        width = soft.shape[1]
        latent = self.latent_loss(rollout, log_probs[:, :width])
        return torch.cat([torch.where(soft, latent, discrete[:, :width]), discrete[:, width:]], dim=1)

    def latent_loss(self, rollout: Rollout, log_probs: torch.Tensor) -> torch.Tensor:
        """-J^lat at the soft steps [N, L] from the log-softmaxes there [N, L, V]."""
        samples, advantages = rollout.samples, rollout.advantages
        scored = log_probs.gather(2, samples.label_ids)  # log pi_theta at the soft label's ids
        if self.config.estimator == "soft_label":
            return -advantages.unsqueeze(1) * (samples.label_probs * scored).sum(-1)
        density = gumbel_noise_log_density(samples.label_scores, scored / self.config.rollout_temperature)
        return clipped_surrogate(density, rollout.at_rollout("density", density), advantages, self.config.clip)

    def metrics(self, rollout: Rollout) -> dict[str, float]:
        metrics = super().metrics(rollout)
        samples = rollout.samples
        soft = samples.soft_mask
        entropy = -torch.special.xlogy(samples.label_probs, samples.label_probs).sum(-1)
        metrics["latent_entropy"] = float(entropy[soft].mean()) if bool(soft.any()) else 0.0
        metrics["latent_steps"] = float(soft.sum(1).float().mean())
        return metrics

    def answer_options(self, sampling: bool) -> dict:
        config = self.config
        steps = config.latent_steps if config.eval_latent_steps is None else config.eval_latent_steps
        soft = self.soft_thinking(steps, noise=sampling and config.noise == "gumbel")
        return {"soft": soft, "top_k": config.top_k, "top_p": config.top_p}

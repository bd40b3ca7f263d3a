"""What all latent methods share.

1. `splice` puts given vectors into an `inputs_embeds` tensor at placeholder positions
   (SoftCoT, LTA-Thinker).
2. The continuous-thought loop of COCONUT (Hao et al., 2024, arXiv 2412.06769): the last layer's
   hidden state at the last position is fed back as the next input embedding,

       h_0     = last hidden state of the prompt (which ends with <bot>)
       x_t     = f(h_t, t)                         thought t, t = 0 .. T_b - 1 (f = `feedback`, default identity)
       h_{t+1} = last hidden state after reading x_t

   for any Hugging Face causal LM, batched over left-padded prompts and on one KV cache
   (`thought_loop`, `extend`, `forward_with_thoughts`, `decode`).
3. Gumbel-Softmax soft tokens for policy gradients over continuous thoughts (LEPO):
   `gumbel_softmax_embedding`, `gumbel_softmax_log_prob`, and LEPO's rollout step `soft_token` with the
   log-density of the Gumbel noise it drew, `gumbel_noise_log_density` (SofT-GRPO's estimator).

How a batch stays exact. Every forward pass appends one column per example to a 2-D attention
mask (1 = a real token, 0 = an empty slot), and position ids are the running count of real tokens,
`position = cumsum(mask) - 1`. An example that has finished its thoughts while others continue
still occupies each later slot, with mask 0: no later token attends to it and it does not move
the positions. So each example computes what it would compute alone, up to float rounding.
A `position_offset` [B] on the loop state is added to the positions of everything read after the
loop (`extend`, `decode`): it gives the language after a latent span the positions it had in a
longer sequence (the full chain of thought), as iCoT's keep_position and COCONUT's kept positions do.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from transformers import Cache, DynamicCache
from transformers.cache_utils import DynamicLayer

Feedback = Callable[[torch.Tensor, int], torch.Tensor]
"""feedback(hidden [B, H], t) -> the input embedding of thought t [B, H]."""
BeforeStep = Callable[[int], None]
"""before_step(t): called before the forward pass of thought t (e.g. to switch a per-loop adapter)."""
Halt = Callable[[torch.Tensor, torch.Tensor, int], torch.Tensor]
"""halt(h_t, h_{t-1}, t) -> bool [B]: True stops an example after its first t thoughts."""


# ---- 1. splicing vectors into embeddings ---------------------------------------------------------


def splice(inputs_embeds: torch.Tensor, mask: torch.Tensor, vectors: torch.Tensor) -> torch.Tensor:
    """Replace the embeddings at placeholder positions with `vectors`, in order.

        out[b, l] = v_{b,k}        if (b, l) is the k-th placeholder of row b (mask[b, l] True)
        out[b, l] = E_in[b, l]     otherwise

    `inputs_embeds` [B, L, H]; `mask` bool [B, L]; `vectors` either [B, K, H] (every row has exactly
    K placeholders) or [N, H] with N = mask.sum() (filled row by row, left to right).
    Returns a new tensor; gradients flow to both `inputs_embeds` (at kept positions) and `vectors`.
    """
    mask = mask.bool()
    flat = vectors.reshape(-1, vectors.shape[-1]) if vectors.dim() == 3 else vectors
    if vectors.dim() == 3 and not bool((mask.sum(-1) == vectors.shape[1]).all()):
        raise ValueError(f"every row needs {vectors.shape[1]} placeholders, found {mask.sum(-1).tolist()}")
    if flat.shape[0] != int(mask.sum()):
        raise ValueError(f"{flat.shape[0]} vectors for {int(mask.sum())} placeholders")
    return inputs_embeds.masked_scatter(mask.unsqueeze(-1), flat.to(inputs_embeds.dtype))


# ---- 2. the continuous-thought loop --------------------------------------------------------------


@dataclass
class LoopResult:
    """The state after a prompt and its thoughts, ready to be extended or decoded from.

    past_key_values: the KV cache over every slot so far (one column per forward-pass input).
    attention_mask:  [B, S] long, 1 for real tokens and thoughts, 0 for padding and empty slots.
    thoughts:        [B, T, H] the thought embeddings x_t fed to the model (zeros where absent);
                     T is the number of thought passes made (n_thoughts.max(), or less if all halted).
    n_thoughts:      [B] long, the thoughts each example actually used.
    forward_passes:  forward passes made so far, for the whole batch (prefill + thoughts + extensions).
    logits:          [B, V] each example's next-token logits after its last slot (its last thought, or its
                     prompt if it has none): what decoding without an end-of-thought token starts from.
    position_offset: [B] long or None, added to the position ids of every slot read after the loop.
    """

    past_key_values: Cache
    attention_mask: torch.Tensor
    thoughts: torch.Tensor
    n_thoughts: torch.Tensor
    forward_passes: int
    logits: torch.Tensor | None = None
    position_offset: torch.Tensor | None = None

    @property
    def next_position(self) -> torch.Tensor:
        """[B] the position id the next real token of each example gets (its count of real slots)."""
        return self.attention_mask.sum(-1)


class GrowingLayer(DynamicLayer):
    """A DynamicLayer that writes new keys and values into spare room at the end of a buffer (twice the length
    it needs when it has to grow) instead of concatenating: a decoding step copies its own position, not the
    whole cache, so its cost no longer grows with the cache (bench/results/decode-cache-speed.txt). Its keys and
    values are views of the buffer. Where gradients flow (training through the thought loop) it concatenates, as
    DynamicLayer does: an in-place write would change tensors autograd saved."""

    room: tuple[torch.Tensor, torch.Tensor] | None = None

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        if torch.is_grad_enabled() and (key_states.requires_grad or value_states.requires_grad or self.keys.requires_grad):
            self.room = None
            return super().update(key_states, value_states)
        used = self.get_seq_length()
        total = used + key_states.shape[-2]
        if not self._fits(key_states, total):  # no buffer yet, or keys replaced (batch_select_indices, ...)
            self.room = (self._moved(self.keys, key_states, used), self._moved(self.values, value_states, used))
        keys, values = self.room
        keys[:, :, used:total] = key_states
        values[:, :, used:total] = value_states
        self.keys, self.values = keys[:, :, :total], values[:, :, :total]
        return self.keys, self.values

    def _fits(self, key_states: torch.Tensor, total: int) -> bool:
        """Whether self.keys is still the start of the buffer, which has room for `total` positions."""
        if self.room is None:
            return False
        room = self.room[0]
        return (self.keys.data_ptr() == room.data_ptr() and self.keys.stride() == room.stride()
                and self.keys.shape[:2] == key_states.shape[:2] and room.dtype == key_states.dtype
                and room.shape[-2] >= total)

    @staticmethod
    def _moved(cached: torch.Tensor, new: torch.Tensor, used: int) -> torch.Tensor:
        batch, heads, length, dim = new.shape
        room = new.new_empty(batch, heads, 2 * (used + length), dim)
        if used:
            room[:, :, :used] = cached
        return room


def growing_cache(model) -> DynamicCache:
    """The model's DynamicCache with each plain full-attention layer a GrowingLayer (others, e.g. sliding windows, kept)."""
    cache = DynamicCache(config=model.config)
    cache.layers = [GrowingLayer() if type(layer) is DynamicLayer else layer for layer in cache.layers]
    return cache


def _inputs(x: torch.Tensor) -> dict[str, torch.Tensor]:
    """Token ids [B, n] -> input_ids; embeddings [B, n, H] -> inputs_embeds."""
    return {"input_ids": x} if x.dim() == 2 else {"inputs_embeds": x}


def _forward(model, x: torch.Tensor, mask: torch.Tensor, cache: Cache, hidden: bool = False,
             offset: torch.Tensor | None = None):
    """One pass over the new inputs `x` (the last x.shape[1] columns of `mask`) on `cache`,
    their position ids moved by `offset` [B] where given."""
    positions = (mask.cumsum(-1) - 1).clamp(min=0)[:, -x.shape[1] :]
    if offset is not None:
        positions = positions + offset.unsqueeze(1)
    return model(
        **_inputs(x),
        attention_mask=mask,
        position_ids=positions,
        cache=cache,  # transformers 5 names it `cache`; `past_key_values` warns that it is deprecated
        use_cache=True,
        output_hidden_states=hidden,
        # a pass run for its hidden state reads no logits: skip the LM head on all but one position
        **({"logits_to_keep": 1} if hidden else {}),
    )


def thought_loop(
    model,
    prompt: torch.Tensor,
    prompt_mask: torch.Tensor,
    n_thoughts: torch.Tensor | int,
    *,
    feedback: Feedback | None = None,
    before_step: BeforeStep | None = None,
    halt: Halt | None = None,
    thought_offsets: torch.Tensor | None = None,
) -> LoopResult:
    """Prefill the prompt, then run the continuous-thought loop, one forward pass per thought.

    `prompt` is LEFT-padded token ids [B, L] (or input embeddings [B, L, H], e.g. from `splice`)
    ending with the begin-of-thought token; `prompt_mask` [B, L]; `n_thoughts` [B] (or an int for
    all). With h_0 the last hidden state of the prompt, pass t = 0 .. T-1 (T = n_thoughts.max())
    feeds, for the whole batch at once,

        x_t = feedback(h_t, t)          (identity by default)
        h_{t+1} = model(x_t | cache)[last layer, last position]

    Example b takes part in pass t while t < n_thoughts[b] and it has not halted; otherwise its slot
    gets mask 0. Before pass t >= 1 (if some example would take part), `halt(h_t, h_{t-1}, t)` may
    stop examples after t thoughts; once every example has stopped the loop ends early.
    `before_step(t)` runs before pass t. `thought_offsets` [B, T] long, where given, moves each example's
    thought t from the position id of its running count of real slots (prompt tokens + t) by
    thought_offsets[b, t]. Works with gradients (training through the loop) and under torch.no_grad.
    """
    if prompt_mask.shape[0] and not bool(prompt_mask[:, -1].all()):
        raise ValueError("prompts must be left-padded: the last column of prompt_mask must be all ones")
    if model.training and getattr(model, "is_activation_checkpointing", False):
        raise ValueError("gradient checkpointing disables the KV cache the thought loop runs on; turn it off")
    batch = prompt.shape[0]
    n_thoughts = torch.as_tensor(n_thoughts, device=prompt_mask.device).long().expand(batch)
    cache = growing_cache(model)
    mask = prompt_mask.long()
    out = _forward(model, prompt, mask, cache, hidden=True)
    hidden = out.hidden_states[-1][:, -1]
    logits = out.logits[:, -1]
    previous = hidden
    halted = torch.zeros(batch, dtype=torch.bool, device=mask.device)
    thoughts = []
    for t in range(int(n_thoughts.max()) if batch else 0):
        active = (n_thoughts > t) & ~halted
        if halt is not None and t > 0 and bool(active.any()):
            halted = halted | (active & halt(hidden, previous, t).to(active.device).bool())
            active = active & ~halted
        if not bool(active.any()):
            break
        if before_step is not None:
            before_step(t)
        x = hidden if feedback is None else feedback(hidden, t)
        mask = torch.cat([mask, active.long().unsqueeze(1)], dim=1)
        offset = None if thought_offsets is None else thought_offsets[:, t]
        out = _forward(model, x.unsqueeze(1), mask, cache, hidden=True, offset=offset)
        thoughts.append(torch.where(active.unsqueeze(1), x, torch.zeros_like(x)))
        previous, hidden = hidden, out.hidden_states[-1][:, -1]
        logits = torch.where(active.unsqueeze(1), out.logits[:, -1], logits)
    return LoopResult(
        past_key_values=cache,
        attention_mask=mask,
        thoughts=torch.stack(thoughts, 1) if thoughts else hidden.new_zeros(batch, 0, hidden.shape[-1]),
        n_thoughts=mask[:, prompt_mask.shape[1] :].sum(-1),
        forward_passes=1 + len(thoughts),
        logits=logits,
    )


def extend(model, state: LoopResult, inputs: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, LoopResult]:
    """One forward pass over new inputs (ids [B, C] or embeddings [B, C, H], RIGHT-padded with `mask`
    [B, C]) on the cache of `state`. Returns the logits [B, C, V] and the advanced state.

    The cache is extended in place, so `state` itself must not be extended again afterwards.
    """
    full_mask = torch.cat([state.attention_mask, mask.long()], dim=1)
    logits = _forward(model, inputs, full_mask, state.past_key_values, offset=state.position_offset).logits
    return logits, replace(state, attention_mask=full_mask, forward_passes=state.forward_passes + 1)


def forward_with_thoughts(
    model,
    prompt_ids: torch.Tensor,
    prompt_mask: torch.Tensor,
    n_thoughts: torch.Tensor | int,
    continuation_ids: torch.Tensor,
    continuation_mask: torch.Tensor,
    *,
    feedback: Feedback | None = None,
    before_step: BeforeStep | None = None,
    halt: Halt | None = None,
) -> tuple[torch.Tensor, LoopResult]:
    """The training path: prefill the prompt, think, then read the continuation (e.g. "<eot> steps
    answer", RIGHT-padded) in one pass on the same cache.

    Returns the continuation logits [B, C, V] (differentiable: logits[:, i] predicts token i + 1 of
    the continuation) and the loop result advanced over the continuation. The loss is the caller's.
    """
    loop = thought_loop(
        model, prompt_ids, prompt_mask, n_thoughts, feedback=feedback, before_step=before_step, halt=halt
    )
    return extend(model, loop, continuation_ids, continuation_mask)


@dataclass
class Decoded:
    """ids [B, N] (padded after an example's eos), n_tokens [B] (tokens generated, eos included),
    forward_passes (made by this decode, one per generated position)."""

    ids: torch.Tensor
    n_tokens: torch.Tensor
    forward_passes: int


@torch.no_grad()
def decode(
    model,
    state: LoopResult,
    first_ids: torch.Tensor | None,
    max_new_tokens: int,
    eos_token_id: int | Sequence[int],
    temperature: float = 0.0,
    generator: torch.Generator | None = None,
    pad_token_id: int | None = None,
) -> Decoded:
    """Generate from the cache of `state`, batched, starting by feeding `first_ids` [B] (e.g. the
    end-of-thought token), or, with `first_ids` None, by picking the first token from `state.logits`
    (the prompt's own prediction). Each step feeds the last token of every example and picks the next,
    greedily (temperature 0) or by sampling from softmax(logits / temperature) with `generator`.

    An example stops at its first eos; after that it gets `pad_token_id` (default: the first eos),
    its slots get mask 0, and decoding ends when every example has stopped or after
    `max_new_tokens`. The cache of `state` is extended in place.
    """
    cache, mask = state.past_key_values, state.attention_mask
    device, batch = mask.device, mask.shape[0]
    eos = torch.as_tensor(eos_token_id, device=device).reshape(-1)
    pad = int(eos[0]) if pad_token_id is None else pad_token_id
    done = torch.zeros(batch, dtype=torch.bool, device=device)
    n_tokens = torch.zeros(batch, dtype=torch.long, device=device)
    tokens, last, passes = [], first_ids, 0

    def pick(logits: torch.Tensor) -> torch.Tensor:
        if temperature > 0:
            probs = torch.softmax(logits.float() / temperature, dim=-1)
            return torch.multinomial(probs, 1, generator=generator).squeeze(1)
        return logits.argmax(-1)

    while len(tokens) < max_new_tokens:
        if last is None:  # the first token comes from the pass that read the prompt
            picked = pick(state.logits)
        else:
            mask = torch.cat([mask, (~done).long().unsqueeze(1)], dim=1)
            picked = pick(_forward(model, last.unsqueeze(1), mask, cache, offset=state.position_offset).logits[:, -1])
            passes += 1
        last = torch.where(done, torch.full_like(picked, pad), picked)
        tokens.append(last)
        n_tokens += (~done).long()
        done = done | torch.isin(last, eos)
        if bool(done.all()):
            break
    ids = torch.stack(tokens, 1) if tokens else torch.zeros(batch, 0, dtype=torch.long, device=device)
    return Decoded(ids=ids, n_tokens=n_tokens, forward_passes=passes)


# ---- 3. Gumbel-Softmax soft tokens ---------------------------------------------------------------


def gumbel_noise(like: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Standard Gumbel noise shaped like `like`: g = -log E, E ~ Exponential(1), drawn with `generator`."""
    return -torch.empty_like(like).exponential_(generator=generator).log()


def gumbel_softmax_embedding(
    logits: torch.Tensor,
    embedding_weight: torch.Tensor,
    tau: float,
    generator: torch.Generator | None = None,
    hard: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """A soft token: a Gumbel-Softmax (Concrete) sample over the vocabulary, embedded.

        g_i ~ Gumbel(0, 1) = -log E_i,  E_i ~ Exponential(1)     (drawn with `generator`)
        y   = softmax((logits + g) / tau)                        a point of the simplex
        e   = y @ E                                              E = embedding_weight [V, H]

    As tau -> 0, y tends to the one-hot of argmax(logits + g), a sample of softmax(logits)
    (the Gumbel-max trick), and e to that token's embedding. With `hard`, y is that one-hot in the
    forward pass and the soft y in the backward pass (straight-through).

    Returns (e [B, H], y [B, V]). Gradients reach `logits` through the sample (reparameterised);
    for a score-function (policy-gradient) estimator detach y and score it with
    `gumbel_softmax_log_prob(logits, y, tau)`.
    """
    probs = torch.softmax((logits + gumbel_noise(logits, generator)) / tau, dim=-1)
    if hard:
        one_hot = F.one_hot(probs.argmax(-1), probs.shape[-1]).to(probs.dtype)
        probs = one_hot - probs.detach() + probs
    return probs.to(embedding_weight.dtype) @ embedding_weight, probs


def gumbel_softmax_log_prob(logits: torch.Tensor, probs: torch.Tensor, tau: float) -> torch.Tensor:
    """The log-density of a soft sample y under Concrete(logits, tau) (Maddison et al., 2017), [B]:

        log p(y) = log (k-1)! + (k-1) log tau + sum_i (l_i - (tau+1) log y_i) - k logsumexp_i(l_i - tau log y_i)

    with k the vocabulary size and l the logits (unnormalised: a shift of l cancels). This is the
    density of y_1 .. y_{k-1} on the simplex; its gradient in l with y held fixed is the score
    d log p / dl_i = 1 - k softmax_i(l - tau log y), mean zero under the sample, which a
    REINFORCE / PPO-style estimator multiplies by the (baselined) reward. It is exact while no y_i
    has underflowed to 0 (in fp32, (max_j z_j - z_i) / tau < ~87 with z = l + g); smaller y_i are
    clamped to the smallest normal float.
    """
    k = logits.shape[-1]
    logits = logits.float()
    log_y = probs.detach().float().clamp_min(torch.finfo(torch.float32).tiny).log()
    return (
        math.lgamma(k)
        + (k - 1) * math.log(tau)
        + (logits - (tau + 1) * log_y).sum(-1)
        - k * torch.logsumexp(logits - tau * log_y, dim=-1)
    )


def soft_token(
    scores: torch.Tensor,
    embedding_weight: torch.Tensor,
    tau: float,
    noise: bool = True,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """LEPO's soft token from next-token scores s [B, V] (logits after temperature, top-k and top-p:
    -inf outside the kept set S):

        z = log softmax(s) + g        g_k ~ Gumbel(0, 1) with `noise`, else g = 0
        y = softmax(z / tau)          = gumbel_softmax(s, tau) with noise; softmax(s / tau) without
        e = y @ E                     E = embedding_weight [V, H]

    y vanishes outside S, and argmax y = argmax (s + g) is a sample of softmax(s) (Gumbel-max; without
    noise, its mode). Returns (e [B, H], y [B, V], z [B, V]): z, the perturbed log-probabilities (-inf
    outside S), is what `gumbel_noise_log_density` scores.
    """
    z = torch.log_softmax(scores.float(), dim=-1)
    if noise:
        z = z + gumbel_noise(z, generator)
    y = torch.softmax(z / tau, dim=-1)
    return y.to(embedding_weight.dtype) @ embedding_weight, y, z


def gumbel_noise_log_density(perturbed: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
    """The log-density of the Gumbel noise that perturbed log-probabilities z (`soft_token`) imply under
    scores s, over the entries where z is finite (the kept set S; the others were filtered out):

        eps_k    = z_k - log p_k,      p = softmax(s) renormalised over S
        log q(z) = sum_{k in S} ( -eps_k - exp(-eps_k) )        the Gumbel(0, 1) log-density of eps

    the density of z = log p + g under the policy that gives s (SofT-GRPO's reparameterised
    log-probability of a soft token). z and s share their last dimension (e.g. a soft token's stored
    top-k entries); returns one value per leading index. Differentiable in s; z is a constant. Its
    score d log q / d log p_k = 1 - exp(-eps_k) has mean zero under the noise.
    """
    support = torch.isfinite(perturbed)
    log_p = torch.log_softmax(scores.float().masked_fill(~support, -math.inf), dim=-1)
    eps = torch.where(support, perturbed.masked_fill(~support, 0.0) - log_p.masked_fill(~support, 0.0), 0.0)
    return torch.where(support, -eps - torch.exp(-eps), 0.0).sum(-1)

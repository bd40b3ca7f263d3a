"""LTA-Thinker (Wang et al., 2025, arXiv 2509.12875; code: wangjiaqi886/LTA-Thinker, a fork of SoftCoT): a small,
randomly initialised generator writes the latent thoughts a frozen backbone reads, trained by three losses.

The backbone's side is SoftCoT's (softcot.py): the thoughts v_1 .. v_N replace N placeholders in
"question <bot> v_1 .. v_N <eot>", the backbone stays frozen (lora=true: an adapter trains too) and the language
after <eot> (steps, answer) is scored. N is `thoughts` in training and `eval_thoughts` at answer time (the paper:
32 and 2).

The generator G. Over the backbone's own input embeddings E of the generator's prompt

    x = [ E(question) ; E(gold steps) ; p_1 .. p_N ]          the steps only in training (below)
    u = RMSNorm(x + Attention(x))                              one head, no causal mask, no positions
    g = RMSNorm(u + W_2 ReLU(W_1 u))                           W_1: H -> the backbone's intermediate size
    V = W_P g + b_P                                            Linear(H, H)

the thoughts are V at the placeholders, v_j = V[p_j], and v_q = V at the question's last token. G starts random
(generator_init=random) or with the attention and feed-forward weights of a backbone layer (backbone, below).

The losses, each with its weight (1/3 each):

    L_SFT   = - mean_{i > <eot>} log p(y_i | question, <bot>, v_1 .. v_N, <eot>, y_<i)
    L_align = 1/N sum_j KL( softmax(v_q) || softmax(v_j) ) = 1/N sum_j sum_h P_qh (log P_qh - log P_jh),
              P = softmax over the H hidden dimensions                           (alignment=kl)
            = 1/N sum_j (1 - cos(v_q, v_j))                              (alignment=cosine; ours, a critics' check)
    L_focus = - log [ exp(cos(v_q, c_{i*}) / tau) / sum_{i=1..m} exp(cos(v_q, c_i) / tau) ],   tau = 0.1
              c_i = V at the last token of gold step i; the positive i* is (without gradient)
              argmax_i cos(c_i, a), a = the mean of E over the gold answer's tokens  (focus_positive=answer)
              or the middle step, i* = floor((m - 1) / 2) counted from 0           (middle; ours)
              or a step drawn uniformly, a function of (step, question)           (random; ours)
    L       = w_SFT L_SFT + w_align L_align + w_focus L_focus

L_align is averaged over the batch, L_focus over the examples with at least one gold step.

The gold steps in the generator's prompt. The official code puts them there in training (every position reads
every other) and leaves them out at test time, so the thoughts are trained in a context they never meet again.
steps_in_prompt=true does that. With false (the default; ours) the steps are still in the prompt, for L_focus's
candidates c_i, but the question and the placeholders do not attend to them: v_q and the thoughts are exactly what
G computes at answer time, without steps.

Also ours. No instruction text: the generator's prompt is the question as the task writes it, as the backbone's is.
The official placeholders are N distinct reserved token ids whose embedding rows were never trained; our tokenizers
have one <latent>, so p_1 .. p_N are fixed vectors drawn like untrained rows of E (its mean plus its per-dimension
deviation times seeded N(0, I) noise; p_k depends only on k). The answer's tokens are those of the answer text
alone. generator_init=backbone copies decoder layer `generator_layer` of a Llama-style backbone: q, k, v
(grouped key/value heads repeated to full width) into the one head's projections, o into its output, up and down
into W_1 and W_2 (the gate is dropped); norms start at one, biases at zero, W_P random.

Cost: G costs its parameter count over the backbone's beyond its embedding matrices, a fraction of a pass
(softcot.py says how answers count the rest).
"""

from __future__ import annotations

import random
import zlib
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..config import ConfigError, choices
from ..tasks import Example
from .softcot import SoftThoughtConfig, SoftThoughtMethod, body_size, thought_variance, untrained_rows


@dataclass
class LTAThinkerConfig(SoftThoughtConfig):
    eval_thoughts: int | None = 2  # N at answer time (the paper: 2, after training with 32)
    steps_in_prompt: bool = False  # true: the question and placeholders also read the gold steps in training
    sft_weight: float = 1 / 3
    alignment_weight: float = 1 / 3
    focus_weight: float = 1 / 3
    alignment: str = choices("kl", "cosine", default="kl")  # L_align: KL of the softmaxed vectors, or cosine distance
    focus_positive: str = choices("answer", "middle", "random", default="answer")  # L_focus's positive step
    focus_temperature: float = 0.1
    generator_init: str = choices("random", "backbone", default="random")
    generator_layer: int = 0  # generator_init=backbone: the decoder layer copied

    positive_keys = SoftThoughtConfig.positive_keys + ("focus_temperature",)


# ---- the generator -------------------------------------------------------------------------------


class ThoughtGenerator(nn.Module):
    """One Transformer block (post-norm, RMSNorm, one attention head, ReLU feed-forward; no positions and no causal
    mask), then Linear(H, H)."""

    def __init__(self, hidden: int, intermediate: int, eps: float):
        super().__init__()
        self.attention = nn.MultiheadAttention(hidden, num_heads=1, batch_first=True)
        self.norm1 = nn.RMSNorm(hidden, eps=eps)
        self.feed_forward = nn.Sequential(nn.Linear(hidden, intermediate), nn.ReLU(), nn.Linear(intermediate, hidden))
        self.norm2 = nn.RMSNorm(hidden, eps=eps)
        self.projection = nn.Linear(hidden, hidden)

    def forward(self, x: torch.Tensor, visible: torch.Tensor, at: torch.Tensor | None = None) -> torch.Tensor:
        """x [B, L, H]; visible [B, L, L], True where position i reads position j. Returns V [B, L, H], or with `at`
        [B, M] V at those positions alone, [B, M, H]: the queries and all that follows them run on M positions (an
        answer needs the thoughts only)."""
        query, mask = x, visible
        if at is not None:
            query = x.gather(1, at.unsqueeze(-1).expand(-1, -1, x.shape[-1]))
            mask = visible.gather(1, at.unsqueeze(-1).expand(-1, -1, visible.shape[-1]))
        attended, _ = self.attention(query, x, x, attn_mask=~mask, need_weights=False)
        u = self.norm1(query + attended)
        return self.projection(self.norm2(u + self.feed_forward(u)))

    @torch.no_grad()
    def copy_layer(self, model, index: int) -> None:
        """Start from decoder layer `index` of a Llama-style backbone (module docstring)."""
        layers = model.get_decoder().layers
        if not 0 <= index < len(layers):
            raise ConfigError(f"generator_layer={index}: the backbone has {len(layers)} decoder layers")
        attention, mlp = layers[index].self_attn, layers[index].mlp
        if not all(hasattr(attention, name) for name in ("q_proj", "k_proj", "v_proj", "o_proj")) \
                or not all(hasattr(mlp, name) for name in ("up_proj", "down_proj")):
            raise ConfigError("generator_init=backbone needs a Llama-style backbone (q/k/v/o_proj, up/down_proj)")
        q, k, v = attention.q_proj.weight, attention.k_proj.weight, attention.v_proj.weight
        hidden = q.shape[1]
        if q.shape[0] != hidden or (q.shape[0] % k.shape[0]):
            raise ConfigError(f"generator_init=backbone: query projection {tuple(q.shape)} is not {hidden} x {hidden}")
        groups = q.shape[0] // k.shape[0]  # grouped-query attention: each key/value head serves `groups` query heads
        head_dim = q.shape[0] // model.config.num_attention_heads
        k, v = (w.view(-1, head_dim, hidden).repeat_interleave(groups, 0).reshape(hidden, hidden) for w in (k, v))
        self.attention.in_proj_weight.copy_(torch.cat([q, k, v]))
        self.attention.out_proj.weight.copy_(attention.o_proj.weight)
        self.feed_forward[0].weight.copy_(mlp.up_proj.weight)
        self.feed_forward[2].weight.copy_(mlp.down_proj.weight)
        for bias in (self.attention.in_proj_bias, self.attention.out_proj.bias, self.feed_forward[0].bias,
                     self.feed_forward[2].bias):
            bias.zero_()


@dataclass
class GeneratorRead:
    """What the generator computed for a batch: V [B, L, H] over its prompts, and where things are in them."""

    states: torch.Tensor
    question_end: torch.Tensor  # [B] the question's last token
    thought_positions: torch.Tensor  # [B, N] the placeholders
    step_ends: list[list[int]]  # per example, the last token of each gold step (none without steps)

    @property
    def thoughts(self) -> torch.Tensor:
        """[B, N, H] the thoughts v_1 .. v_N."""
        index = self.thought_positions.unsqueeze(-1).expand(-1, -1, self.states.shape[-1])
        return self.states.gather(1, index)

    @property
    def anchor(self) -> torch.Tensor:
        """[B, H] v_q."""
        return self.states[torch.arange(len(self.states), device=self.states.device), self.question_end]


# ---- the losses ----------------------------------------------------------------------------------


def alignment_kl(anchor: torch.Tensor, thoughts: torch.Tensor) -> torch.Tensor:
    """L_align: the mean over examples and thoughts of KL(softmax(v_q) || softmax(v_j)), softmax over the hidden
    dimension; anchor [B, H], thoughts [B, N, H]."""
    log_p = F.log_softmax(anchor.float(), dim=-1).unsqueeze(1)
    log_q = F.log_softmax(thoughts.float(), dim=-1)
    return (log_p.exp() * (log_p - log_q)).sum(-1).mean()


def alignment_cosine(anchor: torch.Tensor, thoughts: torch.Tensor) -> torch.Tensor:
    """L_align as a cosine distance: the mean of 1 - cos(v_q, v_j)."""
    return (1 - F.cosine_similarity(anchor.float().unsqueeze(1), thoughts.float(), dim=-1)).mean()


def focus_infonce(anchor: torch.Tensor, candidates: torch.Tensor, positive: int, temperature: float) -> torch.Tensor:
    """L_focus of one example: -log softmax_i(cos(v_q, c_i) / tau)[positive]; anchor [H], candidates [m, H]."""
    logits = F.cosine_similarity(anchor.float().unsqueeze(0), candidates.float(), dim=-1) / temperature
    return F.cross_entropy(logits.unsqueeze(0), torch.tensor([positive], device=logits.device))


def choose_positive(rule: str, candidates: torch.Tensor, answer: torch.Tensor | None = None,
                    rng: random.Random | None = None) -> int:
    """The index of L_focus's positive among the m step candidates [m, H]: the step most cosine-similar to the
    answer embedding `answer` [H] (rule "answer"), the middle step (m - 1) // 2, or rng's uniform draw ("random")."""
    if rule == "answer":
        with torch.no_grad():
            return int(F.cosine_similarity(candidates.float(), answer.float().unsqueeze(0), dim=-1).argmax())
    if rule == "middle":
        return (len(candidates) - 1) // 2
    return rng.randrange(len(candidates))


# ---- the method ----------------------------------------------------------------------------------


class LTAThinker(SoftThoughtMethod):
    """A one-block generator over the backbone's embeddings writes the thoughts; SFT, alignment and focus losses."""

    name = "lta-thinker"
    Config = LTAThinkerConfig

    def __init__(self, config: LTAThinkerConfig, model, tokenizer, task):
        super().__init__(config, model, tokenizer, task)
        hidden = model.get_input_embeddings().weight.shape[1]
        intermediate = getattr(model.config, "intermediate_size", None) or 4 * hidden
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(1234)  # the generator's initialisation does not depend on what ran before
            generator = ThoughtGenerator(hidden, intermediate, getattr(model.config, "rms_norm_eps", 1e-6))
        if config.generator_init == "backbone":
            generator.copy_layer(model, config.generator_layer)
        self.extras["generator"] = generator.to(self.device)
        self._embedding_rows = None

    def thought_cost(self) -> float:
        return body_size(self.extras["generator"]) / body_size(self.model)

    def placeholders(self, n: int) -> torch.Tensor:
        """[n, H] p_1 .. p_n, drawn like untrained rows of the (frozen) input embeddings."""
        if self._embedding_rows is None or len(self._embedding_rows) < n:
            self._embedding_rows = untrained_rows(self.model.get_input_embeddings().weight, n)
        return self._embedding_rows[:n]

    def step_tokens(self, example: Example) -> tuple[list[int], list[int]]:
        """The gold steps' ids (each step followed by the task's separator) and the index of each step's last token."""
        separator = self.task.step_separator
        encoded = self.tokenizer("".join(step + separator for step in example.steps), add_special_tokens=False,
                                 return_offsets_mapping=True)
        ends, start = [], 0
        for step in example.steps:
            inside = [i for i, (first, _) in enumerate(encoded["offset_mapping"]) if first < start + len(step)]
            ends.append(inside[-1] if inside else 0)
            start += len(step) + len(separator)
        return encoded["input_ids"], ends

    def generator_inputs(self, examples: list[Example], n: int, with_steps: bool):
        """G's input x [B, L, H] over "question [steps] p_1 .. p_n" for each example (right-padded), what each
        position reads (visible [B, L, L]: steps hidden from the question and the placeholders unless steps_in_prompt),
        the questions' last positions [B], the placeholders' [B, n] and the gold steps' ends."""
        generator = self._extras_on_device()["generator"]
        rows, slots, step_flags, question_end, step_ends = [], [], [], [], []
        for example, question in zip(examples, self.question_ids(examples, n)):
            steps, ends = self.step_tokens(example) if with_steps else ([], [])
            rows.append(question + steps)
            slots.append([-1] * len(question + steps) + list(range(n)))
            step_flags.append([False] * len(question) + [True] * len(steps) + [False] * n)
            question_end.append(len(question) - 1)
            step_ends.append([len(question) + end for end in ends])
        width = max(map(len, slots))
        pad = self.tokenizer.pad_token_id
        device = self.device
        ids = torch.tensor([r + [pad] * (width - len(r)) for r in rows], device=device)
        slot = torch.tensor([s + [-1] * (width - len(s)) for s in slots], device=device)
        real = torch.tensor([[1] * len(s) + [0] * (width - len(s)) for s in slots], device=device).bool()
        is_step = torch.tensor([f + [False] * (width - len(f)) for f in step_flags], device=device)
        embeds = self.model.get_input_embeddings()(ids).detach()
        x = torch.where((slot >= 0).unsqueeze(-1), self.placeholders(n).to(device)[slot.clamp(min=0)], embeds.float())
        visible = real.unsqueeze(1).expand(-1, width, -1)
        if not self.config.steps_in_prompt:
            visible = visible & ~(is_step.unsqueeze(1) & ~is_step.unsqueeze(2))  # only steps read steps
        visible = visible | torch.eye(width, dtype=torch.bool, device=device)  # padding rows read themselves
        positions = torch.tensor([[len(r) + j for j in range(n)] for r in rows], device=device)
        return (x.to(generator.projection.weight.dtype), visible, torch.tensor(question_end, device=device), positions,
                step_ends)

    def generate(self, examples: list[Example], n: int, with_steps: bool) -> GeneratorRead:
        """Run G over every position of "question [steps] p_1 .. p_n" (`generator_inputs`)."""
        x, visible, question_end, positions, step_ends = self.generator_inputs(examples, n, with_steps)
        return GeneratorRead(self.extras["generator"](x, visible), question_end, positions, step_ends)

    def thoughts(self, examples: list[Example], n: int) -> torch.Tensor:
        """[B, 1, n, H] G's output at the placeholders, its queries run there alone: an answer reads nothing else."""
        x, visible, _, positions, _ = self.generator_inputs(examples, n, with_steps=False)
        return self.extras["generator"](x, visible, at=positions).unsqueeze(1)

    def focus_loss(self, examples: list[Example], read: GeneratorRead, step: int) -> torch.Tensor | None:
        """L_focus averaged over the examples with gold steps (None if there are none)."""
        terms = []
        embeddings = self.model.get_input_embeddings()
        for b, example in enumerate(examples):
            if not read.step_ends[b]:
                continue
            candidates = read.states[b, read.step_ends[b]]
            answer = embeddings(torch.tensor(self._ids(example.answer), device=self.device)).float().mean(0)
            rng = random.Random(zlib.crc32(f"{step}:{example.question}".encode()))
            positive = choose_positive(self.config.focus_positive, candidates, answer, rng)
            terms.append(focus_infonce(read.states[b, read.question_end[b]], candidates, positive,
                                       self.config.focus_temperature))
        return torch.stack(terms).mean() if terms else None

    def loss(self, examples: list[Example], step: int):
        config = self.config
        read = self.generate(examples, config.thoughts, with_steps=config.steps_in_prompt or config.focus_weight > 0)
        ce, tokens = self.thought_cross_entropy(examples, read.thoughts.unsqueeze(1))
        total = config.sft_weight * ce
        metrics = {"ce": float(ce.detach()), "tokens": tokens,
                   "thought_variance": float(thought_variance(read.thoughts.detach()).mean())}
        if config.alignment_weight > 0:
            align = (alignment_kl if config.alignment == "kl" else alignment_cosine)(read.anchor, read.thoughts)
            total = total + config.alignment_weight * align
            metrics["alignment"] = float(align.detach())
        if config.focus_weight > 0:
            focus = self.focus_loss(examples, read, step)
            if focus is not None:
                total = total + config.focus_weight * focus
                metrics["focus"] = float(focus.detach())
        return total, metrics


__all__ = ["GeneratorRead", "LTAThinker", "LTAThinkerConfig", "ThoughtGenerator", "alignment_cosine",
           "alignment_kl", "choose_positive", "focus_infonce"]

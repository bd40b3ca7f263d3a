"""Continuous thoughts: COCONUT (Hao et al., 2024, arXiv 2412.06769) and Stable Latent Reasoning.

COCONUT. The model reasons by feeding its last hidden state back as the next input embedding.
With h_0 the last-layer state at <bot> (the end of the prompt),

    x_t     = h_t                                    continuous thought t, t = 0 .. n-1
    h_{t+1} = LM(question, <bot>, x_0 .. x_t)[last layer, last position]

then <eot> and language tokens follow on the same KV cache (latent.py runs the loop, batched).

The curriculum (algorithm box). Stage k = first_stage + floor(step / steps_per_stage), capped at
K + 1 where K = `stages`. For an example with gold steps s_1 .. s_m:

    stage k <= K:  sequence = question <bot> [k c thoughts] <eot> s_{k+1} .. s_m  #### answer <eos>
    stage K + 1:   sequence = question <bot> [K c thoughts] <eot>                  #### answer <eos>

(c = `c`, thoughts per step.) With `merge_steps` g > 1 a curriculum step is g consecutive gold steps
(their text unchanged, so the CoT sequence is the same): stage k replaces the first k g gold steps by
k c thoughts, and one thought can stand for several steps (fewer forward passes than the chain it
replaces, where gold steps are one token each, as parity's). The loss is the token cross-entropy of the language after <eot> only,

    L = - sum_{i > <eot>} log p(y_i | question, <bot>, x_0 .. x_{n-1}, <eot>, y_<i),

never on the question, <bot>, the thoughts or <eot> itself. Gradients flow through every thought
back to the question (back-propagation through the loop). With `step_weight` w > 0 each latent step is
also decoded from its own thoughts alone (step-level supervision, as SIM-CoT, Wei et al. 2025,
arXiv 2509.20317, which finds COCONUT's latents collapse beyond a few thoughts without it):

    L += w mean_{b, i} - sum_j log p(s_{i,j} | x_{ic} .. x_{(i+1)c-1}, s_{i,<j})

over every example b and latent step i, the decoder being the model itself run on those c thought
vectors followed by the step's tokens (SIM-CoT trains a separate auxiliary decoder; sharing the
weights is our choice). Under merge_steps, s_i is the g steps' joined text, or with `step_decode=last` only
the last of them (the state the chain has reached: for parity, the running parity a thought must pass on).
Nothing changes at answer time. With `mix_probability` p an example
trains, with probability p, at a stage drawn uniformly from 0 .. m instead (COCONUT's
"uniform_prob" mixing). With `reset_optimizer` the AdamW moments are cleared at each stage change.

How many thoughts an example with fewer steps than the stage gets: COCONUT's own data code (the
`pad_latent_to_max: True` of all its recipes) gives EVERY example k c thoughts at stage k <= K and
K c at the last stage, even if it has fewer than k steps (all its steps are then latent and the
extra thoughts are padding); `pad_thoughts=true` (the default) does the same. `pad_thoughts=false`
caps at the example's step count at every stage: min(k, m) c thoughts (min(K, m) c at the last);
COCONUT's `pad_latent_to_max: False` caps only at the last stage. At answer time every example
gets n = c K thoughts (or `eval_thoughts`; held-out scores taken during training, and a checkpoint
saved mid-course, use the stage's c min(k, K), as COCONUT's do). COCONUT without padding would use
min(K, m) c at test time, which reads the gold step count, so we never do.

Positions that do not move (for small models trained from scratch, which find what they read by
relative position). `keep_position=true` gives the language after <eot> the position ids it has
in the plain CoT sequence (question, steps, answer), as if neither the markers nor the thoughts
were there and the replaced steps' tokens were: with q the question's length and r the tokens of the
replaced steps (their text and separators), the first token after <eot> sits at q + r and <eot> at
q + r - 1, at every stage (<bot> and the thoughts keep q, q + 1, ..., so these positions may repeat).
A CoT checkpoint then finds every remaining step where it learned to read it. At answer time r is not known for a new question: it is taken
as the mean tokens per gold step of the training examples seen, times the steps made latent (exact
on tasks whose steps have a fixed length). `reserve_slots=true` gives every example c K slots
from stage 0 on: the first n are thoughts, the other c K - n hold the <latent> token's embedding
(pause tokens), so the thoughts take over slots that were always there and <eot> never moves
(with keep_position as well, the pauses move with the language after them).
`markers=false` (ours) drops <bot> and <eot>: each thought sits in the slot of the step it replaces,
the pass over the last thought (over the prompt, with none) predicts the first token of the language,
and stage 0 is the CoT sequence itself. A thought is then read where the CoT model read the token
it stands for, with no marker between the last thought and the step after it. With keep_position as
well, a thought also takes the position id of its step's last token (of the last of the g steps it
stands for under merge_steps), so that a step of several tokens, or several steps, done in one pass
is done at the place where the CoT model finished them (at answer time the ends are the training
mean, as r above).

From the paper's epochs to our optimizer steps: steps_per_stage = epochs_per_stage x
ceil(N_train / (batch_size x grad_accum x processes)). The paper trains with 128 examples per step
(32 per GPU x 4 GPUs): ProsQA (17,886 train) 5 epochs/stage = 700 steps, ProntoQA (9,000) 5 epochs
= 355 steps, GSM8K-Aug (385,620) 3 epochs = 9,039 steps (it starts at stage 1 from a CoT model:
first_stage=1, init_from=<cot checkpoint>). configs/coconut-*.yaml hold these recipes.

Stable Latent Reasoning (`slr`, with loop=thoughts, the default) adds stabilisers to the loop, each a switch
of SLRConfig (loop=depth is the proposal's other reading, the same layers looped over every position: looped.py):

    s_0 = h_0
    s_t = h_t + a s_0   (residual_mode=initial)  or  h_t + a s_{t-1}  (previous)   loop residual, a = `residual`
    u_t = s_t mu_E / ||s_t||,   mu_E = mean_v ||E_v||                        `normalize`: input-embedding scale
    x_t = u_t + e_t   (timestep=add)   or   W [u_t ; e_t]   (concat)         e_t = MLP(sinusoid(t))
    h_{t+1} = LM_t(... x_t),   LM_t = LM with W_q <- W_q + (alpha/r) B_t A_t on the chosen projections
                                                                            `loop_lora`: adapter t only in pass t

With every switch off, x_t = h_t: exactly COCONUT. Adaptive termination stops example b before
thought t >= 1 when ||h_t - h_{t-1}|| / ||h_{t-1}|| < `halt_threshold` (halting=delta) or when a
linear halting head says sigmoid(w . h_t + b) > `halt_probability` (halting=learned; it is trained
with BCE towards y_t = [t >= n_b], n_b the thoughts example b is trained with, on detached h_t: a
probe that does not move the LM); with at most n thoughts. Optional distillation from CoT
(`distill_weight` lambda) adds

    lambda mean_i ||h_{(i+1)c} - h*_i||^2 / ||h*_i||^2,

h*_i the last-layer state at the last token of gold step i in a teacher-forced CoT pass of the same
model on the same example (no gradient): the state after the thoughts that replace step i is pulled
towards the state after reading step i.
"""

from __future__ import annotations

import math
import random
import zlib
from contextlib import contextmanager
from dataclasses import dataclass, field, fields

import torch
import torch.nn.functional as F
from torch import nn

from ..backbones import thought_token_ids
from ..config import ConfigError, choices
from ..latent import LoopResult, decode, extend, thought_loop
from ..tasks import Example
from .base import (ExtraModules, Method, MethodConfig, Prediction, StepTokens, chain_text, majority_vote, pad_pairs,
                   prompt_text, split_chain, step_cuts, step_ends)


# ---- configuration -------------------------------------------------------------------------------


@dataclass
class CoconutConfig(MethodConfig):
    c: int = 1  # continuous thoughts per replaced reasoning step
    merge_steps: int = 1  # gold steps that form one curriculum step (replaced together by c thoughts)
    step_weight: float = 0.0  # weight of decoding each step from its thoughts, or (loop=depth) its iteration; docstrings
    step_decode: str = choices("all", "last", default="all")  # under merge_steps: decode the g steps, or the last
    stages: int = 3  # K, the last stage that replaces steps one by one; stage K + 1 makes every step latent
    steps_per_stage: int = 100  # optimizer steps per stage (see the module docstring for the paper's epochs)
    first_stage: int = 0  # the stage at step 0 (1 when starting from a CoT checkpoint, as COCONUT's GSM8K run)
    reset_optimizer: bool = True  # clear AdamW's moments at each stage change
    mix_probability: float = 0.0  # chance an example trains at a stage drawn uniformly from 0 .. len(steps)
    pad_thoughts: bool = True  # every example gets c * stage thoughts (COCONUT); false: capped at its step count
    eval_thoughts: int | None = None  # thoughts at answer time; default c * stages
    keep_position: bool = False  # what follows <eot> keeps its plain-CoT position ids (module docstring)
    reserve_slots: bool = False  # c * stages slots from stage 0; those not yet thoughts hold <latent> tokens
    markers: bool = True  # <bot> before the thoughts, <eot> after; false: thoughts sit where their steps were

    positive_keys = MethodConfig.positive_keys + ("c", "merge_steps", "stages", "steps_per_stage")

    def check(self) -> None:
        if self.mix_probability > 1.0:
            raise ConfigError(f"mix_probability={self.mix_probability}: must lie in [0, 1]")
        if self.reserve_slots and not self.markers:
            raise ConfigError("reserve_slots=true needs markers=true: the <eot> after the slots is what stays put")


@dataclass
class SLRConfig(CoconutConfig):
    loop: str = choices("thoughts", "depth", default="thoughts")  # thoughts: this module's loop; depth: looped.py
    timestep: str = choices("none", "add", "concat", default="add")  # timestep embedding e_t of the fed state
    timestep_dim: int = 64  # sinusoid features fed to e_t's MLP
    timestep_scale: float = 0.25  # initial mean ||e_t|| as a fraction of the mean input-embedding norm
    loop_lora: bool = True  # a low-rank adapter per loop index, active only in its thought pass (or core iteration)
    loop_lora_r: int = 4
    loop_lora_alpha: float = 8.0
    loop_lora_targets: list[str] = field(default_factory=list)  # layer names; default q_proj,v_proj or c_attn
    loop_lora_loops: int | None = None  # adapters per layer; default c * stages or loops (later loops reuse the last)
    residual: float = 0.1  # a in s_t = h_t + a s_0 (or a s_{t-1}); 0 switches it off
    residual_mode: str = choices("initial", "previous", default="initial")
    normalize: bool = True  # rescale the fed state to the mean input-embedding norm
    halting: str = choices("none", "delta", "learned", default="delta")  # adaptive termination at answer time
    halt_threshold: float = 0.01  # delta: stop when ||h_t - h_{t-1}|| / ||h_{t-1}|| < this (depth: see halt_on)
    halt_probability: float = 0.5  # learned: stop when the halting head's probability exceeds this
    halt_weight: float = 0.1  # learned: weight of the halting head's BCE in the loss
    distill_weight: float = 0.0  # weight pulling thought states towards CoT step-end states
    # loop=depth only (methods/looped.py); timestep, loop_lora*, normalize and halt_threshold serve both loops
    prelude: int = 0  # first decoder layers, run once before the loop
    coda: int = 0  # last decoder layers, run once after it; the layers between are the looped core
    loops: int = 4  # T, core iterations in training (the mean when loops_random draws them)
    loops_random: str = choices("none", "poisson", "uniform", default="none")  # draw T per training step
    loops_min: int = 1  # the least T a draw gives (the mean stays `loops`)
    loops_from: int | None = None  # grow T in training: loops_from at step 0, + loops_by every loops_every steps, to loops
    loops_every: int = 100
    loops_by: int = 1
    eval_loops: int | None = None  # T at answer time; default loops
    injection: bool = True  # + h_0 (the prelude's output) after every iteration
    backprop_loops: int | None = None  # gradients through the last k iterations only; default all
    halt_on: str = choices("none", "change", "kl", default="none")  # per-token halting below halt_threshold
    step_readout: str = choices("question", "answer", default="question")  # where step_weight reads each iteration
    step_hold: bool = False  # step_weight: every iteration's readout an answer, held past the last step (looped.py)
    freeze_backbone: bool = False  # train only the stabilisers (loop-wise LoRA, e_t) on a frozen pretrained model

    positive_keys = CoconutConfig.positive_keys + ("timestep_scale", "loop_lora_r", "loop_lora_loops", "loops",
                                                   "eval_loops", "backprop_loops", "loops_min",
                                                   "loops_from", "loops_every", "loops_by")
    thoughts_keys = tuple(  # step_weight serves both loops
        key for key in CoconutConfig.keys() if key not in MethodConfig.keys() and key != "step_weight"
    ) + ("residual", "residual_mode", "halting", "halt_probability", "halt_weight", "distill_weight")
    depth_keys = ("prelude", "coda", "loops", "loops_random", "loops_min", "loops_from", "loops_every", "loops_by",
                  "eval_loops", "injection", "backprop_loops", "halt_on", "freeze_backbone", "step_readout",
                  "step_hold")

    def check(self) -> None:
        super().check()
        if self.timestep_dim < 2 or self.timestep_dim % 2:
            raise ConfigError(f"timestep_dim={self.timestep_dim}: must be an even number of at least 2")
        if self.halt_probability > 1.0:
            raise ConfigError(f"halt_probability={self.halt_probability}: must lie in [0, 1]")
        if self.loops_min > self.loops:
            raise ConfigError(f"loops_min={self.loops_min} is above loops={self.loops}, the mean T of the draws")
        if self.loops_min != 1 and self.loops_random == "none":
            raise ConfigError(f"loops_min={self.loops_min} with loops_random=none: T is always loops={self.loops}; "
                              "set loops_random=poisson or uniform to draw it")
        if self.loops_from is not None and self.loops_from > self.loops:
            raise ConfigError(f"loops_from={self.loops_from} is above loops={self.loops}, the T it grows to")
        if self.loops_from is not None and self.loops_random != "none":
            raise ConfigError(f"loops_from={self.loops_from} with loops_random={self.loops_random}: T either grows on a "
                              "schedule or is drawn per step; choose one")
        if self.step_hold and (self.step_weight <= 0 or self.step_readout != "answer"):
            raise ConfigError(f"step_hold=true needs step_weight > 0 and step_readout=answer (got step_weight="
                              f"{self.step_weight:g}, step_readout={self.step_readout}): it sets what each iteration's "
                              "readout at the answer's position is trained on")
        if self.freeze_backbone and self.lora:
            raise ConfigError("freeze_backbone=true with lora=true: freezing the backbone would freeze its adapter too; "
                              "choose one")
        other, keys = ("depth", self.depth_keys) if self.loop == "thoughts" else ("thoughts", self.thoughts_keys)
        defaults = {f.name: f.default for f in fields(self)}
        for key in keys:
            if getattr(self, key) != defaults[key]:
                raise ConfigError(f"{key}={getattr(self, key)!r}: a key of loop={other}, and this is loop={self.loop}")


# ---- the curriculum's data -----------------------------------------------------------------------


@dataclass(frozen=True)
class Plan:
    """How one example trains: its stage, the gold steps made latent, and its number of thoughts."""

    stage: int
    latent_steps: int
    thoughts: int


@dataclass
class LatentBatch:
    """A batch laid out for the thought loop.

    prompt_ids / prompt_mask    [B, L] LEFT-padded "question\\n<bot>"
    n_thoughts                  [B]
    continuation_ids / _mask    [B, C] RIGHT-padded "[<latent> pauses] <eot> remaining steps \\n #### answer <eos>"
    labels                      [B, C] the continuation's ids, -100 on pauses, <eot> and padding;
                                logits[:, i] (after reading continuation token i) is scored against labels[:, i + 1]
    position_offset             [B] added to the continuation's position ids (keep_position; else zeros)
    thought_offsets             [B, T] added to each thought's position id (keep_position without markers)
    """

    prompt_ids: torch.Tensor
    prompt_mask: torch.Tensor
    n_thoughts: torch.Tensor
    continuation_ids: torch.Tensor
    continuation_mask: torch.Tensor
    labels: torch.Tensor
    position_offset: torch.Tensor
    thought_offsets: torch.Tensor | None = None

    def sequence(self, b: int, latent_id: int) -> tuple[list[int], list[int]]:
        """Example b as one sequence, <latent> standing for each thought, and its labels (as COCONUT lays it out)."""
        prompt = self.prompt_ids[b][self.prompt_mask[b].bool()].tolist()
        continuation = self.continuation_ids[b][self.continuation_mask[b].bool()].tolist()
        labels = self.labels[b][self.continuation_mask[b].bool()].tolist()
        n = int(self.n_thoughts[b])
        return prompt + [latent_id] * n + continuation, [-100] * (len(prompt) + n) + labels

    @property
    def target_tokens(self) -> int:
        return int((self.labels != -100).sum())


@dataclass
class Thinking:
    """What the loop computed for a batch of questions: the loop state (ready to decode from) and the
    last-layer states h_0 .. h_T [B, T + 1, H] (h_t is the state before thought t; h_T the last)."""

    loop: LoopResult
    states: torch.Tensor


class _Capture:
    """Records h (last layer, last position) of every model call made with output_hidden_states."""

    def __init__(self, model):
        self.model, self.states, self.handle = model, [], None

    def __enter__(self):
        def hook(module, inputs, output):
            hidden = getattr(output, "hidden_states", None)
            if hidden is not None:
                self.states.append(hidden[-1][:, -1])

        self.handle = self.model.register_forward_hook(hook)
        return self

    def __exit__(self, *exc):
        self.handle.remove()

    def stacked(self) -> torch.Tensor:
        return torch.stack(self.states, dim=1)


# ---- COCONUT -------------------------------------------------------------------------------------


class Coconut(ExtraModules, Method):
    """The last hidden state fed back as the next input embedding, learned by a staged curriculum."""

    name = "coconut"
    Config = CoconutConfig

    def __init__(self, config: CoconutConfig, model, tokenizer, task):
        super().__init__(config, model, tokenizer, task)
        self.tokens = thought_token_ids(tokenizer)
        self._token_memo: dict[str, list[int]] = {}  # text -> ids (_ids)
        self._chain_memo: dict = {}  # chain text -> (ids, token ends) (_split)
        self.extras = nn.ModuleDict()  # trained modules beyond the backbone (SLR's stabilisers)
        self.stage: int | None = None  # the trainer's current stage, once on_step has been called
        if config.keep_position:
            self.extras["step_tokens"] = StepTokens()

    # -- the curriculum ----------------------------------------------------------------------------
    def stage_at(self, step: int) -> int:
        return min(self.config.first_stage + step // self.config.steps_per_stage, self.config.stages + 1)

    def on_step(self, step: int) -> bool:
        """Enter the stage of `step`; True (reset AdamW) on the first step of a new stage."""
        self.stage = self.stage_at(step)
        return bool(self.config.reset_optimizer and step > 0 and self.stage != self.stage_at(step - 1))

    def plan(self, example: Example, stage: int) -> Plan:
        """Which steps become thoughts at `stage` and how many thoughts replace them (see module docstring)."""
        K, c, m = self.config.stages, self.config.c, len(example.steps)
        if stage > K:
            latent, slots = m, K
        else:
            latent, slots = min(stage, m), stage
        if not self.config.pad_thoughts:
            slots = min(slots, m)
        return Plan(stage=stage, latent_steps=latent, thoughts=slots * c)

    def merged(self, examples: list[Example]) -> list[Example]:
        """Each example with every `merge_steps` consecutive gold steps joined into one (same chain text)."""
        g, separator = self.config.merge_steps, self.task.step_separator
        if g == 1:
            return examples
        merged = []
        for e in examples:
            starts = range(0, len(e.steps), g)
            merged.append(Example(e.question, [separator.join(e.steps[i : i + g]) for i in starts], e.answer,
                                  {**e.meta, "last_steps": [e.steps[min(i + g, len(e.steps)) - 1] for i in starts]}))
        return merged

    def plans(self, examples: list[Example], step: int) -> list[Plan]:
        """The scheduled stage for each example, or with `mix_probability` a stage drawn from 0 .. len(steps).
        The draw is a function of (step, position, question), so a resumed run draws the same."""
        scheduled = self.stage_at(step)
        out = []
        for position, example in enumerate(examples):
            stage = scheduled
            if self.config.mix_probability > 0:
                rng = random.Random(zlib.crc32(f"{step}:{position}:{example.question}".encode()))
                if rng.random() < self.config.mix_probability:
                    stage = rng.randint(0, len(example.steps))
            out.append(self.plan(example, stage))
        return out

    def _ids(self, text: str) -> list[int]:
        """Token ids of `text`, tokenized once: training meets every example again at every stage."""
        if text not in self._token_memo:
            self._token_memo[text] = self.tokenizer(text, add_special_tokens=False)["input_ids"]
        return self._token_memo[text]

    def _split(self, example: Example, k: int) -> tuple[list[int], list[int]]:
        return split_chain(self.tokenizer, example, k, self.task.step_separator, memo=self._chain_memo)

    def kept_offset(self, removed, thoughts, pauses):
        """keep_position: what moves the language after the latent span from its place after the question,
        <bot>, thoughts, pauses and <eot> (q + 2 + thoughts + pauses) to q + removed, where the CoT sequence
        had it (without markers: from q + thoughts)."""
        return removed - thoughts - pauses - (2 if self.config.markers else 0)

    def thought_offsets(self, ends: list[int], thoughts: int) -> list[int]:
        """keep_position without markers: how far each thought's position id moves from q + t so that it sits
        on the last token of the step it stands for (a step's c thoughts on its last c tokens), never on or
        before the previous thought; thoughts beyond the latent steps (padding) follow on. ends[i]: the chain
        tokens through the text of latent step i (step_ends: its separator after it not counted, so a thought
        sits where the CoT model read the step's last word, e.g. the node a graph step arrives at)."""
        c, offsets, previous = self.config.c, [], -1
        for t in range(thoughts):
            i = t // c
            place = ends[i] - c + t % c if i < len(ends) else previous + 1
            previous = max(place, previous + 1)
            offsets.append(previous - t)
        return offsets

    @property
    def thoughts_in_place(self) -> bool:
        return self.config.keep_position and not self.config.markers

    def reserved_slots(self) -> int:
        return self.config.c * self.config.stages if self.config.reserve_slots else 0

    def encode(self, examples: list[Example], plans: list[Plan]) -> LatentBatch:
        """Prompts "question\\n<bot>" (left-padded) and continuations "[pauses] <eot> rest <eos>" (right-padded);
        without markers "question\\n" and "rest <eos>".

        A sequence longer than max_length keeps its continuation's start and its prompt's end (<bot> always).
        """
        prompts, continuations, given, offsets, placements = [], [], [], [], []
        bot, eot = ([self.tokens.bot], [self.tokens.eot]) if self.config.markers else ([], [])
        for example, plan in zip(examples, plans):
            pauses = [self.tokens.latent] * max(self.reserved_slots() - plan.thoughts, 0)
            chain, rest = self._split(example, plan.latent_steps)
            continuation = pauses + eot + rest + [self.tokenizer.eos_token_id]
            budget = max(self.config.max_length - plan.thoughts, 3)
            continuation = continuation[: max(budget - 1, len(pauses) + 2)]
            room = max(budget - len(continuation) - 1, 0)
            question = self._ids(prompt_text(example))
            prompts.append((question[-room:] if room else []) + bot)
            continuations.append(continuation)
            given.append(len(pauses) + len(eot))
            offsets.append(self.kept_offset(len(chain), plan.thoughts, len(pauses)) if self.config.keep_position else 0)
            if self.thoughts_in_place:
                ends = step_ends(self.tokenizer, example, self.task.step_separator, self._chain_memo)
                placements.append(self.thought_offsets(ends[: plan.latent_steps], plan.thoughts))
        pad = self.tokenizer.pad_token_id
        width = max(map(len, prompts))
        prompt_ids = torch.tensor([[pad] * (width - len(p)) + p for p in prompts])
        prompt_mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts])
        width = max(map(len, continuations))
        continuation_ids = torch.tensor([c + [pad] * (width - len(c)) for c in continuations])
        continuation_mask = torch.tensor([[1] * len(c) + [0] * (width - len(c)) for c in continuations])
        labels = continuation_ids.masked_fill(continuation_mask == 0, -100)
        for b, n in enumerate(given):
            labels[b, :n] = -100  # pauses and <eot> are given, never predicted (as COCONUT's <eot>)
        n_thoughts = torch.tensor([plan.thoughts for plan in plans])
        width = int(n_thoughts.max()) if len(plans) else 0
        placed = (torch.tensor([row + [0] * (width - len(row)) for row in placements])
                  if self.thoughts_in_place else None)
        return LatentBatch(prompt_ids, prompt_mask, n_thoughts, continuation_ids, continuation_mask, labels,
                           torch.tensor(offsets), placed)


    # -- hooks of the loop (SLR overrides) ---------------------------------------------------------
    def loop_hooks(self, training: bool) -> dict:
        """feedback / before_step / halt for latent.thought_loop; COCONUT: none (x_t = h_t, no halting)."""
        return {}

    def end_loop(self) -> None:
        """Called once the thought passes are over, before any language is read (e.g. to switch adapters off)."""

    def run_loop(self, prompt_ids, prompt_mask, n_thoughts, training: bool, thought_offsets=None) -> Thinking:
        hooks = self.loop_hooks(training)
        capture = _Capture(self.model)
        try:
            with capture:
                loop = thought_loop(self.model, prompt_ids, prompt_mask, n_thoughts, thought_offsets=thought_offsets,
                                    **hooks)
        finally:
            self.end_loop()
        return Thinking(loop, capture.stacked())

    # -- training ----------------------------------------------------------------------------------
    def read(self, examples: list[Example], plans: list[Plan], training: bool):
        """Teacher-forced pass over each example's layout under its plan: question <bot> [thoughts] <eot>
        continuation. Returns the batch, the thinking and the continuation logits."""
        self._extras_on_device()
        batch = self.encode(examples, plans)
        device = self.device
        placed = batch.thought_offsets.to(device) if batch.thought_offsets is not None else None
        thinking = self.run_loop(batch.prompt_ids.to(device), batch.prompt_mask.to(device),
                                 batch.n_thoughts.to(device), training=training, thought_offsets=placed)
        if self.config.keep_position:
            thinking.loop.position_offset = batch.position_offset.to(device)
            if training:
                ends = [step_ends(self.tokenizer, e, self.task.step_separator, self._chain_memo) for e in examples]
                cuts = [step_cuts(self.tokenizer, e, self.task.step_separator, self._chain_memo) for e in examples]
                self.extras["step_tokens"].record(examples, [cut[-1] if cut else 0 for cut in cuts], cuts, ends)
        logits, _ = extend(self.model, thinking.loop, batch.continuation_ids.to(device),
                           batch.continuation_mask.to(device))
        return batch, thinking, logits

    def loss(self, examples: list[Example], step: int):
        examples = self.merged(examples)
        plans = self.plans(examples, step)
        batch, thinking, logits = self.read(examples, plans, training=True)
        predicted, labels = self.predicted(batch, thinking, logits)
        ce = F.cross_entropy(predicted.flatten(0, 1).float(), labels.flatten(), ignore_index=-100)
        extra, metrics = self.extra_losses(examples, plans, batch, thinking)
        metrics.update({
            "ce": float(ce.detach()),
            "stage": float(self.stage_at(step)),
            "thoughts": float(batch.n_thoughts.float().mean()),
            "tokens": float(batch.prompt_mask.sum() + batch.n_thoughts.sum() + batch.continuation_mask.sum()),
        })
        return ce + extra if extra is not None else ce, metrics

    def predicted(self, batch: LatentBatch, thinking: Thinking, logits: torch.Tensor):
        """The logits that predict each labelled token of the language after the thoughts, and those labels, aligned."""
        labels = batch.labels.to(logits.device)
        if self.config.markers:  # <eot> is given: its logits predict the first token of the language
            return logits[:, :-1], labels[:, 1:]
        # the last thought (or the prompt, with none) predicts it
        return torch.cat([thinking.loop.logits.unsqueeze(1), logits[:, :-1]], dim=1), labels

    def extra_losses(self, examples, plans, batch: LatentBatch, thinking: Thinking):
        """Losses beyond the language cross-entropy: step decoding (and SLR's halting head and distillation)."""
        if self.config.step_weight <= 0:
            return None, {}
        step_ce = self.step_decoding(examples, thinking.loop)
        if step_ce is None:
            return None, {}
        return self.config.step_weight * step_ce, {"step_ce": float(step_ce.detach())}

    def step_decoding(self, examples: list[Example], loop: LoopResult) -> torch.Tensor | None:
        """Mean token cross-entropy of every latent step decoded by the model from its c thoughts alone."""
        c, device = self.config.c, self.device
        last = self.config.step_decode == "last" and self.config.merge_steps > 1
        rows = [(b, i, self._ids(example.meta["last_steps"][i] if last else example.steps[i]))
                for b, example in enumerate(examples)
                for i in range(min(len(example.steps), int(loop.n_thoughts[b]) // c))]
        if not rows:
            return None
        steps = pad_pairs([(ids, ids) for _, _, ids in rows], self.tokenizer.pad_token_id)
        step_ids, step_mask = steps.input_ids.to(device), steps.attention_mask.to(device)
        which = torch.tensor([b for b, _, _ in rows], device=device)
        first = torch.tensor([i * c for _, i, _ in rows], device=device)
        thoughts = loop.thoughts[which.unsqueeze(1), first.unsqueeze(1) + torch.arange(c, device=device)]  # [R, c, H]
        tokens = self.model.get_input_embeddings()(step_ids).to(thoughts.dtype)
        mask = torch.cat([torch.ones_like(step_mask[:, :1]).expand(-1, c), step_mask], dim=1)
        logits = self.model(inputs_embeds=torch.cat([thoughts, tokens], dim=1), attention_mask=mask).logits
        # the last thought predicts the step's first token, each step token the next
        targets = steps.labels.to(device)
        return F.cross_entropy(logits[:, c - 1 : -1].flatten(0, 1).float(), targets.flatten(), ignore_index=-100)

    # -- answering ---------------------------------------------------------------------------------
    def eval_thoughts(self) -> int:
        """`eval_thoughts` if set; else c K, or, while training (scoring held-out data mid-run) or loaded
        from a checkpoint saved at `stage`, the c min(stage, K) thoughts of that stage, as COCONUT evaluates."""
        if self.config.eval_thoughts is not None:
            return self.config.eval_thoughts
        stage = self.config.stages if self.stage is None else min(self.stage, self.config.stages)
        return self.config.c * stage

    def prompts(self, examples: list[Example]) -> tuple[torch.Tensor, torch.Tensor]:
        """Left-padded "question\\n<bot>" ids (no <bot> without markers) and mask on the model's device."""
        plans = [Plan(stage=0, latent_steps=0, thoughts=0)] * len(examples)
        batch = self.encode(examples, plans)
        return batch.prompt_ids.to(self.device), batch.prompt_mask.to(self.device)

    @torch.no_grad()
    def think(self, examples: list[Example], n_thoughts: int | None = None) -> Thinking:
        """Prefill each question and run its thoughts (n_thoughts, default `eval_thoughts`), batched."""
        self._extras_on_device()
        prompt_ids, prompt_mask = self.prompts(examples)
        n = self.eval_thoughts() if n_thoughts is None else n_thoughts
        placed = None
        if self.thoughts_in_place:  # the steps' token ends are not known for a new question: their training mean
            step_tokens = self.extras["step_tokens"]
            ends = [step_tokens.expected_end(i + 1) for i in range(math.ceil(n / self.config.c))]
            placed = torch.tensor(self.thought_offsets(ends, n), dtype=torch.long, device=self.device)
            placed = placed.expand(len(examples), -1)
        return self.run_loop(prompt_ids, prompt_mask, n, training=False, thought_offsets=placed)

    @torch.no_grad()
    def answer(self, examples: list[Example]) -> list[Prediction]:
        """question <bot> [n thoughts] <eot> answer: decoded greedily (or k samples and a majority vote)."""
        if not examples:
            return []
        thinking = self.think(examples)
        loop = thinking.loop
        n = loop.n_thoughts
        pauses = max(self.reserved_slots() - int(n.max()), 0)
        if self.config.keep_position:
            # mid-training the current stage's steps are latent; at the last stage and after training, all
            latent_steps = self.stage if self.stage is not None and self.stage <= self.config.stages else None
            removed = self.extras["step_tokens"].expected(latent_steps)
            loop.position_offset = self.kept_offset(removed, n, pauses)
        if pauses > 0:  # reserved slots the thoughts did not fill hold <latent> tokens, as in training
            ids = torch.full((len(examples), pauses), self.tokens.latent, dtype=torch.long, device=self.device)
            _, loop = extend(self.model, loop, ids, torch.ones_like(ids))
        sampling = self.config.decoding == "self-consistency"
        k = self.config.samples if sampling else 1
        if k > 1:  # the k samples of a question share its prefill and thoughts
            loop.past_key_values.batch_repeat_interleave(k)
            loop.attention_mask = loop.attention_mask.repeat_interleave(k, dim=0)
            loop.logits = loop.logits.repeat_interleave(k, dim=0)
            if loop.position_offset is not None:
                loop.position_offset = loop.position_offset.repeat_interleave(k)
        # with markers <eot> is fed first; without, the last thought's logits pick the first token
        first = (torch.full((len(examples) * k,), self.tokens.eot, dtype=torch.long, device=self.device)
                 if self.config.markers else None)
        decoded = decode(self.model, loop, first, self.config.max_new_tokens, self.tokenizer.eos_token_id,
                         temperature=self.config.temperature if sampling else 0.0,
                         pad_token_id=self.tokenizer.pad_token_id)
        texts = [self.tokenizer.decode(row[:length], skip_special_tokens=True)
                 for row, length in zip(decoded.ids.tolist(), decoded.n_tokens.tolist())]
        lengths = decoded.n_tokens.tolist()
        n_thoughts = thinking.loop.n_thoughts.tolist()
        predictions = []
        for i in range(len(examples)):
            samples, cost = texts[i * k : (i + 1) * k], lengths[i * k : (i + 1) * k]
            chosen = majority_vote(samples) if k > 1 else 0
            norms = thinking.loop.thoughts[i, : n_thoughts[i]].float().norm(dim=-1).tolist()
            predictions.append(Prediction(
                text=samples[chosen],
                answer=self.parse(samples[chosen]),
                # prefill, one per thought, one for the pauses if any, one per decoded token (without
                # markers a sample's first token comes from the last thought's pass)
                forward_passes=1 + n_thoughts[i] + (pauses > 0) + sum(cost) - (0 if self.config.markers else k),
                generated_tokens=sum(cost),
                thoughts=[round(x, 4) for x in norms],
            ))
        return predictions


# ---- Stable Latent Reasoning: the stabilisers ----------------------------------------------------


def mean_embedding_norm(model) -> torch.Tensor:
    """mu_E = mean_v ||E_v||, the mean norm of the input embeddings: the scale the normalised feed and the
    timestep embedding are set to."""
    with torch.no_grad():
        return model.get_input_embeddings().weight.float().norm(dim=-1).mean()


def rescale(s: torch.Tensor, norm: torch.Tensor) -> torch.Tensor:
    """s mu_E / ||s|| per position: the fed state at the input embeddings' scale (`normalize`)."""
    return s * (norm.to(s.dtype) / s.float().norm(dim=-1, keepdim=True).clamp_min(1e-6).to(s.dtype))


def relative_change(now: torch.Tensor, before: torch.Tensor) -> torch.Tensor:
    """||now - before|| / ||before|| over the last dimension: what delta halting compares with its threshold."""
    return (now - before).float().norm(dim=-1) / before.float().norm(dim=-1).clamp_min(1e-6)


class TimestepEmbedding(nn.Module):
    """e_t = W_2 SiLU(W_1 sinusoid(t) + b_1) + b_2, added to the fed state, or concatenated and
    projected by W (W = [I | I] at init, so "concat" starts as "add" and learns the mix).

    W_2 is scaled at init so that the mean ||e_t|| over the trained loop indices is `norm`
    (SLR passes timestep_scale x the mean input-embedding norm): a signal beside the thought, not over it.
    """

    def __init__(self, hidden: int, dim: int, mode: str, norm: float, loops: int):
        super().__init__()
        self.dim, self.mode = dim, mode
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.SiLU(), nn.Linear(hidden, hidden))
        nn.init.zeros_(self.mlp[2].bias)
        with torch.no_grad():
            mean = torch.stack([self.mlp(self.sinusoid(t, "cpu")) for t in range(max(loops, 1))]).norm(dim=-1).mean()
            self.mlp[2].weight.mul_(norm / mean.clamp_min(1e-12))
        if mode == "concat":
            self.project = nn.Linear(2 * hidden, hidden, bias=False)
            with torch.no_grad():
                eye = torch.eye(hidden)
                self.project.weight.copy_(torch.cat([eye, eye], dim=1))

    def sinusoid(self, t: int, device) -> torch.Tensor:
        half = self.dim // 2
        freqs = torch.exp(-math.log(10000.0) * torch.arange(half, device=device, dtype=torch.float32) / half)
        angles = t * freqs
        return torch.cat([angles.sin(), angles.cos()])

    def vector(self, t: int) -> torch.Tensor:
        """e_t [hidden]."""
        weight = self.mlp[0].weight
        return self.mlp(self.sinusoid(t, weight.device).to(weight.dtype))

    def forward(self, x: torch.Tensor, t: int, e: torch.Tensor | None = None) -> torch.Tensor:
        """x with e_t (`e`, when computed before: answering computes each once, as the weights do not change)."""
        e = self.vector(t) if e is None else e
        if self.mode == "add":
            return x + e.to(x.dtype)
        joined = torch.cat([x, e.to(x.dtype).expand_as(x)], dim=-1)
        return self.project(joined.to(self.project.weight.dtype)).to(x.dtype)


def _linear_shape(module: nn.Module) -> tuple[int, int] | None:
    """(in, out) features of a linear-like layer: nn.Linear, peft's LoRA Linear, GPT-2's Conv1D."""
    if isinstance(getattr(module, "in_features", None), int) and isinstance(getattr(module, "out_features", None), int):
        return module.in_features, module.out_features
    if type(module).__name__ == "Conv1D":
        return tuple(module.weight.shape)  # (nx, nf): y = x W + b
    return None


class LoopLoRA(nn.Module):
    """One low-rank adapter per loop index on chosen linear layers: while `active` is t,

        y = W x + (alpha / r) B_t A_t x,        A_t [r, in], B_t [out, r], B_t = 0 at init,

    and while `active` is None (prefill, <eot>, answer) the layers are the base layers. It works by
    forward hooks, so the backbone's modules and its saved weights stay untouched, and switching the
    index costs nothing and keeps every adapter in the autograd graph (unlike peft's set_adapter,
    which toggles requires_grad). Loop indices beyond the last adapter use the last one.

    Answering without gradients can instead run each adapted layer on its merged weight W + (alpha / r) B_t A_t
    (`folded(t)`): one product a layer where the hook adds two and an add, each a fixed cost that on a small
    model's decoding step rivals the projection it adapts.
    """

    def __init__(self, model: nn.Module, loops: int, r: int, alpha: float, targets: list[str]):
        super().__init__()
        self.loops, self.scale, self.active = loops, alpha / r, None
        if not targets:
            names = [name for name, _ in model.named_modules()]
            targets = (["q_proj", "v_proj"] if any(n.endswith("q_proj") for n in names)
                       else ["c_attn"] if any(n.endswith("c_attn") for n in names) else [])
        layers = [(name, module) for name, module in model.named_modules()
                  if any(name == t or name.endswith("." + t) for t in targets) and _linear_shape(module)]
        if not layers:
            raise ConfigError(f"loop_lora_targets={targets}: no linear layer of the backbone has such a name")
        self.names = [name for name, _ in layers]
        # the layers whose weight `folded` swaps (a peft LoRA layer's base layer: its own adapter still adds on top);
        # a plain list, so that they stay out of this module's parameters and saved state
        self.bases = [getattr(module, "base_layer", module) for _, module in layers]
        self.merged: dict[tuple[int, int], torch.Tensor] = {}  # (t, layer) -> the buffer `merged_weights` writes
        self.merged_loops: set[int] = set()  # the loop indices whose buffers hold the current weights
        self.A = nn.ParameterList()
        self.B = nn.ParameterList()
        self.handles = []
        for index, (_, module) in enumerate(layers):
            n_in, n_out = _linear_shape(module)
            a = torch.empty(loops, r, n_in)
            for t in range(loops):
                nn.init.kaiming_uniform_(a[t], a=math.sqrt(5))
            self.A.append(nn.Parameter(a))
            self.B.append(nn.Parameter(torch.zeros(loops, n_out, r)))
            self.handles.append(module.register_forward_hook(self._hook(index)))

    def merged_weights(self, t: int) -> list[torch.Tensor]:
        """Per adapted nn.Linear, its weight with loop index t's adapter merged in, W + (alpha / r) B_t A_t: written
        once into buffers of its own and kept until `stale()` (a new tensor per answer cost a tiny-5m answer more than
        the hooks do, in first touches of its memory, and rewriting them per answer 1.5-3% of it: bench/README.md,
        "Depth-loop speed")."""
        t = min(t, self.loops - 1)
        if t not in self.merged_loops:
            for index, base in enumerate(self.bases):
                weight, a, b = base.weight, self.A[index], self.B[index]
                buffer = self.merged.get((t, index))
                if buffer is None or (buffer.device, buffer.dtype) != (weight.device, weight.dtype):
                    buffer = self.merged[(t, index)] = torch.empty_like(weight, requires_grad=False)
                torch.addmm(weight.detach(), b[t].detach().to(weight.dtype), a[t].detach().to(weight.dtype),
                            alpha=self.scale, out=buffer)
            self.merged_loops.add(t)
        return [self.merged[(t, index)] for index in range(len(self.bases))]

    def stale(self) -> None:
        """The weights changed (a training step, a load): the next `merged_weights` call merges again. Changes made
        otherwise (by hand, or peft merging its own adapter into W) go unseen until this is called."""
        self.merged_loops.clear()

    def _load_from_state_dict(self, *args, **kwargs):
        self.stale()
        super()._load_from_state_dict(*args, **kwargs)

    @contextmanager
    def folded(self, t: int):
        """Within it (no gradients), the adapted layers run on their weights merged with loop index t's adapter
        (`merged_weights`), without the hooks."""
        merged = self.merged_weights(t)
        # set in the parameter dict itself: a merged weight is no Parameter, which assignment would demand
        own = [base._parameters["weight"] for base in self.bases]
        for base, weight in zip(self.bases, merged):
            base._parameters["weight"] = weight
        # the hooks leave their modules meanwhile: a module with any hook at all is called by a slower path
        hooks = [(handle.hooks_dict_ref(), handle.id) for handle in self.handles]
        hooks = [(table, key, table.pop(key)) for table, key in hooks]
        try:
            yield
        finally:
            for base, weight in zip(self.bases, own):
                base._parameters["weight"] = weight
            for table, key, hook in hooks:
                table[key] = hook

    def _hook(self, index: int):
        def hook(module, inputs, output):
            if self.active is None:
                return output
            t = min(self.active, self.loops - 1)
            a, b = self.A[index][t], self.B[index][t]
            x = inputs[0]
            return output + ((x.to(a.dtype) @ a.T) @ b.T * self.scale).to(output.dtype)

        return hook

    def fit_saved(self, state: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
        """`state` with adapters saved for fewer loops widened to this module's: the saved loops keep theirs and
        each further loop starts as a copy of the last, so the function is the saved one (loops beyond the last
        adapter used the last) and every loop now trains its own (a hop curriculum: 3-hop thoughts, then 6)."""
        state = dict(state)
        for key in [k for k in state if k.startswith((prefix + "A.", prefix + "B."))]:
            saved = state[key]
            if saved.shape[0] < self.loops:  # A [loops, r, in], B [loops, out, r]
                extra = saved[-1:].expand(self.loops - saved.shape[0], *saved.shape[1:])
                state[key] = torch.cat([saved, extra])
        return state

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()
        self.handles = []


class StableLatentReasoning(Coconut):
    """COCONUT with a stabilised loop: timestep embedding, loop-wise LoRA, loop residual, normalisation
    of the fed state, adaptive termination and optional CoT distillation (equations in the module docstring).

    The modules a checkpoint trained (timestep MLP, loop adapters, halting head) are built from the
    training config; switching one off afterwards (`latent eval ... timestep=none loop_lora=false
    residual=0 normalize=false halting=none`) makes the loop skip it: a test-time ablation.
    """

    name = "slr"
    Config = SLRConfig

    def __new__(cls, config: SLRConfig | None = None, *args, **kwargs):
        """loop=depth is the other reading of the proposal, under the same name: DepthLoop (methods/looped.py)."""
        if config is not None and config.loop == "depth":
            from .looped import DepthLoop

            return DepthLoop(config, *args, **kwargs)
        return super().__new__(cls)

    def __init__(self, config: SLRConfig, model, tokenizer, task):
        super().__init__(config, model, tokenizer, task)
        hidden = model.get_input_embeddings().weight.shape[1]
        loops = config.loop_lora_loops or config.c * config.stages
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(1234)  # the extras' initialisation does not depend on what ran before
            if config.timestep != "none":
                norm = config.timestep_scale * float(mean_embedding_norm(model))
                self.extras["timestep"] = TimestepEmbedding(hidden, config.timestep_dim, config.timestep, norm, loops)
            if config.loop_lora:
                self.extras["loop_lora"] = LoopLoRA(model, loops, config.loop_lora_r, config.loop_lora_alpha,
                                                    config.loop_lora_targets)
            if config.halting == "learned":
                head = nn.Linear(hidden, 1)
                nn.init.zeros_(head.weight)
                nn.init.constant_(head.bias, -2.0)  # starts unwilling to halt
                self.extras["halt_head"] = head
        self.extras.to(self.device)

    # -- the loop ------------------------------------------------------------------------------------
    def make_feedback(self):
        """x_t = f(h_t, t) with the switched-on stabilisers; None when all are off (x_t = h_t)."""
        config = self.config
        timestep = self.extras["timestep"] if config.timestep != "none" and "timestep" in self.extras else None
        if not (config.residual or config.normalize or timestep is not None):
            return None
        scale = mean_embedding_norm(self.model) if config.normalize else None
        memory = {}

        def feedback(h: torch.Tensor, t: int) -> torch.Tensor:
            s = h
            if config.residual:
                if t == 0:
                    memory["initial"] = h
                else:
                    s = h + config.residual * memory["initial" if config.residual_mode == "initial" else "previous"]
                memory["previous"] = s
            if scale is not None:
                s = rescale(s, scale)
            if timestep is not None:
                s = timestep(s, t)
            return s

        return feedback

    def make_halt(self):
        config = self.config
        if config.halting == "delta":
            def halt(h, previous, t):
                return relative_change(h, previous) < config.halt_threshold

            return halt
        if config.halting == "learned":
            if "halt_head" not in self.extras:
                raise ConfigError("halting=learned: this model was trained without a halting head; "
                                  "use halting=delta or none")
            head = self.extras["halt_head"]

            def halt(h, previous, t):
                return torch.sigmoid(head(h.to(head.weight.dtype)).squeeze(-1)) > config.halt_probability

            return halt
        return None

    def loop_hooks(self, training: bool) -> dict:
        hooks = {}
        feedback = self.make_feedback()
        if feedback is not None:
            hooks["feedback"] = feedback
        if self.config.loop_lora and "loop_lora" in self.extras:
            lora = self.extras["loop_lora"]

            def before_step(t: int) -> None:
                lora.active = t

            hooks["before_step"] = before_step
        if not training:  # training runs each example's full curriculum thoughts
            halt = self.make_halt()
            if halt is not None:
                hooks["halt"] = halt
        return hooks

    def end_loop(self) -> None:
        if "loop_lora" in self.extras:
            self.extras["loop_lora"].active = None

    # -- extra losses ------------------------------------------------------------------------------
    def extra_losses(self, examples, plans, batch: LatentBatch, thinking: Thinking):
        total, metrics = super().extra_losses(examples, plans, batch, thinking)
        states = thinking.states  # [B, T + 1, H], h_0 .. h_T
        n = batch.n_thoughts.to(states.device)
        if self.config.halting == "learned" and self.config.halt_weight > 0 and states.shape[1] > 1:
            head = self.extras["halt_head"]
            t = torch.arange(1, states.shape[1], device=states.device)
            logits = head(states[:, 1:].detach().float()).squeeze(-1)  # a probe: no gradient into the LM
            used = t.unsqueeze(0) <= n.unsqueeze(1)  # states the example really computed
            target = (t.unsqueeze(0) >= n.unsqueeze(1)).float()
            if bool(used.any()):
                bce = F.binary_cross_entropy_with_logits(logits[used], target[used])
                halt = self.config.halt_weight * bce
                total = halt if total is None else total + halt
                metrics["halt_bce"] = float(bce.detach())
        if self.config.distill_weight > 0:
            distill = self.distillation(examples, plans, states)
            if distill is not None:
                weighted = self.config.distill_weight * distill
                total = weighted if total is None else total + weighted
                metrics["distill"] = float(distill.detach())
        return total, metrics

    def cot_states(self, examples: list[Example]) -> list[torch.Tensor]:
        """Teacher: per example, the last-layer states [m, H] at the last token of each gold step, read
        from a teacher-forced CoT pass ("question\\n" + steps + answer, as `cot` trains), without gradient."""
        rows, ends = [], []
        for example in examples:
            question = self._ids(prompt_text(example))
            separator = self.task.step_separator
            target = chain_text(example, separator)
            encoded = self.tokenizer(target, add_special_tokens=False, return_offsets_mapping=True)
            ids, offsets = encoded["input_ids"], encoded["offset_mapping"]
            positions, end = [], -1
            for step in example.steps:
                end += len(step) + len(separator)  # character just past the step (its separator)
                inside = [i for i, (start, _) in enumerate(offsets) if start < end]
                positions.append(len(question) + (inside[-1] if inside else 0))
            sequence = (question + ids)[: self.config.max_length]
            rows.append(sequence)
            ends.append([p for p in positions if p < len(sequence)])
        pad = self.tokenizer.pad_token_id
        width = max(map(len, rows))
        ids = torch.tensor([r + [pad] * (width - len(r)) for r in rows], device=self.device)
        mask = torch.tensor([[1] * len(r) + [0] * (width - len(r)) for r in rows], device=self.device)
        training = self.model.training
        self.model.eval()  # the teacher reads without dropout
        try:
            with torch.no_grad():
                hidden = self.model(input_ids=ids, attention_mask=mask, output_hidden_states=True).hidden_states[-1]
        finally:
            self.model.train(training)
        return [hidden[b, torch.tensor(p, dtype=torch.long, device=self.device)] for b, p in enumerate(ends)]

    def distillation(self, examples, plans, states: torch.Tensor) -> torch.Tensor | None:
        """mean over replaced steps i of ||h_{(i+1)c} - h*_i||^2 / ||h*_i||^2."""
        c = self.config.c
        pairs = [(b, i) for b, plan in enumerate(plans) for i in range(plan.latent_steps)
                 if (i + 1) * c <= plan.thoughts]
        if not pairs:
            return None
        teacher = self.cot_states([examples[b] for b in sorted({b for b, _ in pairs})])
        index = {b: j for j, b in enumerate(sorted({b for b, _ in pairs}))}
        losses = []
        for b, i in pairs:
            targets = teacher[index[b]]
            if i >= targets.shape[0]:
                continue
            student = states[b, (i + 1) * c].float()
            target = targets[i].float()
            losses.append((student - target).pow(2).sum() / target.pow(2).sum().clamp_min(1e-6))
        return torch.stack(losses).mean() if losses else None


__all__ = ["Coconut", "CoconutConfig", "LatentBatch", "LoopLoRA", "Plan", "SLRConfig", "StableLatentReasoning",
           "Thinking", "TimestepEmbedding"]

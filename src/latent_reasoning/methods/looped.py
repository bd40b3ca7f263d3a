"""Stable Latent Reasoning as its proposal writes it: the depth loop (`slr` with loop=depth).

The decoder layers of the model (model.model.layers: Llama-style Hugging Face causal LMs) are cut into a
prelude P (the first `prelude` layers), a looped core C (the layers between) and a coda D (the last
`coda` layers); by default the core is every layer. Over every position of the sequence at once, with no
extra tokens,

    h_0 = P(E x)                                 E x the input embeddings (h_0 = E x when prelude = 0)
    h_t = C_t(N(h_{t-1}) + e_t) + h_0            t = 1 .. T
    y   = lm_head(norm(D(h_T)))

each stabiliser a switch of SLRConfig:
    e_t     `timestep`    the timestep embedding of iteration t (coconut.TimestepEmbedding: added, or concatenated
                          and projected); without it x + e_t is x
    C_t     `loop_lora`   the core with iteration t's low-rank adapters on its projections (coconut.LoopLoRA, on the
                          core's layers only; iterations past the last adapter use the last); without it C_t = C
    + h_0   `injection`   the input injection; without it h_t = C_t(...)
    N       `normalize`   s -> s mu_E / ||s|| per position, mu_E the mean input-embedding norm; without it N(s) = s
With T = 1, prelude = coda = 0 and every switch off, this is the plain model. Trained from scratch (graph search,
bench/README.md "Depth loop from scratch"), the loop learned only at lr / T and with `normalize` and `timestep` off:
each of the two alone kept it at the marginal answer. The modules a checkpoint trained are built from its
config; switching one off at answer time skips it (a test-time ablation).

Training is plain SFT of the answer with no chain of thought, as `no-cot` trains ("question\\n", then
"#### answer"; its batches), with T = `loops`, or, with `loops_random`, drawn per step with mean `loops` and at least m = `loops_min`:
poisson T = m + Poisson(loops - m), uniform T ~ U{m .. 2 loops - m} (a function of the step, so a resumed run
draws the same), or, with `loops_from` T_0, grown on a schedule, T(step) = min(loops, T_0 + loops_by floor(step /
loops_every)): a curriculum on depth in one run, AdamW's moments kept across it (parity: bench/README.md). With `backprop_loops` k, the first T - k iterations run without gradient: the loss reaches the
core's weights and iteration t's stabilisers through the last k iterations only, and the prelude and the
embeddings through h_0, injected in each of them (Huginn's truncation, Geiping et al. 2025). With
`freeze_backbone` the backbone's weights stay as loaded and only the stabilisers train (loop-wise LoRA, e_t):
the proposal's second way to train, on a frozen pretrained model.

With `step_weight` w > 0 the iterations are also told what to compute (step-level supervision, ours: as coconut's
step_weight and SIM-CoT supervise each thought): at the question's last position p, iteration t's readout (the coda
and head over h_t) is trained to give the first token s_t of gold step t, for t <= min(T - 1, steps); the last
iteration's readout at p is the answer's own next token, so T = steps + 1 supervises every step:

    L += w mean_{b, t} - log p_t(s_t | x)           p_t = softmax(lm_head(norm(D(h_t))))_p

read from the training pass itself: the states at p do not depend on what follows p. With `step_readout=answer`
p is instead the position that predicts the answer's value (after the "####" marker's tokens), the position whose
iterations answer: an algorithm learned at the question's end carries over to the answer's position only if it finds
what it reads by content (graph search's edges), not by offset from where it stands (parity's t-th bit).

With `step_hold` (and step_readout=answer) every iteration's readout is an answer, so that the loop answers at any T:
the targets are written as the answer's value is (the token after "#### "), iterations past a row's last step n hold
its answer, and when T <= n the answer itself is out of reach and the last iteration is trained on step T instead:

    s_t = step t for t <= n, the answer for t > n;      the answer's label at T: s_T

(parity: step n is the answer, so a row is right at every T >= n.) Rows of mixed length (task.min_bits) then
teach the loop to stop where its string ends and keep the answer, and T drawn per step with a mean below the longest
row's n leaves the longest rows for extra test-time loops to solve.

Answering (greedy, or self-consistency) is incremental: iteration t has its own KV cache for the core
layers, and the prelude and coda share one (their layer indices never collide), so a new token runs
P, C_1 .. C_T, D once against the keys and values every earlier token left at the same layer and iteration:
what recomputing the whole sequence would give at it. T = `eval_loops` (default `loops`).

Halting, per generated token at answer time (`halt_on`, below `halt_threshold` > 0; the prompt runs all T): after
iteration t >= 2 a token stops iterating when
    change   ||h_t - h_{t-1}|| / ||h_{t-1}|| < halt_threshold        (its state; the last position of the pass)
    kl       KL(p_{t-1} || p_t) < halt_threshold,  p_t = softmax(lm_head(norm(D(h_t))))
(kl reads the coda at every iteration, without writing its cache). Its state is frozen at h_t and the answer
read from it. In the caches of the iterations it skipped, its keys and values are copies of those of its
last iteration (Huginn's "latest" lookup): later tokens attend to it at every iteration, as it last was,
and no core layer runs for it again.

Cost (Prediction.forward_passes) is counted in full passes of the backbone, one pass per generated token as
`no-cot` counts (the prompt's pass yields the first): a pass whose token ran t core iterations and k codas
costs (prelude + t core + k coda) / layers, with k = t under kl halting and 1 otherwise; T = 1 with every layer in
the core costs 1, as the plain model. A batch runs the core for every row until its last row halts (a halted
row's results are discarded), so the count is what each token needed, not the batch's wall time.
Prediction.thoughts holds the chosen answer's core iterations per pass (the prompt's first).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from transformers import DynamicCache
from transformers.masking_utils import create_causal_mask

from ..config import ConfigError
from ..tasks import Example
from .base import ANSWER_MARKER, Batch, ExtraModules, Prediction, encode_prompts, majority_vote, prompt_text
from .coconut import LoopLoRA, SLRConfig, TimestepEmbedding, mean_embedding_norm, relative_change, rescale
from .sft import NoCoT


@dataclass
class Caches:
    """What incremental answering keeps between passes: the KV caches, `outer` for the prelude and coda layers,
    `loops[t - 1]` for the core layers in iteration t, and `constants`, what depends on the weights alone (mu_E,
    e_t), computed by the first pass: the weights do not change while answering, and recomputing them costs a
    decoding pass measurably (bench/depth_loop_speed.py: on SmolLM2's 49,152 rows mu_E alone costs about two
    decoder layers)."""

    outer: DynamicCache
    loops: list[DynamicCache]
    constants: dict = field(default_factory=dict)


@dataclass
class Pass:
    """One pass of the depth loop: the logits [B, n, V] of its last n positions and, per row [B], the core
    iterations it ran and the times the coda ran for it."""

    logits: torch.Tensor
    iterations: torch.Tensor
    coda_runs: torch.Tensor


def successive_kl(now: torch.Tensor, before: torch.Tensor) -> torch.Tensor:
    """KL(p_{t-1} || p_t) from log p_t (`now`) and log p_{t-1} (`before`) [..., V]: what kl halting watches."""
    return (before.exp() * (before - now)).sum(-1)


def seeded(build):
    """build(), with the initialisation independent of what ran before and of the other stabilisers."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(1234)
        return build()


class DepthLoop(ExtraModules, NoCoT):
    """The same decoder layers applied T times over every position (equations in the module docstring)."""

    name = "slr"
    Config = SLRConfig

    def __init__(self, config: SLRConfig, model, tokenizer, task):
        super().__init__(config, model, tokenizer, task)
        # looked up once: a decoding pass calls them dozens of times, and get_decoder and ModuleList indexing cost
        # Python time a tiny model's pass notices (bench/README.md, "Depth-loop speed")
        self.decoder = self.model.get_decoder()
        layers = self.decoder_layers = list(self.decoder.layers)
        if config.prelude + config.coda >= len(layers):
            raise ConfigError(f"prelude={config.prelude}, coda={config.coda}: the model has {len(layers)} decoder "
                              f"layers, so no layer is left for the looped core")
        self.core = range(config.prelude, len(layers) - config.coda)
        self.coda = range(self.core.stop, len(layers))
        self.step_loops = config.loops  # T of the training step in progress (set by `loss`)
        self.step_terms: list[tuple[torch.Tensor, int]] = []  # step_weight's (summed cross-entropy, targets) a batch
        self._first_tokens: dict = {}  # each gold step's first token id (alone or as an answer), tokenized once
        # step_readout=answer reads past the answer marker "####", which the answer's value follows
        self.readout_offset = (len(tokenizer(ANSWER_MARKER, add_special_tokens=False)["input_ids"])
                               if config.step_readout == "answer" else 0)
        if config.freeze_backbone:
            model.requires_grad_(False)
        self.extras = nn.ModuleDict()
        adapters = config.loop_lora_loops or config.loops  # loop indices with their own adapter and e_t scale
        if config.timestep != "none":
            norm = config.timestep_scale * float(mean_embedding_norm(model))
            hidden = model.get_input_embeddings().weight.shape[1]
            self.extras["timestep"] = seeded(lambda: TimestepEmbedding(hidden, config.timestep_dim, config.timestep,
                                                                       norm, adapters))
        if config.loop_lora:
            core = nn.ModuleList(layers[i] for i in self.core)
            self.extras["loop_lora"] = seeded(lambda: LoopLoRA(core, adapters, config.loop_lora_r,
                                                               config.loop_lora_alpha, config.loop_lora_targets))
        self.extras.to(self.device)

    # -- the loop ------------------------------------------------------------------------------------
    def run(self, ids: torch.Tensor, mask: torch.Tensor, loops: int, caches: Caches | None = None,
            keep: int | None = None, halt: bool = False,
            on_iteration: Callable[[int, torch.Tensor, torch.Tensor], None] | None = None,
            readouts: list[torch.Tensor] | None = None, readout_at: torch.Tensor | None = None) -> Pass:
        """The depth loop over new tokens `ids` [B, n]; `mask` [B, past + n] covers the cached positions and
        the new ones (0 on padding). The logits are those of the last `keep` positions (default all).

        With `caches` the pass reads and extends them. With `halt` (one new token a row, on caches) each row
        stops iterating as the module docstring says; a row whose new slot is masked (it has finished its
        answer) counts as halted from the start.

        With `on_iteration` (on caches; `latent inspect`) each iteration t that runs is followed by
        on_iteration(t, h_t at the last position [B, d], log p_t [B, V]), p_t read as kl halting reads it.
        With `readouts` (no caches; step_weight) the logits [B, V] of each iteration's readout at position
        `readout_at` [B] of each row (default the last) are appended to it.
        """
        config, decoder = self.config, self.decoder
        x = self.model.get_input_embeddings()(ids)
        positions = (mask.cumsum(-1) - 1).clamp(min=0)[:, -ids.shape[1]:]
        layer_inputs = dict(
            attention_mask=create_causal_mask(config=decoder.config, inputs_embeds=x, attention_mask=mask,
                                              cache=caches.loops[0] if caches else None, position_ids=positions,
                                              layer_idx=self.core.start),
            position_ids=positions,
            position_embeddings=decoder.rotary_emb(x, position_ids=positions),
        )
        outer = caches.outer if caches else None
        h0 = self.layers(range(self.core.start), x, layer_inputs, outer)
        h = h0
        scale = self.constant(caches, "mu_E", lambda: mean_embedding_norm(self.model)) if config.normalize else None
        halted = mask[:, -1] == 0 if halt else torch.zeros_like(mask[:, -1], dtype=torch.bool)
        iterations = torch.zeros_like(mask[:, -1])
        grad = torch.is_grad_enabled()
        first_with_grad = loops - config.backprop_loops + 1 if config.backprop_loops else 1
        previous = None  # under halting, what the criterion compares: the last state, or log p
        for t in range(1, loops + 1):
            if halt and bool(halted.all()):  # no core runs: every row's entries are its last iteration's
                self.repeat_entries(caches, t, halted)
                continue
            with torch.set_grad_enabled(grad and t >= first_with_grad):
                new = self.iterate(h, h0, t, scale, layer_inputs, caches)
            if halt and t >= 2 and bool(halted.any()):
                self.repeat_entries(caches, t, halted)
                new = torch.where(halted[:, None, None], h, new)
            iterations += (~halted).long()
            h = new
            if on_iteration is not None:
                on_iteration(t, h[:, -1], self.peek(h, layer_inputs, outer))
            if readouts is not None:
                read = self.layers(self.coda, h, layer_inputs, None)
                read = read[:, -1] if readout_at is None else read[torch.arange(len(read)), readout_at]
                readouts.append(self.head(read))
            if halt and t < loops:
                watched = self.peek(h, layer_inputs, outer) if config.halt_on == "kl" else h[:, -1].float()
                if t >= 2:
                    halted = halted | (self.divergence(watched, previous) < config.halt_threshold)
                previous = watched
        h = self.layers(self.coda, h, layer_inputs, outer)
        logits = self.head(h if keep is None else h[:, -keep:])
        coda_runs = iterations if halt and config.halt_on == "kl" else torch.ones_like(iterations)
        return Pass(logits, iterations, coda_runs)

    @staticmethod
    def constant(caches: Caches | None, key, compute: Callable[[], object]):
        """compute(), once per set of caches (one answer, no gradient: the weights are fixed), else every pass."""
        if caches is None or torch.is_grad_enabled():
            return compute()
        if key not in caches.constants:
            caches.constants[key] = compute()
        return caches.constants[key]

    def iterate(self, h, h0, t: int, scale, layer_inputs: dict, caches: Caches | None) -> torch.Tensor:
        """h_t = C_t(N(h_{t-1}) + e_t) + h_0, with the switched-on stabilisers."""
        config = self.config
        x = h
        if scale is not None:
            x = rescale(x, scale)
        if config.timestep != "none" and "timestep" in self.extras:
            timestep = self.extras["timestep"]
            x = timestep(x, t - 1, self.constant(caches, ("e", t), lambda: timestep.vector(t - 1)))
        lora = self.extras["loop_lora"] if config.loop_lora and "loop_lora" in self.extras else None
        cache = caches.loops[t - 1] if caches else None
        if lora is None:
            x = self.layers(self.core, x, layer_inputs, cache)
        elif caches is not None and not torch.is_grad_enabled():  # answering: the adapters merged into the weights
            with lora.folded(t - 1):
                x = self.layers(self.core, x, layer_inputs, cache)
        else:
            lora.active = t - 1
            try:
                x = self.layers(self.core, x, layer_inputs, cache)
            finally:
                lora.active = None
        return x + h0 if config.injection else x

    def layers(self, indices: range, h: torch.Tensor, layer_inputs: dict, cache) -> torch.Tensor:
        """The decoder layers `indices` over h, called as the model's own forward calls them."""
        for i in indices:
            h = self.decoder_layers[i](h, **layer_inputs, cache=cache, use_cache=cache is not None)
        return h

    def head(self, h: torch.Tensor) -> torch.Tensor:
        return self.model.get_output_embeddings()(self.decoder.norm(h))

    # -- halting -------------------------------------------------------------------------------------
    def peek(self, h: torch.Tensor, layer_inputs: dict, outer: DynamicCache) -> torch.Tensor:
        """log p_t [B, V] at the last position: the coda and head over h, the coda's cache left as it was (its new
        entries cropped off: restoring the old tensors would break the prompt's pass, where the cache starts empty)."""
        logits = self.head(self.layers(self.coda, h, layer_inputs, outer)[:, -1:])
        for i in self.coda:
            outer.layers[i].crop(-h.shape[1])
        return logits[:, -1].float().log_softmax(-1)

    def divergence(self, now: torch.Tensor, before: torch.Tensor) -> torch.Tensor:
        """[B] what halting watches: the relative change of the state, or KL(p_{t-1} || p_t)."""
        if self.config.halt_on == "kl":
            return successive_kl(now, before)
        return relative_change(now, before)

    def repeat_entries(self, caches: Caches, t: int, rows: torch.Tensor) -> None:
        """In iteration t's cache, the last position of `rows` [B] bool takes the keys and values it has in
        iteration t - 1's; appended when iteration t did not run at all (every row halted)."""
        now, before = caches.loops[t - 1], caches.loops[t - 2]
        for i in self.core:
            keys, values = before.layers[i].keys[:, :, -1:], before.layers[i].values[:, :, -1:]
            if now.layers[i].get_seq_length() < before.layers[i].get_seq_length():
                now.update(keys, values, i)
            else:
                now.layers[i].keys[rows, :, -1:] = keys[rows]
                now.layers[i].values[rows, :, -1:] = values[rows]

    # -- training ----------------------------------------------------------------------------------
    def training_loops(self, step: int) -> int:
        """T at training step `step`: `loops`, grown to it (loops_from), or drawn with mean `loops` (loops_random),
        seeded by the step."""
        config, least = self.config, self.config.loops_min
        if config.loops_from is not None:
            return min(config.loops, config.loops_from + config.loops_by * (step // config.loops_every))
        draw = np.random.default_rng(step)
        if config.loops_random == "poisson":
            return least + int(draw.poisson(config.loops - least))
        if config.loops_random == "uniform":
            return int(draw.integers(least, 2 * config.loops - least + 1))
        return config.loops

    def loss(self, examples: list[Example], step: int):
        self._extras_on_device()
        if "loop_lora" in self.extras:
            self.extras["loop_lora"].stale()  # this step changes the weights its merged copies were made from
        self.step_loops = T = self.training_loops(step)
        if self.config.step_hold:  # rows whose answer T cannot reach answer with step T (module docstring)
            examples = [replace(e, answer=e.steps[T - 1]) if T <= len(e.steps) else e for e in examples]
        self.step_terms = []  # filled by `summed_cross_entropy`, one entry per batch it runs
        loss, metrics = super().loss(examples, step)
        metrics["loops"] = float(self.step_loops)
        if self.config.step_weight > 0:
            count = sum(n for _, n in self.step_terms)
            # T = 1 (a drawn T, say) leaves no iteration before the answer's own: nothing to supervise
            step_ce = sum(s for s, _ in self.step_terms) / count if count else torch.zeros((), device=self.device)
            loss = loss + self.config.step_weight * step_ce
            metrics["step_ce"] = float(step_ce.detach())
        return loss, metrics

    def summed_cross_entropy(self, batch: Batch, examples: list[Example]) -> torch.Tensor:
        """The answer's summed cross-entropy, as no-cot's; with step_weight the same pass also reads iteration t's
        readout at each row's question end p (the position that predicts the target's first token; step_readout=answer:
        the one that predicts the answer's value) and records
        its summed cross-entropy against the first token of gold step t, t <= min(T - 1, its steps)."""
        labels = batch.labels.to(self.device)
        scored = labels[:, 1:] != -100
        first = int(scored.any(0).int().argmax())
        ids, mask, keep = batch.input_ids.to(self.device), batch.attention_mask.to(self.device), labels.shape[1] - first
        if self.config.step_weight <= 0:
            logits = self.run(ids, mask, self.step_loops, keep=keep).logits
        else:
            logits = self.logits_and_step_terms(examples, ids, mask, keep, readout_at=scored.int().argmax(1))
        return F.cross_entropy(logits[:, :-1].flatten(0, 1).float(), labels[:, first + 1 :].flatten(),
                               ignore_index=-100, reduction="sum")

    def logits_and_step_terms(self, examples: list[Example], ids: torch.Tensor, mask: torch.Tensor, keep: int,
                              readout_at: torch.Tensor) -> torch.Tensor:
        """The pass's logits of the last `keep` positions; iteration t's readout at each row's `readout_at` (its
        question end) scored against gold step t's first token, into `step_terms`."""
        T = self.step_loops
        targets = torch.full((T, len(examples)), -100, dtype=torch.long)
        for b, example in enumerate(examples):
            if self.config.step_hold:
                held = example.steps + [example.answer] * max(0, T - 1 - len(example.steps))
                targets[: T - 1, b] = torch.tensor([self.answer_token(text) for text in held[: T - 1]])
                continue
            for t, step_text in enumerate(example.steps[: T - 1]):
                targets[t, b] = self.first_token(step_text)
        readouts: list[torch.Tensor] = []
        at = readout_at + self.readout_offset
        logits = self.run(ids, mask, T, keep=keep, readouts=readouts, readout_at=at).logits
        self.step_terms.append((F.cross_entropy(torch.stack(readouts).flatten(0, 1).float(),
                                                targets.flatten().to(self.device), ignore_index=-100, reduction="sum"),
                                int((targets != -100).sum())))
        return logits

    def first_token(self, text: str) -> int:
        """The first token id of `text`, tokenized once: training meets every example's steps again each epoch."""
        if text not in self._first_tokens:
            self._first_tokens[text] = self.tokenizer(text, add_special_tokens=False)["input_ids"][0]
        return self._first_tokens[text]

    def answer_token(self, text: str) -> int:
        """The first token of `text` written as an answer's value is (after "#### "), tokenized once."""
        key = (ANSWER_MARKER, text)
        if key not in self._first_tokens:
            ids = self.tokenizer(f"{ANSWER_MARKER} {text}", add_special_tokens=False)["input_ids"]
            self._first_tokens[key] = ids[self.readout_offset]
        return self._first_tokens[key]

    # -- answering ---------------------------------------------------------------------------------
    def eval_loops(self) -> int:
        return self.config.eval_loops or self.config.loops

    def new_caches(self) -> Caches:
        fresh = lambda: DynamicCache(config=self.model.config)  # noqa: E731
        return Caches(fresh(), [fresh() for _ in range(self.eval_loops())])

    def pass_cost(self, iterations: int, coda_runs: int) -> float:
        """A pass in full passes of the backbone (module docstring)."""
        layers = self.coda.stop
        return (self.core.start + iterations * len(self.core) + coda_runs * len(self.coda)) / layers

    @torch.no_grad()
    def answer(self, examples: list[Example],
               on_iteration: Callable[[int, torch.Tensor, torch.Tensor], None] | None = None) -> list[Prediction]:
        """The prompt's pass, then one incremental pass per generated token: greedy, or k samples and a vote.
        `on_iteration` goes to every pass (`run`), over every row (k per example), finished or not."""
        if not examples:
            return []
        config = self.config
        self._extras_on_device()
        sampling = config.decoding == "self-consistency"
        k = config.samples if sampling else 1
        inputs = encode_prompts(self.tokenizer, [prompt_text(e) for e in examples for _ in range(k)], self.device)
        mask, caches, loops = inputs["attention_mask"], self.new_caches(), self.eval_loops()
        halting = config.halt_on != "none" and config.halt_threshold > 0
        step = self.run(inputs["input_ids"], mask, loops, caches, keep=1, on_iteration=on_iteration)
        rows = mask.shape[0]
        done = torch.zeros(rows, dtype=torch.bool, device=self.device)
        tokens, costs = [], [[] for _ in range(rows)]
        while True:
            for b, (iterations, coda_runs, finished) in enumerate(zip(step.iterations.tolist(), step.coda_runs.tolist(),
                                                                     done.tolist())):
                if not finished:
                    costs[b].append((iterations, coda_runs))
            logits = step.logits[:, -1].float()
            if sampling:
                picked = torch.multinomial(torch.softmax(logits / config.temperature, dim=-1), 1).squeeze(1)
            else:
                picked = logits.argmax(-1)
            picked = torch.where(done, torch.full_like(picked, self.tokenizer.pad_token_id), picked)
            tokens.append(picked)
            done = done | (picked == self.tokenizer.eos_token_id)
            if bool(done.all()) or len(tokens) == config.max_new_tokens:
                break
            mask = torch.cat([mask, (~done).long().unsqueeze(1)], dim=1)
            step = self.run(picked.unsqueeze(1), mask, loops, caches, halt=halting, on_iteration=on_iteration)
        ids = torch.stack(tokens, 1).tolist()
        texts = [self.tokenizer.decode(row[: len(cost)], skip_special_tokens=True) for row, cost in zip(ids, costs)]
        predictions = []
        for i in range(len(examples)):
            chosen = i * k + (majority_vote(texts[i * k : (i + 1) * k]) if k > 1 else 0)
            sampled = costs[i * k : (i + 1) * k]
            predictions.append(Prediction(
                text=texts[chosen],
                answer=self.parse(texts[chosen]),
                forward_passes=sum(self.pass_cost(*c) for cost in sampled for c in cost),
                generated_tokens=sum(map(len, sampled)),
                thoughts=[iterations for iterations, _ in costs[chosen]],
            ))
        return predictions

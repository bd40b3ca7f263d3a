"""Speed of `slr loop=depth` answering against T plain passes of the core, side by side in one run on one model.

Aim (issue 16): a depth-loop answer at T loops costs at most 1.1x T plain forward passes of the core, i.e. the
stabilisers (timestep embedding, loop-wise LoRA, input injection, normalisation) and the per-iteration KV caches
are nearly free. With prelude = coda = 0 the core is every decoder layer, so per token the depth loop runs
the embedding once, the L layers T times and the final norm and LM head once. Three answerers, each greedy with
KV caches and each on its own copy of the same random-init (or pretrained) weights, answer the same left-padded
batch of prompts with exactly --tokens new tokens (no row stops early: their tokenizer has an EOS id no model
emits):

  unrolled  the reference, "T plain passes of the core": the plain Hugging Face model with its L decoder layers
            unrolled T times (T L layers sharing the weights, one DynamicCache of T L layers), run by the model's
            own forward: per token the embedding once, T L layers, the norm and head once, as the depth loop.
            Answered step for step as DepthLoop.answer answers (left-padded prompts, a pass over the prompt
            keeping the last logits, then one cached pass per token with the mask grown by one column, argmax,
            decode the texts). At T = 1 it is the plain model itself.
  off       DepthLoop with every stabiliser off and no injection (timestep=none loop_lora=false normalize=false
            injection=false): the depth loop's own machinery alone (a KV cache per iteration, the layers called
            from Python). The same arithmetic as `unrolled`: the warm-up checks that both answer alike.
  on        DepthLoop with every stabiliser on (timestep=add, loop_lora r=4 on q_proj/v_proj, injection,
            normalize; no halting): the configuration the claim is about.

The reference is the unrolled model rather than T x the plain model's answer, because T plain answers would also
count T embeddings and LM heads, which the depth loop runs once: on SmolLM2 the head alone costs several layers,
so T x plain flatters the loop (that ratio is printed too, as on_over_T_plain; plain = unrolled at T = 1).

Every repeat runs every job (answerer x T x {whole answer, prompt's pass alone}) once, in a fresh shuffled order,
after one warm-up of each. Times are this process's CPU time (the machine is shared: wall time also counts what
the scheduler gave other jobs); wall-time ratios are printed beside them. Per T: the medians of the answer, of the
prompt's pass (prefill) and of the decode step, (answer - prefill) / (tokens - 1), in ms; the ratios are medians
over the repeats of each repeat's own pair:
  on_over_unrolled (the aim: at most 1.1; with its quartiles), on_over_T_plain, off_over_unrolled (what the
  per-iteration caches and the Python loop cost), on_over_off (what the stabilisers cost), and on / unrolled for
  the prefill and the decode step alone.
Then, per T, where the CPU time of --breakdown-answers answers of `on` goes (clocks around DepthLoop.iterate, the
core's layers inside it, the merging of the loop-wise LoRA adapters into the weights, LoopLoRA.merged_weights,
and mu_E = mean_embedding_norm): core layers, LoRA merge, the rest of iterate (timestep embedding, normalisation,
injection, swapping the merged weights in), mu_E, and everything outside the loop (embedding, masks, rotary tables,
head, the answer loop's bookkeeping); stabilisers_share is the merge, the rest of iterate and mu_E together, and
without_stabilisers_ratio = total / (total - those): the on / off ratio this accounting implies. Measured inside the
same answers, it does not suffer the run-to-run noise of the timings above (it leaves out what the merged weights'
own memory costs the core's products, if anything).

    OMP_NUM_THREADS=1 python bench/depth_loop_speed.py                       # tiny-5m, 4x4 multiplication prompts
    OMP_NUM_THREADS=1 python bench/depth_loop_speed.py --model tiny-20m --repeats 5 --breakdown-answers 1
    OMP_NUM_THREADS=1 python bench/depth_loop_speed.py --model smollm2-135m-instruct --batch 4 --tokens 6 \
        --loops 1,4 --repeats 3 --breakdown-answers 1
SmolLM2 is skipped (one line saying so) when its weights are not installed. Results: bench/results/depth-loop-speed.txt.
"""

from __future__ import annotations

import argparse
import copy
import json
import platform
import random
import statistics
import time
from dataclasses import replace

import torch
from torch import nn
from transformers import DynamicCache

from latent_reasoning import methods, tasks
from latent_reasoning.backbones import SMOLLM2, load_backbone, smollm2_folder
from latent_reasoning.methods import looped
from latent_reasoning.methods.base import encode_prompts, prompt_text

ALL_OFF = dict(timestep="none", loop_lora=False, normalize=False, injection=False)
ALL_ON = dict(timestep="add", loop_lora=True, normalize=True, injection=True)


def never_ending(tokenizer):
    """A copy of `tokenizer` whose EOS id no model emits: every row decodes all the tokens asked for."""
    tokenizer = copy.deepcopy(tokenizer)
    tokenizer.__class__ = type("NeverEnding", (type(tokenizer),), {"eos_token_id": property(lambda self: -1)})
    return tokenizer


def unrolled(model, loops: int):
    """The model with its decoder layers repeated `loops` times (weights shared, not copied): layer t L + i is
    layer i, with its attention writing cache slot t L + i. Shallow copies: `model` itself is untouched."""
    base = model.get_decoder()
    count = len(base.layers)
    config = copy.deepcopy(model.config)
    config.num_hidden_layers = loops * count
    if getattr(config, "layer_types", None):
        config.layer_types = list(config.layer_types) * loops
    layers = []
    for t in range(loops):
        for i, layer in enumerate(base.layers):
            layer = copy.copy(layer)
            layer._modules = dict(layer._modules)
            attention = copy.copy(layer.self_attn)
            attention.layer_idx = t * count + i
            layer._modules["self_attn"] = attention
            layers.append(layer)
    decoder = copy.copy(base)
    decoder._modules = dict(base._modules)
    decoder._modules["layers"] = nn.ModuleList(layers)
    decoder.config = config
    whole = copy.copy(model)
    whole._modules = dict(model._modules)
    whole._modules["model"] = decoder
    whole.config = config
    return whole


@torch.no_grad()
def plain_answer(model, tokenizer, prompts: list[str], tokens: int, prefill_only: bool = False):
    """Greedy answers with a KV cache, step for step as DepthLoop.answer (without halting or sampling)."""
    inputs = encode_prompts(tokenizer, prompts, model.device)
    ids, mask = inputs["input_ids"], inputs["attention_mask"]
    cache = DynamicCache(config=model.config)

    def step(new, mask, keep=0):
        positions = (mask.cumsum(-1) - 1).clamp(min=0)[:, -new.shape[1]:]
        return model(input_ids=new, attention_mask=mask, position_ids=positions, cache=cache, use_cache=True,
                     logits_to_keep=keep).logits

    logits = step(ids, mask, keep=1)
    if prefill_only:
        return logits
    picked_tokens = []
    while True:
        picked = logits[:, -1].float().argmax(-1)
        picked_tokens.append(picked)
        if len(picked_tokens) == tokens:
            break
        mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)
        logits = step(picked.unsqueeze(1), mask)
    rows = torch.stack(picked_tokens, 1).tolist()
    return [tokenizer.decode(row, skip_special_tokens=True) for row in rows]


def depth_method(model, tokenizer, task, tokens: int, loops: int, **switches):
    config = methods.get("slr").Config(loop="depth", loops=loops, max_new_tokens=tokens, halt_on="none", **switches)
    method = methods.get("slr")(config, model, tokenizer, task)
    if "loop_lora" in method.extras:  # B = 0 at init; any value costs the same, a non-zero one changes the outputs
        generator = torch.Generator().manual_seed(0)
        with torch.no_grad():
            for b in method.extras["loop_lora"].B:
                b.copy_(0.05 * torch.randn(b.shape, generator=generator))
    method.model.eval()
    return method


def depth_prefill(method, prompts: list[str]):
    with torch.no_grad():
        inputs = encode_prompts(method.tokenizer, prompts, method.device)
        return method.run(inputs["input_ids"], inputs["attention_mask"], method.eval_loops(), method.new_caches(),
                          keep=1).logits


class Breakdown:
    """Where answers of `method` spend CPU time: clocks around its core iterations (DepthLoop.iterate),
    the layers they call, the merging of the loop-wise LoRA adapters into the weights (LoopLoRA.merged_weights) and
    mean_embedding_norm; removed by `close`."""

    def __init__(self, method):
        self.seconds = dict.fromkeys(("iterate", "core_layers", "merge", "norm_scale"), 0.0)
        self.inside = False  # within an iteration: the layers called are the core's
        self.restore = []
        iterate, layers = method.iterate, method.layers
        method.iterate = self.timed("iterate", iterate, flag=True)
        method.layers = lambda indices, *rest: (self.timed("core_layers", layers)(indices, *rest) if self.inside
                                                else layers(indices, *rest))
        self.restore.append(lambda: (vars(method).pop("iterate"), vars(method).pop("layers")))
        scale = looped.mean_embedding_norm
        looped.mean_embedding_norm = self.timed("norm_scale", scale)
        self.restore.append(lambda: setattr(looped, "mean_embedding_norm", scale))
        if "loop_lora" in method.extras:
            lora = method.extras["loop_lora"]
            lora.merged_weights = self.timed("merge", lora.merged_weights)
            self.restore.append(lambda: vars(lora).pop("merged_weights"))

    def timed(self, label, function, flag=False):
        def wrapper(*args, **kwargs):
            if flag:
                self.inside = True
            started = time.process_time()
            try:
                return function(*args, **kwargs)
            finally:
                self.seconds[label] += time.process_time() - started
                if flag:
                    self.inside = False
        return wrapper

    def close(self) -> None:
        for undo in reversed(self.restore):
            undo()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="tiny-5m", help="a tiny Llama preset (random init) or " + SMOLLM2)
    parser.add_argument("--task", default="multiplication", help="whose questions are the prompts (multiplication: "
                                                                   "4x4, short; prosqa: long)")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--tokens", type=int, default=8, help="new tokens per answer")
    parser.add_argument("--loops", default="1,2,4,8")
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--breakdown-answers", type=int, default=3, help="instrumented answers per T")
    args = parser.parse_args()
    loops = [int(t) for t in args.loops.split(",")]

    machine = {"model": args.model, "task": args.task, "threads": torch.get_num_threads(),
               "cpu_capability": torch.backends.cpu.get_cpu_capability(),
               "cpu": platform.processor() or platform.machine(),
               "torch": torch.__version__, "batch": args.batch, "tokens": args.tokens, "repeats": args.repeats}
    if args.model == SMOLLM2:
        try:
            smollm2_folder()
        except Exception as error:  # noqa: BLE001 - absent weights: skip, as the brief allows
            print(json.dumps({**machine, "skipped": f"{SMOLLM2} not installed: {str(error).splitlines()[0]}"}))
            return

    task = tasks.get(args.task)
    examples = task.generate(max(64, args.batch), seed=0)
    texts = [prompt_text(e) + "\n".join(e.steps) + "\n" + e.answer for e in examples]
    model, tokenizer = load_backbone(args.model, texts=texts if args.model.startswith("tiny") else None)
    tokenizer = never_ending(tokenizer)
    prompts = [prompt_text(e) for e in examples[: args.batch]]
    machine["prompt_tokens"] = int(encode_prompts(tokenizer, prompts, "cpu")["input_ids"].shape[1])
    machine["layers"] = len(model.get_decoder().layers)
    print(json.dumps(machine), flush=True)

    top = max(loops)
    # each answerer on its own copy of the weights: none finds another's weights warm in the caches
    off = depth_method(copy.deepcopy(model), tokenizer, task, args.tokens, top, **ALL_OFF)
    on = depth_method(copy.deepcopy(model), tokenizer, task, args.tokens, top, **ALL_ON)
    references = {t: unrolled(model, t) for t in loops}
    configs = {(method, t): replace(method.config, eval_loops=t) for method in (off, on) for t in loops}

    def at(method, t):
        method.config = configs[(method, t)]
        return method

    work = {}
    for t in loops:
        work[("unrolled", "answer", t)] = lambda t=t: plain_answer(references[t], tokenizer, prompts, args.tokens)
        work[("unrolled", "prefill", t)] = lambda t=t: plain_answer(references[t], tokenizer, prompts, args.tokens,
                                                                     prefill_only=True)
        for name, method in (("off", off), ("on", on)):
            work[(name, "answer", t)] = lambda m=method, t=t: at(m, t).answer(examples[: args.batch])
            work[(name, "prefill", t)] = lambda m=method, t=t: depth_prefill(at(m, t), prompts)

    # warm-up: every job once; the unrolled model and the loop with everything off do the same arithmetic, so
    # they should answer alike (greedy ties aside)
    warm = {key: job() for key, job in work.items()}
    for t in loops:
        texts_off = [p.text for p in warm[("off", "answer", t)]]
        texts_ref = warm[("unrolled", "answer", t)]
        agree = sum(a == b for a, b in zip(texts_off, texts_ref))
        if agree < len(texts_ref):
            print(json.dumps({"warning": f"T={t}: unrolled and off agree on {agree}/{len(texts_ref)} answers"}))

    # every repeat runs every job once, in a fresh random order; CPU time of this process (the machine is shared:
    # wall time also counts the time the scheduler gave other jobs) and wall time
    cpu, wall = {key: [] for key in work}, {key: [] for key in work}
    order = list(work)
    shuffle = random.Random(0)
    for _ in range(args.repeats):
        shuffle.shuffle(order)
        for key in order:
            started, started_cpu = time.perf_counter(), time.process_time()
            work[key]()
            cpu[key].append(time.process_time() - started_cpu)
            wall[key].append(time.perf_counter() - started)

    def token(name, t):  # per repeat: the decode step, (answer - prefill) / (tokens - 1)
        return [(a - p) / (args.tokens - 1) for a, p in zip(cpu[(name, "answer", t)], cpu[(name, "prefill", t)])]

    def paired(numerator, denominator):
        """Median and quartiles over the repeats of numerator / denominator, each repeat's own pair."""
        ratios = [a / b for a, b in zip(numerator, denominator)]
        q1, q2, q3 = statistics.quantiles(ratios, n=4) if len(ratios) > 1 else ratios * 3
        return round(statistics.median(ratios), 3), [round(q1, 3), round(q3, 3)]

    ms = lambda values: round(1000 * statistics.median(values), 2)  # noqa: E731
    plain = cpu[("unrolled", "answer", 1)] if 1 in loops else None
    for t in loops:
        row = {"model": args.model, "T": t}
        for name in ("unrolled", "off", "on"):
            row[f"{name}_answer_ms"] = ms(cpu[(name, "answer", t)])
            row[f"{name}_prefill_ms"] = ms(cpu[(name, "prefill", t)])
            row[f"{name}_token_ms"] = ms(token(name, t))
        on_answer, ref_answer = cpu[("on", "answer", t)], cpu[("unrolled", "answer", t)]
        row["on_over_unrolled"], row["on_over_unrolled_quartiles"] = paired(on_answer, ref_answer)
        if plain:
            row["on_over_T_plain"] = paired(on_answer, [t * p for p in plain])[0]
        row["off_over_unrolled"] = paired(cpu[("off", "answer", t)], ref_answer)[0]
        row["on_over_off"] = paired(on_answer, cpu[("off", "answer", t)])[0]
        row["prefill_on_over_unrolled"] = paired(cpu[("on", "prefill", t)], cpu[("unrolled", "prefill", t)])[0]
        row["token_on_over_unrolled"] = paired(token("on", t), token("unrolled", t))[0]
        row["wall_on_over_unrolled"] = paired(wall[("on", "answer", t)], wall[("unrolled", "answer", t)])[0]
        print(json.dumps(row), flush=True)

    # where the CPU time of answers with every stabiliser on goes (instrumented answers, after the timing)
    for t in loops:
        probe = Breakdown(on)
        started = time.process_time()
        for _ in range(args.breakdown_answers):
            work[("on", "answer", t)]()
        total = time.process_time() - started
        probe.close()
        s = probe.seconds
        parts = {"core_layers": s["core_layers"], "lora_merge": s["merge"],
                 "timestep_normalize_injection": s["iterate"] - s["core_layers"] - s["merge"],
                 "norm_scale": s["norm_scale"], "outside_the_loop": total - s["iterate"] - s["norm_scale"]}
        stabilisers = sum(parts[k] for k in ("lora_merge", "timestep_normalize_injection", "norm_scale"))
        print(json.dumps({"model": args.model, "T": t, "breakdown_of": f"{args.breakdown_answers} on answers",
                          "total_ms": round(1000 * total, 1),
                          **{f"{k}_ms": round(1000 * v, 1) for k, v in parts.items()},
                          **{f"{k}_share": round(v / total, 3) for k, v in parts.items()},
                          "stabilisers_share": round(stabilisers / total, 3),
                          "without_stabilisers_ratio": round(total / (total - stabilisers), 3)}), flush=True)


if __name__ == "__main__":
    main()

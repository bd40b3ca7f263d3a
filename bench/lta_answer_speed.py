"""An lta-thinker answer against the frozen backbone's CoT answer of the same length (issue 18: at most 1.05x).

Both answer the same batch of questions on the same backbone and decode exactly `--tokens` tokens greedily
(end-of-sequence ignored, so the lengths are equal whatever the weights say):

- CoT: prefill "question", decode.
- lta-thinker (`prefill`, as its `answer` does): the one-block generator over "question p_1 .. p_N", then
  prefill "question <bot> v_1 .. v_N <eot>" with the N generated vectors at the placeholders, decode.

Timed alternately, one round = one of each (their order swapped every round), after a warm-up; prints one JSON
line per (model, N) with the medians, the median of the per-round ratios and the ratio of the fastest runs (the
machine is shared: the fastest run is the one least slowed by other jobs), and `generator_s`, the median time of the
generator alone (`method.thoughts`, what the prefill runs first), timed in the same rounds.

    OMP_NUM_THREADS=1 python bench/lta_answer_speed.py --models tiny-5m,smollm2-135m-instruct --thoughts 2,32
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

from latent_reasoning import tasks
from latent_reasoning.latent import decode, thought_loop
from latent_reasoning.methods.base import encode_prompts, prompt_text
from latent_reasoning.run import build_method, make_run, texts_of

NEVER = -1  # an end-of-sequence id no token has: every row decodes the full length


def decoded_tokens(method, state, tokens: int) -> int:
    """Decode `tokens` tokens greedily from the prefilled `state`; the number of tokens decoded in all."""
    decoded = decode(method.model, state, None, tokens, NEVER, pad_token_id=method.tokenizer.pad_token_id)
    return int(decoded.n_tokens.sum())


def cot_answer(method, examples, tokens: int) -> int:
    prompts = encode_prompts(method.tokenizer, [prompt_text(e) for e in examples], method.device)
    state = thought_loop(method.model, prompts["input_ids"], prompts["attention_mask"], 0)  # the prefill
    return decoded_tokens(method, state, tokens)


def lta_answer(method, examples, n: int, tokens: int) -> int:
    _, state = method.prefill(examples, n)  # the generator, then the prompt with its n vectors, as `answer` does
    return decoded_tokens(method, state, tokens)


@torch.no_grad()
def measure(model: str, thoughts: list[int], args) -> list[dict]:
    task = tasks.get("multiplication", digits=4)
    examples = task.generate(args.batch, seed=0)
    run = make_run({"method": "lta-thinker", "task": "multiplication", "task_options": {"digits": 4}, "model": model})
    method = build_method(run, texts_of(examples))
    method.model.eval()
    rows = []
    for n in thoughts:
        cot_seconds, lta_seconds, generator_seconds = [], [], []
        for round_ in range(args.repeats + 1):  # round 0 warms up
            timed = {}
            for name in (("cot", "lta") if round_ % 2 else ("lta", "cot")):
                started = time.perf_counter()
                produced = cot_answer(method, examples, args.tokens) if name == "cot" else lta_answer(
                    method, examples, n, args.tokens)
                timed[name] = time.perf_counter() - started
                assert produced == args.batch * args.tokens, (name, produced)
            started = time.perf_counter()
            method.thoughts(examples, n)
            if round_:
                cot_seconds.append(timed["cot"])
                lta_seconds.append(timed["lta"])
                generator_seconds.append(time.perf_counter() - started)
        rows.append({"model": model, "thoughts": n, "batch": args.batch, "tokens": args.tokens,
                     "threads": torch.get_num_threads(), "cot_s": round(statistics.median(cot_seconds), 4),
                     "lta_thinker_s": round(statistics.median(lta_seconds), 4),
                     "lta_over_cot": round(statistics.median(l / c for l, c in zip(lta_seconds, cot_seconds)), 3),
                     "fastest_lta_over_fastest_cot": round(min(lta_seconds) / min(cot_seconds), 3),
                     "generator_s": round(statistics.median(generator_seconds), 5)})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default="tiny-5m,smollm2-135m-instruct")
    parser.add_argument("--thoughts", default="2,32", help="N at answer time, comma-separated")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--tokens", type=int, default=64, help="tokens each answer decodes")
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()
    for model in args.models.split(","):
        for row in measure(model, [int(n) for n in args.thoughts.split(",")], args):
            print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()

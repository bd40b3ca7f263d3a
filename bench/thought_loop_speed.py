"""Speed of the continuous-thought loop, measured side by side in one run on the same model.

1. One continuous-thought step (feed the last hidden state back, one cached forward pass) against one
   KV-cached token decoding step (greedy), at the same batch size and context. Aim: at most 1.2x.
2. Batched latent answering (COCONUT-style: prompt, T thoughts, decoded answer) at batch 32 against
   batch 1 (one question at a time, as COCONUT's reference generate() does). Aim: at least 10x examples/s.

    OMP_NUM_THREADS=1 python bench/thought_loop_speed.py --model tiny-5m --task prosqa
Medians of --repeats timed runs after a warm-up; ratios are what to read (the machine is shared).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

from latent_reasoning import tasks
from latent_reasoning.backbones import load_backbone, thought_token_ids
from latent_reasoning.latent import decode, thought_loop
from latent_reasoning.methods.base import prompt_text


def median_seconds(work, repeats: int) -> float:
    work()  # warm-up
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        work()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


@torch.no_grad()
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="tiny-5m")
    parser.add_argument("--task", default="prosqa", help="prosqa (long prompts) or multiplication (4x4, short)")
    parser.add_argument("--steps", type=int, default=16, help="thoughts / decoded tokens per measurement")
    parser.add_argument("--batch", type=int, default=8, help="batch size of the per-step comparison")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()

    task = tasks.get(args.task)
    examples = task.generate(64, seed=0)
    texts = [prompt_text(e) + "\n".join(e.steps) for e in examples]
    model, tokenizer = load_backbone(args.model, texts=texts if args.model.startswith("tiny") else None)
    bot = thought_token_ids(tokenizer).bot
    never = -1  # an EOS id no model emits: every row decodes all steps

    def prompts(batch: list) -> tuple[torch.Tensor, torch.Tensor]:
        tokenizer.padding_side = "left"
        encoded = tokenizer([prompt_text(e) for e in batch], return_tensors="pt", padding=True, add_special_tokens=False)
        bots = torch.full((len(batch), 1), bot)
        return torch.cat([encoded["input_ids"], bots], 1), torch.cat([encoded["attention_mask"], torch.ones_like(bots)], 1)

    ids, mask = prompts(examples[: args.batch])
    prefill = median_seconds(lambda: thought_loop(model, ids, mask, 0), args.repeats)
    with_thoughts = median_seconds(lambda: thought_loop(model, ids, mask, args.steps), args.repeats)
    thought_step = (with_thoughts - prefill) / args.steps

    def decode_tokens():
        state = thought_loop(model, ids, mask, 0)
        decode(model, state, ids[:, -1], args.steps, eos_token_id=never)

    token_step = (median_seconds(decode_tokens, args.repeats) - prefill) / args.steps

    def answer(batch: list, thoughts: int = 6, answer_tokens: int = 10):
        batch_ids, batch_mask = prompts(batch)
        state = thought_loop(model, batch_ids, batch_mask, thoughts)
        decode(model, state, torch.full((len(batch),), thought_token_ids(tokenizer).eot), answer_tokens,
               eos_token_id=never)

    questions = examples[:32]
    batched = median_seconds(lambda: answer(questions), args.repeats)
    one_by_one = median_seconds(lambda: [answer([q]) for q in questions], max(1, args.repeats // 2))
    result = {
        "model": args.model, "task": args.task, "threads": torch.get_num_threads(), "batch": args.batch, "steps": args.steps,
        "prompt_tokens": int(ids.shape[1]),
        "thought_step_ms": round(1000 * thought_step, 2), "token_step_ms": round(1000 * token_step, 2),
        "thought_over_token": round(thought_step / token_step, 3),
        "answer_examples_per_s_batch32": round(32 / batched, 1),
        "answer_examples_per_s_batch1": round(32 / one_by_one, 1),
        "batch32_over_batch1": round(one_by_one / batched, 2),
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()

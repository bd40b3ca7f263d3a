"""Greedy decoding on the KV cache the thought loop builds: transformers' DynamicCache (each step concatenates the
whole cache to add one position) against latent.py's GrowingLayer cache (each step writes its position into spare
room), side by side in one run.

Each round prefills the same random left-aligned prompts [batch, prompt] and decodes exactly `tokens` tokens
(end-of-sequence ignored), once with each cache, their order swapped every round; SDPA attention (as models load)
and bf16 autocast where the CPU has it. Prints one JSON line per (model, batch, prompt, tokens): the median seconds
of each and their ratio.

    python bench/decode_cache_speed.py --shapes tiny-5m:8:10:32,tiny-5m:64:32:64,smollm2-135m-instruct:32:128:256
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch
from transformers import DynamicCache

from latent_reasoning import latent
from latent_reasoning.backbones import load_backbone
from latent_reasoning.trainer import bf16_supported

CACHES = {"dynamic": lambda model: DynamicCache(config=model.config), "growing": latent.growing_cache}


@torch.no_grad()
def measure(model_name: str, batch: int, prompt: int, tokens: int, rounds: int) -> dict:
    model, _ = load_backbone(model_name, texts=["0123456789 +-*=<>abcdefghij"])  # a tiny preset's tokenizer needs text
    model.eval()
    ids = torch.randint(3, model.config.vocab_size, (batch, prompt))
    mask = torch.ones(batch, prompt, dtype=torch.long)
    seconds = {name: [] for name in CACHES}
    chosen = latent.growing_cache
    try:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16_supported()):
            for round_ in range(rounds + 1):  # round 0 warms up
                for name in (list(CACHES) if round_ % 2 else list(CACHES)[::-1]):
                    latent.growing_cache = CACHES[name]  # the cache thought_loop makes
                    started = time.perf_counter()
                    state = latent.thought_loop(model, ids, mask, 0)
                    latent.decode(model, state, None, tokens, -1, pad_token_id=0)
                    if round_:
                        seconds[name].append(time.perf_counter() - started)
    finally:
        latent.growing_cache = chosen
    dynamic, growing = (statistics.median(seconds[name]) for name in CACHES)
    return {"model": model_name, "batch": batch, "prompt": prompt, "tokens": tokens, "threads": torch.get_num_threads(),
            "bf16": bf16_supported(), "dynamic_s": round(dynamic, 4), "growing_s": round(growing, 4),
            "growing_over_dynamic": round(growing / dynamic, 3)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shapes", default="tiny-5m:8:10:32,tiny-5m:64:32:64,smollm2-135m-instruct:32:128:256",
                        help="model:batch:prompt:tokens, comma-separated")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    for shape in args.shapes.split(","):
        model_name, batch, prompt, tokens = shape.split(":")
        print(json.dumps(measure(model_name, int(batch), int(prompt), int(tokens), args.rounds)), flush=True)


if __name__ == "__main__":
    main()

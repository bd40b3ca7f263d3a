"""One SmolLM2-135M training pass (bf16 weights under autocast, eager attention, batch 8 x 190 random tokens, the last
150 positions scored) with the loss over whole logits (F.cross_entropy over model(...).logits, the SFT loss before
linear_cross_entropy) and through `linear_cross_entropy` over the decoder's hidden states, alternately: seconds and the
process's minor page faults per pass, medians after the first round.

    python bench/linear_ce_speed.py [--threads 1] [--rounds 4]
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import time

import torch
import torch.nn.functional as F

from latent_reasoning.backbones import load_backbone
from latent_reasoning.methods.base import linear_cross_entropy


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=4)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    model, _ = load_backbone("smollm2-135m-instruct")
    model.to(torch.bfloat16).train()
    model.set_attn_implementation("eager")
    ids = torch.randint(0, 1000, (8, 190))
    keep = 150
    targets = ids[:, 191 - keep :].flatten()

    def whole_logits():
        logits = model(input_ids=ids, logits_to_keep=keep).logits
        return F.cross_entropy(logits[:, :-1].flatten(0, 1).float(), targets, reduction="sum")

    def fused():
        hidden = model.get_decoder()(input_ids=ids).last_hidden_state[:, -keep:-1]
        return linear_cross_entropy(hidden.flatten(0, 1), model.lm_head.weight, targets)

    seconds = {"whole_logits": [], "linear_cross_entropy": []}
    faults = {name: [] for name in seconds}
    for round_ in range(args.rounds):
        for name, loss_of in (("whole_logits", whole_logits), ("linear_cross_entropy", fused)):
            before, started = resource.getrusage(resource.RUSAGE_SELF).ru_minflt, time.perf_counter()
            with torch.autocast("cpu", torch.bfloat16):
                loss = loss_of()
            loss.backward()
            model.zero_grad(set_to_none=True)
            if round_:  # the first round allocates everything for the first time
                seconds[name].append(time.perf_counter() - started)
                faults[name].append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
    print(json.dumps({"threads": args.threads, **{f"{name}_s": round(statistics.median(v), 3) for name, v in seconds.items()},
                      **{f"{name}_page_faults": statistics.median(v) for name, v in faults.items()}}))


if __name__ == "__main__":
    main()

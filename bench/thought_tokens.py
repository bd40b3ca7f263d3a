"""Do a coconut model's thoughts read as the steps they replace? For tasks whose steps are one token each.

    python bench/thought_tokens.py runs/demo/coconut runs/demo/data/train.txt --n 300 --seed 1

Generates the held-out questions `latent demo` scores (n with `--seed`, none of them in the training file),
runs the thought loop, and counts the thoughts whose top token through the LM head is the gold step they
replace (thought i against step i + 1, one thought per step).
"""

import argparse

import torch

from latent_reasoning import tasks
from latent_reasoning.run import load_method

if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint")
    parser.add_argument("train_data")
    parser.add_argument("--n", type=int, default=300)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    method = load_method(args.checkpoint)
    task = method.task
    seen = {example.question for example in task.load(path=args.train_data)}
    held_out = task.generate(args.n, seed=args.seed, exclude=seen)
    thoughts = method.think(held_out).loop.thoughts
    with torch.no_grad():
        top = method.model.get_output_embeddings()(thoughts.to(method.model.dtype)).argmax(-1)
    hits = total = 0
    for b, example in enumerate(held_out):
        for i, step in enumerate(example.steps[: top.shape[1]]):
            hits += method.tokenizer.decode([int(top[b, i])]).strip() == step.strip()
            total += 1
    print(f"{args.checkpoint}: {hits} of {total} thoughts ({hits / total:.1%}) read through the LM head as the "
          f"step they replace ({len(held_out)} held-out questions)")

"""Per-token cross-entropy of a coconut/slr checkpoint's language after its thoughts, teacher-forced.

    python bench/token_loss.py --checkpoint runs/g6f-coconut-s2/checkpoint --stage 1 --n 64 --tokens 8

Generates `n` questions of the checkpoint's own task (seed `--seed`), lays each out as the method does at
`stage` (its thoughts computed by the checkpoint itself), and prints, for the first `tokens` labelled
tokens after the thoughts, each token of the first example and the mean cross-entropy (nats) at that
position over all n. Where the chain breaks after k thoughts shows as the one token that is guessed:
ln(v) for a uniform pick among v names.
"""

import argparse

import torch
import torch.nn.functional as F

from latent_reasoning.run import load_method


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--stage", type=int, default=1)
    parser.add_argument("--n", type=int, default=64)
    parser.add_argument("--seed", type=int, default=12345)
    parser.add_argument("--tokens", type=int, default=8)
    args = parser.parse_args()
    method = load_method(args.checkpoint)
    method.model.eval()
    examples = method.task.generate(args.n, seed=args.seed)
    examples = method.merged(examples)
    plans = [method.plan(example, args.stage) for example in examples]
    with torch.no_grad():
        predicted, labels = method.predicted(*method.read(examples, plans, training=False))
        ce = F.cross_entropy(predicted.flatten(0, 1).float(), labels.flatten(), ignore_index=-100, reduction="none")
        ce = ce.view(labels.shape)
    first = int((labels[0] != -100).nonzero()[0])
    names = method.tokenizer.convert_ids_to_tokens(labels[0, first : first + args.tokens].tolist())
    means = [ce[:, i][labels[:, i] != -100].mean().item() for i in range(first, first + len(names))]
    print(f"{args.checkpoint}: stage {args.stage}, {plans[0].thoughts} thoughts, {args.n} questions (seed {args.seed})")
    print(" ".join(f"{name!r}:{value:.2f}" for name, value in zip(names, means)))


if __name__ == "__main__":
    main()

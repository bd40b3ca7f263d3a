"""How well a checkpoint predicts each gold line under each coconut stage's layout, teacher-forced.

    python bench/stage_loss.py --checkpoint runs/bench-4x4/multiplication-cot-seed0/checkpoint \\
        --data ../shared/data/icot-multiplication/4_by_4_mult/valid.txt --split valid --stages 0,1,2 --limit 64

Layouts: "cot" is the CoT method's own sequence, question \\n steps \\n #### answer; stage k is
coconut's, question \\n <bot> [k c thoughts] <eot> steps k+1 .. m \\n #### answer (the checkpoint's
own thoughts fed back; a checkpoint of another method is read as coconut with default options).
For each layout: the mean cross-entropy (nats per token) over the scored tokens, and per gold line
(steps, then the answer line) the mean over that line's tokens, the line's newline included.
A CoT model that has learned the task is near 0 on its own layout; what it loses at stage 0 (two
marker tokens added, nothing else changed) and stage k is what the curriculum has to relearn.
"""

import argparse

import torch
import torch.nn.functional as F

from latent_reasoning import checkpoint, tasks
from latent_reasoning.methods.base import chain_text, encode_pairs, prompt_text
from latent_reasoning.run import build_method, find_run, make_run


def line_losses(token_ce: torch.Tensor, ids: torch.Tensor, newline: int) -> list[float]:
    """Mean of token_ce [N] per line of the scored ids [N] (a line ends with its newline token)."""
    line_of = torch.cat([torch.zeros(1, dtype=torch.long), (ids == newline).long().cumsum(0)[:-1]])
    return [float(token_ce[line_of == i].mean()) for i in range(int(line_of.max()) + 1)]


def scored_losses(logits: torch.Tensor, labels: torch.Tensor, newline: int) -> tuple[float, list[list[float]]]:
    """logits[:, i] scored against labels[:, i + 1]: the mean over scored tokens, and per row its line means."""
    labels = labels[:, 1:].cpu()
    ce = F.cross_entropy(logits[:, :-1].transpose(1, 2).float().cpu(), labels, ignore_index=-100, reduction="none")
    scored = labels != -100
    lines = [line_losses(ce[b][scored[b]], labels[b][scored[b]], newline) for b in range(len(labels))]
    return float(ce[scored].mean()), lines


@torch.no_grad()
def cot_layout(method, examples) -> tuple[float, list[list[float]]]:
    """The CoT method's own encoding (encode_pairs), in one batch."""
    batch = encode_pairs(method.tokenizer, [prompt_text(e) for e in examples], [chain_text(e) for e in examples],
                         method.config.max_length)
    logits = method.model(input_ids=batch.input_ids.to(method.device),
                          attention_mask=batch.attention_mask.to(method.device)).logits
    return scored_losses(logits, batch.labels, method.tokenizer.convert_tokens_to_ids("\n"))


@torch.no_grad()
def stage_layout(method, examples, stage: int) -> tuple[float, list[list[float]]]:
    batch, _, logits = method.read(examples, [method.plan(example, stage) for example in examples], training=False)
    return scored_losses(logits, batch.labels, method.tokenizer.convert_tokens_to_ids("\n"))


def mean_by_line(lines: list[list[float]], first_line: int) -> str:
    width = max(map(len, lines))
    means = [sum(row[i] for row in lines if i < len(row)) / sum(i < len(row) for row in lines) for i in range(width)]
    return " ".join(["-"] * first_line + [f"{m:.2f}" for m in means])


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--data", required=True, help="file or folder of examples")
    parser.add_argument("--split", default="valid")
    parser.add_argument("--stages", default="0,1", help="comma-separated coconut stages")
    parser.add_argument("--limit", type=int, default=64)
    args = parser.parse_args()

    found, run = find_run(args.checkpoint)
    trained_as = run.method
    if run.method not in ("coconut", "slr"):
        run = make_run({"method": "coconut", "task": run.task, "model": run.model, "task_options": run.task_options},
                       check_model_name=False)
    method = build_method(run, weights=found)
    method.model.eval()
    task = tasks.get(run.task, **run.task_options)
    examples = task.load(split=args.split, path=args.data)[: args.limit]
    print(f"{args.checkpoint} (trained as {trained_as}), {len(examples)} {args.split} examples; "
          "nats per token, then by gold line (steps, answer; '-' = latent)")
    mean, lines = cot_layout(method, examples)
    print(f"layout cot: {mean:.3f} | {mean_by_line(lines, 0)}")
    for stage in (int(s) for s in args.stages.split(",")):
        mean, lines = stage_layout(method, examples, stage)
        latent = method.plan(examples[0], stage).latent_steps
        print(f"layout stage {stage}: {mean:.3f} | {mean_by_line(lines, latent)}")

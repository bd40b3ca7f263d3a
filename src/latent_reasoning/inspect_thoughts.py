"""`latent inspect`: what a continuous-thought checkpoint (coconut, slr) thinks, in words.

For each question it runs the thought loop and reports, thought by thought,
  - the state h_t read through the LM head: the top-k next tokens the model would write there
    (COCONUT's probe: a thought often encodes several candidate next steps at once);
  - the fed vector x_t's nearest input-token embeddings by cosine similarity;
  - ||x_t|| and the relative change ||h_t - h_{t-1}|| / ||h_{t-1}|| (what delta-halting watches);
then the decoded answer and whether it is right. With a PNG path it also plots the thought norms
per example and the cosine similarity between thoughts, averaged over the examples.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from .tasks import Example


def _token(tokenizer, token_id: int) -> str:
    piece = tokenizer.convert_ids_to_tokens(int(token_id))
    return repr(piece.replace("▁", " ").replace("Ġ", " ").replace("Ċ", "\n"))


def _short(text: str, width: int = 110) -> str:
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 3] + "..."


@torch.no_grad()
def report(method, examples: list[Example], top_k: int = 5, png_path: str | Path | None = None) -> str:
    """The text report for `examples` under a loaded continuous-thought `method`."""
    if not hasattr(method, "think"):
        raise ValueError(f"method {method.name!r} has no continuous thoughts to inspect (use coconut, "
                         "or slr with loop=thoughts)")
    if not examples:
        raise ValueError("nothing to inspect: the example list is empty")
    method.model.eval()
    tokenizer = method.tokenizer
    thinking = method.think(examples)
    predictions = method.answer(examples)
    loop, states = thinking.loop, thinking.states.float()
    thoughts = loop.thoughts.float()
    embeddings = method.model.get_input_embeddings().weight.float()
    unit_embeddings = embeddings / embeddings.norm(dim=-1, keepdim=True).clamp_min(1e-6)
    head = method.model.get_output_embeddings()
    n_used = loop.n_thoughts.tolist()
    lines = [f"method {method.name}, {len(examples)} question(s), up to {method.eval_thoughts()} thoughts each; "
             f"mean input-embedding norm {float(embeddings.norm(dim=-1).mean()):.3f}", ""]
    for b, (example, prediction) in enumerate(zip(examples, predictions)):
        correct = bool(method.task.grade(prediction.text, example))
        lines.append(f"[{b}] {_short(example.question)}")
        for i, step in enumerate(example.steps):
            lines.append(f"    gold step {i + 1}: {_short(step, 90)}")
        lines.append(f"    gold answer: {example.answer}")
        for t in range(n_used[b]):
            h = states[b, t]
            change = ""
            if t > 0:
                previous = states[b, t - 1]
                change = f", change {float((h - previous).norm() / previous.norm().clamp_min(1e-6)):.3f}"
            probs = torch.softmax(head(h.to(head.weight.dtype)).float(), dim=-1)
            top = probs.topk(min(top_k, probs.shape[-1]))
            as_text = " ".join(f"{_token(tokenizer, i)}:{p:.2f}"
                               for p, i in zip(top.values.tolist(), top.indices.tolist()))
            x = thoughts[b, t]
            cosine = unit_embeddings @ (x / x.norm().clamp_min(1e-6))
            near = cosine.topk(min(top_k, cosine.shape[-1]))
            nearest = " ".join(f"{_token(tokenizer, i)}:{c:.2f}"
                               for c, i in zip(near.values.tolist(), near.indices.tolist()))
            lines.append(f"    thought {t}: |x| {float(x.norm()):.3f}{change}")
            lines.append(f"        lm head:  {as_text}")
            lines.append(f"        nearest:  {nearest}")
        halted = " (halted early)" if n_used[b] < method.eval_thoughts() else ""
        lines.append(f"    {n_used[b]} thought(s){halted}; answer: {_short(prediction.text, 90)!r} "
                     f"-> {prediction.answer} ({'correct' if correct else 'wrong'}); "
                     f"{prediction.forward_passes} forward passes")
        lines.append("")
    if png_path is not None:
        _plot(thoughts, loop.n_thoughts, Path(png_path))
        lines.append(f"plot: {png_path}")
    return "\n".join(lines)


def _plot(thoughts: torch.Tensor, n_thoughts: torch.Tensor, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    B, T = thoughts.shape[:2]
    figure, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    for b in range(B):
        n = int(n_thoughts[b])
        left.plot(range(n), thoughts[b, :n].norm(dim=-1).tolist(), marker="o", alpha=0.7)
    left.set_xticks(range(T))
    left.set_xlabel("thought t")
    left.set_ylabel("||x_t||")
    left.set_title("thought norms (one line per question)")
    unit = thoughts / thoughts.norm(dim=-1, keepdim=True).clamp_min(1e-6)
    similarity = torch.zeros(T, T)
    counts = torch.zeros(T, T)
    for b in range(B):
        n = int(n_thoughts[b])
        similarity[:n, :n] += unit[b, :n] @ unit[b, :n].T
        counts[:n, :n] += 1
    image = right.imshow((similarity / counts.clamp_min(1)).numpy(), vmin=-1, vmax=1, cmap="coolwarm")
    right.set_title("cosine similarity between thoughts (mean)")
    right.set_xticks(range(T))
    right.set_yticks(range(T))
    right.set_xlabel("thought")
    right.set_ylabel("thought")
    figure.colorbar(image, ax=right)
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=100)
    plt.close(figure)


def inspect(checkpoint_folder: str | Path, examples: list[Example], top_k: int = 5,
            png_path: str | Path | None = None, overrides: dict[str, Any] | None = None) -> str:
    """Load a coconut/slr checkpoint and report its thoughts on `examples` (see module docstring).
    `overrides` change the method's answering config, e.g. {"eval_thoughts": 4}."""
    from .run import load_method

    method = load_method(checkpoint_folder)
    if overrides:
        method.config = type(method.config)(**{**method.config.to_dict(), **overrides})
    return report(method, examples, top_k=top_k, png_path=png_path)


def run(args) -> int:
    from . import tasks
    from .run import check_answering_keys, find_run, load_examples, parse_overrides

    found, saved = find_run(args.checkpoint)
    overrides = parse_overrides(args.overrides)
    check_answering_keys(saved, overrides)
    task = tasks.get(saved.task, **saved.task_options)
    examples = load_examples(task, args.data, args.split, args.limit, args.seed)[: args.limit]
    print(inspect(found, examples, top_k=args.top_k, png_path=args.png, overrides=overrides))
    return 0

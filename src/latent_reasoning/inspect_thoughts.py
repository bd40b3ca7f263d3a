"""`latent inspect`: what a latent-reasoning checkpoint (coconut, slr) thinks, in words.

With continuous thoughts (coconut, slr loop=thoughts) it runs the thought loop for each question and
reports, thought by thought,
  - the state h_t read through the LM head: the top-k next tokens the model would write there
    (COCONUT's probe: a thought often encodes several candidate next steps at once);
  - the fed vector x_t's nearest input-token embeddings by cosine similarity;
  - ||x_t|| and the relative change ||h_t - h_{t-1}|| / ||h_{t-1}|| (what delta-halting watches);
then the decoded answer and whether it is right. With a PNG path it also plots the thought norms
per example and the cosine similarity between thoughts, averaged over the examples.

With the depth loop (slr loop=depth) there are no thoughts between question and answer: the core layers
iterate over each generated token. For each question it follows the greedy answer token by token and reports
  - the core iterations the token used (all `eval_loops`, or fewer where `halt_on` halted it);
  - at each iteration t, the top-1 token and its probability read through coda and head (the last is
    the token written);
  - for t = 2 .. its last iteration, the relative change ||h_t - h_{t-1}|| / ||h_{t-1}|| of its state
    (the last position of the pass) and KL(p_{t-1} || p_t): what halt_on=change and halt_on=kl watch;
then the answer, whether it is right, and its forward passes. With a PNG path it plots the mean relative
change against the iteration and the histogram of iterations per token.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from .methods.coconut import relative_change
from .methods.looped import DepthLoop, successive_kl
from .tasks import Example


def _token(tokenizer, token_id: int) -> str:
    piece = tokenizer.convert_ids_to_tokens(int(token_id))
    return repr(piece.replace("▁", " ").replace("Ġ", " ").replace("Ċ", "\n"))


def _short(text: str, width: int = 110) -> str:
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 3] + "..."


def _question(b: int, example: Example) -> list[str]:
    return [f"[{b}] {_short(example.question)}",
            *(f"    gold step {i + 1}: {_short(step, 90)}" for i, step in enumerate(example.steps)),
            f"    gold answer: {example.answer}"]


@torch.no_grad()
def report(method, examples: list[Example], top_k: int = 5, png_path: str | Path | None = None) -> str:
    """The text report for `examples` under a loaded coconut or slr `method` (`top_k`: continuous thoughts)."""
    if not examples:
        raise ValueError("nothing to inspect: the example list is empty")
    if isinstance(method, DepthLoop):
        return depth_report(method, examples, png_path)
    if not hasattr(method, "think"):
        raise ValueError(f"method {method.name!r} has no continuous thoughts or depth loop to inspect "
                         "(use coconut or slr)")
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
        lines += _question(b, example)
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


class DepthTrace:
    """Called after each iteration of each pass of DepthLoop.answer (its `on_iteration`): keeps, per pass and
    iteration, the state at the last position [rows, d], the top-1 token and its probability [rows] and the KL
    from the previous iteration [rows] (NaN at the first), not the whole distributions."""

    def __init__(self):
        self.passes: list[list[tuple[torch.Tensor, ...]]] = []
        self.before = None  # log p of the previous iteration

    def __call__(self, t: int, state: torch.Tensor, log_p: torch.Tensor) -> None:
        if t == 1:
            self.passes.append([])
            kl = torch.full_like(log_p[:, 0], float("nan"))
        else:
            kl = successive_kl(log_p, self.before)
        self.before = log_p
        top = log_p.max(-1)
        self.passes[-1].append((state.float(), top.indices, top.values.exp(), kl))

    def token(self, row: int, index: int, iterations: int) -> tuple[torch.Tensor, ...]:
        """Generated token `index` of `row`, over the `iterations` it ran: its states [n, d], top-1 tokens [n],
        their probabilities [n] and the KL [n - 1] of iterations 2 .. n."""
        states, top, p, kl = (torch.stack([entry[row] for entry in column])
                              for column in zip(*self.passes[index][:iterations]))
        return states, top, p, kl[1:]


@torch.no_grad()
def depth_report(method: DepthLoop, examples: list[Example], png_path: str | Path | None = None) -> str:
    """The text report for `examples` under a loaded slr loop=depth `method` (module docstring)."""
    config = method.config
    if config.decoding != "greedy":  # the k samples' traces are there, but not which one the vote chose
        raise ValueError(f"decoding={config.decoding!r}: inspect follows the greedy answer of slr loop=depth; "
                         "inspect with decoding=greedy")
    method.model.eval()
    trace = DepthTrace()
    predictions = method.answer(examples, on_iteration=trace)
    loops = method.eval_loops()
    halting = config.halt_on != "none" and config.halt_threshold > 0
    rule = f"halt_on={config.halt_on} below {config.halt_threshold:g}" if halting else "no halting"
    lines = [f"method {method.name} loop=depth, {len(examples)} question(s), up to {loops} core iterations "
             f"per generated token ({rule}; the prompt's pass runs all)", ""]
    changes = [[] for _ in range(loops + 1)]  # changes[t]: ||h_t - h_{t-1}|| / ||h_{t-1}|| of every token
    for b, (example, prediction) in enumerate(zip(examples, predictions)):
        lines += _question(b, example)
        for index, n in enumerate(prediction.thoughts):
            states, top, p, kl = trace.token(b, index, n)
            change = relative_change(states[1:], states[:-1]).tolist()
            for t, value in enumerate(change, start=2):
                changes[t].append(value)
            halted = " (halted)" if n < loops else ""
            reads = " ".join(f"{_token(method.tokenizer, i)}:{q:.2f}" for i, q in zip(top.tolist(), p.tolist()))
            lines.append(f"    token {index}: {n} iterations{halted}, reads {reads}")
            if n > 1:
                lines.append(f"        change {' '.join(f'{c:.3g}' for c in change)}; "
                             f"kl {' '.join(f'{k:.3g}' for k in kl.tolist())}")
        correct = bool(method.task.grade(prediction.text, example))
        lines.append(f"    answer: {_short(prediction.text, 90)!r} -> {prediction.answer} "
                     f"({'correct' if correct else 'wrong'}); {sum(prediction.thoughts)} core iterations, "
                     f"{prediction.forward_passes:.2f} forward passes")
        lines.append("")
    if png_path is not None:
        threshold = config.halt_threshold if halting and config.halt_on == "change" else None
        used = [n for prediction in predictions for n in prediction.thoughts]
        _plot_depth(changes, used, loops, threshold, Path(png_path))
        lines.append(f"plot: {png_path}")
    return "\n".join(lines)


def _plot_depth(changes: list[list[float]], used: list[int], loops: int, threshold: float | None,
                path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    ran = [t for t in range(2, loops + 1) if changes[t]]
    left.plot(ran, [sum(changes[t]) / len(changes[t]) for t in ran], marker="o")
    if threshold is not None:
        left.axhline(threshold, color="grey", linestyle="--", label=f"halt_threshold {threshold:g}")
        left.legend()
    left.set_yscale("log")
    left.set_xticks(range(2, loops + 1))
    left.set_xlabel("core iteration t")
    left.set_ylabel("mean ||h_t - h_{t-1}|| / ||h_{t-1}||")
    left.set_title("state convergence (mean over the tokens that ran t)")
    right.hist(used, bins=[n - 0.5 for n in range(1, loops + 2)], rwidth=0.8)
    right.set_xticks(range(1, loops + 1))
    right.set_xlabel("core iterations")
    right.set_ylabel("generated tokens")
    right.set_title("iterations per generated token")
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=100)
    plt.close(figure)


def inspect(checkpoint_folder: str | Path, examples: list[Example], top_k: int = 5,
            png_path: str | Path | None = None, overrides: dict[str, Any] | None = None) -> str:
    """Load a coconut/slr checkpoint and report what it thinks on `examples` (see module docstring).
    `overrides` change the method's answering config, e.g. {"eval_thoughts": 4} or {"halt_on": "change"}."""
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

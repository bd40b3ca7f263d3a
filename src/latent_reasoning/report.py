"""Tables and plots from evaluation summaries (the result rows of DESIGN.md)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

COLUMNS = [("method", "method"), ("accuracy", "accuracy"), ("forward_passes", "forward passes"),
           ("generated_tokens", "generated tokens"), ("seconds_per_example", "s / example"),
           ("train_seconds", "train s")]


def markdown_table(rows: list[dict[str, Any]]) -> str:
    header = "| " + " | ".join(title for _, title in COLUMNS) + " |"
    lines = [header, "|" + "---|" * len(COLUMNS)]
    for row in rows:
        cells = []
        for key, _ in COLUMNS:
            value = row.get(key)
            if key == "accuracy" and value is not None:
                cells.append(f"{100 * value:.1f}%")
            elif isinstance(value, float):
                cells.append(f"{value:.4f}" if key == "seconds_per_example" else f"{value:.1f}")
            else:
                cells.append("" if value is None else str(value))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot(rows: list[dict[str, Any]], path: str | Path, title: str) -> None:
    """Accuracy against mean forward passes per answer, one labelled point per method."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(6, 4), dpi=120)
    for index, row in enumerate(rows):
        axes.scatter(row["forward_passes"], 100 * row["accuracy"], s=40)
        # staggered label heights keep methods with similar costs readable
        axes.annotate(row["method"], (row["forward_passes"], 100 * row["accuracy"]),
                      textcoords="offset points", xytext=(5, 4 + 11 * (index % 3)), fontsize=9)
    axes.set_xscale("log")
    axes.set_xlabel("forward passes per answer (log scale)")
    axes.set_ylabel("accuracy (%)")
    axes.set_ylim(-3, 103)
    axes.set_title(title, fontsize=10)
    axes.grid(alpha=0.3)
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)


def write(rows: list[dict[str, Any]], out: str | Path, title: str) -> str:
    """results.md, results.json and results.png in `out`; returns the markdown table."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    table = markdown_table(rows)
    (out / "results.md").write_text(f"# {title}\n\n{table}\n")
    (out / "results.json").write_text(json.dumps(rows, indent=1))
    plot(rows, out / "results.png", title)
    return table

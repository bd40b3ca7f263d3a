"""Means of a run's logged training scalars over equal spans of its steps, to read a curve in one line.

    python bench/scalar_spans.py runs/X [runs/Y ...] --tags reward,zero_spread,distinct_answers --spans 9

Reads the tensorboard event files under each run's train/ folder (written with log_with=tensorboard) and
prints, per run and tag, the mean of the tag's values over each of --spans equal slices of the steps.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from tensorboard.backend.event_processing.event_accumulator import EventAccumulator


def scalars(run: Path) -> dict[str, dict[int, float]]:
    """tag -> {step: value} over every event file of the run (a resumed run writes several)."""
    series: dict[str, dict[int, float]] = {}
    for events in sorted((run / "train").rglob("events.out.tfevents.*")):
        accumulator = EventAccumulator(str(events), size_guidance={"scalars": 0})
        accumulator.Reload()
        for tag in accumulator.Tags()["scalars"]:
            series.setdefault(tag, {}).update({event.step: event.value for event in accumulator.Scalars(tag)})
    return series


def span_means(values: dict[int, float], spans: int) -> list[float]:
    steps = sorted(values)
    size = len(steps) / spans
    slices = [steps[round(i * size) : round((i + 1) * size)] for i in range(spans)]
    return [sum(values[s] for s in part) / len(part) for part in slices if part]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", type=Path)
    parser.add_argument("--tags", default="reward,zero_spread,distinct_answers")
    parser.add_argument("--spans", type=int, default=9)
    args = parser.parse_args()
    for run in args.runs:
        series = scalars(run)
        if not series:
            raise SystemExit(f"{run}: no tensorboard scalars under {run / 'train'} (was it trained with log_with=tensorboard?)")
        for tag in args.tags.split(","):
            if tag in series:
                print(f"{run.name} {tag} " + " ".join(f"{value:.3f}" for value in span_means(series[tag], args.spans)))


if __name__ == "__main__":
    main()

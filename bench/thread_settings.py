"""Training speed under each thread setting, on a machine that another job may share.

Runs `bench/train_speed.py --rows tiny-5m` (the demo's model and task) in a fresh process per setting, because
OpenMP reads OMP_NUM_THREADS and OMP_WAIT_POLICY when torch loads; the settings take turns, --rounds times, so
that a change of load hits them alike. Settings: 1 thread; 2 threads; 2 threads with OMP_WAIT_POLICY=PASSIVE
(threads sleep at a barrier instead of spinning); and auto (no OMP_NUM_THREADS: the trainer's `share_cpu`
trains on the cores that no other process keeps busy). Prints one JSON line per run and the medians.
With --beside, each setting is also measured beside a single-thread job that this script starts for the
measurement (a one-thread fp32 matrix-product loop) and stops after it, right after the same setting alone:
the medians then include each setting's speed beside the job over its speed alone.

    python bench/thread_settings.py          # beside another job, or on an idle machine
    python bench/thread_settings.py --beside # on an idle machine: alone against beside one single-thread job
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

SETTINGS = {
    "1 thread": {"OMP_NUM_THREADS": "1"},
    "2 threads": {"OMP_NUM_THREADS": "2"},
    "2 threads, passive": {"OMP_NUM_THREADS": "2", "OMP_WAIT_POLICY": "PASSIVE"},
    "auto": {},
}


NEIGHBOUR = "import torch\ntorch.set_num_threads(1)\na = torch.randn(1024, 1024)\nwhile True:\n    a @ a\n"


def tokens_per_s(bench: Path, extra: dict) -> tuple[int, float]:
    """(threads, tokens/s) of bench/train_speed.py's tiny-5m row in a fresh process under `extra`'s variables."""
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "OMP_WAIT_POLICY")}
    output = subprocess.run([sys.executable, str(bench), "--rows", "tiny-5m", "--warmup", "1"],
                            env={**env, **extra}, capture_output=True, text=True, check=True).stdout
    row = [json.loads(line) for line in output.splitlines() if '"row"' in line][0]
    return row["threads"], row["tokens_per_s"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--beside", action="store_true", help="also measure each setting beside a single-thread job")
    args = parser.parse_args()
    bench = Path(__file__).with_name("train_speed.py")
    places = ("alone", "beside") if args.beside else ("as found",)
    speeds = {(name, place): [] for name in SETTINGS for place in places}
    for _ in range(args.rounds):
        for name, extra in SETTINGS.items():
            for place in places:
                neighbour = None
                if place == "beside":
                    neighbour = subprocess.Popen([sys.executable, "-c", NEIGHBOUR], env={**os.environ, "OMP_NUM_THREADS": "1"})
                    time.sleep(2)  # under way before the trainer counts the free cores
                try:
                    threads, speed = tokens_per_s(bench, extra)
                finally:
                    if neighbour:
                        neighbour.kill()
                        neighbour.wait()
                speeds[name, place].append(speed)
                print(json.dumps({"setting": name, "place": place, "threads": threads, "tokens_per_s": speed,
                                  "loadavg": round(os.getloadavg()[0], 2)}), flush=True)
    medians = {f"median {name}, {place}": statistics.median(values) for (name, place), values in speeds.items()}
    if args.beside:
        medians.update({f"{name}: beside / alone": round(statistics.median(speeds[name, "beside"])
                                                         / statistics.median(speeds[name, "alone"]), 3) for name in SETTINGS})
    print(json.dumps(medians))


if __name__ == "__main__":
    main()

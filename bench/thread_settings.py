"""Training speed under each thread setting, on a machine that another job may share.

Runs `bench/train_speed.py --rows tiny-5m` (the demo's model and task) in a fresh process per setting, because
OpenMP reads OMP_NUM_THREADS and OMP_WAIT_POLICY when torch loads; the settings take turns, --rounds times, so
that a change of load hits them alike. Settings: 1 thread; 2 threads; 2 threads with OMP_WAIT_POLICY=PASSIVE
(threads sleep at a barrier instead of spinning); and auto (no OMP_NUM_THREADS: the trainer's `share_cpu`
trains on the cores that no other process keeps busy). Prints one JSON line per run and the medians.

    python bench/thread_settings.py          # beside another job, or on an idle machine
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

SETTINGS = {
    "1 thread": {"OMP_NUM_THREADS": "1"},
    "2 threads": {"OMP_NUM_THREADS": "2"},
    "2 threads, passive": {"OMP_NUM_THREADS": "2", "OMP_WAIT_POLICY": "PASSIVE"},
    "auto": {},
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    bench = Path(__file__).with_name("train_speed.py")
    speeds = {name: [] for name in SETTINGS}
    for _ in range(args.rounds):
        for name, extra in SETTINGS.items():
            env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "OMP_WAIT_POLICY")}
            output = subprocess.run([sys.executable, str(bench), "--rows", "tiny-5m", "--warmup", "1"],
                                    env={**env, **extra}, capture_output=True, text=True, check=True).stdout
            row = [json.loads(line) for line in output.splitlines() if '"row"' in line][0]
            speeds[name].append(row["tokens_per_s"])
            print(json.dumps({"setting": name, "threads": row["threads"], "tokens_per_s": row["tokens_per_s"],
                              "loadavg": round(os.getloadavg()[0], 2)}), flush=True)
    print(json.dumps({f"median {name}": statistics.median(values) for name, values in speeds.items()}))


if __name__ == "__main__":
    main()

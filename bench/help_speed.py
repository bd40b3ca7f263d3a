"""How long `latent --help` (and each command's --help) takes, wall clock, against a bare Python start.

    python bench/help_speed.py [--repeat 10] [--latent PATH]

Each command runs `--repeat` times in a fresh process; the table gives the median and the fastest. The
`latent` script beside this Python is used unless --latent names another. Whether torch was imported
is checked in-process with the same arguments (the point of lazy imports is that it is not).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

COMMANDS = [["--help"], ["train", "--help"], ["eval", "--help"], ["data", "--help"]]
TORCH_CHECK = ("import sys\nfrom latent_reasoning.cli import main\ntry:\n    main(sys.argv[1:])\nexcept SystemExit:\n"
               "    pass\nprint('torch' in sys.modules)")


def seconds(argv: list[str], repeat: int) -> list[float]:
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        subprocess.run(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False)
        times.append(time.perf_counter() - started)
    return times


def imports_torch(arguments: list[str]) -> bool:
    result = subprocess.run([sys.executable, "-c", TORCH_CHECK, *arguments], capture_output=True, text=True)
    return result.stdout.strip().splitlines()[-1] == "True"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=10)
    parser.add_argument("--latent", default=str(Path(sys.executable).parent / "latent"))
    args = parser.parse_args()
    print(f"{os.cpu_count()} CPUs, OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS')}, {args.repeat} runs each, "
          f"python {sys.version.split()[0]}")
    print("| command | median s | fastest s | imports torch |")
    print("|---|---|---|---|")
    bare = seconds([sys.executable, "-c", "pass"], args.repeat)
    print(f"| python -c pass | {statistics.median(bare):.3f} | {min(bare):.3f} | no |")
    for arguments in COMMANDS:
        times = seconds([args.latent, *arguments], args.repeat)
        torch = "yes" if imports_torch(arguments) else "no"
        print(f"| latent {' '.join(arguments)} | {statistics.median(times):.3f} | {min(times):.3f} | {torch} |")


if __name__ == "__main__":
    main()

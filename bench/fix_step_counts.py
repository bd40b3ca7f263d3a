"""Subtract, from a coconut/slr/icot checkpoint, the step counts it inherited from its init_from checkpoint.

Runs started with init_from before commit 38e5740 added their own training data's step counts to those of the
checkpoint they started from; the counts only place latent answers under keep_position (training is unchanged),
so subtracting the starting checkpoint's counts gives exactly the counts a run at 38e5740 or later saves.

    python bench/fix_step_counts.py RUN/checkpoint INIT/checkpoint   (rewrites RUN's extras.safetensors)
"""

import sys
from pathlib import Path

from safetensors.torch import save_file

from latent_reasoning.checkpoint import read_extras
from latent_reasoning.methods.base import StepTokens


def main() -> None:
    run, start = Path(sys.argv[1]), Path(sys.argv[2])
    extras, inherited = StepTokens.upgraded(read_extras(run)), StepTokens.upgraded(read_extras(start))
    for key in StepTokens.saved_keys:
        if key in extras and key in inherited:
            before = extras[key].clone()
            extras[key] = extras[key] - inherited[key]
            if (extras[key] < 0).any():
                raise SystemExit(f"{key}: the run holds fewer counts than {start}; not a run started from it")
            print(f"{key}: {before.flatten()[:4].tolist()} -> {extras[key].flatten()[:4].tolist()}")
    save_file(extras, run / "extras.safetensors")


if __name__ == "__main__":
    main()

#!/usr/bin/env bash
# icot on 4x4 multiplication for one seed, from random weights to the score on the 1000 official valid problems: the CoT
# backbone, the removal course, then answer-only steps at a constant and at a decaying learning rate, each part scored.
# A part already scored is skipped and one with a checkpoint resumes (--resume), so running the script again continues
# where an interrupted run stopped. At the end it prints the rows of bench/results (arm, and train_seconds: the run's
# last logged seconds, summed over the icot parts).
#   bash bench/icot_4x4.sh SEED [RECIPE [OVERRIDE...]]
# RECIPE picks each part's config, configs/cot-multiplication-4x4$RECIPE.yaml and
# configs/icot-multiplication-4x4$RECIPE{,-answer,-decay}.yaml, where the recipe has its own, else tiny-5m's (a CoT
# part from tiny-5m's config is the run tiny-5m's recipe trains): "" (tiny-5m), -gpt2-2l (tiny-gpt2-2l, two layers of
# width 768, its own course at lr 2e-4), -deep (tiny-5m built 8 layers deep, tiny-5m's course) or -cw0 (tiny-5m, the
# course's loss on the answer alone), all three lost the chain on the seed tried (bench/README.md), or -rs100 (tiny-5m's
# parts with Bai et al.'s running-sum loss, the decaying part 48,000 steps long), which kept it on the seed tiny-5m's
# course loses. The OVERRIDEs (key=value) go to every icot part; a RECIPE with no configs of its own names the runs only.
# Environment: RUNS (folder for the runs, default runs), VALID (the official valid file), THREADS (default 2).
set -euo pipefail
seed=${1:?usage: bash bench/icot_4x4.sh SEED [RECIPE [OVERRIDE...]]}
recipe=${2:-}
overrides=("${@:3}")
runs=${RUNS:-runs}
valid=${VALID:-../shared/data/icot-multiplication/4_by_4_mult/valid.txt}
export OMP_NUM_THREADS=${THREADS:-2}
[ -f "$valid" ] || { echo "icot_4x4.sh: no valid file at $valid (set VALID)" >&2; exit 2; }

common=(seed="$seed" compile=true log_with=none eval_data="$valid")
part() {  # part CONFIG OUT [overrides...]: train (or resume) the run, then score it on the 1000
    local config=$1 out=$2; shift 2
    if [ ! -f "$out/valid1000/summary.json" ]; then
        local resume=()
        [ -d "$out/checkpoint" ] && resume=(--resume)
        latent train --config "$config" --out "$out" "${resume[@]}" "${common[@]}" "$@"
        latent eval --checkpoint "$out" --data "$valid" --out "$out/valid1000"
    fi
}

config() {  # config NAME SUFFIX: configs/NAME$recipe$SUFFIX.yaml where the recipe has it, else tiny-5m's NAME$SUFFIX
    local own=configs/$1$recipe$2.yaml
    if [ -f "$own" ]; then echo "$own"; else echo "configs/$1$2.yaml"; fi
}
cot_config=$(config cot-multiplication-4x4 "")
cot=$runs/cot-mult4$recipe-s$seed
[ "$cot_config" = configs/cot-multiplication-4x4.yaml ] && cot=$runs/cot-mult4-s$seed
icot=$runs/icot-mult4$recipe-s$seed
part "$cot_config" "$cot"
part "$(config icot-multiplication-4x4 "")" "$icot" init_from="$cot" "${overrides[@]}"
part "$(config icot-multiplication-4x4 -answer)" "$icot-answer" init_from="$icot" "${overrides[@]}"
part "$(config icot-multiplication-4x4 -decay)" "$icot-decay" init_from="$icot-answer" "${overrides[@]}"

python - "$cot" "$icot" "$icot-answer" "$icot-decay" <<'EOF'
import json, sys
from pathlib import Path

def seconds(run):
    return json.loads((Path(run) / "checkpoint" / "trainer_state.json").read_text())["history"][-1]["seconds"]

cot, *icot = sys.argv[1:]
arms = [("cot", cot, [cot]), ("icot-32000", icot[0], icot[:1]), ("icot-38000", icot[1], icot[:2]), ("icot", icot[2], icot)]
for arm, run, parts in arms:
    row = json.loads((Path(run) / "valid1000" / "summary.json").read_text())
    print(json.dumps({**row, "arm": arm, "train_seconds": round(sum(seconds(part) for part in parts), 1)}))
EOF

#!/usr/bin/env bash
# LaTRO with answers only, on 16-bit parity (tiny-1m), for one seed: a CoT warm-up stopped partway, then from it the
# same budget (200 steps of 16 questions at lr 3e-5) three ways, each scored on the 500 held-out strings:
#   latro        the question and the gold answer only: K=8 sampled rationales rewarded by log pi(y | x + z)
#   sft-answers  the same questions and answers, supervised directly (no-cot on the CoT model: no chain to learn from)
#   sft-chains   supervised on the gold chains as well (cot): information latro does not get
# The warm-up is configs/cot-parity.yaml at a constant rate, stopped after WARMUP steps: parity's CoT model leaves
# chance abruptly, so each seed's WARMUP is where 10-step snapshots of that run first left chance (bench/README.md).
#   bash bench/latro_parity.sh SEED WARMUP
# Environment: RUNS (default runs/latro-parity), THREADS (default 1). Prints the rows of
# bench/results/latro-parity-16.jsonl (arm, train_seconds).
set -euo pipefail
seed=${1:?usage: bash bench/latro_parity.sh SEED WARMUP}
warmup=${2:?usage: bash bench/latro_parity.sh SEED WARMUP}
runs=${RUNS:-runs/latro-parity}
held=bench/data/parity-16-heldout.txt
export OMP_NUM_THREADS=${THREADS:-1}

part() {  # part OUT key=value...: train the run unless scored, then score it on the 500
    local out=$1; shift
    if [ ! -f "$out/held/summary.json" ]; then
        [ -d "$out/checkpoint" ] || latent train --out "$out" "$@" seed="$seed" log_with=none
        latent eval --checkpoint "$out" --data "$held" --out "$out/held"
    fi
}
base=$runs/warmup-s$seed
part "$base" --config configs/cot-parity.yaml steps="$warmup" lr_schedule=constant eval_every=1000
same=(task=parity task.bits=16 model=tiny-1m train_size=20000 init_from="$base" steps=200 batch_size=16 lr=3e-5
      warmup_steps=5 eval_size=0 save_every=0)
part "$runs/latro-s$seed" method=latro "${same[@]}" lora=false rollouts=8 rationale_tokens=24 max_new_tokens=24 \
    beta=0.05 answer_weight=1.0
part "$runs/sft-answers-s$seed" method=no-cot "${same[@]}" max_new_tokens=8
part "$runs/sft-chains-s$seed" method=cot "${same[@]}" max_new_tokens=24

python - "$base" "$runs/latro-s$seed" "$runs/sft-answers-s$seed" "$runs/sft-chains-s$seed" <<'PY'
import json, sys
from pathlib import Path

for arm, run in zip(("warmup", "latro", "sft-answers", "sft-chains"), sys.argv[1:]):
    row = json.loads((Path(run) / "held" / "summary.json").read_text())
    seconds = json.loads((Path(run) / "checkpoint" / "trainer_state.json").read_text())["history"][-1]["seconds"]
    print(json.dumps({**row, "arm": arm, "train_seconds": round(seconds, 1)}))
PY

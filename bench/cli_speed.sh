#!/usr/bin/env bash
# Tokens/s of the issue's training commands (issue 20) with the trainer of commit $BEFORE and of this checkout,
# alternately, $ROUNDS rounds: the `tok_s` that `latent train`'s progress bar shows after the last step.
#   bash bench/cli_speed.sh            (BEFORE=4071738 ROUNDS=2 STEPS_SMOL=10 STEPS_TINY=40 COMMANDS="smollm2 tiny-5m")
# AFTER_KEYS (e.g. "compile=true") adds a third trainer each round: this checkout with those keys. BEFORE_KEYS: keys
# for the trainer of $BEFORE.
set -euo pipefail
BEFORE=${BEFORE:-4071738}; ROUNDS=${ROUNDS:-2}; STEPS_SMOL=${STEPS_SMOL:-10}; STEPS_TINY=${STEPS_TINY:-40}
COMMANDS=${COMMANDS:-smollm2 tiny-5m}; AFTER_KEYS=${AFTER_KEYS:-}; BEFORE_KEYS=${BEFORE_KEYS:-}
GSM8K=${GSM8K:-$(dirname "$0")/../../shared/data/gsm8k/train.jsonl}
work=$(mktemp -d); trap 'rm -rf "$work"' EXIT
git archive "$BEFORE" src | tar -x -C "$work"
speed() {  # speed <command label> <trainer label> <src> <args...>: run latent train, print the final tok_s
    local label=$1 name=$2 src=$3; shift 3
    local out; out=$(PYTHONPATH=$src latent train --out "$work/run" "$@" save_every=0 eval_size=0 log_with=none 2>&1 | tr '\r' '\n')
    rm -rf "$work/run"
    echo "{\"round\": $round, \"command\": \"$label\", \"trainer\": \"$name\", \"tok_s\": $(grep -o 'tok_s=[0-9]*' <<<"$out" | tail -1 | cut -d= -f2)}"
}
here=$(git rev-parse --short HEAD)+
trainers=("$work/src|$BEFORE${BEFORE_KEYS:+ $BEFORE_KEYS}|$BEFORE_KEYS" "$(pwd)/src|$here|")
[ -n "$AFTER_KEYS" ] && trainers+=("$(pwd)/src|$here $AFTER_KEYS|$AFTER_KEYS")
for round in $(seq "$ROUNDS"); do
    for trainer in "${trainers[@]}"; do
        IFS='|' read -r src name keys <<<"$trainer"
        PYTHONPATH=$src python -c "import latent_reasoning, sys; assert latent_reasoning.__file__.startswith('$src'), latent_reasoning.__file__"
        for command in $COMMANDS; do
            case $command in
            smollm2) speed smollm2 "$name" "$src" --method cot --task gsm8k --model smollm2-135m-instruct train_data="$GSM8K" batch_size=8 max_length=256 steps="$STEPS_SMOL" $keys ;;
            tiny-5m) speed tiny-5m "$name" "$src" --method cot --task multiplication --model tiny-5m task.digits=2 train_size=6000 batch_size=64 steps="$STEPS_TINY" $keys ;;
            esac
        done
    done
done

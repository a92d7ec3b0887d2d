#!/usr/bin/env bash
# One GPU session of training (issue 12's plan): every run in the background with its own
# stop time, all sharing one GPU. The variable-rate leech and scalar models are the product;
# the short fixed-rate runs measure what variable rate costs and the mean-shift A/B.
# Usage: models/train_session.sh SHARD_DIR RUNS_DIR MINUTES LR_DROP_MINUTES
# Each run resumes from RUNS_DIR/<name> if a checkpoint is there.
set -euo pipefail
data=$1 runs=$2 minutes=$3 drop=$4
mkdir -p "$runs"
common=(--data "$data" --batch 16 --crop 256 --lr 2e-4 --seed 0 --ckpt-minutes 2
        --log-every 200 --max-minutes "$minutes")
launch() {  # name, then train arguments
  local name=$1
  shift
  OMP_NUM_THREADS=2 setsid nohup python3 -m lsq.models.train --out "$runs/$name" --name "$name" \
    "${common[@]}" "$@" >"$runs/$name.log" 2>&1 < /dev/null &
}
launch leech --quantizer leech --steps 150000 --val-every 1000 --lr-drop-minutes "$drop" \
  --default-quality 4
launch scalar --quantizer scalar --steps 150000 --val-every 1000 --lr-drop-minutes "$drop" \
  --default-quality 4
for q in 3 6; do
  launch "leech-fixed-q$q" --quantizer leech --quality-min $q --quality-max $q --steps 4000 \
    --val-every 1000
  launch "scalar-fixed-q$q" --quantizer scalar --quality-min $q --quality-max $q --steps 4000 \
    --val-every 1000
done
launch leech-origin-fixed-q3 --quantizer leech --origin --quality-min 3 --quality-max 3 \
  --steps 4000 --val-every 1000

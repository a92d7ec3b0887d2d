#!/usr/bin/env bash
# Train every shipped model at once on one GPU (the run recorded in models/weights/README.md).
# Usage: models/train_all.sh SHARD_DIR RUNS_DIR MINUTES
# 22 processes share the GPU: leech and scalar and bsq at six lambdas, spherical-leech at four.
set -euo pipefail
data=$1 runs=$2 minutes=$3
mkdir -p "$runs"
lambdas=(0.0018 0.0035 0.0067 0.0130 0.0250 0.0483)
launch() {  # quantizer quality
  local q=$1 i=$2 name="$1-q$2"
  OMP_NUM_THREADS=1 setsid nohup python3 -m lsq.models.train --quantizer "$q" \
    --lmbda "${lambdas[$((i - 1))]}" --steps 100000 --out "$runs/$name" --data "$data" \
    --batch 16 --crop 128 --lr 2e-4 --seed 0 --max-minutes "$minutes" --ckpt-minutes 5 \
    --log-every 200 --val-every 2000 --name "$name" --quality "$i" >"$runs/$name.log" 2>&1 &
}
for i in 1 2 3 4 5 6; do
  for q in leech scalar bsq; do launch "$q" "$i"; done
done
for i in 2 3 4 5; do launch spherical-leech "$i"; done

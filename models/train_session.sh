#!/usr/bin/env bash
# One GPU session of training: models trained in the background, sharing
# the machine's GPUs, each with its own stop time.
#
# NAME is a preset of lsq.models.spec (python -m lsq.training --preset NAME: leech, scalar,
# scalar-cgf, ...); an unknown name stops that run at once with a one-line error in its log.
# A run resumes from RUNS_DIR/<name> if a checkpoint is there (put a collected checkpoint
# folder back there to resume it exactly), else starts (--init auto: fresh optimizer, 500
# warm-up steps) from the shipped models/weights/NAME.safetensors, or from the shipped model
# closest to it without LRP or without the context model (their new parts start at zero),
# keeping its default quality (calibrated to about 0.5 bpp on Kodak after each evaluation).
# NAME@FROM starts instead from the shipped model FROM's transforms, whatever NAME's own
# weights (--init-transforms: any quantizer; what differs in shape starts fresh), e.g.
# spherical-leech@leech. NAME:STEPS caps a run at STEPS steps of this session (lr drop at
# 90 % of them), to even out two models' totals. COMPILE=inductor in the environment
# compiles every run's training rate (--compile; time it first with bench_train --ratio);
# LR=1e-4 lowers every run's learning rate (default 2e-4 at batch 16; other batches scale it,
# --lr-scaling); TRAIN_ARGS adds lsq.training flags to every run (e.g. TRAIN_ARGS="--batch
# 128 --bf16 --channels-last --warmup-steps 1000").
# On a machine of several GPUs the runs go round-robin over them (GPUS=N in the environment
# overrides the count nvidia-smi gives; FIRST_GPU=K starts at GPU K, to restart a run beside
# the others), one process per run, no DDP between them.
# Collect with models/collect_session.sh after at most 9.5 minutes, every call.
#
# Usage: models/train_session.sh SHARD_DIR RUNS_DIR MINUTES LR_DROP_MINUTES \
#          [NAME[:STEPS][@FROM]...]
set -euo pipefail
data=$1 runs=$2 minutes=$3 drop=$4
shift 4
(($#)) || set -- leech scalar
mkdir -p "$runs"
gpus=${GPUS:-$(nvidia-smi -L 2>/dev/null | grep -c ^GPU || true)}
((gpus > 0)) || gpus=1
run=${FIRST_GPU:-0}
for spec in "$@"; do
  from=""
  [[ $spec == *@* ]] && from=${spec#*@} spec=${spec%%@*}
  name=${spec%%:*} steps=150000
  [[ $spec == *:* ]] && steps=${spec#*:}
  init=(--init auto --warmup-steps 500)
  [[ -n $from ]] && init=(--init-transforms "models/weights/$from.safetensors" --warmup-steps 500)
  gpu=$((run++ % gpus))
  CUDA_VISIBLE_DEVICES=$gpu OMP_NUM_THREADS=2 setsid nohup python3 -m lsq.training \
    --preset "$name" --out "$runs/$name" --name "$name" \
    --data "$data" --batch 16 --crop 256 --lr "${LR:-2e-4}" --seed 0 --ckpt-minutes 2 --log-every 200 \
    --val-every 1000 --steps "$steps" --max-minutes "$minutes" \
    --lr-drop-minutes "$drop" --compile "${COMPILE:-}" "${init[@]}" ${TRAIN_ARGS:-} \
    >"$runs/$name.log" 2>&1 < /dev/null &
done

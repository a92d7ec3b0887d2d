#!/usr/bin/env bash
# One GPU session of training (issue 12's plan): models trained in the background, sharing
# the machine's GPUs, each with its own stop time.
#
# NAME is a quantizer (leech, scalar, spherical-leech, bsq, leech-hybrid), then optionally -cg
# for its channel-groups context model (-cgf: with full 3x3 group transforms; -cg-lrp, -cgf-lrp
# with latent residual prediction), -mM for M latent
# channels (default 192) and -qN for a fixed-rate model at integer quality N; without -qN a
# model covers qualities 1..8. bsq is fixed-rate and codes at most M/256 bpp, so a bsq curve
# takes models of several M: bsq-m96-q1 bsq-q2 bsq-m384-q6 (the shipped curve).
#
# A run resumes from RUNS_DIR/<name> if a checkpoint is there, else starts (--init: fresh
# optimizer, 500 warm-up steps) from the shipped models/weights/NAME.safetensors, or from the
# shipped version without LRP or without the context model (their new parts start at zero),
# keeping its default quality (calibrated to about 0.5 bpp on Kodak after each evaluation).
# NAME@FROM starts instead from the shipped model FROM's transforms, whatever NAME's own
# weights (--init-transforms: any quantizer; what differs in shape starts fresh), e.g.
# spherical-leech@leech. NAME:STEPS caps a run at STEPS steps of this session (lr drop at
# 90 % of them), to even out two models' totals. COMPILE=inductor in the environment
# compiles every run's training rate (--compile; time it first with bench_train --ratio);
# LR=1e-4 lowers every run's learning rate (default 2e-4; bsq ran clean at 1e-4);
# TRAIN_ARGS adds lsq.models.train flags to every run (e.g. TRAIN_ARGS=--channels-last).
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
  name=${spec%%:*} steps=150000 fixed="" qualities=() context=()
  [[ $spec == *:* ]] && steps=${spec#*:}
  if [[ $name =~ -q([1-8])$ ]]; then
    fixed=${BASH_REMATCH[1]}
    qualities=(--quality-min "$fixed" --quality-max "$fixed")
  fi
  base=${name%-q[1-8]} channels=()
  if [[ $base =~ ^(.+)-m([0-9]+)$ ]]; then
    base=${BASH_REMATCH[1]} channels=(--M "${BASH_REMATCH[2]}")
  fi
  [[ $base == *-cg-lrp || $base == *-cgf-lrp ]] && base=${base%-lrp} context=(--lrp)
  [[ $base == *-cgf ]] && base=${base%f} context+=(--group-transform full)
  quantizer=${base%-cg}
  [[ $base == *-cg ]] && context+=(--context channel-groups)
  init=() default=${fixed:-2.75}
  if [[ -n $from ]]; then
    init=(--init-transforms "models/weights/$from.safetensors" --warmup-steps 500)
  else
    for stem in "$name" "${name/-lrp/}" "${name/-cg*-lrp/}" "${name/-cgf/}" "${name/-cg/}"; do
      weights=models/weights/$stem.safetensors
      if [[ -f $weights ]]; then
        init=(--init "$weights" --warmup-steps 500)
        default=$(python3 -c "import sys; from lsq.models.weights_file import read_config; \
print(read_config(sys.argv[1])['default_quality'])" "$weights")
        break
      fi
    done
  fi
  gpu=$((run++ % gpus))
  CUDA_VISIBLE_DEVICES=$gpu OMP_NUM_THREADS=2 setsid nohup python3 -m lsq.models.train \
    --out "$runs/$name" --name "$name" \
    --quantizer "$quantizer" "${context[@]}" "${channels[@]}" "${qualities[@]}" \
    --data "$data" --batch 16 --crop 256 --lr "${LR:-2e-4}" --seed 0 --ckpt-minutes 2 --log-every 200 \
    --val-every 1000 --steps "$steps" --default-quality "$default" --max-minutes "$minutes" \
    --lr-drop-minutes "$drop" --compile "${COMPILE:-}" "${init[@]}" ${TRAIN_ARGS:-} \
    >"$runs/$name.log" 2>&1 < /dev/null &
done

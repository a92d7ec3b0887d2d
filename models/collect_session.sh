#!/usr/bin/env bash
# Wait up to SECONDS (or until no training runs), print each run's last log lines, then export
# the latest checkpoint of the named runs (default: all) as fp16 safetensors into OUT_DIR with
# the logs in one tarball. A call returns at most 8 files of 16 MiB, 64 MiB in all: a larger
# file is split into NAME.safetensors.part-aa, -ab, ... (join them with cat); a context model
# comes in two parts, so name at most four hyperprior runs or two context models per call.
# With CHECKPOINTS=1 the named runs' full checkpoints (manifest and parts of at most 16 MB,
# lsq.training.checkpoint) come back too, in OUT_DIR/NAME/: copied into RUNS_DIR/NAME of
# the next session, the run resumes exactly; count their parts against the call's 8 files
# (a checkpoint is several times its fp16 weights: once the run has stopped, take a large
# one in two calls, `python3 -m lsq.training.checkpoint RUNS_DIR/NAME
# OUT_DIR/NAME 0 3`, then `... 3 3`, and merge the two folders).
# Whatever happens to the GPU machine next, at most one call's training is lost.
# Usage: models/collect_session.sh RUNS_DIR OUT_DIR SECONDS [NAME...]
set -uo pipefail
runs=$1 out=$2 wait_s=$3
shift 3
# fail before waiting, not after: a collect without PYTHONPATH would return nothing
python3 -c "import lsq.training.export" || { echo "collect_session: lsq is not importable" \
  "(export PYTHONPATH as train_session.sh's caller did)" >&2; exit 1; }
end=$((SECONDS + wait_s))
while ((SECONDS < end)) && pgrep -f "lsq[.]training --preset" >/dev/null; do sleep 10; done
for log in "$runs"/*.log; do echo "== $log"; grep -v "val_" "$log" | tail -n 2; \
  grep "val_" "$log" | tail -n 1 | cut -c1-400; done
nvidia-smi --query-gpu=utilization.gpu,memory.used --format=csv,noheader
tmp=$(mktemp -d)
python3 -m lsq.training.export "$runs" "$tmp"
mkdir -p "$out"
if (($#)); then for name in "$@"; do cp "$tmp/$name.safetensors" "$out/"; done
else cp "$tmp"/*.safetensors "$out/"; fi
for file in "$out"/*.safetensors; do
  if (($(stat -c %s "$file") > 16500000)); then split -b 15000000 "$file" "$file.part-" && rm "$file"; fi
done
if [[ ${CHECKPOINTS:-} == 1 ]]; then
  names=("$@")
  ((${#names[@]})) || names=($(cd "$runs" && for d in */; do [[ -f $d/checkpoint.json ]] && echo "${d%/}"; done))
  for name in "${names[@]}"; do python3 -m lsq.training.checkpoint "$runs/$name" "$out/$name"; done
fi
tar -czf "$out/logs.tgz" -C "$runs" --exclude='ckpt-*' --exclude='checkpoint.json' \
  --exclude='*.safetensors' .
ls -la "$out"

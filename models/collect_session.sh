#!/usr/bin/env bash
# Wait up to SECONDS (or until no training runs), print each run's last log lines, then export
# every run's latest checkpoint as fp16 safetensors into OUT_DIR with the logs in one tarball:
# whatever happens to the GPU machine next, at most one call's training is lost.
# Usage: models/collect_session.sh RUNS_DIR OUT_DIR SECONDS
set -uo pipefail
runs=$1 out=$2 wait_s=$3
end=$((SECONDS + wait_s))
while ((SECONDS < end)) && pgrep -f "lsq.models.train" >/dev/null; do sleep 10; done
for log in "$runs"/*.log; do echo "== $log"; grep -v "^step=.*val_" "$log" | tail -n 2; \
  grep "val_" "$log" | tail -n 1 | cut -c1-400; done
nvidia-smi --query-gpu=utilization.gpu,memory.used --format=csv,noheader
mkdir -p "$out"
python3 -m lsq.models.export_runs "$runs" "$out"
tar -czf "$out/logs.tgz" -C "$runs" --exclude='ckpt-*' --exclude='*.safetensors' .
ls -la "$out"

#!/usr/bin/env bash
# The one prepared command for a lent GPU machine (device tool: run with carry [".gpu"] and a
# timeout of about 10 minutes; make the wheels first with scripts/gpu_wheels.sh):
#   bash scripts/gpu_check.sh
# Installs the carried wheels into the image's Python, prints the GPU and the versions, then runs
# bench/gpu_bench.py within GPU_MINUTES (default 7.5; the parts that no longer fit are skipped, and
# its JSON is rewritten after every part) and leaves gpu.json in $OUT (default .gpu/out).
# Afterwards, here: copy gpu.json to bench/results/ and `python bench/gpu_table.py` prints the
# README's table. GPU_SMOKE=1 runs the benchmark's --smoke instead (a dry run on any machine,
# e.g. PYTHON=.venv/bin/python GPU_SMOKE=1 bash scripts/gpu_check.sh here).
set -uo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
OUT=${OUT:-$ROOT/.gpu/out}
PY=${PYTHON:-python3}
MINUTES=${GPU_MINUTES:-7.5}  # with install and start-up, under the device tool's 10 minutes a command
mkdir -p "$OUT"
if [[ ! -d .gpu/wheels ]]; then
  echo "error: .gpu/wheels is missing: run scripts/gpu_wheels.sh here first and carry .gpu" >&2
  exit 2
fi
"$PY" -m pip install --quiet --no-index --find-links .gpu/wheels omegaconf webdataset deepspeed \
  2>&1 | tail -5
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
"$PY" - <<'PYEOF' || { echo "error: the packages above did not import" >&2; exit 2; }
import deepspeed, omegaconf, torch, webdataset
print(f"python torch {torch.__version__} (CUDA {torch.version.cuda}), "
      f"{torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'no GPU'}; "
      f"deepspeed {deepspeed.__version__}, omegaconf {omegaconf.__version__}")
PYEOF
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-8}
SMOKE=(); [[ ${GPU_SMOKE:-0} == 1 ]] && SMOKE=(--smoke)
timeout $(( ${MINUTES%.*} * 60 + 60 )) "$PY" bench/gpu_bench.py --minutes "$MINUTES" "${SMOKE[@]}" \
  --output "$OUT/gpu.json" --run-dir "$OUT/train" > "$OUT/gpu_bench.stdout" 2> "$OUT/gpu_bench.log"
rc=$?
tail -c 6000 "$OUT/gpu_bench.log"
rm -rf "$OUT/train"  # checkpoints: not worth bringing back
echo "gpu_bench exit $rc; results in $OUT/gpu.json"
exit $rc

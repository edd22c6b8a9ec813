#!/usr/bin/env bash
# Set up .venv (first run only), lint, then run the whole test suite.
# Extra arguments go to pytest (e.g. -k cache, -x). Two pytest-xdist workers: most tests wait on
# subprocesses (torchrun, Slurm jobs), so two share the 2-core CI machine well.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
source scripts/setup_env.sh
echo "[test] ruff check" >&2
python -m ruff check pretrain launch data_prep tests bench
echo "[test] pytest" >&2
python -m pytest -n 2 "$@"

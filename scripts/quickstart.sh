#!/usr/bin/env bash
# Quick start: set up .venv (first run only), then train a tiny MEGABYTE on the CPU for a few
# minutes on Python's standard library source and print validation bits per byte.
# Extra arguments are passed to the trainer as key=value overrides.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
source scripts/setup_env.sh
exec python -m pretrain.train --config configs/quickstart.yaml "$@"

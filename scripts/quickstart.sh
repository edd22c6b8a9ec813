#!/usr/bin/env bash
# The main job on the embedded default: set up .venv (first run only), prepare Python's standard
# library source with data_prep, train a tiny MEGABYTE, a byte Transformer and a subword
# Transformer at matched compute on the CPU (about 8.5 minutes on 2 cores), evaluate all three on the
# same held-out bytes and print the comparison table and the paths of the plots.
# Interrupt it and run it again: it continues where it stopped.
# Extra arguments go to python -m pretrain.compare (see --help).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
source scripts/setup_env.sh
exec python -m pretrain.compare --stdlib --out runs/quickstart "$@"

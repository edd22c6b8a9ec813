#!/usr/bin/env bash
# Create (or reuse) .venv with the pinned requirements. Sourced by quickstart.sh and test.sh.
# A second run is a no-op unless requirements.txt changed (tracked by a hash stamp).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="$ROOT/.venv"
PY="${PYTHON:-python3.11}"
command -v "$PY" >/dev/null 2>&1 || PY=python3
STAMP="$VENV/.requirements.sha256"
WANT="$(sha256sum "$ROOT/requirements.txt" | cut -d' ' -f1)"
if [[ ! -x "$VENV/bin/python" ]]; then
  echo "[setup] creating $VENV with $($PY --version)" >&2
  "$PY" -m venv "$VENV"
fi
# pip prints a warning per package for this machine's extra local indexes; hide only those.
quiet() { "$@" 2> >(grep -v "is ignored: it is neither a file nor a directory" >&2); }
if [[ "$(cat "$STAMP" 2>/dev/null || true)" != "$WANT" ]]; then
  echo "[setup] installing requirements into $VENV (first run takes a few minutes)" >&2
  quiet "$VENV/bin/python" -m pip install --quiet --upgrade pip setuptools wheel >&2
  # torch first so nothing else can pull a different (CUDA, multi-GB) build.
  quiet "$VENV/bin/python" -m pip install --quiet "$(grep -E '^torch==' "$ROOT/requirements.txt")" >&2
  grep -vE '^(torch|deepspeed)==' "$ROOT/requirements.txt" > "$VENV/.req-rest.txt"
  quiet "$VENV/bin/python" -m pip install --quiet -r "$VENV/.req-rest.txt" >&2
  quiet env DS_BUILD_OPS=0 "$VENV/bin/python" -m pip install --quiet --no-build-isolation \
    "$(grep -E '^deepspeed==' "$ROOT/requirements.txt")" >&2
  echo "$WANT" > "$STAMP"
  echo "[setup] done" >&2
fi
export PATH="$VENV/bin:$PATH"
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
# DeepSpeed compiles a communication op on first use; keep it in a reusable place.
export TORCH_EXTENSIONS_DIR="${TORCH_EXTENSIONS_DIR:-$ROOT/.cache/torch_extensions}"

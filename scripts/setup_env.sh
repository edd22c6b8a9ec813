#!/usr/bin/env bash
# Create (or reuse) .venv with the pinned requirements and put it first on PATH, this repository
# on PYTHONPATH. Sourced by quickstart.sh and test.sh, and by hand (`source scripts/setup_env.sh`):
# it changes nothing else in the calling shell. The install runs in a subshell under
# `set -euo pipefail`, so an interactive shell keeps its own options (a later failing command does
# not close it), and a failed install returns 1 with the message above it.
# A second run is a no-op unless requirements.txt changed (tracked by a hash stamp).
_setup_env_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# Not `if ! ( ... )`: bash ignores `set -e` inside a subshell whose status a condition tests.
(
  set -euo pipefail
  ROOT=$_setup_env_root
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
)
_setup_env_rc=$?  # a caller under `set -e` (quickstart.sh, test.sh) has already stopped here
if (( _setup_env_rc )); then
  echo "[setup] failed: $_setup_env_root/.venv is not ready (see the messages above)" >&2
  unset _setup_env_root _setup_env_rc
  return 1 2>/dev/null || exit 1
fi
export PATH="$_setup_env_root/.venv/bin:$PATH"
export PYTHONPATH="$_setup_env_root${PYTHONPATH:+:$PYTHONPATH}"
# DeepSpeed compiles a communication op on first use; keep it in a reusable place.
export TORCH_EXTENSIONS_DIR="${TORCH_EXTENSIONS_DIR:-$_setup_env_root/.cache/torch_extensions}"
unset _setup_env_root _setup_env_rc

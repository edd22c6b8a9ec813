#!/usr/bin/env bash
# Wheels of the Python packages a lent GPU machine lacks, made here once, where the package
# registry can be reached: the device image (Python 3.12, CUDA PyTorch, numpy, PyYAML,
# sentencepiece, tensorboard, einops, msgpack, ninja, psutil, py-cpuinfo, tqdm, ...) cannot fetch
# anything, and this project also needs omegaconf, webdataset and deepspeed. They go to
# .gpu/wheels (git-ignored, about 5 MB), which the device run carries; scripts/gpu_check.sh
# installs them there.
#   bash scripts/gpu_wheels.sh
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
source scripts/setup_env.sh >/dev/null  # this project's pip, and the torch deepspeed builds against
WHEELS="$ROOT/.gpu/wheels"
mkdir -p "$WHEELS"
pin() { grep -E "^$1==" requirements.txt; }
# Pure-Python wheels and pydantic-core's manylinux one for CPython 3.12; --no-deps: the image has
# the rest of their dependencies (numpy, PyYAML, and deepspeed's einops, msgpack, ninja, psutil).
pip download --quiet --no-deps --only-binary=:all: --dest "$WHEELS" \
  --python-version 3.12 --implementation cp --platform manylinux2014_x86_64 \
  --platform manylinux_2_17_x86_64 --platform manylinux_2_28_x86_64 \
  "$(pin omegaconf)" "$(pin webdataset)" braceexpand==0.1.7 hjson==3.1.0 pydantic==2.14.4 \
  pydantic-core==2.50.5 annotated-types==0.8.0 typing-inspection==0.4.5 typing-extensions==4.16.0
# deepspeed has no wheel on the index: build one without its C++/CUDA ops (they compile just in
# time where needed; the engine here uses torch's AdamW, so none are).
DS_BUILD_OPS=0 pip wheel --quiet --no-deps --no-build-isolation --wheel-dir "$WHEELS" "$(pin deepspeed)"
ls -1 "$WHEELS"
du -sh "$WHEELS"

#!/usr/bin/env bash
# Every method on the embedded model in bf16, batch 32, on the GPU: tokens/s and peak GPU memory per method.
# Needs a CUDA machine with the project set up (make setup, or pip install -e . with a CUDA torch).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
exec "$PY" benchmarks/gpu_smoke.py --device "${DEVICE:-cuda}" --dtype bfloat16 --batch "${BATCH:-32}" \
  --max-new-tokens "${MAX_NEW_TOKENS:-32}" "$@"

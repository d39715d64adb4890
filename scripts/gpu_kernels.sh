#!/usr/bin/env bash
# Kernels on the GPU machine in one call: GPU tests, then benchmarks (table printed last).
# Usage (device): bash scripts/gpu_kernels.sh [--sweep] [--split] [--scan-only] [--quick]
#   results under $OUT (or ./gpu_out); env PYTEST_K, TEST_TIMEOUT, BENCH_TIMEOUT
set -uo pipefail
OUT=${OUT:-gpu_out}; mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
python3 -c 'import mamba_export.kernels' 2>/dev/null || \
  python3 -m pip install -q --no-deps --no-build-isolation -e . >"$OUT/pip.log" 2>&1 || \
  { echo "pip install failed"; tail -5 "$OUT/pip.log"; }
nvidia-smi --query-gpu=name,clocks.sm,clocks.max.sm,temperature.gpu --format=csv,noheader
python3 -c 'import torch, triton; print("torch", torch.__version__, "triton", triton.__version__)'
timeout ${TEST_TIMEOUT:-300} python3 -m pytest tests/test_kernels.py -m gpu -k "${PYTEST_K:-}" -q -p no:cacheprovider 2>&1 \
  | tee "$OUT/gpu_tests.log" | tail -25
timeout ${BENCH_TIMEOUT:-400} python3 scripts/bench_kernels.py --out "$OUT/bench_kernels.json" "$@" 2>&1 \
  | tee "$OUT/bench.log" | grep -v '^{'

#!/usr/bin/env bash
# Everything the GPU machine checks: install, GPU tests, kernel and end-to-end benchmarks, the
# transformers switch and ONNX Runtime's CUDA provider; a short table last. Logs and JSON under
# $OUT (or ./gpu_out). All stages together take longer than one 10-minute device command, so
# split them over calls: `--skip-kernels --skip-e2e --tests-part=1`, `... --tests-part=2`,
# `... --tests-part=3` and `... --tests-part=4` (the GPU tests: all of them overran one call on
# the H100 on 2026-11-23; part 1 is the model and compile tests, part 4 the Mamba-1 kernel tests
# (tests/test_kernels.py; with part 1 it overran its 560 s on a fresh H100 on 2026-11-24), part 3
# the decode kernels: the projections with their folds and the state updates
# (tests/test_kernels_decode_linear.py and test_kernels_decode.py), part 2 the rest),
# `--skip-tests --skip-e2e` (kernel
# benchmarks), `--skip-tests --skip-kernels` (end to end; extra args go to bench_e2e.py).
# The ONNX Runtime stage runs when onnxruntime-gpu is importable (ORT_GPU_WHEEL, see below).
# Usage (on the GPU machine): bash scripts/gpu_check.sh [--skip-tests] [--tests-part=1|2|3|4] [--skip-kernels] [--skip-e2e] [bench_e2e.py args]
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-gpu_out}; mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
e2e_args=(); tests=1; kernels=1; e2e=1; part=all
for a in "$@"; do
  case "$a" in
    --skip-tests) tests=0 ;;
    --skip-kernels) kernels=0 ;;
    --skip-e2e) e2e=0 ;;
    --tests-part=*) part=${a#--tests-part=} ;;
    *) e2e_args+=("$a") ;;  # e.g. --quick, --presets mamba-130m, --profile, --skip-long
  esac
done
# Carried wheels (.whl/, see docs/BENCHMARKS.md) go to /tmp/site, an onnxruntime-gpu wheel
# assembled in /tmp (ORT_GPU_WHEEL) to /tmp/ortgpu; the package installs editable.
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --upgrade --target /tmp/site .whl/*.whl \
    && export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
if [ -n "${ORT_GPU_WHEEL:-}" ] && [ -f "$ORT_GPU_WHEEL" ]; then
  python3 -m pip install -q --no-deps --no-index --target /tmp/ortgpu "$ORT_GPU_WHEEL" \
    && export PYTHONPATH=/tmp/ortgpu${PYTHONPATH:+:$PYTHONPATH}
fi
python3 -c 'import mamba_export.kernels' 2>/dev/null || \
  python3 -m pip install -q --no-deps --no-build-isolation -e . >"$OUT/pip.log" 2>&1 || \
  { echo "pip install -e . failed"; tail -5 "$OUT/pip.log"; exit 1; }
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.max.sm,temperature.gpu --format=csv,noheader
python3 -c 'import torch, triton; print("torch", torch.__version__, "cuda", torch.version.cuda, "triton", triton.__version__)'
if [ "$tests" = 1 ]; then
  # gpu-marked tests, and every kernel test file (test_kernels*.py, marked "interpret"), which
  # runs natively on CUDA
  part1=(tests/test_gpu_compile.py tests/test_gpu_model.py)
  part3=(tests/test_kernels_decode.py tests/test_kernels_decode_linear.py)
  part4=(tests/test_kernels.py)
  case "$part" in
    1) sel=("${part1[@]}") ;;
    3) sel=("${part3[@]}") ;;
    4) sel=("${part4[@]}") ;;
    2) sel=(tests); for f in "${part1[@]}" "${part3[@]}" "${part4[@]}"; do sel+=(--ignore="$f"); done ;;
    *) sel=(tests) ;;
  esac
  timeout 560 python3 -m pytest "${sel[@]}" -m "gpu or interpret" -q -p no:cacheprovider -rfs \
    --tb=short --durations=10 2>&1 | tee "$OUT/gpu_tests.log" | grep -v DEBUG | tail -25
fi
if [ "$kernels" = 1 ]; then
  # the HBM read ceilings the weight-streaming projections are measured against (~20 s)
  timeout 120 python3 scripts/bench_read_bw.py --out "$OUT/read_bw.json" 2>&1 | tee "$OUT/read_bw.log" | tail -14
  timeout 300 python3 scripts/bench_kernels.py --out "$OUT/bench_kernels.json" 2>&1 \
    | tee "$OUT/bench_kernels.log" | grep -v '^{' | tail -25
  timeout 200 python3 scripts/bench_ssd.py --out "$OUT/bench_ssd.json" 2>&1 \
    | tee "$OUT/bench_ssd.log" | grep -v '^{' | tail -16
  # decode projections: cuBLAS vs the GEMV, every config incl. split K (~2 min)
  timeout 240 python3 scripts/bench_decode_linear.py --sweep --out "$OUT/bench_decode_linear.json" 2>&1 \
    | tee "$OUT/bench_decode_linear.log" | grep -v rejected | tail -22
  # Mamba-2 decode kernel (conv + SSD state update): block_p x warps per layer shape (~1 min)
  timeout 150 python3 scripts/bench_ssd_update.py --out "$OUT/bench_ssd_update.json" 2>&1 \
    | tee "$OUT/bench_ssd_update.log" | grep -v rejected | tail -6
  # Mamba-1 decode state update (dt_proj fused): channels x warps x rows per layer shape (~1 min)
  timeout 150 python3 scripts/bench_state_update.py --out "$OUT/bench_state_update.json" 2>&1 \
    | tee "$OUT/bench_state_update.log" | grep -v rejected | tail -6
fi
if [ "$e2e" = 1 ]; then
  timeout 540 python3 scripts/bench_e2e.py "${e2e_args[@]}" --out "$OUT/bench_e2e.json" 2>&1 | tee "$OUT/bench_e2e.log" | tail -20
  timeout 150 python3 scripts/bench_hf_switch.py 2>&1 | tee "$OUT/bench_hf_switch.log" | tail -1
fi
if python3 -c 'import onnxruntime as o, sys; sys.exit("CUDAExecutionProvider" not in o.get_available_providers())' 2>/dev/null; then
  timeout 300 python3 scripts/bench_ort_gpu.py --out "$OUT/ort_gpu.json" 2>&1 | grep -v '^\[' | tail -14
else
  echo "onnxruntime-gpu not importable: ONNX Runtime CUDA provider skipped (carry the wheel, see docs/BENCHMARKS.md)"
fi

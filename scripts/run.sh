#!/usr/bin/env bash
# The main job: build a model (a small random preset unless --model is given), generate, and
# print parity against the reference and timings. Arguments go to `mamba-export run`.
source "$(dirname "$0")/_env.sh"
cd "$ROOT"
exec "$PY" -m mamba_export.cli run "$@"

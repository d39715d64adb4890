#!/usr/bin/env bash
# Run the test suite (CPU by default; GPU-marked tests run when CUDA is present).
# Extra arguments go to pytest, e.g. scripts/test.sh tests/test_ops.py -k scan
source "$(dirname "$0")/_env.sh"
cd "$ROOT"
exec "$PY" -m pytest -q "$@"

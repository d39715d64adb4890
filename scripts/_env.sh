# Sourced by scripts/*.sh: create or reuse ./.venv with the package and its test/runtime extras.
# torch is pinned to 2.13.0 (a CPU build) only where no torch is installed yet.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${MAMBA_EXPORT_VENV:-$ROOT/.venv}"
if [ ! -x "$VENV/bin/python" ]; then
  echo "[setup] creating $VENV" >&2
  python3 -m venv "$VENV"
fi
PY="$VENV/bin/python"
stamp="$VENV/.mamba_export_installed"
want="$(cat "$ROOT/pyproject.toml" | sha256sum | cut -c1-16)"
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  echo "[setup] installing dependencies into $VENV (first run takes a few minutes)" >&2
  "$PY" -m pip install -q --upgrade pip >&2
  if ! "$PY" -c "import torch" 2>/dev/null; then
    "$PY" -m pip install -q "torch==2.13.0" >&2
  fi
  "$PY" -m pip install -q -e "$ROOT[test,triton,onnx,bench]" >&2
  echo "$want" > "$stamp"
fi
export PYTHONUNBUFFERED=1

"""GPU checks of the TensorRT scan plugins in one call (on the GPU machine).

Runs the ``gpu`` tests of tests/test_tensorrt.py (Mamba-1 SelectiveScan) and
tests/test_tensorrt_ssd.py (Mamba-2 SSDScan): each plugin's AOT PTX, loaded and launched
through the CUDA driver exactly as TensorRT launches an AOT plugin, against the float64
reference (fp32/bf16/fp16, odd shapes, both tactics); and, where ``tensorrt`` is importable,
engines built from tiny models' ONNX graphs against the eager models. The log goes to
``$OUT/gpu_trt.log`` (or ./gpu_out).

Usage: python3 scripts/gpu_trt_ptx.py [extra pytest args]
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path


def main() -> int:
    out = Path(os.environ.get("OUT", "gpu_out"))
    out.mkdir(parents=True, exist_ok=True)
    root = Path(__file__).resolve().parent.parent
    files = [str(root / "tests" / f) for f in ("test_tensorrt.py", "test_tensorrt_ssd.py")]
    cmd = [sys.executable, "-m", "pytest", *files, "-m", "gpu", "-q", "-s", "-p", "no:cacheprovider",
           *sys.argv[1:]]
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    env.pop("TRITON_INTERPRET", None)
    proc = subprocess.run(cmd, cwd=root, env=env, capture_output=True, text=True)
    log = proc.stdout + proc.stderr
    (out / "gpu_trt.log").write_text(log)
    print("\n".join(line for line in log.splitlines() if "Warning" not in line)[-6000:])
    return proc.returncode


if __name__ == "__main__":
    sys.exit(main())

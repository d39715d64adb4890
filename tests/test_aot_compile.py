"""The Mamba-2, decode and selective-scan kernels compile for sm_90 with Triton's compiler, on CPU (see _aot_compile.py)."""

import os
import subprocess
import sys
from pathlib import Path

import pytest


def test_kernels_compile_for_sm90():
    pytest.importorskip("triton")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    script = Path(__file__).with_name("_aot_compile.py")
    res = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, env=env,
                         timeout=600)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-4000:]
    assert res.stdout.count(" ok, shared") == 25

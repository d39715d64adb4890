"""The Mamba-2, decode and selective-scan kernels compile for sm_90 with Triton's compiler, on CPU (see _aot_compile.py)."""

import pytest
from _util import run_compiler_script


def test_kernels_compile_for_sm90():
    pytest.importorskip("triton")
    assert run_compiler_script("_aot_compile.py").count(" ok, shared") == 60

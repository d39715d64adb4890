"""Helpers shared by the tests."""

import ctypes
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch


def rel_err(out: torch.Tensor, ref: torch.Tensor) -> float:
    """||out - ref|| / ||ref|| in float64; NaN anywhere gives inf (never passes a bound)."""
    out64, ref64 = out.detach().double(), ref.detach().double()
    if not torch.isfinite(out64).all():
        return float("inf")
    denom = ref64.norm().item()
    return (out64 - ref64).norm().item() / (denom if denom > 0 else 1.0)


def record_returns(monkeypatch, owner, name: str) -> list:
    """Wrap ``owner.name`` (for the test's duration) so that every call's return value is
    appended to the returned list; the calls themselves are unchanged."""
    returns, real = [], getattr(owner, name)
    monkeypatch.setattr(owner, name, lambda *a, **k: returns.append(real(*a, **k)) or returns[-1])
    return returns


def scan_inputs(batch, dim, length, dstate, groups=0, dtype=torch.float64, device="cpu",
                with_options=True, seed=None):
    """Fresh random inputs for the selective scan at mamba-like magnitudes.

    Returns a dict of the scan's keyword arguments (delta raw, with softplus and bias)."""
    g = torch.Generator().manual_seed(seed if seed is not None else torch.randint(0, 2**31, ()).item())
    r = lambda *s: torch.randn(*s, generator=g, dtype=torch.float64)
    bc_shape = (batch, groups, dstate, length) if groups else (batch, dstate, length)
    args = dict(
        u=r(batch, dim, length),
        delta=r(batch, dim, length) * 0.5 - 1.0,
        A=-torch.rand(dim, dstate, generator=g, dtype=torch.float64) * 2 - 0.1,
        B=r(*bc_shape),
        C=r(*bc_shape),
    )
    if with_options:
        args.update(D=r(dim), z=r(batch, dim, length), delta_bias=r(dim) * 0.1,
                    delta_softplus=True, initial_state=r(batch, dim, dstate))
    param_dtype = torch.float64 if dtype == torch.float64 else torch.float32
    activations = ("u", "delta", "B", "C", "z")
    return {k: v.to(device=device, dtype=dtype if k in activations else param_dtype)
            if isinstance(v, torch.Tensor) else v for k, v in args.items()}


#: dynamic shared memory a kernel may use without opting in (CUDA's portable per-block limit)
PORTABLE_SHARED_MEM = 48 * 1024


class DriverKernel:
    """Load PTX with the CUDA driver (cuModuleLoadData: the driver JIT-compiles it, as for a
    TensorRT AOT plugin) and launch it with explicit grid/block/shared memory; falls back to
    CuPy's RawModule when cuda-python is missing. A kernel needing more than 48 KiB of dynamic
    shared memory is opted in first (CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES), as
    Triton's own launcher does."""

    def __init__(self, ptx: str, name: str, tmp_path, shared_mem: int = 0):
        self.name = name
        try:
            from cuda.bindings import driver as cu
        except ImportError:
            cu = None
        self.cu = cu
        torch.cuda.init()
        torch.zeros(1, device="cuda")  # the primary context is current
        if cu is not None:
            err, self.module = cu.cuModuleLoadData(ptx.encode() + b"\0")
            assert err == cu.CUresult.CUDA_SUCCESS, f"cuModuleLoadData: {err}"
            err, self.fn = cu.cuModuleGetFunction(self.module, name.encode())
            assert err == cu.CUresult.CUDA_SUCCESS, f"cuModuleGetFunction: {err}"
            if shared_mem > PORTABLE_SHARED_MEM:
                attr = cu.CUfunction_attribute.CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES
                err, = cu.cuFuncSetAttribute(self.fn, attr, shared_mem)
                assert err == cu.CUresult.CUDA_SUCCESS, f"cuFuncSetAttribute({shared_mem} B): {err}"
        else:
            cp = pytest.importorskip("cupy")
            path = tmp_path / f"{name}.ptx"
            path.write_text(ptx)
            self.fn = cp.RawModule(path=str(path)).get_function(name)
            if shared_mem > PORTABLE_SHARED_MEM:
                self.fn.max_dynamic_shared_size_bytes = shared_mem

    def launch(self, grid, block, shared_mem, args):
        """args: ("ptr", int) / ("i32", int) in kernel order."""
        stream = torch.cuda.current_stream().cuda_stream
        if self.cu is not None:
            cu = self.cu
            values = tuple(v for _, v in args)
            types = tuple(ctypes.c_void_p if k == "ptr" else ctypes.c_int32 for k, _ in args)
            err, = cu.cuLaunchKernel(self.fn, *grid, *block, shared_mem, cu.CUstream(stream),
                                     (values, types), 0)
            assert err == cu.CUresult.CUDA_SUCCESS, f"cuLaunchKernel: {err}"
        else:
            import cupy as cp
            import numpy as np

            vals = tuple(np.uint64(v) if k == "ptr" else np.int32(v) for k, v in args)
            with cp.cuda.ExternalStream(stream):
                self.fn(grid, block, vals, shared_mem=shared_mem)

    def launch_plugin(self, launch, grid, tensors, scalars):
        """Launch as TensorRT launches an AOT plugin kernel: arguments in ``launch["args"]``
        order (tensors as pointers, the plugin's extra scalars as int32), with the plugin's block
        and shared memory; waits for the kernel."""
        args = [("i32", scalars[n]) if n in scalars else ("ptr", tensors[n].data_ptr())
                for n in launch["args"]]
        self.launch(grid, launch["block"], launch["shared_mem"], args)
        torch.cuda.synchronize()


def check_engines_match_eager(model, tmp_path, **save_kwargs):
    """Export ``model``'s ONNX graphs into an artifacts dir, build TensorRT engines from them and
    check the TensorRT runner against the eager CUDA model: prefill logits and SSM state and one
    decode step within 1e-4, greedy generation token for token."""
    from mamba_export.export import artifacts
    from mamba_export.export.onnx import export_onnx
    from mamba_export.export.tensorrt import export_engines
    from mamba_export.runtime.tensorrt import TensorRTRunner

    d = tmp_path / "art"
    d.mkdir()
    model.save_pretrained(d / "model", **save_kwargs)
    manifest = artifacts.new_manifest(model)
    for g in ("prefill", "decode"):
        info = export_onnx(model, g, d / f"{g}.onnx")
        artifacts.add_file(manifest, d, f"{g}.onnx", g, "onnx", **info)
    artifacts.write_manifest(manifest, d)
    export_engines(d, batch=(1, 2, 4), length=(1, 16, 64))
    runner = TensorRTRunner.from_artifacts(d)
    model = model.cuda()
    ids = torch.randint(0, model.config.vocab_size, (2, 23), device="cuda")
    with torch.no_grad():
        want_logits, want_state = model.prefill(ids, model.new_state(2))
        got_logits, got_state = runner.prefill(ids, runner.new_state(2))
        assert rel_err(got_logits, want_logits) < 1e-4
        assert rel_err(got_state.ssm, want_state.ssm) < 1e-4
        tok = want_logits.argmax(-1)
        want, _ = model.step(tok, want_state)
        got, _ = runner.step(tok, got_state)
        assert rel_err(got, want) < 1e-4
    a = model.generate(ids, max_new_tokens=8)
    b = runner.generate(ids, max_new_tokens=8, cuda_graph=True)
    assert torch.equal(a.cpu(), b.cpu())


def run_compiler_script(name: str) -> str:
    """Run ``tests/<name>`` in a fresh Python without TRITON_INTERPRET (Triton decides compiled
    vs interpreted at import, and the CPU test session sets it); return its stdout, failing the
    test with its output tails if it exits non-zero."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    res = subprocess.run([sys.executable, str(Path(__file__).with_name(name))], capture_output=True,
                         text=True, env=env, timeout=600)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-4000:]
    return res.stdout

"""Fused residual add + RMSNorm: one pass over each row instead of ~8 eager kernels.

Semantics (those of the model's Block.add_norm, which follows transformers):
    residual_out = x + residual                  (x alone when residual is None; fp32 math)
    normed = rmsnorm(residual_out rounded to the weight dtype) * weight, in the weight dtype
    residual_out is stored in float32 when residual_in_fp32, else in x's dtype.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._common import device_fn, pdl_enabled, pdl_start


@device_fn
def _residual_and_weight(res_ptr, w_ptr, row, cols, mask, res_stride, HAS_RESIDUAL: tl.constexpr):
    """The row's residual (float32; zeros without one) and the norm weight (float32)."""
    res = tl.zeros(cols.shape, tl.float32)
    if HAS_RESIDUAL:
        res = tl.load(res_ptr + row * res_stride + cols, mask=mask, other=0.0).to(tl.float32)
    return res, tl.load(w_ptr + cols, mask=mask, other=0.0).to(tl.float32)


@triton.jit
def _add_rmsnorm_kernel(
    x_ptr, res_ptr, w_ptr, out_ptr, res_out_ptr,
    n_cols, x_stride, res_stride, out_stride, res_out_stride, eps,
    HAS_RESIDUAL: tl.constexpr, BLOCK: tl.constexpr, EARLY: tl.constexpr = False, PDL: tl.constexpr = False,
):
    """One row. EARLY: the residual and the weight are read before the PDL wait (add_rmsnorm_fwd's
    early_residual)."""
    row = tl.program_id(0).to(tl.int64)
    cols = tl.arange(0, BLOCK)
    mask = cols < n_cols
    if EARLY:
        res, w = _residual_and_weight(res_ptr, w_ptr, row, cols, mask, res_stride, HAS_RESIDUAL)
    pdl_start(PDL)
    if not EARLY:
        res, w = _residual_and_weight(res_ptr, w_ptr, row, cols, mask, res_stride, HAS_RESIDUAL)
    r = tl.load(x_ptr + row * x_stride + cols, mask=mask, other=0.0).to(tl.float32) + res
    tl.store(res_out_ptr + row * res_out_stride + cols, r.to(res_out_ptr.dtype.element_ty), mask=mask)
    # The norm sees the residual rounded to the weight dtype, as the eager model does.
    v = r.to(w_ptr.dtype.element_ty).to(tl.float32)
    inv = 1.0 / tl.sqrt(tl.sum(v * v, axis=0) / n_cols + eps)
    tl.store(out_ptr + row * out_stride + cols, (v * inv * w).to(out_ptr.dtype.element_ty), mask=mask)


# With early_residual, the residual and the norm weight are read before the PDL wait: the residual
# was written a layer's kernels ago (by HBM time, out of L2 at the wide models). H100, 2026-11-24,
# decode ms/token, same call, two runs each, before vs after the wait: b1 mamba-790m 1.029 vs
# 1.042-1.045, 1.4b 1.400-1.403 vs 1.424-1.425, 2.8b 2.583 vs 2.615, mamba2-370m 0.649-0.650 vs
# 0.663, mamba2-2.7b 2.638-2.641 vs 2.671; b16 level (mamba2-370m 1.466 vs 1.480); mamba-130m /
# 370m fold the norm into in_proj at b1. A switch for benchmarks (scripts/bench_e2e.py
# --late-norm-residual).
EARLY_RESIDUAL = True


def add_rmsnorm_fwd(x: torch.Tensor, residual: torch.Tensor | None, weight: torch.Tensor,
                    eps: float, residual_in_fp32: bool, early_residual: bool = False
                    ) -> tuple[torch.Tensor, torch.Tensor]:
    """``(normed, residual_out)`` for rows of ``x [..., d]`` (last dim contiguous).

    ``early_residual``: with PDL, read the residual (and the weight) before waiting for the
    kernel launched just before this one; only for callers that know that kernel did not write
    the residual (the model: a mixer's kernels run between two blocks' add + norm)."""
    d = x.shape[-1]
    if weight.shape != (d,):
        raise ValueError(f"weight must be [{d}], got {list(weight.shape)}")
    if residual is not None and residual.shape != x.shape:
        raise ValueError(f"residual {list(residual.shape)} must match x {list(x.shape)}")
    x2 = x.reshape(-1, d)
    if x2.stride(-1) != 1:
        x2 = x2.contiguous()
    res2 = None if residual is None else residual.reshape(-1, d)
    if res2 is not None and res2.stride(-1) != 1:
        res2 = res2.contiguous()
    rows = x2.shape[0]
    out = torch.empty(rows, d, device=x.device, dtype=weight.dtype)
    res_dtype = torch.float32 if residual_in_fp32 else (x.dtype if residual is None else residual.dtype)
    res_out = torch.empty(rows, d, device=x.device, dtype=res_dtype)
    block = triton.next_power_of_2(d)
    pdl = dict(PDL=True, launch_pdl=True) if pdl_enabled(x.device) else {}
    _add_rmsnorm_kernel[(rows,)](
        x2, x2 if res2 is None else res2, weight, out, res_out,
        d, x2.stride(0), 0 if res2 is None else res2.stride(0), out.stride(0), res_out.stride(0), eps,
        HAS_RESIDUAL=res2 is not None, BLOCK=block, EARLY=bool(early_residual) and EARLY_RESIDUAL,
        num_warps=4 if block <= 2048 else 8, **pdl,
    )
    return out.view(x.shape[:-1] + (d,)), res_out.view(x.shape[:-1] + (d,))

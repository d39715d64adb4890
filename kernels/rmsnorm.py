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

from ._common import pdl_enabled, pdl_start


@triton.jit
def _add_rmsnorm_kernel(
    x_ptr, res_ptr, w_ptr, out_ptr, res_out_ptr,
    n_cols, x_stride, res_stride, out_stride, res_out_stride, eps,
    HAS_RESIDUAL: tl.constexpr, BLOCK: tl.constexpr, PDL: tl.constexpr = False,
):
    pdl_start(PDL)
    row = tl.program_id(0).to(tl.int64)
    cols = tl.arange(0, BLOCK)
    mask = cols < n_cols
    r = tl.load(x_ptr + row * x_stride + cols, mask=mask, other=0.0).to(tl.float32)
    if HAS_RESIDUAL:
        r += tl.load(res_ptr + row * res_stride + cols, mask=mask, other=0.0).to(tl.float32)
    tl.store(res_out_ptr + row * res_out_stride + cols, r.to(res_out_ptr.dtype.element_ty), mask=mask)
    # The norm sees the residual rounded to the weight dtype, as the eager model does.
    v = r.to(w_ptr.dtype.element_ty).to(tl.float32)
    inv = 1.0 / tl.sqrt(tl.sum(v * v, axis=0) / n_cols + eps)
    w = tl.load(w_ptr + cols, mask=mask, other=0.0).to(tl.float32)
    tl.store(out_ptr + row * out_stride + cols, (v * inv * w).to(out_ptr.dtype.element_ty), mask=mask)


def add_rmsnorm_fwd(x: torch.Tensor, residual: torch.Tensor | None, weight: torch.Tensor,
                    eps: float, residual_in_fp32: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """``(normed, residual_out)`` for rows of ``x [..., d]`` (last dim contiguous)."""
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
        HAS_RESIDUAL=res2 is not None, BLOCK=block, num_warps=4 if block <= 2048 else 8, **pdl,
    )
    return out.view(x.shape[:-1] + (d,)), res_out.view(x.shape[:-1] + (d,))

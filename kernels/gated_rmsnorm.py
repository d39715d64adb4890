"""Gated RMSNorm (Mamba-2's ``RMSNormGated``) in one kernel instead of ~8 eager ones.

Semantics: ``mamba_export.mamba2.RMSNormGated.forward``. For each row and each group of
``group_size`` channels, in float32 (float64 for float64 x):
    norm_before_gate=False:  out = rmsnorm(x * silu(z)) * weight
    norm_before_gate=True:   out = rmsnorm(x) * weight * silu(z)
with rmsnorm(v) = v / sqrt(mean(v^2 over the group) + eps); no gate when z is None. The output
has x's dtype.
"""

from __future__ import annotations

import torch
import triton.language as tl

from ._common import check_float, check_same_device, check_shape, kernel, launch, new_output, next_pow2

_MAX_BLOCK = 65536  # elements of one group held by one program


@kernel
def _gated_rmsnorm_kernel(
    x_ptr, z_ptr, w_ptr, out_ptr,
    group_size, eps,
    sx_r, sx_c, sz_r, sz_c, sw, so_r, so_c,
    HAS_Z: tl.constexpr, NORM_BEFORE_GATE: tl.constexpr, FP64: tl.constexpr, BLOCK: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)
    offs = tl.arange(0, BLOCK)
    mask = offs < group_size
    cols = (tl.program_id(1) * group_size + offs).to(tl.int64)
    cdt = tl.float64 if FP64 else tl.float32
    x = tl.load(x_ptr + row * sx_r + cols * sx_c, mask=mask, other=0.0).to(cdt)
    if HAS_Z:
        z = tl.load(z_ptr + row * sz_r + cols * sz_c, mask=mask, other=0.0).to(cdt)
        gate = z / (1.0 + tl.exp(-z))
        if not NORM_BEFORE_GATE:
            x = x * gate
    inv = 1.0 / tl.sqrt(tl.sum(x * x, axis=0) / group_size + eps)
    out = x * inv * tl.load(w_ptr + cols * sw, mask=mask, other=0.0).to(cdt)
    if HAS_Z:
        if NORM_BEFORE_GATE:
            out = out * gate
    tl.store(out_ptr + row * so_r + cols * so_c, out.to(out_ptr.dtype.element_ty), mask=mask)


def _out_rows(out, dim):
    """``out [..., dim]`` as a 2-D view ``[rows, dim]``: the kernel must write into ``out``."""
    try:
        return out.view(-1, dim)
    except RuntimeError:
        raise ValueError(f"out with shape {tuple(out.shape)} and strides {out.stride()} cannot be "
                         f"viewed as [rows, {dim}]") from None


def gated_rmsnorm_fwd(x, z, weight, eps, group_size, norm_before_gate, out=None):
    """Gated RMSNorm of ``x [..., d]`` with gate ``z`` (same shape, or None) and ``weight [d]``.

    Returns the output (x's shape and dtype), written into ``out`` when given (it may be a
    strided view, e.g. the columns of a wider buffer, so that no concatenation is needed)."""
    check_float("x", x)
    if x.dim() < 1 or x.shape[-1] < 1:
        raise ValueError(f"x must be [..., channels] with channels >= 1, got shape {tuple(x.shape)}")
    d = x.shape[-1]
    if not isinstance(group_size, int) or group_size < 1 or d % group_size:
        raise ValueError(f"group_size must be a positive int dividing the {d} channels, "
                         f"got {group_size!r}")
    if next_pow2(group_size) > _MAX_BLOCK:
        raise ValueError(f"group_size {group_size} is too large for one program (max {_MAX_BLOCK})")
    check_float("weight", weight)
    check_shape("weight", weight, (d,))
    check_float("z", z, allow_none=True)
    check_shape("z", z, tuple(x.shape))
    check_float("out", out, allow_none=True)
    check_shape("out", out, tuple(x.shape))
    if out is not None and out.dtype != x.dtype:
        raise ValueError(f"out must have x's dtype {x.dtype}, got {out.dtype}")
    check_same_device(x.device, z=z, weight=weight, out=out)
    if out is None:
        out = new_output(tuple(x.shape), x.dtype, x.device)
    # rows = all leading dims: a view for the usual layouts (inputs that cannot be are copied)
    x2, o2 = x.reshape(-1, d), _out_rows(out, d)
    z2 = x2 if z is None else z.reshape(-1, d)
    block = next_pow2(group_size)
    launch(
        _gated_rmsnorm_kernel, (x2.shape[0], d // group_size), x.device,
        x2, z2, weight, o2, group_size, float(eps),
        *x2.stride(), *(z2.stride() if z is not None else (0, 0)), weight.stride(0), *o2.stride(),
        HAS_Z=z is not None, NORM_BEFORE_GATE=bool(norm_before_gate),
        FP64=x.dtype == torch.float64, BLOCK=block,
        num_warps=min(max(block // 256, 1), 8),
    )
    return out


__all__ = ["gated_rmsnorm_fwd"]

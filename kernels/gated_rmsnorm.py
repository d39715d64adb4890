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
import triton
import triton.language as tl

from .causal_conv1d import conv_state_shift
from ._common import (check_float, check_same_device, check_shape, kernel, launch, new_output, next_pow2,
                      pdl_start, use_interpreter)

_MAX_BLOCK = 65536  # elements of one group held by one program
_COMMIT_BLOCK = 64  # conv channels shifted by one commit program


@kernel
def _gated_rmsnorm_kernel(
    x_ptr, z_ptr, w_ptr, out_ptr, raw_ptr, cst_ptr, ncst_ptr,
    group_size, eps, n_groups, conv_dim, conv_len,
    sx_r, sx_c, sz_r, sz_c, sw, so_r, so_c, sraw_r, sraw_c, scs_r, scs_c, scs_s, sn_r, sn_c, sn_s,
    HAS_Z: tl.constexpr, NORM_BEFORE_GATE: tl.constexpr, FP64: tl.constexpr, BLOCK: tl.constexpr,
    COMMIT: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_S: tl.constexpr, PDL: tl.constexpr = False,
):
    """Programs ``(row, g < n_groups)`` normalise group g of the row. COMMIT: programs
    ``(row, n_groups + i)`` shift BLOCK_C channels of the row's conv state by one step (raw conv
    input appended; Mamba-2 decode, see ssd_conv_state_update_fwd): spread over their own
    programs, the commit costs no latency on the norm's single program per row."""
    pdl_start(PDL)
    row = tl.program_id(0).to(tl.int64)
    pid = tl.program_id(1)
    if pid >= n_groups:  # a commit program (the grid has only n_groups columns without COMMIT)
        if COMMIT:
            ch = (pid - n_groups) * BLOCK_C + tl.arange(0, BLOCK_C)
            conv_state_shift(raw_ptr + row * sraw_r, cst_ptr + row * scs_r, ncst_ptr + row * sn_r,
                             ch, ch < conv_dim, conv_len, sraw_c, scs_c, scs_s, sn_c, sn_s, BLOCK_S)
    else:
        offs = tl.arange(0, BLOCK)
        mask = offs < group_size
        cols = (pid * group_size + offs).to(tl.int64)
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


def gated_rmsnorm_fwd(x, z, weight, eps, group_size, norm_before_gate, out=None, conv_commit=None):
    """Gated RMSNorm of ``x [..., d]`` with gate ``z`` (same shape, or None) and ``weight [d]``.

    Returns the output (x's shape and dtype), written into ``out`` when given (it may be a
    strided view, e.g. the columns of a wider buffer, so that no concatenation is needed).

    ``conv_commit = (raw [R, C], conv_state [R, C, S], out_state)`` (R = the rows of x) also
    shifts the conv state by one decode step, ``raw`` appended, into ``out_state`` (may be
    ``conv_state``): the commit that ``ssd_conv_state_update_fwd`` leaves to the next kernel."""
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
    if x.dtype == torch.float64 and not use_interpreter(x.device):
        # one float64 case (groups of 12) gave wrong numbers on the H100 with Triton 3.6;
        # float64 models run the reference ops on CUDA, so the kernel refuses it there
        raise ValueError("gated_rmsnorm_fwd: float64 on CUDA is not supported; use RMSNormGated")
    if out is None:
        out = new_output(tuple(x.shape), x.dtype, x.device)
    # rows = all leading dims: a view for the usual layouts (inputs that cannot be are copied)
    x2, o2 = x.reshape(-1, d), _out_rows(out, d)
    z2 = x2 if z is None else z.reshape(-1, d)
    block = next_pow2(group_size)
    programs = d // group_size
    if conv_commit is not None:
        raw, cst, ncst = conv_commit
        if raw.dim() != 2 or raw.shape[0] != x2.shape[0] or cst.dim() != 3 or \
                tuple(cst.shape[:2]) != tuple(raw.shape) or tuple(ncst.shape) != tuple(cst.shape):
            raise ValueError(f"conv_commit must be (raw [{x2.shape[0]}, C], conv_state [.., C, S], "
                             f"out_state like conv_state), got {tuple(raw.shape)}, "
                             f"{tuple(cst.shape)}, {tuple(ncst.shape)}")
        check_same_device(x.device, raw=raw, conv_state=cst, out_state=ncst)
        conv = (raw, cst, ncst, raw.shape[1], cst.shape[2])
        conv_strides = (*raw.stride(), *cst.stride(), *ncst.stride())
        commit_programs = triton.cdiv(raw.shape[1], _COMMIT_BLOCK)
    else:
        conv, conv_strides, commit_programs = (x2, x2, o2, 0, 0), (0,) * 8, 0
    launch(
        _gated_rmsnorm_kernel, (x2.shape[0], programs + commit_programs), x.device,
        x2, z2, weight, o2, *conv[:3], group_size, float(eps), programs, *conv[3:],
        *x2.stride(), *(z2.stride() if z is not None else (0, 0)), weight.stride(0), *o2.stride(),
        *conv_strides,
        HAS_Z=z is not None, NORM_BEFORE_GATE=bool(norm_before_gate),
        FP64=x.dtype == torch.float64, BLOCK=block, COMMIT=conv_commit is not None,
        BLOCK_C=_COMMIT_BLOCK, BLOCK_S=next_pow2(max(conv[4], 1)),
        num_warps=min(max(block // 256, 1), 8), pdl=True,
    )
    return out


__all__ = ["gated_rmsnorm_fwd"]

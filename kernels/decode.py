"""Fused Mamba-1 decode step, two kernels per layer between in_proj and out_proj.

A decode step is launch-bound: every kernel costs a few microseconds however little it reads.
The eager step runs conv update -> x_proj GEMV -> dt_proj GEMV -> state update; here

1. ``conv_xproj``: conv update + SiLU for a block of channels, then that block's share of the
   x_proj product (``x_dbl = W_x @ x``) as a float32 partial sum per block (deterministic: no
   atomics, the next kernel adds the partials in a fixed order);
2. ``ssm_step``: sums the partials into ``x_dbl = [dt_low, B, C]`` (rounded to the activation
   dtype, as the eager product is), computes ``dt = W_dt @ dt_low``, softplus, the state update,
   ``y = <h, C> + D x`` gated by ``silu(z)``.

Both may update their states in place (``out_state`` = the input state). Semantics are those of
``MambaMixer.step`` (reference ops); the tests compare against it.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl


@triton.jit
def _conv_xproj_kernel(
    x_ptr, cs_ptr, ncs_ptr, cw_ptr, cb_ptr, xw_ptr, xc_ptr, part_ptr,
    dim, n_out, n_batch,
    sx_b, sx_d, scs_b, scs_d, scs_k, sncs_b, sncs_d, sncs_k, scw_d, scw_k, sxw_j, sxw_d,
    WIDTH: tl.constexpr, HAS_BIAS: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_J: tl.constexpr,
):
    pid_d = tl.program_id(0)
    b = tl.program_id(1).to(tl.int64)
    offs_d = pid_d * BLOCK_D + tl.arange(0, BLOCK_D)
    mask_d = offs_d < dim
    x_new = tl.load(x_ptr + b * sx_b + offs_d * sx_d, mask=mask_d, other=0.0)
    acc = tl.load(cw_ptr + offs_d * scw_d + (WIDTH - 1) * scw_k, mask=mask_d, other=0.0).to(tl.float32) \
        * x_new.to(tl.float32)
    if HAS_BIAS:
        acc += tl.load(cb_ptr + offs_d, mask=mask_d, other=0.0).to(tl.float32)
    # Window = [state[0], ..., state[W-2], x]; the new state drops state[0] and appends x.
    prev = tl.load(cs_ptr + b * scs_b + offs_d * scs_d, mask=mask_d, other=0.0)
    for k in tl.static_range(WIDTH - 1):
        wk = tl.load(cw_ptr + offs_d * scw_d + k * scw_k, mask=mask_d, other=0.0).to(tl.float32)
        acc += wk * prev.to(tl.float32)
        if k + 1 < WIDTH - 1:
            nxt = tl.load(cs_ptr + b * scs_b + offs_d * scs_d + (k + 1) * scs_k, mask=mask_d, other=0.0)
        else:
            nxt = x_new
        tl.store(ncs_ptr + b * sncs_b + offs_d * sncs_d + k * sncs_k, nxt, mask=mask_d)
        prev = nxt
    xc = (acc * tl.sigmoid(acc)).to(xc_ptr.dtype.element_ty)
    tl.store(xc_ptr + b * dim + offs_d, xc, mask=mask_d)
    xcf = xc.to(tl.float32)
    part_row = part_ptr + (pid_d * n_batch + b) * n_out
    for j0 in range(0, n_out, BLOCK_J):
        offs_j = j0 + tl.arange(0, BLOCK_J)
        mask_j = offs_j < n_out
        wx = tl.load(xw_ptr + offs_j[:, None] * sxw_j + offs_d[None, :] * sxw_d,
                     mask=mask_j[:, None] & mask_d[None, :], other=0.0).to(tl.float32)
        tl.store(part_row + offs_j, tl.sum(wx * xcf[None, :], axis=1), mask=mask_j)


@triton.jit
def _ssm_step_kernel(
    part_ptr, xc_ptr, z_ptr, st_ptr, nst_ptr, A_ptr, D_ptr, bias_ptr, wdt_ptr, y_ptr,
    dim, dstate, dt_rank, n_parts, n_batch,
    sz_b, sz_d, sst_b, sst_d, sst_n, snst_b, snst_d, snst_n, sA_d, sA_n, swdt_d, swdt_r,
    BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_P: tl.constexpr,
):
    pid_d = tl.program_id(0)
    b = tl.program_id(1).to(tl.int64)
    n_out = dt_rank + 2 * dstate
    offs_p = tl.arange(0, BLOCK_P)
    mask_p = offs_p < n_parts
    rows = part_ptr + (offs_p[:, None] * n_batch + b) * n_out
    offs_r = tl.arange(0, BLOCK_R)
    offs_n = tl.arange(0, BLOCK_N)
    mask_r, mask_n = offs_r < dt_rank, offs_n < dstate
    act = xc_ptr.dtype.element_ty  # x_dbl is rounded to the activation dtype, as in eager
    low = tl.sum(tl.load(rows + offs_r[None, :], mask=mask_p[:, None] & mask_r[None, :], other=0.0), 0)
    Bv = tl.sum(tl.load(rows + dt_rank + offs_n[None, :], mask=mask_p[:, None] & mask_n[None, :],
                        other=0.0), 0)
    Cv = tl.sum(tl.load(rows + dt_rank + dstate + offs_n[None, :],
                        mask=mask_p[:, None] & mask_n[None, :], other=0.0), 0)
    low, Bv, Cv = low.to(act).to(tl.float32), Bv.to(act).to(tl.float32), Cv.to(act).to(tl.float32)

    offs_d = pid_d * BLOCK_D + tl.arange(0, BLOCK_D)
    mask_d = offs_d < dim
    mask = mask_d[:, None] & mask_n[None, :]
    wdt = tl.load(wdt_ptr + offs_d[:, None] * swdt_d + offs_r[None, :] * swdt_r,
                  mask=mask_d[:, None] & mask_r[None, :], other=0.0).to(tl.float32)
    dt = tl.sum(wdt * low[None, :], axis=1).to(act).to(tl.float32)  # eager's dt_proj output dtype
    dt += tl.load(bias_ptr + offs_d, mask=mask_d, other=0.0)
    dt = tl.where(dt <= 20.0, tl.log(1.0 + tl.exp(dt)), dt)
    x = tl.load(xc_ptr + b * dim + offs_d, mask=mask_d, other=0.0).to(tl.float32)
    A = tl.load(A_ptr + offs_d[:, None] * sA_d + offs_n[None, :] * sA_n, mask=mask, other=0.0)
    h = tl.load(st_ptr + b * sst_b + offs_d[:, None] * sst_d + offs_n[None, :] * sst_n, mask=mask,
                other=0.0)
    h = h * tl.exp(dt[:, None] * A) + (dt * x)[:, None] * Bv[None, :]
    y = tl.sum(h * Cv[None, :], axis=1) + x * tl.load(D_ptr + offs_d, mask=mask_d, other=0.0)
    z = tl.load(z_ptr + b * sz_b + offs_d * sz_d, mask=mask_d, other=0.0).to(tl.float32)
    y = y * (z * tl.sigmoid(z))
    tl.store(nst_ptr + b * snst_b + offs_d[:, None] * snst_d + offs_n[None, :] * snst_n, h, mask=mask)
    tl.store(y_ptr + b * dim + offs_d, y.to(y_ptr.dtype.element_ty), mask=mask_d)


def _pow2(n: int) -> int:
    return max(1, triton.next_power_of_2(n))


def conv_xproj(x, conv_state, conv_weight, conv_bias, xproj_weight, out_state):
    """Conv update + SiLU of ``x [B, D]`` and the partial sums of ``xproj_weight @ x``.

    Returns ``(x_conv [B, D], partials [P, B, J] float32)``; the new conv state (``[B, D, W-1]``)
    goes into ``out_state``, which may be ``conv_state``.
    """
    batch, dim = x.shape
    width = conv_weight.shape[1]
    n_out = xproj_weight.shape[0]
    if conv_state.shape != (batch, dim, width - 1) or out_state.shape != conv_state.shape:
        raise ValueError(f"conv state must be [{batch}, {dim}, {width - 1}], got {list(conv_state.shape)}")
    block_d = 64 if dim <= 2048 else 128
    n_parts = triton.cdiv(dim, block_d)
    xc = torch.empty(batch, dim, device=x.device, dtype=x.dtype)
    parts = torch.empty(n_parts, batch, n_out, device=x.device, dtype=torch.float32)
    _conv_xproj_kernel[(n_parts, batch)](
        x, conv_state, out_state, conv_weight, conv_weight if conv_bias is None else conv_bias,
        xproj_weight, xc, parts, dim, n_out, batch,
        *x.stride(), *conv_state.stride(), *out_state.stride(), *conv_weight.stride(),
        *xproj_weight.stride(),
        WIDTH=width, HAS_BIAS=conv_bias is not None, BLOCK_D=block_d, BLOCK_J=32, num_warps=4,
    )
    return xc, parts


def ssm_step(parts, x_conv, z, state, A, D, dt_bias, dt_proj_weight, out_state):
    """The state update from x_proj partials; returns ``y [B, D]`` (new state into ``out_state``).

    A, D, dt_bias float32; state / out_state float32 ``[B, D, N]``; z a ``[B, D]`` view.
    """
    batch, dim = x_conv.shape
    dstate = A.shape[1]
    dt_rank = dt_proj_weight.shape[1]
    if parts.shape[2] != dt_rank + 2 * dstate:
        raise ValueError(f"partials have {parts.shape[2]} columns, expected {dt_rank + 2 * dstate}")
    for name, t in (("A", A), ("D", D), ("dt_bias", dt_bias), ("state", state), ("out_state", out_state)):
        if t.dtype != torch.float32:
            raise ValueError(f"{name} must be float32, got {t.dtype}")
    y = torch.empty(batch, dim, device=x_conv.device, dtype=x_conv.dtype)
    block_n = _pow2(dstate)
    block_d = max(1, min(16, 256 // block_n))
    _ssm_step_kernel[(triton.cdiv(dim, block_d), batch)](
        parts, x_conv, z, state, out_state, A, D, dt_bias, dt_proj_weight, y,
        dim, dstate, dt_rank, parts.shape[0], batch,
        *z.stride(), *state.stride(), *out_state.stride(), *A.stride(), *dt_proj_weight.stride(),
        BLOCK_D=block_d, BLOCK_N=block_n, BLOCK_R=_pow2(dt_rank), BLOCK_P=_pow2(parts.shape[0]),
        num_warps=2,
    )
    return y

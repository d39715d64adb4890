"""Single-step Mamba-2 (SSD) state update: one decode step for every head.

Semantics: ``mamba_export.reference.ssd_state_update``. state ``[B, H, P, N]``, x/z
``[B, H, P]``, dt ``[B, H]``, A ``[H]`` (a scalar decay per head), B/C ``[B, G, N]`` (head h reads
group ``h // (H/G)``), D ``[H]`` or ``[H, P]``, dt_bias ``[H]``, optional softplus and dt clamp.
"""

from __future__ import annotations

import math

import triton
import triton.language as tl

from ._common import check_float, check_same_device, check_shape, kernel, launch, new_output, next_pow2


@kernel
def _ssd_update_kernel(
    state_ptr, x_ptr, dt_ptr, A_ptr, B_ptr, C_ptr, D_ptr, z_ptr, bias_ptr, out_ptr, nstate_ptr,
    headdim, dstate, heads_per_group, dt_lo, dt_hi,
    ss_b, ss_h, ss_p, ss_n, sx_b, sx_h, sx_p, sdt_b, sdt_h, sA,
    sB_b, sB_g, sB_n, sC_b, sC_g, sC_n, sD_h, sD_p, sz_b, sz_h, sz_p, sbias,
    so_b, so_h, so_p, sn_b, sn_h, sn_p, sn_n,
    HAS_D: tl.constexpr, HAS_Z: tl.constexpr, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr,
    HAS_LIMIT: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_N: tl.constexpr,
):
    pid_p = tl.program_id(0)
    h = tl.program_id(1).to(tl.int64)
    b = tl.program_id(2).to(tl.int64)
    offs_p = pid_p * BLOCK_P + tl.arange(0, BLOCK_P)
    offs_n = tl.arange(0, BLOCK_N)
    mask_p, mask_n = offs_p < headdim, offs_n < dstate
    mask = mask_p[:, None] & mask_n[None, :]

    dt = tl.load(dt_ptr + b * sdt_b + h * sdt_h).to(tl.float32)
    if HAS_BIAS:
        dt += tl.load(bias_ptr + h * sbias).to(tl.float32)
    if SOFTPLUS:
        dt = tl.where(dt <= 20.0, tl.log(1.0 + tl.exp(dt)), dt)
    if HAS_LIMIT:
        dt = tl.minimum(tl.maximum(dt, dt_lo), dt_hi)
    decay = tl.exp(dt * tl.load(A_ptr + h * sA).to(tl.float32))
    g = h // heads_per_group
    Bv = tl.load(B_ptr + b * sB_b + g * sB_g + offs_n * sB_n, mask=mask_n, other=0.0).to(tl.float32)
    Cv = tl.load(C_ptr + b * sC_b + g * sC_g + offs_n * sC_n, mask=mask_n, other=0.0).to(tl.float32)
    x = tl.load(x_ptr + b * sx_b + h * sx_h + offs_p * sx_p, mask=mask_p, other=0.0).to(tl.float32)
    s = tl.load(state_ptr + b * ss_b + h * ss_h + offs_p[:, None] * ss_p + offs_n[None, :] * ss_n,
                mask=mask, other=0.0).to(tl.float32)
    s = s * decay + (dt * x)[:, None] * Bv[None, :]
    y = tl.sum(s * Cv[None, :], axis=1)
    if HAS_D:
        y += x * tl.load(D_ptr + h * sD_h + offs_p * sD_p, mask=mask_p, other=0.0).to(tl.float32)
    if HAS_Z:
        z = tl.load(z_ptr + b * sz_b + h * sz_h + offs_p * sz_p, mask=mask_p, other=0.0).to(tl.float32)
        y = y * (z * tl.sigmoid(z))
    tl.store(nstate_ptr + b * sn_b + h * sn_h + offs_p[:, None] * sn_p + offs_n[None, :] * sn_n,
             s.to(nstate_ptr.dtype.element_ty), mask=mask)
    tl.store(out_ptr + b * so_b + h * so_h + offs_p * so_p, y.to(out_ptr.dtype.element_ty), mask=mask_p)


def ssd_state_update_fwd(state, x, dt, A, B, C, D=None, z=None, dt_bias=None, dt_softplus=False,
                         dt_limit=None, out_state=None):
    """One Mamba-2 decode step. Returns ``(out [B, H, P] in x.dtype, new_state [B, H, P, N])``;
    the new state goes into ``out_state`` when given (it may be ``state``: in place)."""
    for name, t in (("state", state), ("x", x), ("dt", dt), ("A", A), ("B", B), ("C", C)):
        check_float(name, t)
    if x.dim() != 3:
        raise ValueError(f"x must be [batch, heads, headdim], got shape {tuple(x.shape)}")
    batch, heads, headdim = x.shape
    if B.dim() != 3 or B.shape[0] != batch or heads % B.shape[1]:
        raise ValueError(f"B must be [batch, groups dividing {heads} heads, dstate], got {tuple(B.shape)}")
    groups, dstate = B.shape[1], B.shape[2]
    check_shape("state", state, (batch, heads, headdim, dstate))
    check_shape("dt", dt, (batch, heads))
    check_shape("A", A, (heads,))
    check_shape("C", C, (batch, groups, dstate))
    if D is not None and tuple(D.shape) not in ((heads,), (heads, headdim)):
        raise ValueError(f"D must be [{heads}] or [{heads}, {headdim}], got {tuple(D.shape)}")
    for name, t, shape in (("z", z, (batch, heads, headdim)), ("dt_bias", dt_bias, (heads,)),
                           ("out_state", out_state, (batch, heads, headdim, dstate))):
        check_float(name, t, allow_none=True)
        check_shape(name, t, shape)
    check_same_device(x.device, state=state, dt=dt, A=A, B=B, C=C, D=D, z=z, dt_bias=dt_bias,
                      out_state=out_state)
    limit = None if dt_limit is None else (float(dt_limit[0]), float(dt_limit[1]))
    has_limit = limit is not None and limit != (0.0, math.inf)
    out = new_output((batch, heads, headdim), x.dtype, x.device)
    nstate = out_state if out_state is not None else new_output(tuple(state.shape), state.dtype, x.device)
    block_n = next_pow2(dstate)
    block_p = max(1, min(next_pow2(headdim), 4096 // block_n))
    d_strides = (0, 0) if D is None else ((D.stride(0), 0) if D.dim() == 1 else tuple(D.stride()))
    launch(
        _ssd_update_kernel, (triton.cdiv(headdim, block_p), heads, batch), x.device,
        state, x, dt, A, B, C, x if D is None else D, x if z is None else z,
        x if dt_bias is None else dt_bias, out, nstate,
        headdim, dstate, heads // groups,
        limit[0] if has_limit else 0.0, limit[1] if has_limit else 0.0,
        *state.stride(), *x.stride(), *dt.stride(), A.stride(0), *B.stride(), *C.stride(),
        *d_strides, *((0, 0, 0) if z is None else z.stride()),
        0 if dt_bias is None else dt_bias.stride(0), *out.stride(), *nstate.stride(),
        HAS_D=D is not None, HAS_Z=z is not None, HAS_BIAS=dt_bias is not None,
        SOFTPLUS=bool(dt_softplus), HAS_LIMIT=has_limit, BLOCK_P=block_p, BLOCK_N=block_n,
        num_warps=4,
    )
    return out, nstate


__all__ = ["ssd_state_update_fwd"]

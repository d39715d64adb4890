"""Single-step Mamba-2 (SSD) state update: one decode step for every head.

Semantics: ``mamba_export.reference.ssd_state_update``. state ``[B, H, P, N]``, x/z
``[B, H, P]``, dt ``[B, H]``, A ``[H]`` (a scalar decay per head), B/C ``[B, G, N]`` (head h reads
group ``h // (H/G)``), D ``[H]`` or ``[H, P]``, dt_bias ``[H]``, optional softplus and dt clamp.
:func:`ssd_conv_state_update_fwd` is the same step with the causal conv folded in (the decode
path of Mamba2Mixer on CUDA: one launch fewer per layer).
"""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

from .causal_conv1d import check_conv_step, conv_step_finish, conv_step_partial
from ._common import (check_float, check_same_device, check_shape, device_fn, kernel, launch, new_output,
                      next_pow2, pdl_start)


@device_fn
def _step_inputs_known(bias_ptr, A_ptr, D_ptr, nw_ptr, cstate_ptr, cw_ptr, cbias_ptr, b, h, g, headdim, dstate,
                       b_off, c_off, cstate_len, offs_p, mask_p, offs_n, mask_n, sA, sbias, sD_h, sD_p, snw,
                       scs_b, scs_c, scs_s, scw_c, scw_k, scbias, HAS_D: tl.constexpr, HAS_BIAS: tl.constexpr,
                       CONV: tl.constexpr, CONV_BIAS: tl.constexpr, WIDTH: tl.constexpr,
                       NORM_SUMS: tl.constexpr):
    """What the step reads that the kernel before it does not write (float32): the head's
    dt_bias and A, its channels' D and norm weight, and with CONV the conv of x, B and C
    without the step's input (conv_step_partial: the conv state's taps, weights, bias), with
    the newest tap's weights. Absent ones are 0.0."""
    bias_h = 0.0
    Dv = 0.0
    nwv = 0.0
    if HAS_BIAS:
        bias_h = tl.load(bias_ptr + h * sbias).to(tl.float32)
    A_h = tl.load(A_ptr + h * sA).to(tl.float32)
    if HAS_D:
        Dv = tl.load(D_ptr + h * sD_h + offs_p * sD_p, mask=mask_p, other=0.0).to(tl.float32)
    if NORM_SUMS:
        nwv = tl.load(nw_ptr + (h * headdim + offs_p) * snw, mask=mask_p, other=0.0).to(tl.float32)
    px = 0.0
    wx = 0.0
    pB = 0.0
    wB = 0.0
    pC = 0.0
    wC = 0.0
    if CONV:
        cst = cstate_ptr + b * scs_b
        px, wx = conv_step_partial(cst, cw_ptr, cbias_ptr, h * headdim + offs_p, mask_p, cstate_len,
                                   scs_c, scs_s, scw_c, scw_k, scbias, CONV_BIAS, WIDTH)
        pB, wB = conv_step_partial(cst, cw_ptr, cbias_ptr, b_off + g * dstate + offs_n, mask_n, cstate_len,
                                   scs_c, scs_s, scw_c, scw_k, scbias, CONV_BIAS, WIDTH)
        pC, wC = conv_step_partial(cst, cw_ptr, cbias_ptr, c_off + g * dstate + offs_n, mask_n, cstate_len,
                                   scs_c, scs_s, scw_c, scw_k, scbias, CONV_BIAS, WIDTH)
    return bias_h, A_h, Dv, nwv, px, wx, pB, wB, pC, wC


@kernel
def _ssd_update_kernel(
    state_ptr, x_ptr, dt_ptr, A_ptr, B_ptr, C_ptr, D_ptr, z_ptr, bias_ptr, out_ptr, nstate_ptr,
    cstate_ptr, cw_ptr, cbias_ptr, sums_ptr, nw_ptr,
    headdim, dstate, heads_per_group, dt_lo, dt_hi, b_off, c_off, cstate_len,
    ss_b, ss_h, ss_p, ss_n, sx_b, sx_h, sx_p, sdt_b, sdt_h, sA,
    sB_b, sB_g, sB_n, sC_b, sC_g, sC_n, sD_h, sD_p, sz_b, sz_h, sz_p, sbias,
    so_b, so_h, so_p, sn_b, sn_h, sn_p, sn_n, scs_b, scs_c, scs_s, scw_c, scw_k, scbias, ssum_b, ssum_h, snw,
    HAS_D: tl.constexpr, HAS_Z: tl.constexpr, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr,
    HAS_LIMIT: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_N: tl.constexpr,
    CONV: tl.constexpr, CONV_BIAS: tl.constexpr, WIDTH: tl.constexpr, EARLY_STATE: tl.constexpr,
    NORM_SUMS: tl.constexpr = False, EARLY_C: tl.constexpr = False, PDL: tl.constexpr = False,
):
    """CONV: x_ptr is the conv's raw input row ``xBC [B, conv_dim]`` (x, then B and C at
    channel offsets b_off / c_off); x, B and C are silu(conv) computed here from the conv state,
    which is only read. EARLY_STATE: the state is read before the PDL wait, overlapping the
    previous kernel's tail (the caller knows that kernel does not write the state).
    NORM_SUMS (with z; Mamba-2's gated RMSNorm, gate first, folded into out_proj): y is
    rounded to the output dtype before the gate, as the op path's norm sees it; the program's
    sum of squares of v = y * silu(z) goes to ``sums[b, h, pid_p]`` and the output is v times
    the norm weight ``nw`` (out_proj then scales by 1/rms). EARLY_C (with EARLY_STATE's
    promise): the parameters and the conv state's part of the conv (_step_inputs_known) are
    read before the PDL wait too."""
    pid_p = tl.program_id(0)
    h = tl.program_id(1).to(tl.int64)
    b = tl.program_id(2).to(tl.int64)
    offs_p = pid_p * BLOCK_P + tl.arange(0, BLOCK_P)
    offs_n = tl.arange(0, BLOCK_N)
    mask_p, mask_n = offs_p < headdim, offs_n < dstate
    mask = mask_p[:, None] & mask_n[None, :]
    state_rows = state_ptr + b * ss_b + h * ss_h + offs_p[:, None] * ss_p + offs_n[None, :] * ss_n
    g = h // heads_per_group
    if EARLY_STATE:
        s = tl.load(state_rows, mask=mask, other=0.0).to(tl.float32)
    if EARLY_C:
        bias_h, A_h, Dv, nwv, px, wx, pB, wB, pC, wC = _step_inputs_known(
            bias_ptr, A_ptr, D_ptr, nw_ptr, cstate_ptr, cw_ptr, cbias_ptr, b, h, g, headdim, dstate, b_off, c_off,
            cstate_len, offs_p, mask_p, offs_n, mask_n, sA, sbias, sD_h, sD_p, snw, scs_b, scs_c, scs_s, scw_c,
            scw_k, scbias, HAS_D, HAS_BIAS, CONV, CONV_BIAS, WIDTH, NORM_SUMS)
    pdl_start(PDL)
    if not EARLY_STATE:
        s = tl.load(state_rows, mask=mask, other=0.0).to(tl.float32)
    if not EARLY_C:
        bias_h, A_h, Dv, nwv, px, wx, pB, wB, pC, wC = _step_inputs_known(
            bias_ptr, A_ptr, D_ptr, nw_ptr, cstate_ptr, cw_ptr, cbias_ptr, b, h, g, headdim, dstate, b_off, c_off,
            cstate_len, offs_p, mask_p, offs_n, mask_n, sA, sbias, sD_h, sD_p, snw, scs_b, scs_c, scs_s, scw_c,
            scw_k, scbias, HAS_D, HAS_BIAS, CONV, CONV_BIAS, WIDTH, NORM_SUMS)

    dt = tl.load(dt_ptr + b * sdt_b + h * sdt_h).to(tl.float32)
    if HAS_BIAS:
        dt += bias_h
    if SOFTPLUS:
        dt = tl.where(dt <= 20.0, tl.log(1.0 + tl.exp(dt)), dt)
    if HAS_LIMIT:
        dt = tl.minimum(tl.maximum(dt, dt_lo), dt_hi)
    decay = tl.exp(dt * A_h)
    if CONV:
        raw = x_ptr + b * sx_b
        x = conv_step_finish(px, wx, raw, h * headdim + offs_p, mask_p, sx_p)
        Bv = conv_step_finish(pB, wB, raw, b_off + g * dstate + offs_n, mask_n, sx_p)
        Cv = conv_step_finish(pC, wC, raw, c_off + g * dstate + offs_n, mask_n, sx_p)
    else:
        Bv = tl.load(B_ptr + b * sB_b + g * sB_g + offs_n * sB_n, mask=mask_n, other=0.0).to(tl.float32)
        Cv = tl.load(C_ptr + b * sC_b + g * sC_g + offs_n * sC_n, mask=mask_n, other=0.0).to(tl.float32)
        x = tl.load(x_ptr + b * sx_b + h * sx_h + offs_p * sx_p, mask=mask_p, other=0.0).to(tl.float32)
    s = s * decay + (dt * x)[:, None] * Bv[None, :]
    y = tl.sum(s * Cv[None, :], axis=1)
    if HAS_D:
        y += x * Dv
    if HAS_Z:
        z = tl.load(z_ptr + b * sz_b + h * sz_h + offs_p * sz_p, mask=mask_p, other=0.0).to(tl.float32)
        if NORM_SUMS:
            y = y.to(out_ptr.dtype.element_ty).to(tl.float32)
        y = y * (z * tl.sigmoid(z))
        if NORM_SUMS:
            tl.store(sums_ptr + b * ssum_b + h * ssum_h + pid_p, tl.sum(y * y, axis=0))
            y *= nwv
    tl.store(nstate_ptr + b * sn_b + h * sn_h + offs_p[:, None] * sn_p + offs_n[None, :] * sn_n,
             s.to(nstate_ptr.dtype.element_ty), mask=mask)
    tl.store(out_ptr + b * so_b + h * so_h + offs_p * so_p, y.to(out_ptr.dtype.element_ty), mask=mask_p)


def _check_step(state, batch, heads, headdim, groups, dstate, dt, A, D, z, dt_bias, out_state, device):
    check_shape("state", state, (batch, heads, headdim, dstate))
    check_shape("dt", dt, (batch, heads))
    check_shape("A", A, (heads,))
    if D is not None and tuple(D.shape) not in ((heads,), (heads, headdim)):
        raise ValueError(f"D must be [{heads}] or [{heads}, {headdim}], got {tuple(D.shape)}")
    for name, t, shape in (("z", z, (batch, heads, headdim)), ("dt_bias", dt_bias, (heads,)),
                           ("out_state", out_state, (batch, heads, headdim, dstate))):
        check_float(name, t, allow_none=True)
        check_shape(name, t, shape)
    check_same_device(device, state=state, dt=dt, A=A, D=D, z=z, dt_bias=dt_bias, out_state=out_state)


def ssd_state_update_fwd(state, x, dt, A, B, C, D=None, z=None, dt_bias=None, dt_softplus=False,
                         dt_limit=None, out_state=None, early_state=False, norm_weight=None):
    """One Mamba-2 decode step. Returns ``(out [B, H, P] in x.dtype, new_state [B, H, P, N])``;
    the new state goes into ``out_state`` when given (it may be ``state``: in place).
    ``early_state``: with PDL, read the state before waiting for the kernel launched just before
    this one; only for callers that know that kernel does not write it.

    ``norm_weight [H * P]`` (needs z; Mamba-2's gated RMSNorm with the gate first, folded into
    out_proj): with v = y rounded to x's dtype times silu(z), out = v * norm_weight, and a
    third result ``sums [B, H, n]`` float32, the sums of squares of v over n consecutive blocks
    of each head's channels (a norm group's mean square is its heads' sums / group size), for
    ``decode_linear_fwd(row_norm=...)``."""
    for name, t in (("state", state), ("x", x), ("dt", dt), ("A", A), ("B", B), ("C", C)):
        check_float(name, t)
    if x.dim() != 3:
        raise ValueError(f"x must be [batch, heads, headdim], got shape {tuple(x.shape)}")
    batch, heads, headdim = x.shape
    if B.dim() != 3 or B.shape[0] != batch or heads % B.shape[1]:
        raise ValueError(f"B must be [batch, groups dividing {heads} heads, dstate], got {tuple(B.shape)}")
    groups, dstate = B.shape[1], B.shape[2]
    check_shape("C", C, (batch, groups, dstate))
    _check_step(state, batch, heads, headdim, groups, dstate, dt, A, D, z, dt_bias, out_state, x.device)
    check_same_device(x.device, B=B, C=C)
    out = new_output((batch, heads, headdim), x.dtype, x.device)
    nstate = out_state if out_state is not None else new_output(tuple(state.shape), state.dtype, x.device)
    sums = None
    if norm_weight is not None:
        if z is None:
            raise ValueError("norm_weight needs z (the gate of the norm)")
        check_float("norm_weight", norm_weight)
        check_shape("norm_weight", norm_weight, (heads * headdim,))
        check_same_device(x.device, norm_weight=norm_weight)
        blocks = triton.cdiv(headdim, launch_config(batch, heads, headdim, next_pow2(dstate))[0])
        sums = new_output((batch, heads, blocks), torch.float32, x.device)
    _launch(state, x, dt, A, B, C, groups, dstate, D, z, dt_bias, dt_softplus, dt_limit, out, nstate, None,
            early_state, None if sums is None else (sums, norm_weight))
    return (out, nstate) if sums is None else (out, nstate, sums)


def ssd_conv_state_update_fwd(state, xBC, conv_state, conv_weight, conv_bias, dt, A, ngroups,
                              D=None, z=None, dt_bias=None, dt_softplus=False, dt_limit=None,
                              out_state=None, early_state=False):
    """The Mamba-2 decode step with the conv folded in: x, B, C = split(silu(conv(xBC))) are
    computed inside the SSD kernel from ``conv_state [B, conv_dim, S]``, which is only read:
    in place, one head's program must not overwrite the B/C conv inputs that the other heads'
    programs still read, so the caller shifts the conv state afterwards (the gated norm's
    ``conv_commit``, or :func:`~mamba_export.kernels.causal_conv1d.conv_state_commit_fwd`).
    ``state [B, H, P, N]``; returns ``(out [B, H, P] in xBC.dtype, new_state)``;
    ``early_state`` as for :func:`ssd_state_update_fwd` (the model's step: in_proj runs before)."""
    check_float("state", state)
    if state.dim() != 4:
        raise ValueError(f"state must be [batch, heads, headdim, dstate], got {tuple(state.shape)}")
    batch, heads, headdim, dstate = state.shape
    if ngroups < 1 or heads % ngroups:
        raise ValueError(f"ngroups ({ngroups}) must divide the {heads} heads")
    check_conv_step(xBC, conv_state, conv_weight, conv_bias, name="xBC")
    check_shape("xBC", xBC, (batch, heads * headdim + 2 * ngroups * dstate))
    _check_step(state, batch, heads, headdim, ngroups, dstate, dt, A, D, z, dt_bias, out_state, xBC.device)
    out = new_output((batch, heads, headdim), xBC.dtype, xBC.device)
    nstate = out_state if out_state is not None else new_output(tuple(state.shape), state.dtype, xBC.device)
    _launch(state, xBC, dt, A, xBC, xBC, ngroups, dstate, D, z, dt_bias, dt_softplus, dt_limit, out,
            nstate, (conv_state, conv_weight, conv_bias), early_state, None)
    return out, nstate


# With early_state, the parameters and the conv state's part of the folded conv are read before
# the PDL wait too (_step_inputs_known): in the model's step the kernel before this one is
# in_proj, which writes neither. H100, 2026-11-24, decode ms/token, same call, two runs each,
# early vs after the wait: b1 mamba2-130m 0.236 vs 0.239, 370m 0.671-0.673 vs 0.702, 780m
# 1.091-1.092 vs 1.143-1.144, 1.3b 1.489-1.491 vs 1.543-1.545, 2.7b 2.700-2.701 vs 2.776-2.778;
# b16 130m 0.513-0.514 vs 0.544-0.545, 370m 1.492-1.494 vs 1.675-1.679, 780m 2.210 vs
# 2.473-2.474, 1.3b 2.899-2.903 vs 3.123-3.125, 2.7b 4.911-4.914 vs 5.241-5.246. A switch for
# benchmarks (scripts/bench_e2e.py --late-ssd-known).
EARLY_KNOWN = True

_MIN_PROGRAMS = 256  # decode is latency-bound: at batch 1, spread a layer over ~2 waves of SMs


def launch_config(batch, heads, headdim, block_n):
    """(head channels per program, warps): at most 4096 state elements per program, small
    enough that batch 1 still launches about _MIN_PROGRAMS programs (down to 8 channels), 4
    warps. The same for both forms (the conv folded in, or x, B, C given): the H100
    sweep of 2026-11-23 (scripts/bench_ssd_update.py) timed the conv-free form alone fastest
    with 16 channels on 8 warps (mamba2-130m b16 10.78 vs 11.88 us), but in the decode step
    that made mamba2-130m's b16 step 0.628 ms/token against 0.614 with this choice."""
    block_p = max(1, min(next_pow2(headdim), 4096 // block_n))
    while block_p > 8 and triton.cdiv(headdim, block_p) * heads * batch < _MIN_PROGRAMS:
        block_p //= 2
    return block_p, 4


def _launch(state, x, dt, A, B, C, groups, dstate, D, z, dt_bias, dt_softplus, dt_limit, out, nstate, conv,
            early_state, norm):
    """One launch of the kernel. With ``conv = (conv_state, weight, bias)``, x is the conv's raw
    input xBC and the kernel reads x, B, C from it (B and C are then ignored). ``norm``: None,
    or (the norm's sums [B, H, n], norm weight) for NORM_SUMS."""
    batch, heads, headdim = out.shape
    limit = None if dt_limit is None else (float(dt_limit[0]), float(dt_limit[1]))
    has_limit = limit is not None and limit != (0.0, math.inf)
    block_n = next_pow2(dstate)
    block_p, warps = launch_config(batch, heads, headdim, block_n)
    d_strides = (0, 0) if D is None else ((D.stride(0), 0) if D.dim() == 1 else tuple(D.stride()))
    if conv is not None:
        cstate, cw, cb = conv
        x_strides, bc_strides = (x.stride(0), 0, x.stride(1)), (0, 0, 0) * 2
        conv_args = (cstate, cw, cw if cb is None else cb)
        conv_sizes = (heads * headdim, heads * headdim + groups * dstate, cstate.shape[2])
        conv_strides = (*cstate.stride(), *cw.stride(), 0 if cb is None else cb.stride(0))
    else:
        x_strides, bc_strides = tuple(x.stride()), (*B.stride(), *C.stride())
        conv_args, conv_sizes, conv_strides = (x, x, x), (0, 0, 0), (0,) * 6
    launch(
        _ssd_update_kernel, (triton.cdiv(headdim, block_p), heads, batch), out.device,
        state, x, dt, A, B, C, x if D is None else D, x if z is None else z,
        x if dt_bias is None else dt_bias, out, nstate, *conv_args, *(norm or (out, out)),
        headdim, dstate, heads // groups,
        limit[0] if has_limit else 0.0, limit[1] if has_limit else 0.0, *conv_sizes,
        *state.stride(), *x_strides, *dt.stride(), A.stride(0), *bc_strides,
        *d_strides, *((0, 0, 0) if z is None else z.stride()),
        0 if dt_bias is None else dt_bias.stride(0), *out.stride(), *nstate.stride(), *conv_strides,
        *((0, 0, 0) if norm is None else (*norm[0].stride()[:2], norm[1].stride(0))),
        HAS_D=D is not None, HAS_Z=z is not None, HAS_BIAS=dt_bias is not None,
        SOFTPLUS=bool(dt_softplus), HAS_LIMIT=has_limit, BLOCK_P=block_p, BLOCK_N=block_n,
        CONV=conv is not None, CONV_BIAS=conv is not None and conv[2] is not None,
        WIDTH=1 if conv is None else conv[1].shape[1], EARLY_STATE=bool(early_state), NORM_SUMS=norm is not None,
        EARLY_C=bool(early_state) and EARLY_KNOWN,
        num_warps=warps, pdl=True,
    )


__all__ = ["ssd_state_update_fwd", "ssd_conv_state_update_fwd"]

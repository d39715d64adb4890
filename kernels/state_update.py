"""Single-step selective state update (decode), Mamba-1 layout.

Semantics: ``mamba_export.reference.selective_state_update``. State ``[B, D, N]``, x/dt/z
``[B, D]``, A ``[D, N]``, B/C ``[B, N]`` or grouped ``[B, G, N]``.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._common import (
    bc_layout,
    check_float,
    check_same_device,
    check_shape,
    device_fn,
    kernel,
    launch,
    new_output,
    next_pow2,
    pdl_start,
    softplus_f32,
    use_interpreter,
)


@device_fn
def _state_and_A(state_tile, A_tile, mask, mask_A, EARLY_STATE: tl.constexpr, PDL: tl.constexpr):
    """The state and A tiles (float32) and the kernel's PDL start between: with EARLY_STATE the
    loads come before the wait, overlapping the previous kernel, else after it."""
    if EARLY_STATE:
        h = tl.load(state_tile, mask=mask, other=0.0).to(tl.float32)
        A = tl.load(A_tile, mask=mask_A, other=0.0).to(tl.float32)
    pdl_start(PDL)
    if not EARLY_STATE:
        h = tl.load(state_tile, mask=mask, other=0.0).to(tl.float32)
        A = tl.load(A_tile, mask=mask_A, other=0.0).to(tl.float32)
    return h, A


@device_fn
def _bias_and_D(bias_ptr, D_ptr, offs_d, mask_d, sbias, sD, HAS_BIAS: tl.constexpr, HAS_D: tl.constexpr):
    """dt_bias and D of the channels (float32; zeros for the ones the call lacks)."""
    bias = tl.zeros(offs_d.shape, tl.float32)
    Dv = tl.zeros(offs_d.shape, tl.float32)
    if HAS_BIAS:
        bias = tl.load(bias_ptr + offs_d * sbias, mask=mask_d, other=0.0).to(tl.float32)
    if HAS_D:
        Dv = tl.load(D_ptr + offs_d * sD, mask=mask_d, other=0.0).to(tl.float32)
    return bias, Dv


@device_fn
def _x_and_z(x_tile, z_tile, mask, HAS_Z: tl.constexpr):
    """x and z (float32; z = x where the call has none) of the channels' rows."""
    x = tl.load(x_tile, mask=mask, other=0.0).to(tl.float32)
    z = x
    if HAS_Z:
        z = tl.load(z_tile, mask=mask, other=0.0).to(tl.float32)
    return x, z


@kernel
def _state_update_kernel(
    state_ptr, x_ptr, dt_ptr, A_ptr, B_ptr, C_ptr, D_ptr, z_ptr, bias_ptr, W_ptr,
    out_ptr, nstate_ptr,
    dim, dstate, ch_per_group, dt_rank, sW_d, sW_r,
    ss_b, ss_d, ss_n,
    sx_b, sx_d,
    sdt_b, sdt_d,
    sA_d, sA_n,
    sB_b, sB_g, sB_n,
    sC_b, sC_g, sC_n,
    sD, sz_b, sz_d, sbias,
    sn_b, sn_d, sn_n,
    HAS_D: tl.constexpr, HAS_Z: tl.constexpr, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr,
    DT_PROJ: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_R: tl.constexpr,
    EARLY_STATE: tl.constexpr = False, EARLY_W: tl.constexpr = False, EARLY_BD: tl.constexpr = False,
    EARLY_XZ: tl.constexpr = False, PDL: tl.constexpr = False,
):
    """BLOCK_D channels of one batch row. EARLY_STATE: the state (and A) is read before the PDL
    wait, overlapping the previous kernel (the caller knows that kernel does not write it);
    EARLY_W: dt_proj's weight tile too (DT_PROJ); EARLY_BD: dt_bias and D too; EARLY_XZ: x and
    z too (the caller knows they were written before the kernel launched just before this one).
    (tl.exp, not the several-row kernel's exp2, and B and C loaded per channel even with one
    group: both measured slower otherwise, docs/kernel_notes.md v19.)"""
    pid_d = tl.program_id(0)
    pid_b = tl.program_id(1)
    b64 = pid_b.to(tl.int64)
    offs_d = pid_d * BLOCK_D + tl.arange(0, BLOCK_D)
    mask_d = offs_d < dim
    d64 = offs_d.to(tl.int64)
    offs_n = tl.arange(0, BLOCK_N)
    mask = mask_d[:, None] & (offs_n < dstate)[None, :]
    grp = (offs_d // ch_per_group).to(tl.int64)
    state_tile = state_ptr + b64 * ss_b + d64[:, None] * ss_d + offs_n[None, :] * ss_n
    A_tile = A_ptr + d64[:, None] * sA_d + offs_n[None, :] * sA_n
    offs_r = tl.arange(0, BLOCK_R)
    mask_r = offs_r < dt_rank
    W_tile = W_ptr + d64[:, None] * sW_d + offs_r[None, :] * sW_r
    if DT_PROJ and EARLY_W:  # dt_proj's weight: no kernel writes it
        W = tl.load(W_tile, mask=mask_d[:, None] & mask_r[None, :], other=0.0)
    if EARLY_BD:  # nor dt_bias and D
        bias, Dv = _bias_and_D(bias_ptr, D_ptr, offs_d, mask_d, sbias, sD, HAS_BIAS, HAS_D)
    x_tile = x_ptr + b64 * sx_b + d64 * sx_d
    z_tile = z_ptr + b64 * sz_b + d64 * sz_d
    if EARLY_XZ:
        x, z = _x_and_z(x_tile, z_tile, mask_d, HAS_Z)
    h, A = _state_and_A(state_tile, A_tile, mask, mask, EARLY_STATE, PDL)
    if not EARLY_BD:
        bias, Dv = _bias_and_D(bias_ptr, D_ptr, offs_d, mask_d, sbias, sD, HAS_BIAS, HAS_D)
    if not EARLY_XZ:
        x, z = _x_and_z(x_tile, z_tile, mask_d, HAS_Z)

    if DT_PROJ:
        # dt = dt_proj.weight @ dt_low, fused: dt_ptr holds dt_low [B, R] (sdt_d is its R stride).
        low = tl.load(dt_ptr + b64 * sdt_b + offs_r * sdt_d, mask=mask_r, other=0.0).to(tl.float32)
        if not EARLY_W:
            W = tl.load(W_tile, mask=mask_d[:, None] & mask_r[None, :], other=0.0)
        dt = tl.sum(W.to(tl.float32) * low[None, :], axis=1)
    else:
        dt = tl.load(dt_ptr + b64 * sdt_b + d64 * sdt_d, mask=mask_d, other=0.0).to(tl.float32)
    if HAS_BIAS:
        dt += bias
    if SOFTPLUS:
        dt = softplus_f32(dt)
    Bv = tl.load(B_ptr + b64 * sB_b + grp[:, None] * sB_g + offs_n[None, :] * sB_n, mask=mask,
                 other=0.0).to(tl.float32)
    Cv = tl.load(C_ptr + b64 * sC_b + grp[:, None] * sC_g + offs_n[None, :] * sC_n, mask=mask,
                 other=0.0).to(tl.float32)
    h = h * tl.exp(dt[:, None] * A) + (dt * x)[:, None] * Bv
    y = tl.sum(h * Cv, axis=1)
    if HAS_D:
        y += x * Dv
    if HAS_Z:
        y = y * (z * tl.sigmoid(z))
    tl.store(nstate_ptr + b64 * sn_b + d64[:, None] * sn_d + offs_n[None, :] * sn_n,
             h.to(nstate_ptr.dtype.element_ty), mask=mask)
    tl.store(out_ptr + b64 * dim + d64, y.to(out_ptr.dtype.element_ty), mask=mask_d)


@kernel
def _state_update_rows_kernel(
    state_ptr, x_ptr, dt_ptr, A_ptr, B_ptr, C_ptr, D_ptr, z_ptr, bias_ptr, W_ptr,
    out_ptr, nstate_ptr,
    batch, dim, dstate, ch_per_group, dt_rank, sW_d, sW_r,
    ss_b, ss_d, ss_n,
    sx_b, sx_d,
    sdt_b, sdt_d,
    sA_d, sA_n,
    sB_b, sB_g, sB_n,
    sC_b, sC_g, sC_n,
    sD, sz_b, sz_d, sbias,
    sn_b, sn_d, sn_n,
    HAS_D: tl.constexpr, HAS_Z: tl.constexpr, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr,
    DT_PROJ: tl.constexpr, IEEE: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_D: tl.constexpr,
    BLOCK_N: tl.constexpr, BLOCK_R: tl.constexpr, EARLY_STATE: tl.constexpr = False,
    EARLY_W: tl.constexpr = False, EARLY_BD: tl.constexpr = False, EARLY_XZ: tl.constexpr = False,
    PDL: tl.constexpr = False,
):
    """BLOCK_M batch rows of BLOCK_D channels in one program (several-row decode). The fused
    dt_proj is one [BLOCK_M, R] x [R, BLOCK_D] product on tensor cores (small tiles padded), so
    its weight tile is read once per row block instead of once per row (the one-row kernel at 16
    rows re-reads it 16 times from L2: 26 MB per mamba-2.8b layer against 5.2 MB of state).
    EARLY_STATE, EARLY_W, EARLY_BD and EARLY_XZ as in the one-row kernel."""
    pid_d = tl.program_id(0)
    offs_m = tl.program_id(1) * BLOCK_M + tl.arange(0, BLOCK_M)
    mask_m = offs_m < batch
    m64 = offs_m.to(tl.int64)
    offs_d = pid_d * BLOCK_D + tl.arange(0, BLOCK_D)
    mask_d = offs_d < dim
    d64 = offs_d.to(tl.int64)
    offs_n = tl.arange(0, BLOCK_N)
    mask_n = offs_n < dstate
    mask_md = mask_m[:, None] & mask_d[None, :]
    mask = mask_md[:, :, None] & mask_n[None, None, :]
    grp = (offs_d // ch_per_group).to(tl.int64)
    rows_g = m64[:, None, None]
    state_tile = state_ptr + rows_g * ss_b + d64[None, :, None] * ss_d + offs_n[None, None, :] * ss_n
    A_tile = A_ptr + d64[:, None] * sA_d + offs_n[None, :] * sA_n
    mask_dn = mask_d[:, None] & mask_n[None, :]
    offs_r = tl.arange(0, BLOCK_R)
    mask_r = offs_r < dt_rank
    W_tile = W_ptr + offs_r[:, None] * sW_r + d64[None, :] * sW_d
    if DT_PROJ and EARLY_W:  # dt_proj's weight: no kernel writes it
        W = tl.load(W_tile, mask=mask_r[:, None] & mask_d[None, :], other=0.0)
    if EARLY_BD:  # nor dt_bias and D
        bias, Dv = _bias_and_D(bias_ptr, D_ptr, offs_d, mask_d, sbias, sD, HAS_BIAS, HAS_D)
    x_tile = x_ptr + m64[:, None] * sx_b + d64[None, :] * sx_d
    z_tile = z_ptr + m64[:, None] * sz_b + d64[None, :] * sz_d
    if EARLY_XZ:
        x, z = _x_and_z(x_tile, z_tile, mask_md, HAS_Z)
    h, A = _state_and_A(state_tile, A_tile, mask, mask_dn, EARLY_STATE, PDL)
    if not EARLY_BD:
        bias, Dv = _bias_and_D(bias_ptr, D_ptr, offs_d, mask_d, sbias, sD, HAS_BIAS, HAS_D)
    if not EARLY_XZ:
        x, z = _x_and_z(x_tile, z_tile, mask_md, HAS_Z)
    A = A * 1.4426950408889634  # exp(dt A) = exp2(dt A log2 e): MUFU.EX2 alone, no range fix-up

    if DT_PROJ:
        # dt = dt_low @ dt_proj.weight.T: dt_ptr holds dt_low [B, R] (sdt_d is its R stride)
        low = tl.load(dt_ptr + m64[:, None] * sdt_b + offs_r[None, :] * sdt_d,
                      mask=mask_m[:, None] & mask_r[None, :], other=0.0)
        if not EARLY_W:
            W = tl.load(W_tile, mask=mask_r[:, None] & mask_d[None, :], other=0.0)
        if IEEE:  # float32 or mixed inputs (or the interpreter, whose bf16 dot reads raw bits)
            dt = tl.dot(low.to(tl.float32), W.to(tl.float32), input_precision="ieee",
                        out_dtype=tl.float32)
        else:
            dt = tl.dot(low, W, out_dtype=tl.float32)
    else:
        dt = tl.load(dt_ptr + m64[:, None] * sdt_b + d64[None, :] * sdt_d, mask=mask_md,
                     other=0.0).to(tl.float32)
    if HAS_BIAS:
        dt += bias[None, :]
    if SOFTPLUS:
        dt = softplus_f32(dt)
    # B/C as the state (four elements per thread): Triton otherwise lays the whole tile out for
    # eight-element fp16 vectors and converts the state through shared memory for its store
    offs_bc = tl.max_contiguous(offs_n, 4)
    Bv = tl.load(B_ptr + rows_g * sB_b + grp[None, :, None] * sB_g + offs_bc[None, None, :] * sB_n,
                 mask=mask, other=0.0).to(tl.float32)
    Cv = tl.load(C_ptr + rows_g * sC_b + grp[None, :, None] * sC_g + offs_bc[None, None, :] * sC_n,
                 mask=mask, other=0.0).to(tl.float32)
    h = h * tl.exp2(dt[:, :, None] * A[None, :, :]) + (dt * x)[:, :, None] * Bv
    y = tl.sum(h * Cv, axis=2)
    if HAS_D:
        y += x * Dv[None, :]
    if HAS_Z:
        y = y * (z * tl.sigmoid(z))
    tl.store(nstate_ptr + rows_g * sn_b + d64[None, :, None] * sn_d + offs_n[None, None, :] * sn_n,
             h.to(nstate_ptr.dtype.element_ty), mask=mask)
    tl.store(out_ptr + m64[:, None] * dim + d64[None, :], y.to(out_ptr.dtype.element_ty),
             mask=mask_md)


# With early_state, the kernels read dt_proj's weight tile before the PDL wait too (no kernel
# writes a weight). H100, 2026-11-24, decode ms/token, two runs each, before vs after the wait:
# b1 mamba-130m 0.243-0.244 vs 0.250, 370m 0.570-0.571 vs 0.583, 790m 1.081 vs 1.084, 1.4b
# 1.461-1.462 vs 1.464-1.467, 2.8b 2.665-2.666 vs 2.687-2.692; b16 130m 0.427 vs 0.428-0.431,
# 370m 0.917-0.920 vs 0.921-0.922, 790m 1.582-1.584 vs 1.589-1.591, 1.4b 1.957-1.958 vs
# 1.963-1.972, 2.8b 3.294-3.297 vs 3.306-3.307 (the sixth session's form, the one-row kernel
# at 16 rows holding its tile across the wait, had lost: docs/kernel_notes.md v13). A switch for
# benchmarks (scripts/bench_e2e.py --late-dt-proj).
EARLY_DT_PROJ = True
# With early_state, dt_bias and D before the wait as well (constants like the weight; the bias is
# on dt's path). H100, 2026-11-24, decode ms/token, same call, two runs each, before vs after
# the wait: b1 mamba-130m 0.232 vs 0.239, 790m 1.069-1.070 vs 1.082-1.084, 1.4b 1.455-1.457 vs
# 1.464-1.466, 2.8b 2.661-2.665 vs 2.681, 370m 0.605-0.606 vs 0.602-0.603; b16 2.8b 3.456-3.457
# vs 3.482-3.485, 1.4b 1.976-1.980 vs 1.982-1.983, the others level. A switch for benchmarks
# (scripts/bench_e2e.py --late-bias-d).
EARLY_BIAS_D = True
# With early_state, x and z before the wait as well: x_proj, the kernel before, reads x and writes
# neither, and the kernels that wrote them had finished before x_proj passed its own wait (every
# kernel here waits before it lets the next one start, pdl_start). H100, 2026-11-24, decode b16
# ms/token, same call, two runs each, before vs after the wait: mamba-130m 0.403-0.405 vs
# 0.410-0.413, 370m 0.910-0.912 vs 0.917-0.920, 790m 1.576-1.577 vs 1.585-1.586, 1.4b
# 1.919-1.921 vs 1.972-1.976, 2.8b 3.205-3.206 vs 3.230-3.231; b1 level. A switch for benchmarks
# (scripts/bench_e2e.py --late-x-z).
EARLY_X_Z = True

_MIN_PROGRAMS = 1024  # decode is latency-bound: many small one-warp programs
# The several-row kernel (row blocks per program, dt_proj's weight tile read once per block) when
# the one-row kernel would re-read at least this many dt_proj weight elements per step (batch x
# dim x rank): 16 channels x 16 rows on 2 warps from _ROWS_MIN_REREAD (in blocks of 8 rows over 8
# rows up to 16 from _ROWS_BLOCKS8_MIN_REREAD: H100, 2026-11-24, eighteenth session, decode b16
# ms/token, two runs each, 16 x 8 vs 16 x 16: mamba-2.8b 3.143-3.145 vs 3.147-3.150 in one call,
# 3.157-3.159 vs 3.182-3.184 in another; mamba-1.4b 1.864-1.866 vs 1.882-1.885, then 1.905-1.906
# vs 1.897, so not there), 8 x 8 on 2 warps from
# batch 8 and _ROWS8_MIN_REREAD, 4 x 4 on one warp below batch 8 from _ROWS4_MIN_REREAD.
# H100, decode ms/token (2026-11-24, docs/kernel_notes.md v22; same calls, two runs where two
# figures): b16 mamba-130m 0.451-0.453 with 8 x 8 vs 0.458 (one row, 4 warps), mamba-370m 0.973
# vs 0.987-0.988, mamba-790m 1.571-1.573 vs 1.674-1.676 (one row); mamba-1.4b b8 1.789 vs
# 1.901-1.903; b4 with 4 x 4 mamba-1.4b 1.706 vs 1.795 (8 x 8: 1.727), mamba-2.8b 3.127 vs 3.326
# (3.171); mamba-2.8b b32 with 16 x 16 4.180-4.187 vs 4.565-4.571. 16 x 16 and 8 x 8 were level
# at b16 (2.8b 3.305 vs 3.312, 1.4b 2.010 vs 2.015), 16 x 16 ahead at mamba-2.8b b8 (3.277 vs
# 3.296); 16 channels x 4 rows on 4 warps, the fastest alone at b16 (2.8b 6.14 vs 6.67 us per
# layer), was slower in the step (3.543, 2.185).
_ROWS_MIN_REREAD = 6_500_000
_ROWS_BLOCKS8_MIN_REREAD = 10_000_000  # (mamba-2.8b at 16 rows: 13.1M; mamba-1.4b: 8.4M)
_ROWS8_MIN_REREAD = 1_100_000  # (the smallest measured: mamba-130m b16, 1.18M)
_ROWS4_MIN_REREAD = 2_000_000


# The one-row kernel over more than 8 rows of at most this many channels in all: 32 channels on
# 4 warps (4 states per thread, a quarter of the dt_proj weight tile) instead of one warp. H100,
# 2026-11-24, decode b16 ms/token, this vs the one-warp default: mamba-370m (16 x 2048) 0.994 vs
# 1.056-1.060, mamba-130m (16 x 1536) 0.470 vs 0.467; alone (bench_state_update.py) mamba-790m's
# 16 x 3072 took 6.36 vs 4.92 us (more than one wave of 4-warp programs).
_FOUR_WARPS_MAX_ROWS_X_DIM = 32768


def launch_config(batch: int, dim: int, block_n: int, interpret: bool = False,
                  rank: int = 0) -> tuple[int, int, int]:
    """(channels per program, warps, rows per program). Several rows per program where the fused
    dt_proj (``rank``: its inner size, 0 if not fused) would otherwise be re-read too often
    (_ROWS_MIN_REREAD and below); else one row per program: 32 channels on 4 warps for
    more than 8 rows of few channels (_FOUR_WARPS_MAX_ROWS_X_DIM), else one warp, the widest
    block (4 to 32 channels, at most 512 states) that still launches _MIN_PROGRAMS programs. H100
    sweep (scripts/bench_state_update.py, 2026-11-23, dt_proj fused): batch 1 fastest at 4
    channels (mamba-2.8b layer 2.52 vs 2.98 us for the former 16 x 2 warps), batch 16 at 32
    (10.21 vs 11.83 us; mamba-370m 3.79 vs 4.83). The interpreter: 4 channels, one row."""
    if interpret:
        return 4, 1, 1
    reread = batch * dim * rank
    if batch > 1 and reread >= _ROWS_MIN_REREAD:
        return 16, 2, 8 if 8 < batch <= 16 and reread >= _ROWS_BLOCKS8_MIN_REREAD else 16
    if batch >= 8 and reread >= _ROWS8_MIN_REREAD:
        return 8, 2, 8
    if batch > 1 and reread >= _ROWS4_MIN_REREAD:
        return 4, 1, 4
    if 8 < batch and batch * dim <= _FOUR_WARPS_MAX_ROWS_X_DIM and 32 * block_n <= 512:
        return 32, 4, 1
    block_d = 4
    while (block_d < 32 and (2 * block_d) * block_n <= 512
           and batch * triton.cdiv(dim, 2 * block_d) >= _MIN_PROGRAMS):
        block_d *= 2
    return block_d, 1, 1


def selective_state_update_fwd(state, x, dt, A, B, C, D=None, z=None, dt_bias=None,
                               dt_softplus=False, out_state=None, dt_proj_weight=None,
                               early_state=False):
    """One decode step. Returns ``(out [B, D] in x.dtype, new_state [B, D, N])``.

    With ``dt_proj_weight [D, R]``, ``dt`` is the low-rank ``[B, R]`` input of Mamba-1's
    dt_proj and ``dt = dt_low @ dt_proj_weight.T`` is computed in the kernel (one launch less
    per layer and step).

    The new state goes into ``out_state`` when given (it may be ``state`` itself: in-place
    update), else into a new tensor of ``state``'s dtype (float32 for the model's fp32 state).

    ``early_state``: with PDL, read the state (and, with EARLY_DT_PROJ, dt_proj's weight; with
    EARLY_BIAS_D, dt_bias and D; with EARLY_X_Z, x and z) before waiting for the kernel
    launched just before this one; only for callers that know that kernel does not write them
    and that x and z were written before it (the model's step: x_proj runs before).
    """
    check_float("x", x)
    if x.dim() != 2:
        raise ValueError(f"x must be [batch, dim], got shape {tuple(x.shape)}")
    batch, dim = x.shape
    check_float("A", A)
    if A.dim() != 2 or A.shape[0] != dim or A.shape[1] < 1:
        raise ValueError(f"A must be [dim={dim}, dstate], got shape {tuple(A.shape)}")
    dstate = A.shape[1]
    check_float("state", state)
    check_shape("state", state, (batch, dim, dstate))
    check_float("dt", dt)
    dt_rank = 0
    if dt_proj_weight is None:
        check_shape("dt", dt, (batch, dim))
    else:
        check_float("dt_proj_weight", dt_proj_weight)
        if dt_proj_weight.dim() != 2 or dt_proj_weight.shape[0] != dim:
            raise ValueError(f"dt_proj_weight must be [dim={dim}, rank], got {tuple(dt_proj_weight.shape)}")
        dt_rank = dt_proj_weight.shape[1]
        check_shape("dt", dt, (batch, dt_rank))
    check_float("B", B)
    check_float("C", C)
    gB, sB = bc_layout("B", B, batch, dim, dstate, None)
    gC, sC = bc_layout("C", C, batch, dim, dstate, None)
    if gB != gC:
        raise ValueError(f"B and C must have the same number of groups, got {gB} and {gC}")
    for name, t, shape in (("D", D, (dim,)), ("z", z, (batch, dim)), ("dt_bias", dt_bias, (dim,)),
                           ("out_state", out_state, (batch, dim, dstate))):
        check_float(name, t, allow_none=True)
        check_shape(name, t, shape)
    check_same_device(x.device, state=state, dt=dt, A=A, B=B, C=C, D=D, z=z, dt_bias=dt_bias,
                      out_state=out_state, dt_proj_weight=dt_proj_weight)
    device = x.device
    out = new_output((batch, dim), x.dtype, device)
    nstate = out_state if out_state is not None else new_output((batch, dim, dstate),
                                                                state.dtype, device)
    block_n = next_pow2(dstate)
    block_d, num_warps, rows = launch_config(batch, dim, block_n, use_interpreter(device),
                                             dt_rank)
    early = bool(early_state)
    early_reads = dict(EARLY_STATE=early, EARLY_W=early and EARLY_DT_PROJ, EARLY_BD=early and EARLY_BIAS_D,
                       EARLY_XZ=early and EARLY_X_Z)
    if rows > 1:  # blocks of ``rows`` rows per program (tensor-core dt_proj)
        W_dtype = dt_proj_weight.dtype if dt_proj_weight is not None else dt.dtype
        block_m = next_pow2(rows)
        grid = (triton.cdiv(dim, block_d), triton.cdiv(batch, block_m))
        kern, head = _state_update_rows_kernel, (batch, dim)
        tiles = dict(BLOCK_M=block_m, BLOCK_D=block_d,
                     IEEE=(use_interpreter(device) or dt.dtype != W_dtype
                           or torch.float32 in (dt.dtype, W_dtype)))
    else:
        grid = (triton.cdiv(dim, block_d), batch)
        kern, head = _state_update_kernel, (dim,)
        tiles = dict(BLOCK_D=block_d)
    launch(
        kern, grid, device,
        state, x, dt, A, B, C,
        D if D is not None else x, z if z is not None else x, dt_bias if dt_bias is not None else x,
        dt_proj_weight if dt_proj_weight is not None else x,
        out, nstate,
        *head, dstate, dim // gB, dt_rank,
        *(dt_proj_weight.stride() if dt_proj_weight is not None else (0, 0)),
        state.stride(0), state.stride(1), state.stride(2),
        x.stride(0), x.stride(1),
        dt.stride(0), dt.stride(1),
        A.stride(0), A.stride(1),
        *sB, *sC,
        D.stride(0) if D is not None else 0,
        *(z.stride() if z is not None else (0, 0)),
        dt_bias.stride(0) if dt_bias is not None else 0,
        nstate.stride(0), nstate.stride(1), nstate.stride(2),
        HAS_D=D is not None, HAS_Z=z is not None, HAS_BIAS=dt_bias is not None,
        SOFTPLUS=bool(dt_softplus), DT_PROJ=dt_proj_weight is not None, BLOCK_N=block_n,
        BLOCK_R=max(16, next_pow2(max(dt_rank, 1))), num_warps=num_warps, pdl=True, **tiles, **early_reads,
    )
    return out, nstate


__all__ = ["selective_state_update_fwd"]

"""Selective scan (Mamba-1 S6), forward and backward, in Triton.

Semantics: ``mamba_export.reference.selective_scan``.
    h_t = exp(dt_t * A) * h_{t-1} + dt_t * B_t * u_t,   y_t = <h_t, C_t> + D * u_t,
    out = y * silu(z),   dt = softplus(delta + delta_bias) (each part optional).

Scheme (forward). One program owns ``BLOCK_D`` channels of one sequence and walks L in chunks of
``BLOCK_T`` timesteps, carrying the state ``h [BLOCK_D, N]`` in registers from chunk to chunk.
Inside a chunk, for each state index n (unrolled), the affine recurrence over the chunk's
timesteps is a parallel scan (``tl.associative_scan`` on pairs (decay, drive)); the carried state
enters as ``h_t = P_t * h_in + S_t`` where (P, S) is the scanned pair. Every exp(dt*A) is
computed exactly once (the exp unit is the floor of this op), nothing of size
``B*D*L*N`` touches memory, and the chunk loop makes any L work (offsets along L in int64).

Forward kernels in use (``scan_config``): ``_scan_fwd_seq_kernel`` (sequential in time, 8
channels x 16 states per warp) at batch*dim >= 4096; ``_scan_fwd_split_kernel`` (L split into
segments: end states per segment, chained, segments rescanned; two launches) below that for
L >= 16384; the chunk kernel above otherwise.

Backward. A states pass (the forward kernel with ``STORE_CHUNKS``) writes the state at every
chunk start (``[B, D, L/BLOCK_T, N]`` fp32, 1/BLOCK_T of the scan's size). The backward kernel
walks the chunks in reverse: it recomputes the chunk's states from the stored start state,
runs the adjoint recurrence g_t = C_t*dy_t + exp(dt_{t+1}*A) g_{t+1} as a reverse scan, and
accumulates every gradient. dB/dC are sums over channels and use fp32 atomics (their order, and
so their last bits, vary from run to run); dA, dD, d(delta_bias) are per-sequence partial sums
reduced over the batch in PyTorch.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._common import (
    affine_combine,
    bc_layout,
    check_float,
    check_same_device,
    check_shape,
    device_fn,
    kernel,
    launch,
    new_output,
    next_pow2,
    _tracing,
    softplus_f32,
    use_interpreter,
)
from . import scan_gluon


@device_fn
def _channel_offsets(pid_d, dim, DSTATE: tl.constexpr, BLOCK_N: tl.constexpr,
                     BLOCK_D: tl.constexpr):
    """The program's channel block (every scan kernel): channel and state offsets and masks
    (mask_nd is [BLOCK_N, BLOCK_D]), and the channel offsets in int64. Integers only, so store
    addresses may derive from them (see _channel_inputs)."""
    offs_d = pid_d * BLOCK_D + tl.arange(0, BLOCK_D)
    mask_d = offs_d < dim
    offs_n = tl.arange(0, BLOCK_N)
    mask_n = offs_n < DSTATE
    return offs_d, mask_d, offs_n, mask_n, mask_n[:, None] & mask_d[None, :], offs_d.to(tl.int64)


@device_fn
def _channel_inputs(
    u_ptr, dt_ptr, z_ptr, B_ptr, C_ptr, A_ptr, D_ptr, bias_ptr, pid_d, b64, offs_d, mask_d,
    offs_n, mask_nd, d64, ch_per_group, su_b, su_d, sdt_b, sdt_d, sA_d, sA_n, sB_b, sB_g,
    sC_b, sC_g, sD, sbias, sz_b, sz_d,
    HAS_D: tl.constexpr, HAS_BIAS: tl.constexpr, BC_ROW: tl.constexpr, BLOCK_D: tl.constexpr,
):
    """The block's input rows (u, dt, z; B and C: one group for the whole block when BC_ROW, a
    scalar base, else a pointer per channel) and per-channel parameters (dt bias, D, A [N, D] in
    log2 units). For loads only: torch's mutation analysis (how torch.compile learns which
    tensors a wrap_triton kernel writes) counts every pointer passed to a device function as
    written once a store address derives from the function's results; Inductor then copies
    those inputs around the kernel (tests/test_inductor_mutations.py)."""
    u_rows = u_ptr + b64 * su_b + d64 * su_d
    dt_rows = dt_ptr + b64 * sdt_b + d64 * sdt_d
    z_rows = z_ptr + b64 * sz_b + d64 * sz_d
    if BC_ROW:
        grp = (pid_d * BLOCK_D) // ch_per_group
        B_ptrs = B_ptr + b64 * sB_b + grp.to(tl.int64) * sB_g
        C_ptrs = C_ptr + b64 * sC_b + grp.to(tl.int64) * sC_g
    else:
        grp = (offs_d // ch_per_group).to(tl.int64)
        B_ptrs = B_ptr + b64 * sB_b + grp * sB_g
        C_ptrs = C_ptr + b64 * sC_b + grp * sC_g
    bias = tl.zeros([BLOCK_D], dtype=tl.float32)
    if HAS_BIAS:
        bias = tl.load(bias_ptr + offs_d * sbias, mask=mask_d, other=0.0).to(tl.float32)
    Dv = tl.zeros([BLOCK_D], dtype=tl.float32)
    if HAS_D:
        Dv = tl.load(D_ptr + offs_d * sD, mask=mask_d, other=0.0).to(tl.float32)
    A2 = tl.load(A_ptr + offs_n[:, None] * sA_n + offs_d[None, :] * sA_d, mask=mask_nd,
                 other=0.0).to(tl.float32) * 1.4426950408889634
    return u_rows, dt_rows, z_rows, B_ptrs, C_ptrs, bias, Dv, A2


@kernel
def _scan_fwd_kernel(
    u_ptr, dt_ptr, A_ptr, B_ptr, C_ptr, D_ptr, z_ptr, bias_ptr, h0_ptr,
    out_ptr, hlast_ptr, hchunk_ptr, scr_ptr,
    dim, length, n_chunks, ch_per_group, scr_stride,
    su_b, su_d, su_l,
    sdt_b, sdt_d, sdt_l,
    sA_d, sA_n,
    sB_b, sB_g, sB_n, sB_l,
    sC_b, sC_g, sC_n, sC_l,
    sD, sbias,
    sz_b, sz_d, sz_l,
    sh0_b, sh0_d, sh0_n,
    HAS_D: tl.constexpr, HAS_Z: tl.constexpr, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr,
    HAS_H0: tl.constexpr, WRITE_OUT: tl.constexpr, STORE_CHUNKS: tl.constexpr,
    BC_ROW: tl.constexpr, DSTATE: tl.constexpr, BLOCK_N: tl.constexpr,
    BLOCK_D: tl.constexpr, BLOCK_T: tl.constexpr, LAST_LEVELS: tl.constexpr,
):
    pid_d = tl.program_id(0)
    b64 = tl.program_id(1).to(tl.int64)
    offs_d, mask_d, offs_n, mask_n, mask_nd, d64 = _channel_offsets(pid_d, dim, DSTATE, BLOCK_N,
                                                                   BLOCK_D)
    u_rows, dt_rows, z_rows, B_ptrs, C_ptrs, bias, Dv, _A2 = _channel_inputs(
        u_ptr, dt_ptr, z_ptr, B_ptr, C_ptr, A_ptr, D_ptr, bias_ptr, pid_d, b64, offs_d, mask_d,
        offs_n, mask_nd, d64, ch_per_group, su_b, su_d, sdt_b, sdt_d, sA_d, sA_n, sB_b, sB_g,
        sC_b, sC_g, sD, sbias, sz_b, sz_d, HAS_D, HAS_BIAS, BC_ROW, BLOCK_D)
    out_rows = out_ptr + (b64 * dim + d64) * length
    offs_t = tl.arange(0, BLOCK_T)
    # B/C rows shared by the block's channels are loaded as [BLOCK_D, BLOCK_T] tiles of
    # repeated addresses: same layout as u (no layout conversion), repeats hit L1
    bc_off = (offs_d * 0)[:, None] + (offs_t * sB_l)[None, :]
    bc_off_c = (offs_d * 0)[:, None] + (offs_t * sC_l)[None, :]
    zero64 = b64 * 0  # int64 scalar: chunk offsets along L in 64 bits
    mask_dn = mask_d[:, None] & mask_n[None, :]
    if HAS_H0:
        h = tl.load(h0_ptr + b64 * sh0_b + d64[:, None] * sh0_d + offs_n[None, :] * sh0_n,
                    mask=mask_dn, other=0.0).to(tl.float32)
    else:
        h = tl.zeros([BLOCK_D, BLOCK_N], dtype=tl.float32)
    row = b64 * dim + d64
    chunk_rows = hchunk_ptr + (row * n_chunks)[:, None] * DSTATE + offs_n[None, :]
    # The carried state lives in a ping-pong scratch [2, B, D, N] (L1/L2 resident): chunk c
    # reads buffer c % 2 and writes buffer (c + 1) % 2; a CTA barrier separates chunks.
    scr_rows = scr_ptr + row * DSTATE
    tl.store(scr_rows[:, None] + offs_n[None, :], h, mask=mask_dn)
    tl.debug_barrier()
    # last column of a [BLOCK_D, BLOCK_T] tile: LAST_LEVELS in-thread halvings (reshape+split
    # keep the odd half) leave [BLOCK_D, BLOCK_T >> LAST_LEVELS]; its last column is stored
    n_last: tl.constexpr = BLOCK_T >> LAST_LEVELS
    last_col = tl.arange(0, n_last)
    last_mask = mask_d[:, None] & (last_col == n_last - 1)[None, :]
    last_off = (last_col * 0)[None, :]

    for c in range(n_chunks):
        t0 = zero64 + c * BLOCK_T
        t = c * BLOCK_T + offs_t
        mask_t = t < length
        mask = mask_d[:, None] & mask_t[None, :]
        rd_rows = scr_rows + (c % 2) * scr_stride
        wr_rows = scr_rows + ((c + 1) % 2) * scr_stride
        u = tl.load(u_rows[:, None] + t0 * su_l + (offs_t * su_l)[None, :], mask=mask,
                    other=0.0).to(tl.float32)
        dt = tl.load(dt_rows[:, None] + t0 * sdt_l + (offs_t * sdt_l)[None, :], mask=mask,
                     other=0.0).to(tl.float32)
        if HAS_BIAS:
            dt = dt + bias[:, None]
        if SOFTPLUS:
            dt = softplus_f32(dt)
        dt = tl.where(mask, dt, 0.0)
        dtu = dt * u
        if STORE_CHUNKS:
            h = tl.load(rd_rows[:, None] + offs_n[None, :], mask=mask_dn, other=0.0)
            tl.store(chunk_rows + c * DSTATE, h, mask=mask_dn)
        y = tl.zeros([BLOCK_D, BLOCK_T], dtype=tl.float32)
        for n in range(DSTATE):
            h_in = tl.load(rd_rows + n, mask=mask_d, other=0.0)
            A2 = tl.load(A_ptr + offs_d * sA_d + n * sA_n, mask=mask_d, other=0.0).to(tl.float32)
            A2 = A2 * 1.4426950408889634
            if BC_ROW:
                Bn = tl.load(B_ptrs + n * sB_n + t0 * sB_l + bc_off, mask=mask,
                             other=0.0).to(tl.float32)
            else:
                Bn = tl.load(B_ptrs[:, None] + n * sB_n + t0 * sB_l + (offs_t * sB_l)[None, :],
                             mask=mask, other=0.0).to(tl.float32)
            a = tl.exp2(dt * A2[:, None])
            drive = dtu * Bn
            P, S = tl.associative_scan((a, drive), axis=1, combine_fn=affine_combine)
            hs = P * h_in[:, None] + S
            if WRITE_OUT:
                if BC_ROW:
                    Cn = tl.load(C_ptrs + n * sC_n + t0 * sC_l + bc_off_c, mask=mask,
                                 other=0.0).to(tl.float32)
                else:
                    Cn = tl.load(C_ptrs[:, None] + n * sC_n + t0 * sC_l
                                 + (offs_t * sC_l)[None, :], mask=mask, other=0.0).to(tl.float32)
                y += hs * Cn
            last = hs
            if LAST_LEVELS >= 1:
                _, last = tl.split(tl.reshape(last, [BLOCK_D, BLOCK_T // 2, 2]))
            if LAST_LEVELS >= 2:
                _, last = tl.split(tl.reshape(last, [BLOCK_D, BLOCK_T // 4, 2]))
            if LAST_LEVELS >= 3:
                _, last = tl.split(tl.reshape(last, [BLOCK_D, BLOCK_T // 8, 2]))
            if LAST_LEVELS >= 4:
                _, last = tl.split(tl.reshape(last, [BLOCK_D, BLOCK_T // 16, 2]))
            tl.store(wr_rows[:, None] + n + last_off, last, mask=last_mask)
        if WRITE_OUT:
            if HAS_D:
                y += Dv[:, None] * u
            if HAS_Z:
                z = tl.load(z_rows[:, None] + t0 * sz_l + (offs_t * sz_l)[None, :], mask=mask,
                            other=0.0).to(tl.float32)
                y = y * (z * tl.sigmoid(z))
            tl.store(out_rows[:, None] + t0 + offs_t[None, :],
                     y.to(out_ptr.dtype.element_ty), mask=mask)
        tl.debug_barrier()

    h = tl.load(scr_rows[:, None] + (n_chunks % 2) * scr_stride + offs_n[None, :], mask=mask_dn,
                other=0.0)
    tl.store(hlast_ptr + row[:, None] * DSTATE + offs_n[None, :], h, mask=mask_dn)


# ---------------------------------------------------------------------------------------------
# sequential-in-time forward (seq and split kernels): [BLOCK_T, BLOCK_N, BLOCK_D] tiles
# ---------------------------------------------------------------------------------------------


@device_fn
def _seq_chunk_tiles(
    u_rows, dt_rows, z_rows, B_ptrs, C_ptrs, t, offs_t, offs_n, mask, mask_tn, mask_d,
    su_l, sdt_l, sz_l, sB_n, sB_l, sC_n, sC_l,
    LOAD_Z: tl.constexpr, LOAD_C: tl.constexpr, BC_ROW: tl.constexpr,
):
    """The tiles of the chunk starting at step ``t`` (int64): u, dt, z [BLOCK_T, BLOCK_D]; B, C
    [BLOCK_T, BLOCK_N] (BC_ROW) or [BLOCK_T, BLOCK_N, BLOCK_D]. z and C only when asked (else
    placeholders that are never read)."""
    u = tl.load(u_rows[None, :] + t * su_l + (offs_t * su_l)[:, None], mask=mask, other=0.0)
    dt = tl.load(dt_rows[None, :] + t * sdt_l + (offs_t * sdt_l)[:, None], mask=mask, other=0.0)
    z = u
    if LOAD_Z:
        z = tl.load(z_rows[None, :] + t * sz_l + (offs_t * sz_l)[:, None], mask=mask, other=0.0)
    if BC_ROW:
        Bt = tl.load(B_ptrs + (t + offs_t)[:, None] * sB_l + offs_n[None, :] * sB_n,
                     mask=mask_tn, other=0.0)
        Ct = Bt
        if LOAD_C:
            Ct = tl.load(C_ptrs + (t + offs_t)[:, None] * sC_l + offs_n[None, :] * sC_n,
                         mask=mask_tn, other=0.0)
    else:
        m3 = mask_tn[:, :, None] & mask_d[None, None, :]
        Bt = tl.load(B_ptrs[None, None, :] + (t + offs_t)[:, None, None] * sB_l
                     + (offs_n * sB_n)[None, :, None], mask=m3, other=0.0)
        Ct = Bt
        if LOAD_C:
            Ct = tl.load(C_ptrs[None, None, :] + (t + offs_t)[:, None, None] * sC_l
                         + (offs_n * sC_n)[None, :, None], mask=m3, other=0.0)
    return u, dt, z, Bt, Ct


@device_fn
def _seq_discretize(dt, bias, mask, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr):
    """A chunk's dt [BLOCK_T, BLOCK_D] in float32, bias added, softplus applied, 0 at masked
    steps (decay 1, drive 0: the state is carried).

    The kernels call this on the prefetched tile at the end of the previous iteration and carry
    the result into the next: the loop-carried value keeps the load layout, where each thread
    computes softplus once per (t, d). Computed inside the chunk body instead, Triton 3.6 moves
    the layout conversion up to the bf16 load and evaluates softplus in the 3-D tile's layout,
    4x replicated over the state lanes: 1234 vs 809 SASS instructions per chunk (sm_90, bf16,
    BLOCK_T 16, the runtime's specialisation; docs/kernel_notes.md v10)."""
    dtf = dt.to(tl.float32)
    if HAS_BIAS:
        dtf = dtf + bias[None, :]
    if SOFTPLUS:
        dtf = softplus_f32(dtf)
    return tl.where(mask, dtf, 0.0)


@device_fn
def _seq_chunk_states(u, dtf, Bt, h, A2, first, is_last, BC_ROW: tl.constexpr):
    """One chunk of the recurrence from the carried state ``h [BLOCK_N, BLOCK_D]`` and the
    chunk's discretised dt (:func:`_seq_discretize`): the states after every step ``hs
    [BLOCK_T, BLOCK_N, BLOCK_D]``, the state after the last step, and the chunk's float32 u.

    Time is in-thread (the tile layout's order), so the associative scan is a sequential FFMA
    chain (its decay products are dead code) and the last step is a register pick plus one add."""
    uf = u.to(tl.float32)
    dtu = dtf * uf
    if BC_ROW:
        Bf = Bt.to(tl.float32)[:, :, None]
    else:
        Bf = Bt.to(tl.float32)
    a = tl.exp2(dtf[:, None, :] * A2[None, :, :])
    drive = dtu[:, None, :] * Bf
    drive = tl.where(first, drive + a * h[None, :, :], drive)
    _, hs = tl.associative_scan((a, drive), axis=0, combine_fn=affine_combine)
    h = tl.sum(tl.where(is_last, hs, 0.0), axis=0)
    return hs, h, uf


@device_fn
def _seq_chunk_out(hs, Ct, uf, z, Dv, HAS_D: tl.constexpr, HAS_Z: tl.constexpr,
                   BC_ROW: tl.constexpr):
    """The chunk's outputs y [BLOCK_T, BLOCK_D] = C . h (+ D u) (* silu(z)), in float32."""
    if BC_ROW:
        Cf = Ct.to(tl.float32)[:, :, None]
    else:
        Cf = Ct.to(tl.float32)
    y = tl.sum(hs * Cf, axis=1)
    if HAS_D:
        y += Dv[None, :] * uf
    if HAS_Z:
        zf = z.to(tl.float32)
        y = y * (zf * tl.sigmoid(zf))
    return y


@kernel
def _scan_fwd_seq_kernel(
    u_ptr, dt_ptr, A_ptr, B_ptr, C_ptr, D_ptr, z_ptr, bias_ptr, h0_ptr,
    out_ptr, hlast_ptr,
    dim, length, n_chunks, ch_per_group,
    su_b, su_d, su_l,
    sdt_b, sdt_d, sdt_l,
    sA_d, sA_n,
    sB_b, sB_g, sB_n, sB_l,
    sC_b, sC_g, sC_n, sC_l,
    sD, sbias,
    sz_b, sz_d, sz_l,
    sh0_b, sh0_d, sh0_n,
    HAS_D: tl.constexpr, HAS_Z: tl.constexpr, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr,
    HAS_H0: tl.constexpr, BC_ROW: tl.constexpr, DSTATE: tl.constexpr, BLOCK_N: tl.constexpr,
    BLOCK_D: tl.constexpr, BLOCK_T: tl.constexpr, PREFETCH: tl.constexpr,
):
    """Sequential-in-time forward (v6). Tiles are [BLOCK_T, BLOCK_N, BLOCK_D] (time, state,
    channel): with Triton's default layout for this order, lanes cover channels first (up to
    BLOCK_D) and then states, and time is entirely in-thread. So the recurrence over a chunk's
    BLOCK_T steps is an in-thread sequential scan (one FFMA per element on the critical path; the
    scan's decay products are dead code and removed), the y contraction over N is in-thread adds
    plus log2(lanes on N) shuffle rounds, and no shuffle scan is needed. One warp per program."""
    pid_b = tl.program_id(1)
    b64 = pid_b.to(tl.int64)
    pid_d = tl.program_id(0)
    offs_d, mask_d, offs_n, mask_n, mask_nd, d64 = _channel_offsets(pid_d, dim, DSTATE, BLOCK_N,
                                                                   BLOCK_D)
    u_rows, dt_rows, z_rows, B_ptrs, C_ptrs, bias, Dv, A2 = _channel_inputs(
        u_ptr, dt_ptr, z_ptr, B_ptr, C_ptr, A_ptr, D_ptr, bias_ptr, pid_d, b64, offs_d, mask_d,
        offs_n, mask_nd, d64, ch_per_group, su_b, su_d, sdt_b, sdt_d, sA_d, sA_n, sB_b, sB_g,
        sC_b, sC_g, sD, sbias, sz_b, sz_d, HAS_D, HAS_BIAS, BC_ROW, BLOCK_D)
    out_rows = out_ptr + (b64 * dim + d64) * length
    offs_t = tl.arange(0, BLOCK_T)
    if HAS_H0:
        h = tl.load(h0_ptr + b64 * sh0_b + d64[None, :] * sh0_d + offs_n[:, None] * sh0_n,
                    mask=mask_nd, other=0.0).to(tl.float32)
    else:
        h = tl.zeros([BLOCK_N, BLOCK_D], dtype=tl.float32)
    first = (offs_t == 0)[:, None, None]
    is_last = (offs_t == BLOCK_T - 1)[:, None, None]

    # software prefetch: the tiles of chunk c + PREFETCH (1 or 2) are loaded before chunk c is
    # computed, so the loads' latency hides behind PREFETCH chunks of arithmetic (few warps per
    # SM at small batch; docs/kernel_notes.md v7 and v16)
    t0 = b64 * 0  # int64: chunk offsets along L in 64 bits
    mask_t = offs_t < length
    mask = mask_t[:, None] & mask_d[None, :]
    u, dt, z, Bt, Ct = _seq_chunk_tiles(
        u_rows, dt_rows, z_rows, B_ptrs, C_ptrs, t0, offs_t, offs_n, mask,
        mask_t[:, None] & mask_n[None, :], mask_d, su_l, sdt_l, sz_l, sB_n, sB_l, sC_n, sC_l,
        HAS_Z, True, BC_ROW)
    dtf = _seq_discretize(dt, bias, mask, HAS_BIAS, SOFTPLUS)
    if PREFETCH == 2:  # chunk 1's tiles, carried one iteration ahead of chunk c + 1's
        mask_t1 = (BLOCK_T + offs_t) < length
        mask1 = mask_t1[:, None] & mask_d[None, :]
        u1, dt1, z1, B1, C1 = _seq_chunk_tiles(
            u_rows, dt_rows, z_rows, B_ptrs, C_ptrs, t0 + BLOCK_T, offs_t, offs_n, mask1,
            mask_t1[:, None] & mask_n[None, :], mask_d, su_l, sdt_l, sz_l, sB_n, sB_l, sC_n,
            sC_l, HAS_Z, True, BC_ROW)
    for c in range(n_chunks):
        # chunk c + PREFETCH's tiles (fully masked past the end: no memory traffic)
        mask_tp = ((c + PREFETCH) * BLOCK_T + offs_t) < length
        maskp = mask_tp[:, None] & mask_d[None, :]
        u_p, dt_p, z_p, B_p, C_p = _seq_chunk_tiles(
            u_rows, dt_rows, z_rows, B_ptrs, C_ptrs, t0 + PREFETCH * BLOCK_T, offs_t, offs_n,
            maskp, mask_tp[:, None] & mask_n[None, :], mask_d, su_l, sdt_l, sz_l, sB_n, sB_l,
            sC_n, sC_l, HAS_Z, True, BC_ROW)
        hs, h, uf = _seq_chunk_states(u, dtf, Bt, h, A2, first, is_last, BC_ROW)
        y = _seq_chunk_out(hs, Ct, uf, z, Dv, HAS_D, HAS_Z, BC_ROW)
        tl.store(out_rows[None, :] + t0 + offs_t[:, None], y.to(out_ptr.dtype.element_ty),
                 mask=mask)
        t0 += BLOCK_T
        if PREFETCH == 2:
            mask_t1 = ((c + 1) * BLOCK_T + offs_t) < length
            mask = mask_t1[:, None] & mask_d[None, :]
            u, z, Bt, Ct = u1, z1, B1, C1
            dtf = _seq_discretize(dt1, bias, mask, HAS_BIAS, SOFTPLUS)  # next chunk's (see there)
            u1, dt1, z1, B1, C1 = u_p, dt_p, z_p, B_p, C_p
        else:
            mask = maskp
            u, z, Bt, Ct = u_p, z_p, B_p, C_p
            dtf = _seq_discretize(dt_p, bias, maskp, HAS_BIAS, SOFTPLUS)  # next chunk's (see there)

    tl.store(hlast_ptr + (b64 * dim + d64)[None, :] * DSTATE + offs_n[:, None], h, mask=mask_nd)


@kernel
def _scan_fwd_split_kernel(
    u_ptr, dt_ptr, A_ptr, B_ptr, C_ptr, D_ptr, z_ptr, bias_ptr, h0_ptr,
    out_ptr, hlast_ptr, hseg_ptr, dtsum_ptr,
    dim, length, seg_chunks, n_seg, ch_per_group,
    su_b, su_d, su_l,
    sdt_b, sdt_d, sdt_l,
    sA_d, sA_n,
    sB_b, sB_g, sB_n, sB_l,
    sC_b, sC_g, sC_n, sC_l,
    sD, sbias,
    sz_b, sz_d, sz_l,
    sh0_b, sh0_d, sh0_n,
    STATES_ONLY: tl.constexpr,
    HAS_D: tl.constexpr, HAS_Z: tl.constexpr, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr,
    HAS_H0: tl.constexpr, BC_ROW: tl.constexpr, DSTATE: tl.constexpr, BLOCK_N: tl.constexpr,
    BLOCK_D: tl.constexpr, BLOCK_T: tl.constexpr,
):
    """L split into ``n_seg`` segments of ``seg_chunks * BLOCK_T`` steps (v8), for small batch
    where the sequential kernel has too few warps. Same tiles and chunk loop as
    ``_scan_fwd_seq_kernel``; grid (channel blocks, segments, batch).

    ``STATES_ONLY`` (pass 1, segments 0 .. n_seg-2): run the segment from a zero state; store its
    end state ``hseg [B, n_seg-1, N, D]`` and the sum of its dt ``dtsum [B, n_seg-1, D]`` (the
    segment's total decay is exp(A * dtsum): one exp per channel and state). No C, z, outputs.

    Otherwise (pass 2, every segment): the segment's true start state is chained from h0 over
    the earlier segments, h <- exp(A * dtsum_j) * h + hseg_j (j < s, a few loads), then the
    segment is scanned from it writing outputs; the last segment stores the final state."""
    pid_s = tl.program_id(1)
    b64 = tl.program_id(2).to(tl.int64)
    pid_d = tl.program_id(0)
    offs_d, mask_d, offs_n, mask_n, mask_nd, d64 = _channel_offsets(pid_d, dim, DSTATE, BLOCK_N,
                                                                   BLOCK_D)
    u_rows, dt_rows, z_rows, B_ptrs, C_ptrs, bias, Dv, A2 = _channel_inputs(
        u_ptr, dt_ptr, z_ptr, B_ptr, C_ptr, A_ptr, D_ptr, bias_ptr, pid_d, b64, offs_d, mask_d,
        offs_n, mask_nd, d64, ch_per_group, su_b, su_d, sdt_b, sdt_d, sA_d, sA_n, sB_b, sB_g,
        sC_b, sC_g, sD, sbias, sz_b, sz_d, HAS_D, HAS_BIAS, BC_ROW, BLOCK_D)
    out_rows = out_ptr + (b64 * dim + d64) * length
    offs_t = tl.arange(0, BLOCK_T)
    # per-segment scratch rows: [B, n_seg - 1, N, D] and [B, n_seg - 1, D]
    seg_nd = offs_n[:, None] * dim + offs_d[None, :]
    hseg_b = hseg_ptr + b64 * (n_seg - 1) * DSTATE * dim
    dtsum_b = dtsum_ptr + b64 * (n_seg - 1) * dim
    if STATES_ONLY:
        h = tl.zeros([BLOCK_N, BLOCK_D], dtype=tl.float32)
        dsum = tl.zeros([BLOCK_T, BLOCK_D], dtype=tl.float32)
    else:
        if HAS_H0:
            h = tl.load(h0_ptr + b64 * sh0_b + d64[None, :] * sh0_d + offs_n[:, None] * sh0_n,
                        mask=mask_nd, other=0.0).to(tl.float32)
        else:
            h = tl.zeros([BLOCK_N, BLOCK_D], dtype=tl.float32)
        for j in range(pid_s):
            ds = tl.load(dtsum_b + j * dim + offs_d, mask=mask_d, other=0.0)
            hj = tl.load(hseg_b + j * DSTATE * dim + seg_nd, mask=mask_nd, other=0.0)
            h = tl.exp2(A2 * ds[None, :]) * h + hj
    first = (offs_t == 0)[:, None, None]
    is_last = (offs_t == BLOCK_T - 1)[:, None, None]

    seg_t0 = pid_s.to(tl.int64) * seg_chunks * BLOCK_T
    n_my = tl.minimum(seg_chunks, (length - seg_t0 + BLOCK_T - 1) // BLOCK_T)
    seg_end = tl.minimum(seg_t0 + seg_chunks * BLOCK_T, length)
    t0 = seg_t0
    mask_t = (t0 + offs_t) < seg_end
    mask = mask_t[:, None] & mask_d[None, :]
    u, dt, z, Bt, Ct = _seq_chunk_tiles(
        u_rows, dt_rows, z_rows, B_ptrs, C_ptrs, t0, offs_t, offs_n, mask,
        mask_t[:, None] & mask_n[None, :], mask_d, su_l, sdt_l, sz_l, sB_n, sB_l, sC_n, sC_l,
        HAS_Z and not STATES_ONLY, not STATES_ONLY, BC_ROW)
    dtf = _seq_discretize(dt, bias, mask, HAS_BIAS, SOFTPLUS)
    for c in range(n_my):
        # software prefetch of the next chunk (as in the seq kernel)
        t1 = t0 + BLOCK_T
        mask_t1 = (t1 + offs_t) < seg_end
        mask1 = mask_t1[:, None] & mask_d[None, :]
        u_nx, dt_nx, z_nx, B_nx, C_nx = _seq_chunk_tiles(
            u_rows, dt_rows, z_rows, B_ptrs, C_ptrs, t1, offs_t, offs_n, mask1,
            mask_t1[:, None] & mask_n[None, :], mask_d, su_l, sdt_l, sz_l, sB_n, sB_l, sC_n, sC_l,
            HAS_Z and not STATES_ONLY, not STATES_ONLY, BC_ROW)
        hs, h, uf = _seq_chunk_states(u, dtf, Bt, h, A2, first, is_last, BC_ROW)
        if STATES_ONLY:
            dsum += dtf
        else:
            y = _seq_chunk_out(hs, Ct, uf, z, Dv, HAS_D, HAS_Z, BC_ROW)
            tl.store(out_rows[None, :] + t0 + offs_t[:, None], y.to(out_ptr.dtype.element_ty),
                     mask=mask)
        t0 = t1
        mask = mask1
        u, z, Bt, Ct = u_nx, z_nx, B_nx, C_nx
        dtf = _seq_discretize(dt_nx, bias, mask1, HAS_BIAS, SOFTPLUS)  # next chunk's (see there)

    if STATES_ONLY:
        tl.store(hseg_b + pid_s * DSTATE * dim + seg_nd, h, mask=mask_nd)
        tl.store(dtsum_b + pid_s * dim + offs_d, tl.sum(dsum, axis=0), mask=mask_d)
    else:
        if pid_s == n_seg - 1:
            tl.store(hlast_ptr + (b64 * dim + d64)[None, :] * DSTATE + offs_n[:, None], h,
                     mask=mask_nd)


@kernel
def _scan_bwd_kernel(
    u_ptr, dt_ptr, A_ptr, B_ptr, C_ptr, D_ptr, z_ptr, bias_ptr,
    hchunk_ptr, dout_ptr, dlast_ptr,
    du_ptr, ddt_ptr, dz_ptr, dB_ptr, dC_ptr, dA_ptr, dD_ptr, dbias_ptr, dh0_ptr,
    dim, length, n_chunks, ch_per_group, groups,
    su_b, su_d, su_l,
    sdt_b, sdt_d, sdt_l,
    sA_d, sA_n,
    sB_b, sB_g, sB_n, sB_l,
    sC_b, sC_g, sC_n, sC_l,
    sD, sbias,
    sz_b, sz_d, sz_l,
    sdo_b, sdo_d, sdo_l,
    sdl_b, sdl_d, sdl_n,
    HAS_D: tl.constexpr, HAS_Z: tl.constexpr, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr,
    HAS_DLAST: tl.constexpr, BC_ROW: tl.constexpr, DSTATE: tl.constexpr,
    BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_T: tl.constexpr,
):
    pid_d = tl.program_id(0)
    b64 = tl.program_id(1).to(tl.int64)
    offs_d, mask_d, offs_n, mask_n, mask_nd, d64 = _channel_offsets(pid_d, dim, DSTATE, BLOCK_N,
                                                                   BLOCK_D)
    u_rows, dt_rows, z_rows, B_ptrs, C_ptrs, bias, Dv, _A2 = _channel_inputs(
        u_ptr, dt_ptr, z_ptr, B_ptr, C_ptr, A_ptr, D_ptr, bias_ptr, pid_d, b64, offs_d, mask_d,
        offs_n, mask_nd, d64, ch_per_group, su_b, su_d, sdt_b, sdt_d, sA_d, sA_n, sB_b, sB_g,
        sC_b, sC_g, sD, sbias, sz_b, sz_d, HAS_D, HAS_BIAS, BC_ROW, BLOCK_D)
    offs_t = tl.arange(0, BLOCK_T)
    # B/C rows shared by the block's channels are loaded as [BLOCK_D, BLOCK_T] tiles of
    # repeated addresses: same layout as u (no layout conversion), repeats hit L1
    bc_off = (offs_d * 0)[:, None] + (offs_t * sB_l)[None, :]
    bc_off_c = (offs_d * 0)[:, None] + (offs_t * sC_l)[None, :]
    mask_dn = mask_d[:, None] & mask_n[None, :]
    zero64 = b64 * 0  # int64 scalar: chunk offsets along L in 64 bits
    row = b64 * dim + d64  # [BLOCK_D] row index of contiguous [B, D, ...] tensors
    do_rows = dout_ptr + b64 * sdo_b + d64 * sdo_d
    # dB / dC: float32 [B, G, N, L], one row per group (BC_ROW) or per channel; the group as in
    # _channel_inputs, computed again here because store addresses must not derive from it
    if BC_ROW:
        grp = (pid_d * BLOCK_D) // ch_per_group
    else:
        grp = (offs_d // ch_per_group).to(tl.int64)
    gB_ptrs = dB_ptr + ((b64 * groups + grp) * DSTATE) * length
    gC_ptrs = dC_ptr + ((b64 * groups + grp) * DSTATE) * length

    if HAS_DLAST:
        gc = tl.load(dlast_ptr + b64 * sdl_b + d64[:, None] * sdl_d + offs_n[None, :] * sdl_n,
                     mask=mask_dn, other=0.0).to(tl.float32)
    else:
        gc = tl.zeros([BLOCK_D, BLOCK_N], dtype=tl.float32)
    dA_acc = tl.zeros([BLOCK_D, BLOCK_N], dtype=tl.float32)
    dD_acc = tl.zeros([BLOCK_D], dtype=tl.float32)
    dbias_acc = tl.zeros([BLOCK_D], dtype=tl.float32)

    for ci in range(n_chunks):
        c = n_chunks - 1 - ci
        t0 = zero64 + c * BLOCK_T
        t = c * BLOCK_T + offs_t
        mask_t = t < length
        mask = mask_d[:, None] & mask_t[None, :]
        mask_next = mask_d[:, None] & (t + 1 < length)[None, :]
        u = tl.load(u_rows[:, None] + t0 * su_l + (offs_t * su_l)[None, :], mask=mask,
                    other=0.0).to(tl.float32)
        dt_raw = tl.load(dt_rows[:, None] + t0 * sdt_l + (offs_t * sdt_l)[None, :], mask=mask,
                         other=0.0).to(tl.float32)
        dtn = tl.load(dt_rows[:, None] + t0 * sdt_l + ((offs_t + 1) * sdt_l)[None, :],
                      mask=mask_next, other=0.0).to(tl.float32)
        if HAS_BIAS:
            dt_raw = dt_raw + bias[:, None]
            dtn = dtn + bias[:, None]
        if SOFTPLUS:
            dt = softplus_f32(dt_raw)
            dtn = softplus_f32(dtn)
        else:
            dt = dt_raw
        dt = tl.where(mask, dt, 0.0)
        dtn = tl.where(mask_next, dtn, 0.0)
        dout = tl.load(do_rows[:, None] + t0 * sdo_l + (offs_t * sdo_l)[None, :], mask=mask,
                       other=0.0).to(tl.float32)
        if HAS_Z:
            z = tl.load(z_rows[:, None] + t0 * sz_l + (offs_t * sz_l)[None, :], mask=mask,
                        other=0.0).to(tl.float32)
            sz = tl.sigmoid(z)
            dy = dout * z * sz
        else:
            dy = dout
        dtu = dt * u
        y = tl.zeros([BLOCK_D, BLOCK_T], dtype=tl.float32)
        ddt = tl.zeros([BLOCK_D, BLOCK_T], dtype=tl.float32)
        du = tl.zeros([BLOCK_D, BLOCK_T], dtype=tl.float32)
        chunk_rows = hchunk_ptr + (row * n_chunks + c) * DSTATE
        for n in range(DSTATE):
            An = tl.load(A_ptr + offs_d * sA_d + n * sA_n, mask=mask_d, other=0.0).to(tl.float32)
            A2 = An * 1.4426950408889634
            if BC_ROW:
                Bn = tl.load(B_ptrs + n * sB_n + t0 * sB_l + bc_off, mask=mask,
                             other=0.0).to(tl.float32)
                Cn = tl.load(C_ptrs + n * sC_n + t0 * sC_l + bc_off_c, mask=mask,
                             other=0.0).to(tl.float32)
            else:
                Bn = tl.load(B_ptrs[:, None] + n * sB_n + t0 * sB_l + (offs_t * sB_l)[None, :],
                             mask=mask, other=0.0).to(tl.float32)
                Cn = tl.load(C_ptrs[:, None] + n * sC_n + t0 * sC_l + (offs_t * sC_l)[None, :],
                             mask=mask, other=0.0).to(tl.float32)
            # states of this chunk, recomputed from the stored chunk-start state
            a = tl.exp2(dt * A2[:, None])
            drive = dtu * Bn
            P, S = tl.associative_scan((a, drive), axis=1, combine_fn=affine_combine)
            h_in = tl.load(chunk_rows + n, mask=mask_d, other=0.0)
            hs = P * h_in[:, None] + S
            if HAS_Z:
                y += hs * Cn
            # adjoint: g_t = C_t dy_t + exp(dt_{t+1} A) g_{t+1}
            a_next = tl.exp2(dtn * A2[:, None])
            x = Cn * dy
            Pr, G = tl.associative_scan((a_next, x), axis=1, combine_fn=affine_combine,
                                        reverse=True)
            g_in = tl.sum(tl.where(offs_n[None, :] == n, gc, 0.0), axis=1)
            g = G + Pr * g_in[:, None]
            g_first = tl.sum(tl.where(offs_t[None, :] == 0, g, 0.0), axis=1)
            gc = tl.where(offs_n[None, :] == n, g_first[:, None], gc)
            # a_t * h_{t-1} = h_t - drive_t
            ghb = g * (hs - drive)
            gdt = g * dt
            ddt += An[:, None] * ghb + g * Bn * u
            du += gdt * Bn
            dA_col = tl.sum(dt * ghb, axis=1)
            dA_acc += tl.where(offs_n[None, :] == n, dA_col[:, None], 0.0)
            gB = gdt * u
            gC = dy * hs
            if BC_ROW:
                tl.atomic_add(gB_ptrs + n * length + t, tl.sum(gB, axis=0), mask=mask_t)
                tl.atomic_add(gC_ptrs + n * length + t, tl.sum(gC, axis=0), mask=mask_t)
            else:
                tl.atomic_add(gB_ptrs[:, None] + n * length + t[None, :], gB, mask=mask)
                tl.atomic_add(gC_ptrs[:, None] + n * length + t[None, :], gC, mask=mask)
        if HAS_D:
            du += dy * Dv[:, None]
        dD_acc += tl.sum(dy * u, axis=1)
        if SOFTPLUS:
            ddt = ddt * tl.sigmoid(dt_raw)
        ddt = tl.where(mask, ddt, 0.0)
        dbias_acc += tl.sum(ddt, axis=1)
        out_off = row[:, None] * length + t[None, :]
        tl.store(du_ptr + out_off, du.to(du_ptr.dtype.element_ty), mask=mask)
        tl.store(ddt_ptr + out_off, ddt.to(ddt_ptr.dtype.element_ty), mask=mask)
        if HAS_Z:
            if HAS_D:
                y += Dv[:, None] * u
            dz = dout * y * sz * (1.0 + z * (1.0 - sz))
            tl.store(dz_ptr + out_off, dz.to(dz_ptr.dtype.element_ty), mask=mask)

    # d h0 = exp(dt_0 * A) * g_0  (g_0 is the carried adjoint after the first chunk)
    mask0 = mask_d & ((offs_d * 0) < length)
    dt0 = tl.load(dt_rows, mask=mask0, other=0.0).to(tl.float32)
    if HAS_BIAS:
        dt0 = dt0 + bias
    if SOFTPLUS:
        dt0 = softplus_f32(dt0)
    dt0 = tl.where(mask0, dt0, 0.0)
    A_t = tl.load(A_ptr + offs_d[:, None] * sA_d + offs_n[None, :] * sA_n, mask=mask_dn,
                  other=0.0).to(tl.float32)
    dh0 = tl.exp2(dt0[:, None] * A_t * 1.4426950408889634) * gc
    st_off = row[:, None] * DSTATE + offs_n[None, :]
    tl.store(dh0_ptr + st_off, dh0, mask=mask_dn)
    tl.store(dA_ptr + st_off, dA_acc, mask=mask_dn)
    tl.store(dD_ptr + row, dD_acc, mask=mask_d)
    tl.store(dbias_ptr + row, dbias_acc, mask=mask_d)


# ---------------------------------------------------------------------------------------------
# launch configuration (deterministic in shapes and dtype: no autotuning)
# ---------------------------------------------------------------------------------------------

_TARGET_PROGRAMS = 4 * 132  # enough programs to fill an H100 several deep


def scan_config(batch: int, dim: int, length: int, dtype: torch.dtype, device: torch.device,
                backward: bool = False, kind: str | None = None,
                channel_contiguous: bool = False, allow_gluon: bool = True) -> dict:
    """Block sizes and warps for the scan kernels, from shapes and dtype only.

    Forward: ``kind="seq"`` (the sequential-in-time kernel), ``"chunk"`` (the chunk-scan kernel,
    which the backward's states pass uses), ``"split"`` (L split into segments, two launches)
    or None: seq when batch * dim >= 4096 (H100 sweep of 2026-11-23: seq faster at B*D = 5120
    and 6144; split slower there, docs/kernel_notes.md v8), else split when L >= 8192 (H100
    2026-11-23, B1 D1536: 27-31 vs 53 ns/token for chunk at L = 8K..1M), else chunk. The
    interpreter defaults to seq. ``channel_contiguous``: u/delta/z have channel stride 1 (the
    model's [B, L, D] buffers seen as [B, D, L]), which favours wider channel blocks.

    ``kind="gluon"`` (kernels/scan_gluon.py, CUDA only), chosen by default (``allow_gluon``)
    below _GLUON_MAX_ROWS rows (_GLUON_MAX_ROWS_PACKED for 16-bit inputs in the time-contiguous
    layout), except where the split kernel is chosen (fewer than
    _SEQ_MIN_ROWS rows from L = 8192): 4 channels x 16 steps per warp. 16-bit (B/C packed
    into one word per state, half the registers for a tile loaded ahead): B/C a chunk ahead,
    but loaded when used in the model's channel-contiguous layout; float32 (two float32 B/C
    tiles): B/C when used (155 instead of 235 registers), and 4 x 8 with B/C ahead in the
    model's layout. H100 graph replays, 2026-11-24 (ms; docs/kernel_notes.md v17-v18): B1 D5120
    L2048 0.109 packed vs 0.131 float32 B/C; B4 D1536 L65536 3.36 vs 4.23; model layout B1
    D5120 0.148 vs 0.160, B4 D1536 L65536 4.65 vs 5.44 (the seq kernel 0.155 / 4.97 / 0.179 /
    5.73 before the Gluon kernel)."""
    rows = batch * dim
    packs = dtype in (torch.float16, torch.bfloat16)  # (the Gluon kernel's B/C packed, if as u)
    if kind is None:
        if (allow_gluon and device.type == "cuda" and not use_interpreter(device)
                and rows < (_GLUON_MAX_ROWS_PACKED if packs and not channel_contiguous
                            else _GLUON_MAX_ROWS)
                and (rows >= _SEQ_MIN_ROWS or length < _SPLIT_MIN_LENGTH)
                and scan_gluon.available(device.index or 0)):
            kind = "gluon"
        elif use_interpreter(device) or rows >= _SEQ_MIN_ROWS:
            kind = "seq"
        elif length >= _SPLIT_MIN_LENGTH:
            kind = "split"
        else:
            kind = "chunk"
    if use_interpreter(device):
        # the interpreter runs scans element by element: keep tiles tiny (and chunks many)
        # (LAST_LEVELS=2 exercises the in-thread last-column extraction of the GPU layout)
        if kind == "split" and not backward:
            return {"KIND": "split", "BLOCK_D": 4, "BLOCK_T": 8, "num_warps": 1, "SEGMENTS": 3}
        if kind in ("seq", "gluon") and not backward:  # (gluon runs as seq here: same semantics)
            return {"KIND": kind, "BLOCK_D": 4, "BLOCK_T": 8, "num_warps": 1}
        return {"KIND": "chunk", "BLOCK_D": 4, "BLOCK_T": 8, "num_warps": 1, "LAST_LEVELS": 2}
    if backward:
        block_t, block_d, num_warps = 64, 8, 4
        while block_d > 1 and batch * triton.cdiv(dim, block_d) < _TARGET_PROGRAMS:
            block_d //= 2
        return {"BLOCK_D": block_d, "BLOCK_T": block_t, "num_warps": num_warps}
    if kind == "chunk":
        # [4, 256] tiles on 2 warps (16 timesteps per thread) were fastest in the H100 sweep of
        # 2026-11-23 at all three target shapes (docs/kernel_notes.md)
        block_t, block_d = 256, 4
        while block_d > 1 and batch * triton.cdiv(dim, block_d) < _TARGET_PROGRAMS:
            block_d //= 2
        num_warps = max(1, min(8, block_d * block_t // 512))
        return {"KIND": "chunk", "BLOCK_D": block_d, "BLOCK_T": block_t, "num_warps": num_warps}
    if kind == "split":
        return {"KIND": "split", "BLOCK_D": 8, "BLOCK_T": 16, "num_warps": 1,
                "SEGMENTS": split_segments(batch, dim, length, 8, 16)}
    if kind == "gluon":  # (see the docstring; kernels/scan_gluon.py, docs/kernel_notes.md v18)
        if packs:  # (B/C of another dtype than u's: float32 tiles here, slower)
            return {"KIND": "gluon", "BLOCK_D": 4, "BLOCK_T": 16, "num_warps": 1,
                    "BC_AHEAD": not channel_contiguous}
        if channel_contiguous:
            return {"KIND": "gluon", "BLOCK_D": 4, "BLOCK_T": 8, "num_warps": 1, "BC_AHEAD": True}
        return {"KIND": "gluon", "BLOCK_D": 4, "BLOCK_T": 16, "num_warps": 1, "BC_AHEAD": False}
    # sequential-in-time kernel, one warp per program: BLOCK_D channels on BLOCK_D lanes, the 16
    # states on the other 32 / BLOCK_D lanes (docs/kernel_notes.md, v6/v7). Wider channel blocks
    # hold more states per thread (fewer instructions per element: 16.7 / 11.9 / 10.1 SASS per
    # element at 4 / 8 / 16 channels, Triton 3.6, v16) but give fewer warps, so: the widest block
    # that still gives _SEQ_MIN_WARPS programs. H100 sweep of 2026-11-24 (v16): B1 D5120 L2048
    # 4x16 0.158 ms vs 8x16 0.182; B2 D5120 8x16 0.245 vs 4x16 0.296 and 16x8 0.284; B4 D5120
    # 16x8 0.403 vs 8x16 0.415; B8 D5120 16x8 0.682 vs 8x16 0.802; B8 D1536 L8192 8x16 0.967 vs
    # 16x8 1.106; B4 D1536 L65536 4x16 5.23 vs 8x16 5.59. B and C: read as stored at 4 channels
    # (half the bytes; fifth session, v12), converted to float32 up front at 8 and 16. The
    # model's channel-contiguous layout wants at least 8 channels (one 16-byte load per time
    # step), with B/C as stored (B1 D5120: 0.183 vs 0.241 ms converted; 16x8 at B8: 0.762 vs
    # 0.850 for 8x16).
    # Between 768 and 1056 programs of 8 channels and from L = 8192, 8 channels with the tiles
    # loaded two chunks ahead (PREFETCH 2; 255 registers, so at most two warps per scheduler,
    # hence the upper bound) beat 4 channels: B4 D1536 L65536 4.98 vs 5.23 ms, L8192 0.640 vs
    # 0.661, B2 D3072 L16384 1.254 vs 1.310; at 640 programs (B1 D5120) or L = 2048 they do not
    # (1.223 vs 1.211 at B1 D5120 L16384, 0.175 vs 0.171 at B4 D1536 L2048; v16).
    if rows >= 16 * _SEQ_MIN_WARPS:
        return {"KIND": "seq", "BLOCK_D": 16, "BLOCK_T": 8, "num_warps": 1, "BC_F32": True}
    if channel_contiguous or rows >= 8 * _SEQ_MIN_WARPS:
        return {"KIND": "seq", "BLOCK_D": 8, "BLOCK_T": 16, "num_warps": 1,
                "BC_F32": not channel_contiguous}
    if 768 <= triton.cdiv(rows, 8) <= 1056 and length >= 8192:
        return {"KIND": "seq", "BLOCK_D": 8, "BLOCK_T": 16, "num_warps": 1, "BC_F32": True,
                "PREFETCH": 2}
    return {"KIND": "seq", "BLOCK_D": 4, "BLOCK_T": 16, "num_warps": 1, "BC_F32": False}


_SEQ_MIN_ROWS = 4096  # batch * dim below which the chunk kernel is used (too few seq warps)
# batch * dim from which the seq kernel's 8- and 16-channel tiles win over the Gluon kernel: with
# packed 16-bit B/C in the time-contiguous layout (H100 graph replays, 2026-11-24, bfloat16: B2
# D5120 L2048 0.181 vs 0.238 ms, B4 0.352 vs 0.392, B8 0.696 vs 0.672; float16 taken to be alike,
# its seq kernel not timed there), and otherwise (float32 B/C tiles, or the model's layout: B2
# D5120 0.280 vs 0.250 packed)
_GLUON_MAX_ROWS_PACKED = 32768
_GLUON_MAX_ROWS = 10240
_SEQ_MIN_WARPS = 1280  # seq kernel: channels per warp widened while this many programs remain
# (about 2.4 one-warp programs per scheduler on the H100's 132 SMs; sweep in scan_config)
_SPLIT_MIN_LENGTH = 8192  # below 4096 rows, split from this L (H100, B1 D1536 L8192: split S16
# 30.8 ns/token vs chunk 53.3, sixth session; not measured below 8192)
_SPLIT_WARPS = 2048  # split kernel: segments until about this many one-warp programs (~4/SMSP)
_SPLIT_MIN_SEG_CHUNKS = 8  # ... but keep segments of at least this many chunks


def split_segments(batch: int, dim: int, length: int, block_d: int, block_t: int) -> int:
    """Segments along L for the split kernel: a power of two, the fewest that give about
    ``_SPLIT_WARPS`` programs, at most 16, and segments of >= ``_SPLIT_MIN_SEG_CHUNKS`` chunks."""
    rows = max(1, batch * triton.cdiv(dim, block_d))
    n_chunks = triton.cdiv(max(length, 1), block_t)
    seg = 1
    while (seg < 16 and rows * seg < _SPLIT_WARPS
           and n_chunks // (2 * seg) >= _SPLIT_MIN_SEG_CHUNKS):
        seg *= 2
    return seg


# ---------------------------------------------------------------------------------------------
# launchers
# ---------------------------------------------------------------------------------------------


def _last_levels(cfg, dtype) -> int:
    """log2 of the timesteps each thread holds contiguously (Triton's blocked layout for a
    [BLOCK_D, BLOCK_T] tile: 16-byte vectors along T, fewer if the tile is small)."""
    if "LAST_LEVELS" in cfg:
        return cfg["LAST_LEVELS"]
    elem = 4 if dtype in (torch.float32,) else 8 if dtype == torch.float64 else 2
    vec = min(16 // elem, max(1, cfg["BLOCK_D"] * cfg["BLOCK_T"] // (32 * cfg["num_warps"])),
              cfg["BLOCK_T"])
    return max(0, min(4, vec.bit_length() - 1))


def _validate(u, delta, A, B, C, D, z, delta_bias, initial_state):
    check_float("u", u)
    if u.dim() != 3:
        raise ValueError(f"u must be [batch, dim, length], got shape {tuple(u.shape)}")
    batch, dim, length = u.shape
    check_float("delta", delta)
    check_shape("delta", delta, (batch, dim, length))
    check_float("A", A)
    if A.dim() != 2 or A.shape[0] != dim:
        raise ValueError(f"A must be [dim={dim}, dstate], got shape {tuple(A.shape)}")
    dstate = A.shape[1]
    if dstate < 1:
        raise ValueError("A must have dstate >= 1")
    check_float("B", B)
    check_float("C", C)
    gB, sB = bc_layout("B", B, batch, dim, dstate, length)
    gC, sC = bc_layout("C", C, batch, dim, dstate, length)
    for name, t, shape in (("D", D, (dim,)), ("z", z, (batch, dim, length)),
                           ("delta_bias", delta_bias, (dim,)),
                           ("initial_state", initial_state, (batch, dim, dstate))):
        check_float(name, t, allow_none=True)
        check_shape(name, t, shape)
    check_same_device(u.device, delta=delta, A=A, B=B, C=C, D=D, z=z, delta_bias=delta_bias,
                      initial_state=initial_state)
    return batch, dim, length, dstate, gB, sB, gC, sC


def _bc_args(B, C, gB, sB, gC, sC, dim, block_d):
    """Strides for the kernels; B and C may have different group counts (both divide dim)."""
    if gB != gC:
        # expand the coarser one so both index with one channel->group map
        raise ValueError(f"B and C must have the same number of groups, got {gB} and {gC}")
    ch_per_group = dim // gB
    bc_row = gB == 1 or ch_per_group % block_d == 0  # (one group: every block is in it)
    return ch_per_group, bc_row, sB, sC


def _forward_config(u, allow_gluon: bool = True) -> dict:
    """scan_config for a forward call on ``u [B, D, L]`` as laid out (channel-contiguous: the
    model's [B, L, D] buffers seen as [B, D, L]): what eager calls, traced calls and the Gluon
    routing of compiled code all decide from."""
    batch, dim, length = u.shape
    return scan_config(batch, dim, length, u.dtype, u.device, allow_gluon=allow_gluon,
                       channel_contiguous=u.stride(1) == 1 and dim > 1)


def _gluon_serves(u, block_d: int, block_t: int, block_n: int, bc_row: bool, dpt: int) -> bool:
    """Whether the Gluon kernel covers this call's GPU and tile (kernels/scan_gluon.py)."""
    return (u.device.type == "cuda" and not use_interpreter(u.device)
            and scan_gluon.available(u.device.index or 0)
            and scan_gluon.supports(block_d, block_t, block_n, bc_row, dpt))


def _gluon_runs(u, block_d: int, block_t: int, block_n: int, bc_row: bool, dpt: int) -> bool:
    """Whether this call may launch the Gluon kernel itself: an eager call it serves."""
    return _gluon_serves(u, block_d, block_t, block_n, bc_row, dpt) and not _tracing((u,))


def gluon_for_inductor(u, delta, A, B, C, initial_state=None) -> bool:
    """Whether a call traced for Inductor (``torch.compile``) should run the Gluon kernel
    through the opaque op ``mamba_export::_selective_scan_gluon``: scan_config picks it and it
    serves the call, as it would for the same call made eagerly. Inductor takes Triton kernels
    only through ``wrap_triton``, which takes Triton JIT functions, not Gluon ones, so the
    traced call would otherwise take the Triton kernels' choice (H100, 2026-11-24, prefill 1 x
    2048 compiled and in a CUDA graph: mamba-130m 9.84 ms on the chunk kernel -> 3.90 with this,
    mamba-2.8b 33.81 on the seq kernel -> 29.74-29.86; eager kernels in a graph 3.5 / 28.4).
    Not under ``torch.export`` (the public op stays one node there) nor AOTInductor / the C++
    wrapper, whose code could not call a Python op without Python."""
    if u.device.type != "cuda" or not _tracing((u,)) or torch.compiler.is_exporting():
        return False
    from torch._inductor import config as inductor_config
    from torch._inductor.virtualized import V

    if V.aot_compilation or inductor_config.cpp_wrapper:
        return False
    _, dim, _, dstate, gB, sB, gC, sC = _validate(u, delta, A, B, C, None, None, None, initial_state)
    cfg = _forward_config(u)
    if cfg.get("KIND") != "gluon":
        return False
    bc_row = _bc_args(B, C, gB, sB, gC, sC, dim, cfg["BLOCK_D"])[1]
    return _gluon_serves(u, cfg["BLOCK_D"], cfg["BLOCK_T"], next_pow2(dstate), bc_row,
                         cfg.get("DPT", 1))


def _run_fwd(u, delta, A, B, C, D, z, delta_bias, softplus, initial_state, cfg,
             write_out=True, store_chunks=False):
    batch, dim, length, dstate, gB, sB, gC, sC = _validate(u, delta, A, B, C, D, z, delta_bias,
                                                           initial_state)
    device = u.device
    block_d, block_t = cfg["BLOCK_D"], cfg["BLOCK_T"]
    ch_per_group, bc_row, sB, sC = _bc_args(B, C, gB, sB, gC, sC, dim, block_d)
    kind = cfg.get("KIND", "chunk")
    if kind == "gluon" and not _gluon_runs(u, block_d, block_t, next_pow2(dstate), bc_row,
                                           cfg.get("DPT", 1)):
        # the Triton kernels' choice instead (same semantics; the Gluon kernel is for eager CUDA
        # calls, see kernels/scan_gluon.py)
        cfg = _forward_config(u, allow_gluon=False)
        kind = cfg["KIND"] = "seq" if cfg.get("KIND") == "gluon" else cfg.get("KIND", "chunk")
        block_d, block_t = cfg["BLOCK_D"], cfg["BLOCK_T"]
        ch_per_group, bc_row, sB, sC = _bc_args(B, C, gB, sB, gC, sC, dim, block_d)
    B_in = B
    bc_packed = scan_gluon.packed_code(B, C) if kind == "gluon" and cfg.get("BC_PACKED", True) else 0
    if bc_packed:  # one int32 word per (step, state) holding both (see there)
        B = C = scan_gluon.bc_packed(B, C)
    elif kind == "gluon":
        # float32 with the states contiguous: each lane's loads then cover one row per step
        B, C = (scan_gluon.states_contiguous_f32(t) for t in (B, C))
    elif cfg.get("BC_F32", True) and B.dtype in (torch.float16, torch.bfloat16):
        # B and C are small (no channel axis) and read once per channel block: converting them
        # up front saves the kernel an unpack per element and state (about 3 of ~19 instr.)
        B, C = B.float(), C.float()
    if B is not B_in:
        sB = bc_layout("B", B, batch, dim, dstate, length)[1]
        sC = bc_layout("C", C, batch, dim, dstate, length)[1]
    n_chunks = triton.cdiv(length, block_t)
    out = new_output((batch, dim, length), u.dtype, device) if write_out else u
    last = new_output((batch, dim, dstate), torch.float32, device)
    # what every forward kernel takes: the optional inputs (u stands in for absent ones), the
    # strides (0 for absent inputs) and the options
    optional = tuple(t if t is not None else u for t in (D, z, delta_bias, initial_state))
    in_strides = (*u.stride(), *delta.stride(), *A.stride())
    opt_strides = (D.stride(0) if D is not None else 0,
                   delta_bias.stride(0) if delta_bias is not None else 0,
                   *(z.stride() if z is not None else (0, 0, 0)),
                   *(initial_state.stride() if initial_state is not None else (0, 0, 0)))
    options = dict(HAS_D=D is not None, HAS_Z=z is not None, HAS_BIAS=delta_bias is not None,
                   SOFTPLUS=bool(softplus), HAS_H0=initial_state is not None, DSTATE=dstate,
                   BLOCK_N=next_pow2(dstate), BLOCK_D=block_d, BLOCK_T=block_t)
    if kind in ("split", "seq", "gluon") and (not write_out or store_chunks):
        raise ValueError("the split scan kernel only computes outputs" if kind == "split" else
                         "the sequential scan kernel only computes outputs")
    if kind == "split":
        # segments of whole chunks; fewer segments if L is short (none empty)
        seg_chunks = max(1, triton.cdiv(n_chunks, cfg["SEGMENTS"]))
        n_seg = triton.cdiv(n_chunks, seg_chunks)
        if n_seg <= 1:
            kind = "seq"
    if kind == "split":
        hseg = torch.empty((batch, n_seg - 1, dstate, dim), dtype=torch.float32, device=device)
        dtsum = torch.empty((batch, n_seg - 1, dim), dtype=torch.float32, device=device)
        args = (u, delta, A, B, C, *optional, out, last, hseg, dtsum,
                dim, length, seg_chunks, n_seg, ch_per_group, *in_strides, *sB, *sC, *opt_strides)
        nd = triton.cdiv(dim, block_d)
        # pass 1: end state (from zero) and dt sum of every segment but the last
        launch(_scan_fwd_split_kernel, (nd, n_seg - 1, batch), device, *args,
               STATES_ONLY=True, num_warps=cfg["num_warps"], BC_ROW=bc_row, **options)
        # pass 2: chain the segment states, rescan every segment from its true start state
        launch(_scan_fwd_split_kernel, (nd, n_seg, batch), device, *args,
               STATES_ONLY=False, num_warps=cfg["num_warps"], BC_ROW=bc_row, **options)
        return out, last, last
    grid = (triton.cdiv(dim, block_d), batch)
    if kind == "gluon":  # (B/C strides without N's and L's: [L, N] contiguous, see there)
        scan_gluon.launch_fwd(
            grid, u, delta, A, B, C, *optional, out, last, dim, length, n_chunks, ch_per_group,
            *in_strides, *sB[:2], *sC[:2], *opt_strides, **options, DPT=cfg.get("DPT", 1),
            BC_AHEAD=cfg.get("BC_AHEAD", True), BC_PACKED=bc_packed, maxnreg=cfg.get("MAXNREG"))
        return out, last, last
    if kind == "seq":
        launch(
            _scan_fwd_seq_kernel, grid, device,
            u, delta, A, B, C, *optional, out, last, dim, length, n_chunks, ch_per_group,
            *in_strides, *sB, *sC, *opt_strides, **options, BC_ROW=bc_row,
            PREFETCH=cfg.get("PREFETCH", 1), num_warps=cfg["num_warps"],
        )
        return out, last, last
    chunks = (new_output((batch, dim, max(n_chunks, 1), dstate), torch.float32, device)
              if store_chunks else last)
    scratch = torch.empty((2, batch, dim, dstate), dtype=torch.float32, device=device)
    launch(
        _scan_fwd_kernel, grid, device,
        u, delta, A, B, C, *optional, out, last, chunks, scratch,
        dim, length, n_chunks, ch_per_group, batch * dim * dstate,
        *in_strides, *sB, *sC, *opt_strides, **options,
        WRITE_OUT=write_out, STORE_CHUNKS=store_chunks, BC_ROW=bc_row,
        LAST_LEVELS=_last_levels(cfg, u.dtype), num_warps=cfg["num_warps"],
    )
    return out, last, chunks


def selective_scan_fwd(u, delta, A, B, C, D=None, z=None, delta_bias=None,
                       delta_softplus=False, initial_state=None):
    """Selective scan forward. Returns ``(out [B, D, L] in u.dtype, last_state [B, D, N] fp32)``.

    Any strides; B/C ``[B, N, L]`` or ``[B, G, N, L]``; arithmetic and state in fp32.
    """
    check_float("u", u)
    if u.dim() != 3:
        raise ValueError(f"u must be [batch, dim, length], got shape {tuple(u.shape)}")
    out, last, _ = _run_fwd(u, delta, A, B, C, D, z, delta_bias, delta_softplus, initial_state,
                            _forward_config(u))
    return out, last


def selective_scan_bwd(u, delta, A, B, C, D, z, delta_bias, delta_softplus, initial_state,
                       dout, dlast_state):
    """Gradients of :func:`selective_scan_fwd` w.r.t. every input.

    Returns ``(du, ddelta, dA, dB, dC, dD, dz, ddelta_bias, dinitial_state)``, each in its
    input's dtype and shape (None where the input was None). ``dlast_state`` may be None.
    """
    check_float("u", u)
    if u.dim() != 3:
        raise ValueError(f"u must be [batch, dim, length], got shape {tuple(u.shape)}")
    batch, dim, length, dstate, gB, sB, gC, sC = _validate(u, delta, A, B, C, D, z, delta_bias,
                                                           initial_state)
    check_float("dout", dout)
    check_shape("dout", dout, (batch, dim, length))
    check_float("dlast_state", dlast_state, allow_none=True)
    check_shape("dlast_state", dlast_state, (batch, dim, dstate))
    check_same_device(u.device, dout=dout, dlast_state=dlast_state)
    device = u.device
    cfg = scan_config(batch, dim, length, u.dtype, device, backward=True)
    block_d, block_t = cfg["BLOCK_D"], cfg["BLOCK_T"]
    # states at every chunk start (same BLOCK_T as the backward kernel)
    fcfg = dict(scan_config(batch, dim, length, u.dtype, device, kind="chunk"), BLOCK_T=block_t)
    _, _, chunks = _run_fwd(u, delta, A, B, C, None, None, delta_bias, delta_softplus,
                            initial_state, fcfg, write_out=False, store_chunks=True)
    ch_per_group, bc_row, sB, sC = _bc_args(B, C, gB, sB, gC, sC, dim, block_d)
    groups = gB
    n_chunks = triton.cdiv(length, block_t)
    f32 = torch.float32
    du = new_output((batch, dim, length), u.dtype, device)
    ddelta = new_output((batch, dim, length), delta.dtype, device)
    dz = new_output((batch, dim, length), z.dtype, device) if z is not None else du
    dB = torch.zeros((batch, groups, dstate, length), dtype=f32, device=device)
    dC = torch.zeros((batch, groups, dstate, length), dtype=f32, device=device)
    dA_part = new_output((batch, dim, dstate), f32, device)
    dD_part = new_output((batch, dim), f32, device)
    dbias_part = new_output((batch, dim), f32, device)
    dh0 = new_output((batch, dim, dstate), f32, device)
    dummy = u
    grid = (triton.cdiv(dim, block_d), batch)
    launch(
        _scan_bwd_kernel, grid, device,
        u, delta, A, B, C,
        D if D is not None else dummy,
        z if z is not None else dummy,
        delta_bias if delta_bias is not None else dummy,
        chunks, dout, dlast_state if dlast_state is not None else dummy,
        du, ddelta, dz, dB, dC, dA_part, dD_part, dbias_part, dh0,
        dim, length, n_chunks, ch_per_group, groups,
        u.stride(0), u.stride(1), u.stride(2),
        delta.stride(0), delta.stride(1), delta.stride(2),
        A.stride(0), A.stride(1),
        *sB, *sC,
        D.stride(0) if D is not None else 0,
        delta_bias.stride(0) if delta_bias is not None else 0,
        *(z.stride() if z is not None else (0, 0, 0)),
        dout.stride(0), dout.stride(1), dout.stride(2),
        *(dlast_state.stride() if dlast_state is not None else (0, 0, 0)),
        HAS_D=D is not None, HAS_Z=z is not None, HAS_BIAS=delta_bias is not None,
        SOFTPLUS=bool(delta_softplus), HAS_DLAST=dlast_state is not None, BC_ROW=bc_row,
        DSTATE=dstate, BLOCK_N=next_pow2(dstate), BLOCK_D=block_d, BLOCK_T=block_t,
        num_warps=cfg["num_warps"],
    )
    dA = dA_part.sum(0).to(A.dtype)
    dBo = (dB.view(batch, dstate, length) if B.dim() == 3 else dB).to(B.dtype)
    dCo = (dC.view(batch, dstate, length) if C.dim() == 3 else dC).to(C.dtype)
    dDo = dD_part.sum(0).to(D.dtype) if D is not None else None
    dzo = dz if z is not None else None
    dbias = dbias_part.sum(0).to(delta_bias.dtype) if delta_bias is not None else None
    dinit = dh0.to(initial_state.dtype) if initial_state is not None else None
    return du, ddelta, dA, dBo, dCo, dDo, dzo, dbias, dinit


__all__ = ["selective_scan_fwd", "selective_scan_bwd", "scan_config"]

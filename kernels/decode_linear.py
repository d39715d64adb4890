"""``x @ weight.T (+ bias)`` for the few rows of a decode step (M <= 16).

Why: at decode, every projection reads its whole weight to produce one row (or a few) per
sequence. cuBLAS picks GEMM tiles meant for many rows; a kernel that splits only the output
features over programs and streams the weight once keeps more of the GPU's memory bandwidth busy
for these shapes; small weights are read in one tile per program before the PDL wait, so their
read overlaps the kernel before. The model uses it where the H100 measured it faster than cuBLAS
(``model_takes``): one row, and up to 16 rows for small weights and the lm_head.

Semantics: ``torch.nn.functional.linear`` with float32 accumulation; the output has x's dtype.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._common import (PREFETCH_CHUNK, check_float, check_same_device, check_shape, device_fn, kernel, l2_prefetch,
                      launch, new_output, next_pow2, pdl_start, persistent_buffers, prefetch_args, use_interpreter)

MAX_ROWS = 16
# The model (mamba_export._dispatch.decode_linear) sends projections of small weights with up to
# this many rows here (model_takes); benchmarks may lower it (scripts/bench_e2e.py --linear-rows)
# to time cuBLAS inside the decode step.
MODEL_ROWS = 16


@device_fn
def _add_norm_rows(x_ptr, res_ptr, nw, offs_m, offs_k, mask_m, K, eps, sx_m, sx_k, sr_m,
                   HAS_RES: tl.constexpr):
    """``(x + residual, rmsnorm(x + residual) * nw)`` for whole rows ``[BLOCK_M, BLOCK_K]``: the
    sum in float32, the norm of it rounded to nw's dtype (as kernels/rmsnorm.py); ``nw`` the
    norm weight [BLOCK_K] as stored (_fold_constants)."""
    mask = mask_m[:, None] & (offs_k < K)[None, :]
    r = tl.load(x_ptr + offs_m[:, None] * sx_m + offs_k[None, :] * sx_k, mask=mask,
                other=0.0).to(tl.float32)
    if HAS_RES:
        r += tl.load(res_ptr + offs_m[:, None] * sr_m + offs_k[None, :], mask=mask,
                     other=0.0).to(tl.float32)
    v = r.to(nw.dtype).to(tl.float32)
    inv = 1.0 / tl.sqrt(tl.sum(v * v, axis=1) / K + eps)
    return r, (v * inv[:, None] * nw.to(tl.float32)[None, :]).to(nw.dtype)


@device_fn
def _row_rstd(sq_ptr, offs_m, mask_m, n_groups, per_group, group_size, eps, ssq_m, ssq_g,
              BLOCK_G: tl.constexpr, BLOCK_Q: tl.constexpr):
    """1 / sqrt(mean square + eps) ``[BLOCK_M, BLOCK_G]`` per row and norm group, from the
    partial sums of squares ``sq [M, n_groups, per_group]`` (contiguous in the last dim)."""
    g = tl.arange(0, BLOCK_G)
    q = tl.arange(0, BLOCK_Q)
    parts = tl.load(sq_ptr + offs_m[:, None, None] * ssq_m + g[None, :, None] * ssq_g + q[None, None, :],
                    mask=mask_m[:, None, None] & (g < n_groups)[None, :, None] & (q < per_group)[None, None, :],
                    other=0.0)
    return 1.0 / tl.sqrt(tl.sum(parts, axis=2) / group_size + eps)


@device_fn
def _row_normed(x, rstd, ks, group_size, BLOCK_G: tl.constexpr):
    """The RMSNorm's 1/rms applied to its input ``x [BLOCK_M, BLOCK_K]``: with one group left to
    the epilogue (rstd scales the output rows; any elementwise op on a one-tile tensor-core
    operand made Triton 3.6 spill thousands of bytes per thread for sm_90); with several,
    ``x * rstd[row, group of the column]`` in float32, rounded back to x's dtype."""
    if BLOCK_G == 1:
        return x
    sel = (ks // group_size)[None, :, None] == tl.arange(0, BLOCK_G)[None, None, :]
    scale = tl.sum(tl.where(sel, rstd[:, None, :], 0.0), axis=2)
    return (x.to(tl.float32) * scale).to(x.dtype)


@device_fn
def _x_rows(x_ptr, rstd, offs_m, ks, mask_m, mask_k, sx_m, sx_k, group_size, ROW_NORM: tl.constexpr,
            BLOCK_G: tl.constexpr):
    """The operand's rows ``x [BLOCK_M, BLOCK_K]`` at columns ``ks``, with ROW_NORM's 1/rms
    applied (_row_normed)."""
    x = tl.load(x_ptr + offs_m[:, None] * sx_m + ks[None, :] * sx_k,
                mask=mask_m[:, None] & mask_k[None, :], other=0.0)
    if ROW_NORM:
        x = _row_normed(x, rstd, ks, group_size, BLOCK_G)
    return x


@device_fn
def _conv_epilogue(out, taps, w_taps, w_new, cbias, ncs_ptr, offs_m, ch, cmask, is_conv, out_dtype: tl.constexpr,
                   sn_m, sn_c, sn_s, CONV_BIAS: tl.constexpr, WIDTH: tl.constexpr, BLOCK_S: tl.constexpr):
    """in_proj's output columns that feed the causal conv replaced by silu(conv) at this step
    (window = the conv state's WIDTH - 1 ``taps`` [BLOCK_M, BLOCK_N, BLOCK_S], then the column
    itself rounded to the output dtype, as the reference conv sees it; the conv's weights and
    bias from _fold_constants); the state shifted by one step into ``ncs`` (which may be the
    state itself: every tap was read)."""
    j = tl.arange(0, BLOCK_S)
    raw = out.to(out_dtype).to(tl.float32)
    acc = tl.sum(taps.to(tl.float32) * w_taps.to(tl.float32)[None, :, :], axis=2)
    acc += raw * w_new.to(tl.float32)[None, :]
    if CONV_BIAS:
        acc += cbias.to(tl.float32)[None, :]
    tl.debug_barrier()  # every thread's taps are read before any is overwritten (in place)
    rows_ch = offs_m[:, None, None] * sn_m + ch[None, :, None] * sn_c
    tl.store(ncs_ptr + rows_ch + (j - 1)[None, None, :] * sn_s, taps.to(ncs_ptr.dtype.element_ty),
             mask=cmask[:, :, None] & ((j >= 1) & (j < WIDTH - 1))[None, None, :])
    tl.store(ncs_ptr + offs_m[:, None] * sn_m + ch[None, :] * sn_c + (WIDTH - 2) * sn_s,
             raw.to(ncs_ptr.dtype.element_ty), mask=cmask)
    return tl.where(is_conv[None, :], acc * tl.sigmoid(acc), out)


@device_fn
def _next_norm_epilogue(out, offs_m, offs_n, mask_m, mask_n, out_dtype: tl.constexpr, nres_ptr, nrout_ptr,
                        nnw, nsum_ptr, snr_m, snro_m, snsum_m):
    """Residual add + the sums of the next RMSNorm for the output tile (see NEXT_NORM), as
    kernels/rmsnorm.py: the sum in float32, the norm of it rounded to the norm weight's dtype
    (``nnw`` [BLOCK_N] as stored, _fold_constants)."""
    tile = mask_m[:, None] & mask_n[None, :]
    r = out.to(out_dtype).to(tl.float32) + tl.load(nres_ptr + offs_m[:, None] * snr_m + offs_n[None, :],
                                                   mask=tile, other=0.0).to(tl.float32)
    tl.store(nrout_ptr + offs_m[:, None] * snro_m + offs_n[None, :], r.to(nrout_ptr.dtype.element_ty), mask=tile)
    v = r.to(nnw.dtype).to(tl.float32)
    tl.store(nsum_ptr + offs_m * snsum_m + tl.program_id(0), tl.sum(tl.where(tile, v * v, 0.0), axis=1),
             mask=mask_m)
    return v * nnw.to(tl.float32)[None, :]


@device_fn
def _fold_constants(b_ptr, nw_ptr, nnw_ptr, cw_ptr, cb_ptr, offs_n, mask_n, offs_k, K, ch, is_conv,
                    scw_c, scw_k, scb, HAS_BIAS: tl.constexpr, ADD_NORM: tl.constexpr, CONV: tl.constexpr,
                    CONV_BIAS: tl.constexpr, NEXT_NORM: tl.constexpr, WIDTH: tl.constexpr,
                    BLOCK_S: tl.constexpr):
    """The parameters the kernel's folds read, as stored (0.0 where the call has none): bias
    [BLOCK_N], norm weight [BLOCK_K] (ADD_NORM), the conv's tap weights [BLOCK_N, BLOCK_S], its
    weight of the new column and bias [BLOCK_N] (CONV), the next norm's weight [BLOCK_N]."""
    bias = 0.0
    nw = 0.0
    w_taps = 0.0
    w_new = 0.0
    cbias = 0.0
    nnw = 0.0
    if HAS_BIAS:
        bias = tl.load(b_ptr + offs_n, mask=mask_n, other=0.0)
    if ADD_NORM:
        nw = tl.load(nw_ptr + offs_k, mask=offs_k < K, other=0.0)
    if CONV:
        j = tl.arange(0, BLOCK_S)
        w_taps = tl.load(cw_ptr + ch[:, None] * scw_c + j[None, :] * scw_k,
                         mask=is_conv[:, None] & (j < WIDTH - 1)[None, :], other=0.0)
        w_new = tl.load(cw_ptr + ch * scw_c + (WIDTH - 1) * scw_k, mask=is_conv, other=0.0)
        if CONV_BIAS:
            cbias = tl.load(cb_ptr + ch * scb, mask=is_conv, other=0.0)
    if NEXT_NORM:
        nnw = tl.load(nnw_ptr + offs_n, mask=mask_n, other=0.0)
    return bias, nw, w_taps, w_new, cbias, nnw


@device_fn
def _group_cols(k0, BLOCK_K: tl.constexpr, K_GROUPS: tl.constexpr):
    """The tile's columns ``k0 + [0, BLOCK_K)`` as ``[K_GROUPS, BLOCK_K / K_GROUPS]``: group g is
    the g-th contiguous stretch of them."""
    return k0 + tl.arange(0, K_GROUPS)[:, None] * (BLOCK_K // K_GROUPS) + tl.arange(0, BLOCK_K // K_GROUPS)[None, :]


@device_fn
def _w_groups(w_ptr, offs_n, mask_n, k0, k_stop, sw_n, sw_k, BLOCK_K: tl.constexpr,
              K_GROUPS: tl.constexpr):
    """The weight tile of columns ``k0 + [0, BLOCK_K)`` as ``[K_GROUPS, BLOCK_N,
    BLOCK_K / K_GROUPS]`` (_group_cols)."""
    ks = _group_cols(k0, BLOCK_K, K_GROUPS)
    return tl.load(w_ptr + offs_n[None, :, None] * sw_n + ks[:, None, :] * sw_k,
                   mask=mask_n[None, :, None] & (ks < k_stop)[:, None, :], other=0.0)


@device_fn
def _dot_k_groups(x_ptr, w, acc, offs_m, mask_m, k0, k_stop, sx_m, sx_k, BLOCK_K: tl.constexpr,
                  K_GROUPS: tl.constexpr, IEEE: tl.constexpr, WIDEN: tl.constexpr):
    """``acc [K_GROUPS, BLOCK_M, BLOCK_N] += `` group g's ``x[:, ks_g] @ w[g].T`` over the tile of
    columns ``k0 + [0, BLOCK_K)`` (``w`` from _w_groups): one batched tensor-core product."""
    ks = _group_cols(k0, BLOCK_K, K_GROUPS)
    x = tl.load(x_ptr + offs_m[None, :, None] * sx_m + ks[:, None, :] * sx_k,
                mask=mask_m[None, :, None] & (ks < k_stop)[:, None, :], other=0.0)
    if WIDEN:
        x, w = x.to(tl.float32), w.to(tl.float32)
    if IEEE:
        return tl.dot(x, tl.permute(w, (0, 2, 1)), acc, input_precision="ieee")
    return tl.dot(x, tl.permute(w, (0, 2, 1)), acc)


@device_fn
def _k_tile(x_ptr, w, acc, normed, rstd, offs_m, mask_m, ks, mask_k, sx_m, sx_k, group_size,
            DOT: tl.constexpr, BLOCK_M: tl.constexpr, ADD_NORM: tl.constexpr, ROW_NORM: tl.constexpr,
            BLOCK_G: tl.constexpr, IEEE: tl.constexpr, WIDEN: tl.constexpr, SWAP_AB: tl.constexpr = False):
    """``acc`` plus the product of the operand's columns ``ks`` with the weight tile ``w``
    [BLOCK_N, BLOCK_K] (one step of the K loop, no K groups): ``acc`` is [BLOCK_M, BLOCK_N] with
    DOT ([BLOCK_N, BLOCK_M] with SWAP_AB: ``w @ x.T``), else the elementwise products'
    [BLOCK_N, BLOCK_K] (one row) or [BLOCK_M, BLOCK_N, BLOCK_K] (several), summed over K by the
    caller."""
    if DOT:
        if ADD_NORM:
            x = normed
        else:
            x = _x_rows(x_ptr, rstd, offs_m, ks, mask_m, mask_k, sx_m, sx_k, group_size, ROW_NORM, BLOCK_G)
        if WIDEN:
            x, w = x.to(tl.float32), w.to(tl.float32)
        if SWAP_AB:
            a, b = w, tl.trans(x)
        else:
            a, b = x, tl.trans(w)
        if IEEE:
            acc = tl.dot(a, b, acc, input_precision="ieee")
        else:
            acc = tl.dot(a, b, acc)
    elif BLOCK_M == 1:
        if ADD_NORM:
            x = tl.sum(normed.to(tl.float32), axis=0)  # [1, K] -> [K]
        elif ROW_NORM:
            x = tl.sum(_x_rows(x_ptr, rstd, offs_m, ks, mask_m, mask_k, sx_m, sx_k, group_size, ROW_NORM,
                               BLOCK_G).to(tl.float32), axis=0)
        else:
            x = tl.load(x_ptr + ks * sx_k, mask=mask_k, other=0.0)
        acc += w.to(tl.float32) * x.to(tl.float32)[None, :]
    else:
        if ADD_NORM:
            x = normed
        else:
            x = _x_rows(x_ptr, rstd, offs_m, ks, mask_m, mask_k, sx_m, sx_k, group_size, ROW_NORM, BLOCK_G)
        acc += x.to(tl.float32)[:, None, :] * w.to(tl.float32)[None, :, :]
    return acc  # (one return: Triton types every return statement, even in pruned branches)


@kernel
def _decode_linear_kernel(
    x_ptr, w_ptr, b_ptr, out_ptr, ws_ptr, cnt_ptr, res_ptr, nw_ptr, rout_ptr, M, N, K, k_per_split,
    sx_m, sx_k, sw_n, sw_k, so_m, so_n, sr_m, sro_m, eps,
    cs_ptr, cw_ptr, cb_ptr, ncs_ptr, conv_first, conv_dim, scs_m, scs_c, scs_s, scw_c, scw_k, scb,
    sn_m, sn_c, sn_s, sq_ptr, n_groups, per_group, group_size, ssq_m, ssq_g,
    nres_ptr, nrout_ptr, nnw_ptr, nsum_ptr, snr_m, snro_m, snsum_m, pf_ptr, pf_bytes,
    HAS_BIAS: tl.constexpr, DOT: tl.constexpr, IEEE: tl.constexpr, WIDEN: tl.constexpr,
    SPLIT: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
    EARLY_W: tl.constexpr, ADD_NORM: tl.constexpr, HAS_RES: tl.constexpr,
    CONV: tl.constexpr, CONV_BIAS: tl.constexpr, WIDTH: tl.constexpr, BLOCK_S: tl.constexpr,
    ROW_NORM: tl.constexpr, BLOCK_G: tl.constexpr, BLOCK_Q: tl.constexpr,
    NEXT_NORM: tl.constexpr = False, K_GROUPS: tl.constexpr = 1, PREFETCH: tl.constexpr = False,
    EARLY_C: tl.constexpr = False, EARLY_K0: tl.constexpr = False, SWAP_AB: tl.constexpr = False,
    PDL: tl.constexpr = False,
):
    """Program (n, s): BLOCK_N output features for all M rows over the s-th ``k_per_split``
    slice of K. DOT=False: elementwise products summed once at the end (one row: a [BLOCK_N,
    BLOCK_K] accumulator; several: [BLOCK_M, BLOCK_N, BLOCK_K], which allows feature blocks
    narrower than 8, the smallest tensor-core tile); DOT=True: tensor-core tiles of BLOCK_M
    rows. IEEE: full float32 products (float32 weights); WIDEN: float32 operands (the
    interpreter).

    SPLIT > 1 (few features, long K, e.g. Mamba-1's x_proj): the slices' float32 sums go to
    the workspace ``ws [SPLIT, M, N]``; the last program of a feature block to finish (a
    counter per block, atomics with acquire/release order) adds them up, writes the output and
    resets the counter to 0 for the next call.

    EARLY_W (one BLOCK_K tile covers the program's K slice): that weight tile is read before the
    PDL wait, so the whole read overlaps the previous kernel; the loop then runs once.

    ADD_NORM (one tile, SPLIT 1): the operand is ``rmsnorm(x + residual) * nw`` (the model's
    residual add + RMSNorm before in_proj; residual with HAS_RES), computed by every program for
    its own use; program 0 also stores ``x + residual`` to ``rout``.

    CONV (a mixer's in_proj): output columns ``conv_first + c`` for c < conv_dim become
    silu(causal conv) of channel c at this step (_conv_epilogue), the conv state ``cs [M, C,
    WIDTH - 1]`` shifted into ``ncs``; with EARLY_W the state is read before the PDL wait too.

    ROW_NORM (Mamba-2's out_proj): the operand is ``x * rstd[row, group]``, rstd from the
    partial sums of squares ``sq [M, n_groups, per_group]`` that the state update wrote with
    its gated output x (already times the norm weight): the gated RMSNorm folded in
    (_row_rstd, _row_normed).

    NEXT_NORM (out_proj of a block followed by another): the next block's residual add and
    the first half of its RMSNorm (_next_norm_epilogue): the new residual ``r = out +
    residual`` goes to ``nrout``, the output becomes ``r * nnw`` (r rounded to nnw's dtype) and
    each row's sum of its squares over this program's columns goes to ``nsum[row, pid_n]``:
    the next in_proj's ROW_NORM completes the norm.

    K_GROUPS > 1 (DOT, no ADD_NORM, ROW_NORM of one group): each BLOCK_K tile's K is cut into
    K_GROUPS contiguous groups, multiplied as one batched [K_GROUPS, BLOCK_M, BLOCK_K / K_GROUPS]
    x [.., BLOCK_N] product (Triton puts the warps on the batch) into K_GROUPS accumulators,
    summed at the end: each warp's chain of dependent tensor-core steps is K_GROUPS times
    shorter (_dot_k_groups).

    PREFETCH: the programs ask for the ``pf_bytes`` bytes at ``pf_ptr`` (a weight of a later
    kernel) to be brought into L2 (l2_prefetch), after their early reads, before the PDL wait.

    EARLY_C: the folds' parameters (bias, norm weights, the conv's weights and bias;
    _fold_constants) are read before the PDL wait too.

    EARLY_K0 (a K loop without K groups): the first weight tile of the program's K slice is read
    before the PDL wait and multiplied first, the loop starting at the second.

    SWAP_AB (DOT without K groups): each step multiplies ``w @ x.T`` into a [BLOCK_N, BLOCK_M]
    accumulator, transposed once at the end: the features are the product's M side, which on
    Hopper lets Triton use the warpgroup MMA (64 features per 4 warps, the rows as its N of 8
    or 16) reading both operands from shared memory, instead of 16-row mma.sync tiles whose
    weight operand goes through registers."""
    pid_n = tl.program_id(0)
    offs_n = (pid_n * BLOCK_N + tl.arange(0, BLOCK_N)).to(tl.int64)
    offs_m = tl.arange(0, BLOCK_M)
    offs_k = tl.arange(0, BLOCK_K)
    mask_n, mask_m = offs_n < N, offs_m < M
    k_start = tl.program_id(1) * k_per_split
    k_stop = tl.minimum(k_start + k_per_split, K)
    if EARLY_W or EARLY_K0:
        if K_GROUPS > 1:
            w_early = _w_groups(w_ptr, offs_n, mask_n, k_start, k_stop, sw_n, sw_k, BLOCK_K, K_GROUPS)
        else:
            w_early = tl.load(w_ptr + offs_n[:, None] * sw_n + (k_start + offs_k)[None, :] * sw_k,
                              mask=mask_n[:, None] & (k_start + offs_k < k_stop)[None, :], other=0.0)
    if CONV:
        ch = offs_n - conv_first
        is_conv = mask_n & (ch >= 0) & (ch < conv_dim)
        cmask = mask_m[:, None] & is_conv[None, :]
        j = tl.arange(0, BLOCK_S)
        tap_ptrs = cs_ptr + offs_m[:, None, None] * scs_m + ch[None, :, None] * scs_c + j[None, None, :] * scs_s
        tap_mask = cmask[:, :, None] & (j < WIDTH - 1)[None, None, :]
        if EARLY_W:  # nothing launched before in_proj writes the conv state
            taps = tl.load(tap_ptrs, mask=tap_mask, other=0.0)
    else:
        ch = offs_n  # (unused without CONV)
        is_conv = mask_n
    if EARLY_C:  # no kernel writes a parameter
        bias, nw, w_taps, w_new, cbias, nnw = _fold_constants(
            b_ptr, nw_ptr, nnw_ptr, cw_ptr, cb_ptr, offs_n, mask_n, offs_k, K, ch, is_conv, scw_c, scw_k, scb,
            HAS_BIAS, ADD_NORM, CONV, CONV_BIAS, NEXT_NORM, WIDTH, BLOCK_S)
    if PREFETCH:  # (after this kernel's own early reads: those go to HBM first)
        l2_prefetch(pf_ptr, pf_bytes, tl.program_id(1) * tl.num_programs(0) + pid_n,
                    tl.num_programs(0) * tl.num_programs(1), PREFETCH_CHUNK)
    pdl_start(PDL)
    if not EARLY_C:
        bias, nw, w_taps, w_new, cbias, nnw = _fold_constants(
            b_ptr, nw_ptr, nnw_ptr, cw_ptr, cb_ptr, offs_n, mask_n, offs_k, K, ch, is_conv, scw_c, scw_k, scb,
            HAS_BIAS, ADD_NORM, CONV, CONV_BIAS, NEXT_NORM, WIDTH, BLOCK_S)
    if CONV:
        if not EARLY_W:
            taps = tl.load(tap_ptrs, mask=tap_mask, other=0.0)
    rstd = 0.0  # (unused without ROW_NORM)
    normed = 0.0  # (unused without ADD_NORM)
    if ROW_NORM:
        rstd = _row_rstd(sq_ptr, offs_m, mask_m, n_groups, per_group, group_size, eps, ssq_m, ssq_g,
                         BLOCK_G, BLOCK_Q)
    if ADD_NORM:
        summed, normed = _add_norm_rows(x_ptr, res_ptr, nw, offs_m, offs_k, mask_m, K, eps,
                                        sx_m, sx_k, sr_m, HAS_RES)
        if pid_n == 0:
            tl.store(rout_ptr + offs_m[:, None] * sro_m + offs_k[None, :],
                     summed.to(rout_ptr.dtype.element_ty), mask=mask_m[:, None] & (offs_k < K)[None, :])
    if K_GROUPS > 1:  # (DOT)
        acc_g = tl.zeros((K_GROUPS, BLOCK_M, BLOCK_N), tl.float32)
    elif DOT and SWAP_AB:
        acc = tl.zeros((BLOCK_N, BLOCK_M), tl.float32)
    elif DOT:
        acc = tl.zeros((BLOCK_M, BLOCK_N), tl.float32)
    elif BLOCK_M == 1:
        acc = tl.zeros((BLOCK_N, BLOCK_K), tl.float32)
    else:
        acc = tl.zeros((BLOCK_M, BLOCK_N, BLOCK_K), tl.float32)
    if K_GROUPS > 1 and EARLY_W:  # one tile, outside the K loop: there Triton stages one operand
        # in shared memory, not both (64 vs 128 KB at BLOCK_K 2048, sm_90, Triton 3.6)
        acc_g = _dot_k_groups(x_ptr, w_early, acc_g, offs_m, mask_m, k_start, k_stop, sx_m, sx_k, BLOCK_K,
                              K_GROUPS, IEEE, WIDEN)
    else:
        k_loop = k_start
        if EARLY_K0:  # the tile read before the wait, then the loop from the next one
            acc = _k_tile(x_ptr, w_early, acc, normed, rstd, offs_m, mask_m, k_start + offs_k,
                          k_start + offs_k < k_stop, sx_m, sx_k, group_size, DOT, BLOCK_M, ADD_NORM, ROW_NORM,
                          BLOCK_G, IEEE, WIDEN, SWAP_AB)
            k_loop += BLOCK_K
        for k0 in range(k_loop, k_stop, BLOCK_K):
            if K_GROUPS > 1:
                w = _w_groups(w_ptr, offs_n, mask_n, k0, k_stop, sw_n, sw_k, BLOCK_K, K_GROUPS)
                acc_g = _dot_k_groups(x_ptr, w, acc_g, offs_m, mask_m, k0, k_stop, sx_m, sx_k, BLOCK_K, K_GROUPS,
                                      IEEE, WIDEN)
            else:
                ks = k0 + offs_k
                mask_k = ks < k_stop
                if EARLY_W:
                    w = w_early
                else:
                    w = tl.load(w_ptr + offs_n[:, None] * sw_n + ks[None, :] * sw_k,
                                mask=mask_n[:, None] & mask_k[None, :], other=0.0)
                acc = _k_tile(x_ptr, w, acc, normed, rstd, offs_m, mask_m, ks, mask_k, sx_m, sx_k, group_size,
                              DOT, BLOCK_M, ADD_NORM, ROW_NORM, BLOCK_G, IEEE, WIDEN, SWAP_AB)
    if K_GROUPS > 1:
        out = tl.sum(acc_g, axis=0)
    elif DOT and SWAP_AB:
        out = tl.trans(acc)
    elif DOT:
        out = acc
    elif BLOCK_M == 1:
        out = tl.sum(acc, axis=1)[None, :]
    else:
        out = tl.sum(acc, axis=2)
    tile = mask_m[:, None] & mask_n[None, :]
    done = True
    if SPLIT > 1:  # ws [SPLIT, M, N]
        rows_cols = offs_m[:, None] * N + offs_n[None, :]
        tl.store(ws_ptr + tl.program_id(1) * M * N + rows_cols, out, mask=tile)
        # every thread's partial sums stored before the (single-thread) release of the counter
        tl.debug_barrier()
        done = tl.atomic_add(cnt_ptr + pid_n, 1, sem="acq_rel") == SPLIT - 1
        if done:
            out = tl.zeros((BLOCK_M, BLOCK_N), tl.float32)
            for s in range(SPLIT):  # .cg: read the other programs' sums from L2, not L1
                out += tl.load(ws_ptr + s * M * N + rows_cols, mask=tile, other=0.0, cache_modifier=".cg")
            tl.atomic_xchg(cnt_ptr + pid_n, 0)
    if done:
        if ROW_NORM:
            if BLOCK_G == 1:  # (see _row_normed)
                out = out * tl.sum(rstd, axis=1)[:, None]
        if HAS_BIAS:
            out += bias.to(tl.float32)[None, :]
        if CONV:
            out = _conv_epilogue(out, taps, w_taps, w_new, cbias, ncs_ptr, offs_m, ch, cmask, is_conv,
                                 out_ptr.dtype.element_ty, sn_m, sn_c, sn_s, CONV_BIAS, WIDTH, BLOCK_S)
        if NEXT_NORM:
            out = _next_norm_epilogue(out, offs_m, offs_n, mask_m, mask_n, out_ptr.dtype.element_ty, nres_ptr,
                                      nrout_ptr, nnw, nsum_ptr, snr_m, snro_m, snsum_m)
        tl.store(out_ptr + offs_m[:, None] * so_m + offs_n[None, :] * so_n,
                 out.to(out_ptr.dtype.element_ty), mask=tile)


def default_config(rows: int, features: int, k: int, early_weight: bool = True,
                   itemsize: int = 2, k_groups: bool = True, conv: bool = False,
                   swap_ab: bool = False) -> tuple[int, ...]:
    """(BLOCK_N, BLOCK_K, num_warps, SPLIT[, num_stages[, k_groups[, swap_ab]]]), from the H100
    sweeps of 2026-11-23 to 2026-11-25 (scripts/bench_decode_linear.py --sweep / --stages-sweep /
    --k-groups-sweep / --swap-sweep, configs run with early_weight as the model does).

    With ``early_weight``, weights up to _ONE_TILE_MAX elements take one tile per program
    covering all of K, read before the PDL wait: one row at 1.3-3.0 us where the K loop took
    2.5-3.6 (mamba-130m's and mamba2-130m's projections; mamba-2.8b's x_proj 1.9 vs 6.0), 16 rows
    at 3.5-3.8 us vs cuBLAS 4.8-5.1 (K <= 2048: 32K weight elements per program on 4 warps;
    multiplied in K groups since, K_GROUPS).
    Larger weights loop over K: one row in thin feature slices (4, 128, 8); several rows on
    tensor cores, K split in 4 for the narrower ones (out_proj 13.3 vs cuBLAS 15.0; in_proj level
    with cuBLAS; the widest out_proj unsplit and pipelined 5 deep instead, DEEP_OUT_PROJ; mamba-1.4b's
    pair as weight @ x.T in 64-feature tiles, SWAP_AB), in
    16 for the narrowest (mamba-2.8b's x_proj, 2026-11-24: 4.8 vs 6.7 us split in 4 and 7.7 on
    cuBLAS) or, with early_weight, in slices of SPLIT_BLOCK_K read in one tile
    before the PDL wait (decode b16 ms/token, 2026-11-24, one run each: mamba-2.8b 3.427 with
    slices of 512 vs 3.511 of 256 vs 3.460 split 16; mamba-1.4b 2.011 / 2.077 / 2.106);
    vocabulary-wide ones (the lm_head) in 128 x 128 tiles on 8 warps
    (16 rows, 2026-11-23 sweep: 130m's 29.9-30.2 vs cuBLAS 32.6-32.7 us, 2.8b's 89.2 vs 98.3).
    Without early_weight the K loop is taken for every weight (one tile read after the wait made
    mamba-130m's batch-16 step 4.7x slower). ``itemsize``: bytes per element of x and the
    weight; a several-row tile whose tensor-core operands would exceed _ONE_TILE_SMEM (float32
    with K over 512: 256 KB at K = 2048, more than an H100 SM holds) loops over K instead.
    ``k_groups``: whether the call allows K groups (K_GROUPS; not with add_norm or a row_norm of
    several groups). ``conv``: the conv epilogue is folded in (a mixer's in_proj): at several rows
    its one tile of K <= 1024 takes 16 features instead of 32 (H100, 2026-11-24, decode b16
    ms/token, two runs each, 16 vs 32: mamba-130m 0.373-0.375 vs 0.397-0.400, mamba2-130m 0.491
    vs 0.512-0.514; 8 features 0.388-0.390 / 0.515-0.516; without the fold, mamba-370m's in_proj
    kept 32: 0.872 vs 0.919 with 16). ``swap_ab``: the caller takes weight @ x.T tiles where they
    measured faster in its decode step (SWAP_AB: Mamba-1's mixer)."""
    kp = next_pow2(k)
    one_tile = early_weight and _small_weight(features, k)
    if rows == 1:
        if one_tile:
            return max(2, min(8, 8192 // kp)), kp, 8 if kp >= 2048 else 4, 1
        return 4, 128, 8, 1
    block_n = min(128, max(16, 32768 // kp))  # (at most 128 features: tiny K gave huge tiles)
    if one_tile and kp <= 2048 and (MAX_ROWS + block_n) * kp * itemsize <= _ONE_TILE_SMEM:
        if K_GROUPS and k_groups and kp == 1024:
            return 16 if conv else block_n, kp, 4, 1, 1, 4
        if K_GROUPS and k_groups and kp == 2048:  # (8 groups on 8 warps; x_proj: 8 features each)
            return (8, kp, 8, 1, 1, 8) if features <= 512 else (16, kp, 8, 1, 1, 8)
        return block_n, kp, 4, 1
    if _vocab_wide(features):
        return 128, 128, 8, 1
    if K_GROUPS and k_groups and early_weight and features <= 512 and 2048 < k < 4096:  # mamba-790m's x_proj
        return 8, 1024, 4, 4, 1, 8
    if features <= 512 and k >= 4096:  # x_proj of the wide models
        if early_weight and SPLIT_EARLY:  # K slices of one tile each, read before the PDL wait
            return 16, SPLIT_BLOCK_K, 4, triton.cdiv(k, SPLIT_BLOCK_K)
        return 16, 128, 4, 16  # ~320 of K per program
    if (DEEP_OUT_PROJ and 2560 <= features <= 4096 and k >= 4096  # out_proj of the widest models
            and 5 * (MAX_ROWS + 32) * 256 * itemsize <= _ONE_TILE_SMEM):  # (5 stages of x and weight)
        return 32, 256, 4, 1, 5
    split = 4 if features <= 4096 and k >= 2048 else 1
    if (swap_ab and SWAP_AB and itemsize == 2 and features <= 8192 and k <= 4096
            and features * k >= (8 << 20)):
        # (mamba-1.4b's in_proj and out_proj, mamba-790m's in_proj: see SWAP_AB)
        return 64, 128, 4, split, 4 if split > 1 else 5, 1, 1
    return 32 if features >= 2048 else 16, 128, 4, split


# Tensor-core tiles at several rows read in one tile (or in one-tile K slices) multiply their K in
# groups, one batched product (the decode_linear kernel's K_GROUPS): the chain of dependent tensor-
# core steps per warp is that many times shorter. H100, 2026-11-24, bench_decode_linear.py
# --k-groups-sweep at 16 rows, us per call, grouped vs not: mamba-130m in_proj 3.4 vs 4.0, x_proj
# 3.1 vs 3.5, out_proj 3.2 vs 3.6; mamba2-130m in_proj 3.4 vs 4.2; mamba-370m in_proj 5.4 vs 5.3,
# x_proj 3.1 vs 3.6, out_proj 3.4 vs 3.8; mamba-790m's x_proj (K 3072, before in K slices of 128
# split 4) 3.4 vs 5.1. A switch for benchmarks (scripts/bench_e2e.py --no-k-groups). In the decode
# b16 step (ms/token, same calls; with the conv fold at several rows and the 4-warp state update of
# the same commit): mamba-130m 0.471-0.474 vs 0.509 before, mamba-370m 1.031 vs 1.203, mamba-790m
# 1.708 vs 1.821, mamba2-130m 0.562 vs 0.595 (K groups alone: mamba-130m 0.480 vs 0.513, mamba-370m
# 1.060 vs 1.181); x_proj of K 2048 in 4 groups on 8 warps rather than 8: mamba-130m 0.457-0.459 vs
# 0.470-0.472; then (fifteenth session, two runs each) 8 features per program in 8 groups (an n8
# tensor-core tile; twice the programs, 10 / 12 instead of 5 / 6): mamba-130m 0.442-0.443 vs
# 0.448-0.451, mamba-370m 0.920-0.921 vs 0.969-0.970 (out_proj with 8 features lost: 0.467-0.470 vs
# 0.448-0.451, 1.010-1.011 vs 0.969-0.970; in_proj with 8 or 16: level or worse); mamba-790m's
# x_proj slices with 8 features 1.537 vs 1.557 (both runs), while mamba-1.4b's were level (1.992 vs
# 1.991-1.995) and mamba-2.8b's slower (3.521-3.523 vs 3.298), so those keep 16. Not taken (slower
# in the step): the wide models' x_proj in one-tile slices of 1024 in 8 groups (mamba-2.8b 3.49 vs
# 3.31), mamba-1.4b's out_proj pipelined 5 deep in 4 groups (2.075 vs 2.000); K loops in groups
# gained nothing alone (bench_decode_linear.py).
K_GROUPS = True
# With early_weight (the model's PDL launches) at one row, the folds' parameters (norm weights,
# the conv's weights and bias, a bias) are read before the PDL wait too, as the weight: the
# epilogues that use them then wait on no memory read. H100, 2026-11-24, decode ms/token, same
# call, two runs each, before vs after the wait: b1 mamba-370m 0.571-0.573 vs 0.586-0.587,
# mamba-130m 0.223-0.224 vs 0.225, mamba-790m / 1.4b / 2.8b level; at 16 rows it was level or
# slower (mamba-370m 0.922-0.924 vs 0.917-0.921, mamba-130m 0.407-0.409 vs 0.406-0.407), so one
# row only. A switch for benchmarks (scripts/bench_e2e.py --late-constants).
EARLY_CONSTANTS = True
# With early_weight at several rows, a K loop reads the first weight tile of each program's K
# slice before the PDL wait, as a one-tile program reads its whole tile. H100, 2026-11-24,
# decode ms/token, same call, two runs each, early vs after the wait: b16 mamba-2.8b 3.205-3.206
# vs 3.235-3.237, mamba2-2.7b 4.893-4.895 vs 4.916-4.922, the other presets level; at one row
# (an earlier call) it made the step much slower (b1
# mamba-2.8b 2.947-2.948 vs 2.643-2.644, 1.4b 1.634 vs 1.449, 790m 1.218-1.220 vs 1.063-1.066;
# not analysed: the one-row kernel's sm_90 code differs by three loads, so perhaps the thousands
# of one-row programs that PDL starts early, their tile loads competing with the kernel before),
# so not there. Also tried, slower: out_proj's next-norm epilogue
# reading its residual before the wait (b16 mamba-130m 0.416-0.419 vs 0.399-0.402, 370m
# 0.930-0.931 vs 0.906). A switch for benchmarks (scripts/bench_e2e.py --late-first-tile).
EARLY_FIRST_TILE = True
# The wide models' x_proj at several rows: K cut into slices of SPLIT_BLOCK_K, each one tile
# read before the PDL wait (with early_weight), instead of ~320 of K per program in a loop after
# it. Switches for benchmarks (scripts/bench_e2e.py --split-k-loop, --split-block-k).
SPLIT_EARLY = True
SPLIT_BLOCK_K = 512
# The widest models' out_proj at several rows: K unsplit, in 256-wide steps pipelined 5 deep
# (H100, 2026-11-24: bench_decode_linear.py --stages-sweep, mamba-2.8b's at 16 rows 12.3-12.6 us
# vs 13.1-13.3 for K split in 4 in 128-wide steps; decode b16 ms/token, two runs each, this vs
# split: mamba-2.8b 3.321-3.323 vs 3.406-3.407, mamba2-2.7b 5.076 vs 5.173, but mamba-1.4b's
# 2048 features, 64 programs, 2.078 vs 1.980, so from 2560 features). A switch for benchmarks
# (bench_e2e.py --split-out-proj).
DEEP_OUT_PROJ = True
# The K loop at several rows as weight @ x.T (the kernel's SWAP_AB: on Hopper the warpgroup MMA with
# both operands in shared memory) in 64-feature tiles, for 16-bit weights of 8M-32M elements up to
# 8192 features and K 4096 (mamba-1.4b's in_proj and out_proj; mamba-790m's in_proj, which then
# leaves cuBLAS: LARGE_MIN_K_SWAP). H100, 2026-11-25, decode b16 ms/token, same call, two runs
# each (bench_e2e.py --linear-config): mamba-1.4b 1.832-1.838 with both vs 1.881-1.882 (in_proj
# alone 1.865, out_proj alone 1.849-1.850; with this rule 1.832 vs 1.879-1.882, b1 level); mamba-
# 2.8b's in_proj (10240 features, 160 programs) was slower in every swapped form (3.159-3.459 vs
# 3.144-3.146) though 2-5% faster alone (bench_decode_linear.py --swap-sweep: 21.2-21.3 vs
# 21.7-22.4 us), and its out_proj too (3.236 vs 3.144); mamba2-1.3b's out_proj (2048 x 4096) lost
# as well, with the gated norm's row scaling (2.919 vs 2.885-2.887) or after the gated-norm kernel
# (2.877-2.882 vs 2.855-2.860), so only callers that ask (decode_linear_fwd's swap_ab: Mamba-1's
# mixer) get it. A switch for benchmarks (scripts/bench_e2e.py --no-swap-ab).
SWAP_AB = True
_ONE_TILE_MAX = 4 << 20  # weight elements (8 MiB in fp16): mamba-130m's projections, not the lm_head
_ONE_TILE_SMEM = 160 << 10  # bytes of x and weight tile a several-row one-tile program stages


def _small_weight(features: int, k: int) -> bool:
    """A weight that default_config reads in one tile per program (before the PDL wait)."""
    return features * k <= _ONE_TILE_MAX and next_pow2(k) <= 8192


# The model's lm_head takes this kernel at up to MODEL_ROWS rows too (model_takes(lm_head=True));
# a switch for benchmarks (scripts/bench_e2e.py --cublas-lm-head).
LM_HEAD = True
# The large projections of the wide models at several rows take this kernel too
# (_large_rows_weight); a switch for benchmarks (scripts/bench_e2e.py --cublas-large-weights).
LARGE_WEIGHTS = True
# Which weights count as large: the smallest K and element count (scripts/bench_e2e.py
# --large-weights-from); for callers that take weight @ x.T tiles (swap_ab, SWAP_AB) K from
# LARGE_MIN_K_SWAP, which takes mamba-790m's in_proj (6144 x 1536). H100, 2026-11-25, decode b16
# ms/token, same call, two runs each: 1.358-1.359 with it (out_proj, 1536 x 3072, on cuBLAS) vs
# 1.425-1.428 all on cuBLAS; with its out_proj swapped too 1.374-1.377; both on the x @ weight.T
# K loop 1.599.
LARGE_MIN_K = 2048
LARGE_MIN_K_SWAP = 1536
LARGE_MIN_ELEMENTS = 8 << 20


def _large_rows_weight(features: int, k: int, swap_ab: bool = False) -> bool:
    """in_proj / out_proj of models from d_model 2048 (K >= 2048, >= 8M elements), not the lm_head;
    with ``swap_ab`` (the caller takes weight @ x.T tiles) from K 1536 (LARGE_MIN_K_SWAP).
    H100 decode at batch 16, 2026-11-24 (ms/token, here vs cuBLAS, same calls): mamba-2.8b 3.485
    vs 3.767, mamba-1.4b 2.061 vs 2.174, mamba2-2.7b 5.173 vs 5.397; mamba-790m (K 1536 / 4.7M
    elements) 1.902-1.910 vs 1.746-2.051, left on cuBLAS."""
    min_k = LARGE_MIN_K_SWAP if swap_ab and SWAP_AB else LARGE_MIN_K
    return LARGE_WEIGHTS and k >= min_k and features * k >= LARGE_MIN_ELEMENTS and not _vocab_wide(features)


def _vocab_wide(features: int) -> bool:
    """A projection as wide as a vocabulary (the lm_head's shape): 128-feature tiles."""
    return features >= 16384


def model_takes(rows: int, features: int, k: int, lm_head: bool = False, swap_ab: bool = False) -> bool:
    """Whether the model's decode step sends this projection here rather than to cuBLAS: one
    row always; up to MODEL_ROWS rows for small weights, the large ones of the wide models
    (_large_rows_weight) and the lm_head. H100 decode, 2026-11-23, batch 16 (ms/token, here vs
    cuBLAS for the projections): mamba-130m 0.508 vs 0.574, mamba2-130m 0.700 vs 0.771 (and
    mamba-2.8b then 4.21 vs 4.11 with its large weights here too: since reversed by the later
    configs and folds, see _large_rows_weight); the lm_head alone here vs cuBLAS: mamba2-130m
    0.593 vs 0.597, mamba-130m 0.511 vs 0.514, mamba-2.8b 3.977 vs 3.984. ``swap_ab``: the
    caller takes weight @ x.T tiles (decode_linear_fwd's), which makes more weights large."""
    return rows == 1 or (rows <= MODEL_ROWS and (_small_weight(features, k)
                                                 or _large_rows_weight(features, k, swap_ab)
                                                 or (lm_head and LM_HEAD)))


def folds_norm(rows: int, features: int, k: int) -> bool:
    """Whether the model folds its add + RMSNorm into this projection (``add_norm``): one row
    whose default config (with early weight reads) is one tile covering K, without split. H100,
    2026-11-23, decode ms/token folded vs not: b1 mamba-130m 0.286 vs 0.315, mamba-370m 0.668
    vs 0.711, mamba2-130m 0.324 vs 0.348; at batch 16 the folded tensor-core path was 2.5-3.5x
    slower (0.887 vs 0.708 mamba2-130m, 1.817 vs 0.520 mamba-130m), so several rows keep the
    add + RMSNorm kernel."""
    _, block_k, _, split = default_config(rows, features, k, early_weight=True)[:4]  # (one row)
    return rows == 1 and block_k >= k and split == 1


def one_tile(rows: int, features: int, k: int, itemsize: int = 2) -> bool:
    """Whether the model's decode step reads this projection's weight in one tile per program
    (small weights, ``default_config`` with early weight reads; no split), which is where its
    kernel takes folds at both ends: the conv (in_proj), the add + RMSNorm between blocks
    begun in out_proj and finished in the next in_proj. H100, 2026-11-23: with either fold on
    mamba-2.8b's K-loop projections the b1 step took 3.43-3.45 ms/token against 2.76 without
    (the kernel the fold removes no longer separates two long weight-streaming kernels whose
    programs, launched early by PDL, then hold SM slots while the one before streams)."""
    _, block_k, _, split = default_config(rows, features, k, early_weight=True, itemsize=itemsize)[:4]
    return model_takes(rows, features, k) and block_k >= k and split == 1


def _check_add_norm(add_norm, x: torch.Tensor, one_tile: bool):
    """``add_norm``'s tensors checked, as kernel arguments (x standing in where absent)."""
    if add_norm is None:
        return x, x, 0.0, x
    residual, norm_weight, eps, residual_out = add_norm
    rows, k = x.shape
    if not one_tile:
        raise ValueError("add_norm needs a config whose one BLOCK_K tile covers K, without split")
    check_float("norm_weight", norm_weight)
    check_shape("norm_weight", norm_weight, (k,))
    if norm_weight.dtype != x.dtype:
        raise ValueError(f"norm_weight must have x's dtype {x.dtype}, got {norm_weight.dtype}")
    for name, t in (("residual", residual), ("residual_out", residual_out)):
        check_float(name, t, allow_none=name == "residual")
        check_shape(name, t, (rows, k))
        if t is not None and k > 1 and t.stride(1) != 1:
            raise ValueError(f"{name} must be contiguous in its last dimension")
    check_same_device(x.device, norm_weight=norm_weight, residual=residual, residual_out=residual_out)
    return (x if residual is None else residual), norm_weight, float(eps), residual_out


def _check_conv(conv, x: torch.Tensor, features: int):
    """``conv``'s tensors checked; returns the kernel's conv arguments and constexprs."""
    if conv is None:
        return (x, x, x, x, 0, 0) + (0,) * 9, dict(CONV=False, CONV_BIAS=False, WIDTH=2, BLOCK_S=1)
    conv_state, weight, bias, first, out_state = conv
    rows = x.shape[0]
    check_float("conv_weight", weight)
    if weight.dim() != 2 or weight.shape[1] < 2:
        raise ValueError(f"conv_weight must be [channels, width >= 2], got {tuple(weight.shape)}")
    channels, width = weight.shape
    if not 0 <= first <= features - channels:
        raise ValueError(f"conv columns [{first}, {first + channels}) must lie within the "
                         f"{features} output features")
    check_float("conv_state", conv_state)
    check_shape("conv_state", conv_state, (rows, channels, width - 1))
    check_float("conv_out_state", out_state)
    check_shape("conv_out_state", out_state, (rows, channels, width - 1))
    if out_state.dtype != conv_state.dtype:
        raise ValueError(f"conv_out_state must have conv_state's dtype {conv_state.dtype}, got {out_state.dtype}")
    check_float("conv_bias", bias, allow_none=True)
    check_shape("conv_bias", bias, (channels,))
    check_same_device(x.device, conv_state=conv_state, conv_weight=weight, conv_bias=bias,
                      conv_out_state=out_state)
    args = (conv_state, weight, weight if bias is None else bias, out_state, first, channels,
            *conv_state.stride(), *weight.stride(), 0 if bias is None else bias.stride(0), *out_state.stride())
    return args, dict(CONV=True, CONV_BIAS=bias is not None, WIDTH=width, BLOCK_S=next_pow2(width - 1))


def _check_row_norm(row_norm, x: torch.Tensor):
    """``row_norm``'s tensors checked; returns (eps, kernel arguments, constexprs)."""
    if row_norm is None:
        return None, (x, 0, 0, 1, 0, 0), dict(ROW_NORM=False, BLOCK_G=1, BLOCK_Q=1)
    sumsq, eps = row_norm
    rows, k = x.shape
    if sumsq.dtype != torch.float32 or sumsq.dim() != 3 or sumsq.shape[0] != rows or \
            k % sumsq.shape[1] or sumsq.stride(2) != 1:
        raise ValueError(f"norm sums must be float32 [{rows} rows, groups dividing {k}, partials] "
                         f"contiguous in the last dim, got {sumsq.dtype} {tuple(sumsq.shape)}")
    check_same_device(x.device, norm_sums=sumsq)
    groups, per_group = sumsq.shape[1], sumsq.shape[2]
    args = (sumsq, groups, per_group, k // groups, sumsq.stride(0), sumsq.stride(1))
    return float(eps), args, dict(ROW_NORM=True, BLOCK_G=next_pow2(groups), BLOCK_Q=next_pow2(per_group))


def _check_next_norm(next_norm, out: torch.Tensor, blocks: int):
    """``next_norm``'s tensors checked; returns (kernel arguments, the sums tensor or None)."""
    if next_norm is None:
        return (out,) * 4 + (0, 0, 0), None
    residual, weight, residual_out = next_norm
    rows, features = out.shape
    check_float("norm_weight", weight)
    check_shape("norm_weight", weight, (features,))
    if weight.dtype != out.dtype:
        raise ValueError(f"norm_weight must have the output's dtype {out.dtype}, got {weight.dtype}")
    for name, t in (("residual", residual), ("residual_out", residual_out)):
        check_float(name, t)
        check_shape(name, t, (rows, features))
        if features > 1 and t.stride(1) != 1:
            raise ValueError(f"{name} must be contiguous in its last dimension")
    check_same_device(out.device, residual=residual, norm_weight=weight, residual_out=residual_out)
    sums = new_output((rows, 1, blocks), torch.float32, out.device)
    return (residual, residual_out, weight, sums, residual.stride(0), residual_out.stride(0), sums.stride(0)), sums


def _split_workspace(device, rows: int, features: int, blocks: int, split: int):
    """The float32 partial sums and the zeroed per-block counters of a split launch
    (``persistent_buffers``: layers of one shape share them)."""
    return persistent_buffers(
        ("decode_linear", str(device), rows, features, blocks, split),
        lambda: (torch.empty(split, rows, features, dtype=torch.float32, device=device),
                 torch.zeros(blocks, dtype=torch.int32, device=device)))


def decode_linear_fwd(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None,
                      out: torch.Tensor | None = None, config: tuple[int, ...] | None = None,
                      early_weight: bool = False, add_norm: tuple | None = None,
                      conv: tuple | None = None, row_norm: tuple | None = None,
                      next_norm: tuple | None = None, l2_prefetch: torch.Tensor | None = None,
                      swap_ab: bool = False):
    """``x [M, K] @ weight[N, K].T + bias[N]`` for M <= 16; returns ``out [M, N]`` (x's dtype),
    written into ``out`` when given (any strides).

    ``config``: (BLOCK_N, BLOCK_K, num_warps, SPLIT[, num_stages[, k_groups[, swap_ab]]]),
    default ``default_config`` (num_stages: the K loop's software pipelining depth, Triton's
    default when not given; k_groups: the kernel's K_GROUPS, tensor-core tiles only, 1 when not
    given; swap_ab 1: the kernel's SWAP_AB, tensor-core tiles ``weight @ x.T`` at any row count).

    ``early_weight``: with PDL and a config whose BLOCK_K covers each program's K slice, read
    the weight before waiting for the kernel launched just before this one (with a K loop, its
    first tile at several rows: EARLY_FIRST_TILE); only for callers that know that kernel does
    not write the weight (the model's decode step).

    ``add_norm = (residual or None, norm_weight [K], eps, residual_out [M, K])``: the operand is
    ``rmsnorm(x + residual) * norm_weight`` (the norm of the sum rounded to norm_weight's dtype,
    as kernels/rmsnorm.py), and ``x + residual`` is written to ``residual_out``: the model's
    residual add + RMSNorm folded into in_proj. Needs a config whose one tile covers K, without
    split (``folds_norm``).

    ``conv = (conv_state [M, C, W - 1], conv_weight [C, W], conv_bias [C] or None, first,
    out_state)`` (a mixer's in_proj): output columns ``first .. first + C - 1`` are the conv's
    input; they are returned as silu(causal conv) at this step instead, and the conv state,
    shifted by the step, goes to ``out_state`` (may be ``conv_state``). With ``early_weight`` the
    conv state is read before the PDL wait as well.

    ``row_norm = (sums [M, G, Q] float32, eps)`` (Mamba-2's out_proj): the operand is
    ``x * rstd``, rstd = 1 / sqrt(mean square + eps) per row and each of G groups of K / G
    columns, the mean square being the sum over Q of ``sums`` / (K / G): with x = v * norm
    weight and ``sums`` the squares of v, the RMSNorm of v folded in (the SSD state update
    writes both, ``ssd_state_update_fwd(norm_weight=...)``). With one group rstd scales the
    output rows instead (the same product).

    ``next_norm = (residual [M, N], norm_weight [N], residual_out [M, N])`` (out_proj of a block
    followed by another; residual and residual_out contiguous in the last dim): the next
    block's residual add and the first half of its RMSNorm run in the epilogue, as
    kernels/rmsnorm.py: ``r = out + residual`` (float32 math) goes to residual_out, and the call
    returns ``(r * norm_weight, sums [M, 1, blocks])`` (r rounded to the weight's dtype; sums
    of its squares over each program's columns): the next in_proj's ``row_norm``.

    ``l2_prefetch``: a contiguous tensor (a later kernel's weight) whose bytes the programs ask
    to be brought into L2 before their PDL wait (CUDA only: ignored by the interpreter).

    ``swap_ab``: without ``config``, let ``default_config`` choose weight @ x.T tiles (SWAP_AB)
    where they measured faster in Mamba-1's decode step."""
    check_float("x", x)
    check_float("weight", weight)
    if x.dim() != 2 or weight.dim() != 2 or x.shape[1] != weight.shape[1]:
        raise ValueError(f"x must be [M, K] and weight [N, K] with the same K, got "
                         f"{tuple(x.shape)} and {tuple(weight.shape)}")
    rows, (features, k) = x.shape[0], weight.shape
    if not 1 <= rows <= MAX_ROWS:
        raise ValueError(f"decode_linear_fwd takes 1..{MAX_ROWS} rows, got {rows}: use F.linear")
    if weight.dtype != x.dtype:
        raise ValueError(f"weight must have x's dtype {x.dtype}, got {weight.dtype}")
    check_float("bias", bias, allow_none=True)
    check_shape("bias", bias, (features,))
    check_shape("out", out, (rows, features))
    if out is not None and out.dtype != x.dtype:
        raise ValueError(f"out must have x's dtype {x.dtype}, got {out.dtype}")
    check_same_device(x.device, weight=weight, bias=bias, out=out)
    if x.dtype == torch.float64:
        raise ValueError("decode_linear_fwd: float64 is not supported; use F.linear")
    if out is None:
        out = new_output((rows, features), x.dtype, x.device)
    if row_norm is not None and add_norm is not None:
        raise ValueError("add_norm and row_norm cannot be combined")
    norm_eps, norm_args, norm_meta = _check_row_norm(row_norm, x)
    config = config or default_config(rows, features, k, early_weight, x.element_size(),  # (weight: x's dtype)
                                      k_groups=add_norm is None and norm_meta["BLOCK_G"] == 1,
                                      conv=conv is not None, swap_ab=swap_ab)
    if len(config) not in (4, 5, 6, 7) or min(config[:6]) < 1 or config[6:] not in ((), (0,), (1,)):
        raise ValueError(f"config must be positive (BLOCK_N, BLOCK_K, num_warps, SPLIT[, num_stages"
                         f"[, k_groups[, swap_ab 0 or 1]]]), got {config}")
    block_n, block_k, warps, split = config[:4]
    stages = config[4] if len(config) >= 5 else None
    k_groups = config[5] if len(config) >= 6 else 1
    swap_ab = config[6:] == (1,)
    if swap_ab and (k_groups > 1 or block_n < 16):
        raise ValueError(f"swap_ab needs k_groups 1 and BLOCK_N >= 16, got config {config}")
    # tensor-core tiles (8 features: an n8 tile; with swap_ab any row count); narrower: elementwise
    dot = (rows > 1 or swap_ab) and block_n >= 8
    block_m = (8 if rows <= 8 else MAX_ROWS) if swap_ab else MAX_ROWS if dot else next_pow2(rows)
    k_per_split = triton.cdiv(triton.cdiv(k, split), block_k) * block_k
    split = triton.cdiv(k, k_per_split)  # no empty slices
    blocks = triton.cdiv(features, block_n)
    one_tile = block_k >= k_per_split
    ws, counters = _split_workspace(x.device, rows, features, blocks, split) if split > 1 else (out, out)
    res, nw, eps, rout = _check_add_norm(add_norm, x, one_tile and split == 1)
    conv_args, conv_meta = _check_conv(conv, x, features)
    if k_groups > 1 and not (dot and k_groups & (k_groups - 1) == 0 and block_k // k_groups >= 16
                             and add_norm is None and norm_meta["BLOCK_G"] == 1):
        raise ValueError(f"k_groups {k_groups} needs tensor-core tiles (several rows, BLOCK_N >= 16), a power "
                         f"of two with BLOCK_K / k_groups >= 16, no add_norm and at most one row_norm group; "
                         f"config {config} for {rows} x {k} @ {features}")
    eps = eps if norm_eps is None else norm_eps
    next_args, sums = _check_next_norm(next_norm, out, blocks)
    launch(
        _decode_linear_kernel, (blocks, split), x.device,
        x, weight, weight if bias is None else bias, out, ws, counters, res, nw, rout,
        rows, features, k, k_per_split,
        *x.stride(), *weight.stride(), *out.stride(), res.stride(0), rout.stride(0), eps,
        *conv_args, *norm_args, *next_args, *prefetch_args(l2_prefetch, x),
        HAS_BIAS=bias is not None, DOT=dot, IEEE=x.dtype == torch.float32,
        WIDEN=use_interpreter(x.device), SPLIT=split, BLOCK_M=block_m, SWAP_AB=swap_ab,
        BLOCK_N=block_n, BLOCK_K=block_k, EARLY_W=bool(early_weight) and one_tile,
        EARLY_C=bool(early_weight) and EARLY_CONSTANTS and rows == 1,
        EARLY_K0=bool(early_weight) and EARLY_FIRST_TILE and rows > 1 and not one_tile and k_groups == 1,
        ADD_NORM=add_norm is not None, HAS_RES=add_norm is not None and add_norm[0] is not None,
        **conv_meta, **norm_meta, NEXT_NORM=next_norm is not None, K_GROUPS=k_groups,
        PREFETCH=l2_prefetch is not None and not use_interpreter(x.device), num_warps=warps,
        num_stages=1 if one_tile else stages, pdl=True,  # one K step: nothing to pipeline
    )
    return out if sums is None else (out, sums)


__all__ = ["decode_linear_fwd", "default_config", "folds_norm", "one_tile", "model_takes", "MAX_ROWS", "MODEL_ROWS"]

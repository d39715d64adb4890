"""Selective scan forward in Gluon (Triton's explicit-layout dialect): the seq kernel's algorithm
with layouts chosen by hand, for CUDA only.

Why: the Triton seq kernel (selective_scan._scan_fwd_seq_kernel) lets the compiler place its
tiles. At 4 channels per warp (the layout that gives the B1 D5120 scan enough warps) that costs
17 SASS instructions per (channel, step, state) element against the 5 of the recurrence
(docs/kernel_notes.md v16): three shuffle rounds per step to sum y over the 8 lanes that hold
the states, B and C moved through shared memory into the layout the recurrence uses, and the
per-(step, channel) work replicated over the state lanes. Here:

- B and C are loaded straight into the layout of the recurrence: each lane reads its own
  states' values for every step of the chunk (repeated over the channel lanes, from L1), from
  rows laid out [L, N] by the launcher, so that each load is one vector of consecutive states at
  a constant offset: 16-bit B and C packed into one int32 word per (step, state) (bc_packed:
  half the L1 bytes, the limit here), float32 ones as two float32 copies (states_contiguous_f32).
- y is reduced over the states in two stages: in-thread over the states a lane holds, then one
  layout conversion (through shared memory) to a layout in which each lane holds all state
  groups of BLOCK_T / SL steps, and an in-thread sum: a reduce-scatter instead of an all-reduce.
- dt (softplus), u, z and the output live in that last layout, one value per (step, channel)
  per lane, not replicated; dt and dt * u reach the recurrence by one conversion each.

Layouts, for one warp: BLOCK_D = DL x DPT channels (DL lanes, DPT channels per lane), SL = 32 / DL
lanes on states, SPT = BLOCK_N / SL states per lane, time in-thread: the recurrence tile is
[BLOCK_T, SL, SPT, BLOCK_D]. A lane's DPT channels share its B and C values: fewer bytes per
element through L1, but half the warps, which measured slower (docs/kernel_notes.md v17).
scan_config's choices (v18): with packed 16-bit B/C, 4 x 16 with B/C a chunk ahead
(BC_AHEAD), or loaded when used in the model's channel-contiguous layout; with float32 B/C
tiles, 4 x 16 with B/C when used, or 4 x 8 with them ahead in the model's layout.
Gluon has no interpreter: CPU tests run the Triton seq kernel in its place (same semantics);
this kernel is checked against float64 on the GPU (tests/test_kernels.py,
test_gpu_scan_fwd_gluon), and torch.compile / export trace the Triton kernel (torch's
wrap_triton takes Triton JIT functions only).
"""

from __future__ import annotations

import functools
import inspect

import torch

try:  # Gluon ships with Triton >= 3.4; its layout classes are still marked experimental
    from triton.experimental import gluon
    from triton.experimental.gluon import language as gl
except ImportError:  # pragma: no cover - older Triton
    gluon = gl = None

from ._common import affine_combine, softplus_f32


def _gluon_jit(fn):
    return gluon.jit(fn) if gluon is not None else fn


# the Triton kernels' helpers, their bodies traced with Gluon's semantics
_softplus = _gluon_jit(softplus_f32.fn)
_affine = _gluon_jit(affine_combine.fn)


@_gluon_jit
def _step_tiles(u_rows, dt_rows, z_rows, t, offs_t, mask_d2, length, su_l, sdt_l, sz_l,
                HAS_Z: gl.constexpr, MASK_T: gl.constexpr):
    """u, dt, z [T, D] of the chunk at step ``t`` (int64): one value per lane and step, masked
    on channels, and on steps past L with MASK_T."""
    mask = mask_d2
    if MASK_T:
        mask = mask & (t + offs_t < length)[:, None]
    u = gl.load(u_rows[None, :] + t * su_l + (offs_t * su_l)[:, None], mask=mask, other=0.0)
    dt = gl.load(dt_rows[None, :] + t * sdt_l + (offs_t * sdt_l)[:, None], mask=mask, other=0.0)
    z = u
    if HAS_Z:
        z = gl.load(z_rows[None, :] + t * sz_l + (offs_t * sz_l)[:, None], mask=mask, other=0.0)
    return u, dt, z


@_gluon_jit
def _bc_tiles(B_rows, C_rows, t, t_b, mask_nb, length, DSTATE: gl.constexpr, MASK_T: gl.constexpr,
              BC_PACKED: gl.constexpr):
    """B, C [T, SL, SPT] (float32) of the chunk at step ``t``; ``mask_nb`` (the state rows that
    exist) folds away when DSTATE is the padded size. BC_PACKED: the tile of packed words
    (bc_packed) twice, unpacked when used (_unpack_bc), so that a tile loaded ahead holds
    one register per (step, state)."""
    mask = mask_nb
    if MASK_T:
        mask = mask & (t + t_b < length)[:, None, None]
    if BC_PACKED:
        Bt = gl.load(B_rows + t * DSTATE, mask=mask, other=0)
        Ct = Bt
    else:
        Bt = gl.load(B_rows + t * DSTATE, mask=mask, other=0.0)
        Ct = gl.load(C_rows + t * DSTATE, mask=mask, other=0.0)
    return Bt, Ct


@_gluon_jit
def _unpack_bc(Bt, Ct, BC_PACKED: gl.constexpr):
    """B and C as float32 from _bc_tiles: with BC_PACKED, B's bits are the low half of each word
    and C's the high half; bfloat16 (BC_PACKED 1) is the top half of a float32 (one shift or
    mask each), float16 (BC_PACKED 2) is converted (one HADD2 each, sm_90 SASS)."""
    if BC_PACKED == 2:
        Bf = Bt.to(gl.int16).to(gl.float16, bitcast=True).to(gl.float32)
        Cf = (Ct >> 16).to(gl.int16).to(gl.float16, bitcast=True).to(gl.float32)
    elif BC_PACKED == 1:
        Bf = (Bt << 16).to(gl.float32, bitcast=True)
        Cf = (Ct & -65536).to(gl.float32, bitcast=True)
    else:
        Bf, Cf = Bt, Ct
    return Bf, Cf


@_gluon_jit
def _chunk(u, dt, z, Bt, Ct, h, A2, bias, Dv, first, is_last, out_rows, t, offs_t, mask, L_TD: gl.constexpr,
           R3: gl.constexpr, HAS_D: gl.constexpr, HAS_Z: gl.constexpr, HAS_BIAS: gl.constexpr,
           SOFTPLUS: gl.constexpr, MASK_T: gl.constexpr, BC_PACKED: gl.constexpr):
    """One chunk: its outputs stored (``mask``: the tile's valid (step, channel) entries), the
    state after its last step returned."""
    Bt, Ct = _unpack_bc(Bt, Ct, BC_PACKED)
    # per (step, channel), once per lane: dt (bias, softplus) and dt * u, then broadcast to the
    # state lanes (broadcasting dt and u as loaded and discretising on every state lane instead:
    # 1.9x the instructions, B1 0.228 vs 0.135 ms; docs/kernel_notes.md v17)
    dtf = dt.to(gl.float32)
    if HAS_BIAS:
        dtf = dtf + bias[None, :]
    if SOFTPLUS:
        dtf = _softplus(dtf)
    if MASK_T:
        dtf = gl.where(mask, dtf, 0.0)  # steps past L: decay 1, drive 0 (the state is carried)
    uf = u.to(gl.float32)
    dt4 = gl.convert_layout(dtf, L_TD)[:, None, None, :]
    dtu4 = gl.convert_layout(dtf * uf, L_TD)[:, None, None, :]

    # the recurrence, in-thread along time
    a = gl.exp2(dt4 * A2[None, :, :, :])
    drive = dtu4 * Bt[:, :, :, None]
    drive = gl.where(first, drive + a * h[None, :, :, :], drive)
    _, hs = gl.associative_scan((a, drive), axis=0, combine_fn=_affine)
    h = gl.sum(gl.where(is_last, hs, 0.0), axis=0)

    # y = C . h: in-thread over the lane's states, then reduce-scattered over the state lanes
    y = gl.sum(hs * Ct[:, :, :, None], axis=2)
    y = gl.sum(gl.convert_layout(y, R3), axis=1)
    if HAS_D:
        y += Dv[None, :] * uf
    if HAS_Z:
        zf = z.to(gl.float32)
        y = y * (zf / (1.0 + gl.exp2(-1.4426950408889634 * zf)))
    gl.store(out_rows[None, :] + t + offs_t[:, None], y.to(out_rows.dtype.element_ty), mask=mask)
    return h


@_gluon_jit
def _scan_fwd_gluon_kernel(
    u_ptr, dt_ptr, A_ptr, B_ptr, C_ptr, D_ptr, z_ptr, bias_ptr, h0_ptr,
    out_ptr, hlast_ptr,
    dim, length, n_chunks, ch_per_group,
    su_b, su_d, su_l,
    sdt_b, sdt_d, sdt_l,
    sA_d, sA_n,
    sB_b, sB_g,
    sC_b, sC_g,
    sD, sbias,
    sz_b, sz_d, sz_l,
    sh0_b, sh0_d, sh0_n,
    HAS_D: gl.constexpr, HAS_Z: gl.constexpr, HAS_BIAS: gl.constexpr, SOFTPLUS: gl.constexpr,
    HAS_H0: gl.constexpr, DSTATE: gl.constexpr, BLOCK_N: gl.constexpr, BLOCK_D: gl.constexpr,
    BLOCK_T: gl.constexpr, DPT: gl.constexpr, BC_AHEAD: gl.constexpr, BC_PACKED: gl.constexpr = 0,
):
    """Program (channel block, sequence); one warp. The arguments are the seq kernel's, but B
    and C are [batch, groups, L, DSTATE] contiguous in their last two dims, float32
    (states_contiguous_f32) or, with BC_PACKED, one int32 tensor of both (bc_packed), so
    that every load offset within a chunk is a constant; one group per channel block."""
    DL: gl.constexpr = BLOCK_D // DPT  # lanes on channels (DPT channels per lane)
    SL: gl.constexpr = 32 // DL
    SPT: gl.constexpr = BLOCK_N // SL
    RT: gl.constexpr = BLOCK_T // SL
    # the recurrence: [T, SL, SPT, D]; time and SPT states in-thread, states then channels on lanes
    # (registers: a lane's SPT states fastest, so that B/C loads vectorise along N)
    P4: gl.constexpr = gl.BlockedLayout([BLOCK_T, 1, SPT, DPT], [1, SL, 1, DL], [1, 1, 1, 1],
                                        [2, 0, 1, 3])
    L_TSD: gl.constexpr = gl.SliceLayout(2, P4)  # [T, SL, D]: y summed over a lane's states
    L_TD: gl.constexpr = gl.SliceLayout(1, L_TSD)  # [T, D] broadcast over the state lanes
    L_TSS: gl.constexpr = gl.SliceLayout(3, P4)  # [T, SL, SPT]: B, C (broadcast over channels)
    L_SSD: gl.constexpr = gl.SliceLayout(0, P4)  # [SL, SPT, D]: the carried state, A
    # y's second stage: [T, SL, D] with the SL state groups in-thread and time on those lanes
    R3: gl.constexpr = gl.BlockedLayout([RT, SL, DPT], [SL, 1, DL], [1, 1, 1], [0, 1, 2])
    YL: gl.constexpr = gl.SliceLayout(1, R3)  # [T, D]: RT steps of one channel per lane

    pid_d = gl.program_id(0)
    b64 = gl.program_id(1).to(gl.int64)

    # per-(step, channel) tiles in YL
    offs_ty = gl.arange(0, BLOCK_T, layout=gl.SliceLayout(1, YL))
    offs_dy = pid_d * BLOCK_D + gl.arange(0, BLOCK_D, layout=gl.SliceLayout(0, YL))
    mask_dy = offs_dy < dim
    dy64 = offs_dy.to(gl.int64)
    u_rows = u_ptr + b64 * su_b + dy64 * su_d
    dt_rows = dt_ptr + b64 * sdt_b + dy64 * sdt_d
    z_rows = z_ptr + b64 * sz_b + dy64 * sz_d
    out_rows = out_ptr + (b64 * dim + dy64) * length
    bias = gl.zeros([BLOCK_D], gl.float32, layout=gl.SliceLayout(0, YL))
    if HAS_BIAS:
        bias = gl.load(bias_ptr + offs_dy * sbias, mask=mask_dy, other=0.0).to(gl.float32)
    Dv = gl.zeros([BLOCK_D], gl.float32, layout=gl.SliceLayout(0, YL))
    if HAS_D:
        Dv = gl.load(D_ptr + offs_dy * sD, mask=mask_dy, other=0.0).to(gl.float32)

    # B, C rows [T, SL, SPT] of the block's group
    grp = ((pid_d * BLOCK_D) // ch_per_group).to(gl.int64)
    t_b = gl.arange(0, BLOCK_T, layout=gl.SliceLayout(1, gl.SliceLayout(2, L_TSS)))
    l_b = gl.arange(0, SL, layout=gl.SliceLayout(0, gl.SliceLayout(2, L_TSS)))
    s_b = gl.arange(0, SPT, layout=gl.SliceLayout(0, gl.SliceLayout(1, L_TSS)))
    n_b = l_b[None, :, None] * SPT + s_b[None, None, :]
    mask_nb = n_b < DSTATE
    B_rows = B_ptr + b64 * sB_b + grp * sB_g + n_b + t_b[:, None, None] * DSTATE
    C_rows = C_ptr + b64 * sC_b + grp * sC_g + n_b + t_b[:, None, None] * DSTATE

    # the carried state and A (log2 units) [SL, SPT, D]
    l_h = gl.arange(0, SL, layout=gl.SliceLayout(1, gl.SliceLayout(2, L_SSD)))
    s_h = gl.arange(0, SPT, layout=gl.SliceLayout(0, gl.SliceLayout(2, L_SSD)))
    d_h = pid_d * BLOCK_D + gl.arange(0, BLOCK_D, layout=gl.SliceLayout(0, gl.SliceLayout(1, L_SSD)))
    n_h = l_h[:, None, None] * SPT + s_h[None, :, None]
    mask_h = (n_h < DSTATE) & (d_h < dim)[None, None, :]
    A2 = gl.load(A_ptr + n_h * sA_n + d_h[None, None, :] * sA_d, mask=mask_h,
                 other=0.0).to(gl.float32) * 1.4426950408889634
    if HAS_H0:
        h = gl.load(h0_ptr + b64 * sh0_b + d_h[None, None, :] * sh0_d + n_h * sh0_n, mask=mask_h,
                    other=0.0).to(gl.float32)
    else:
        h = gl.zeros([SL, SPT, BLOCK_D], gl.float32, layout=L_SSD)

    t_p = gl.arange(0, BLOCK_T, layout=gl.SliceLayout(1, gl.SliceLayout(2, gl.SliceLayout(3, P4))))
    first = (t_p == 0)[:, None, None, None]
    is_last = (t_p == BLOCK_T - 1)[:, None, None, None]
    mask_d2 = mask_dy[None, :] | (offs_ty < 0)[:, None]  # [T, D]: the channel mask alone

    # Main loop: chunks whose tiles are all inside L, loaded unmasked (masked loads zero their
    # registers first: 32 instructions per chunk for B and C at 4 x 16); u, dt, z two chunks
    # ahead (from DRAM; a few registers), B and C one chunk ahead (BC_AHEAD) or when used (they
    # hit L1/L2: every warp of the sequence reads them; at 4 x 16 that saves the second register
    # set, 235 -> 155 registers). Two chunks per iteration, so that prefetched tiles alternate
    # between register sets instead of being copied (about 70 moves per chunk otherwise). The
    # last 2-4 chunks: masked loads.
    n_full = length // BLOCK_T
    pairs = gl.maximum(n_full - 2, 0) // 2
    t0 = b64 * 0
    u0, dt0, z0 = _step_tiles(u_rows, dt_rows, z_rows, t0, offs_ty, mask_d2, length, su_l, sdt_l, sz_l, HAS_Z,
                              True)  # (L may be shorter than the prefetch)
    u1, dt1, z1 = _step_tiles(u_rows, dt_rows, z_rows, t0 + BLOCK_T, offs_ty, mask_d2, length, su_l, sdt_l,
                              sz_l, HAS_Z, True)
    B0, C0 = _bc_tiles(B_rows, C_rows, t0, t_b, mask_nb, length, DSTATE, True, BC_PACKED)
    for _ in range(pairs):
        if BC_AHEAD:
            B1, C1 = _bc_tiles(B_rows, C_rows, t0 + BLOCK_T, t_b, mask_nb, length, DSTATE, False, BC_PACKED)
        else:
            B0, C0 = _bc_tiles(B_rows, C_rows, t0, t_b, mask_nb, length, DSTATE, False, BC_PACKED)
        u2, dt2, z2 = _step_tiles(u_rows, dt_rows, z_rows, t0 + 2 * BLOCK_T, offs_ty, mask_d2, length, su_l,
                                  sdt_l, sz_l, HAS_Z, False)
        h = _chunk(u0, dt0, z0, B0, C0, h, A2, bias, Dv, first, is_last, out_rows, t0, offs_ty, mask_d2, L_TD,
                   R3, HAS_D, HAS_Z, HAS_BIAS, SOFTPLUS, False, BC_PACKED)
        if BC_AHEAD:
            B0, C0 = _bc_tiles(B_rows, C_rows, t0 + 2 * BLOCK_T, t_b, mask_nb, length, DSTATE, False,
                               BC_PACKED)
        else:
            B1, C1 = _bc_tiles(B_rows, C_rows, t0 + BLOCK_T, t_b, mask_nb, length, DSTATE, False, BC_PACKED)
        u3, dt3, z3 = _step_tiles(u_rows, dt_rows, z_rows, t0 + 3 * BLOCK_T, offs_ty, mask_d2, length, su_l,
                                  sdt_l, sz_l, HAS_Z, False)
        h = _chunk(u1, dt1, z1, B1, C1, h, A2, bias, Dv, first, is_last, out_rows, t0 + BLOCK_T, offs_ty,
                   mask_d2, L_TD, R3, HAS_D, HAS_Z, HAS_BIAS, SOFTPLUS, False, BC_PACKED)
        u0, dt0, z0, u1, dt1, z1 = u2, dt2, z2, u3, dt3, z3
        t0 += 2 * BLOCK_T
    for _ in range(2 * pairs, n_chunks):
        u0, dt0, z0 = _step_tiles(u_rows, dt_rows, z_rows, t0, offs_ty, mask_d2, length, su_l, sdt_l, sz_l,
                                  HAS_Z, True)
        B0, C0 = _bc_tiles(B_rows, C_rows, t0, t_b, mask_nb, length, DSTATE, True, BC_PACKED)
        mask = (t0 + offs_ty < length)[:, None] & mask_d2
        h = _chunk(u0, dt0, z0, B0, C0, h, A2, bias, Dv, first, is_last, out_rows, t0, offs_ty, mask, L_TD,
                   R3, HAS_D, HAS_Z, HAS_BIAS, SOFTPLUS, True, BC_PACKED)
        t0 += BLOCK_T

    gl.store(hlast_ptr + (b64 * dim + d_h.to(gl.int64))[None, None, :] * DSTATE + n_h, h, mask=mask_h)


def launch_fwd(grid, *args, maxnreg=None, **constexprs):
    """Launch on validated inputs, one warp per program: selective_scan._run_fwd passes the seq
    kernel's arguments, with B's and C's strides along N and L left out (B/C from
    states_contiguous_f32 or bc_packed) and the DPT / BC_AHEAD / BC_PACKED constexprs;
    ``maxnreg`` caps registers.

    Why the cache: the JIT's launch path (argument binding and specialisation of some 50
    arguments) cost 30-60 us of host time per call on the H100 machine (2026-11-24: 30.3 us,
    20.3 through the cache), against ~110 us of device time at B1 D5120 L2048. A compiled
    kernel is valid for every call whose integers are the same and whose tensors have the same
    dtypes and 16-byte alignment (what Triton specialises on), so calls with that key launch it
    directly."""
    if any(g == 0 for g in grid):
        return
    tensors, ints = args[:_N_TENSORS], args[_N_TENSORS:]
    key = (tensors[0].device.index, tuple((t.dtype, t.data_ptr() % 16 == 0) for t in tensors), ints,
           tuple(constexprs.items()), maxnreg)
    compiled = _COMPILED.get(key)
    if compiled is not None:  # (the launcher takes every parameter in order, constexprs too)
        constants = (constexprs.get(name, default) for name, default in _PARAMS[len(args):])
        compiled[(*grid, 1, 1)[:3]](*args, *constants)
        return
    compiled = _scan_fwd_gluon_kernel[grid](*args, num_warps=1, **constexprs,
                                            **({} if maxnreg is None else {"maxnreg": maxnreg}))
    if hasattr(compiled, "__getitem__"):  # (Triton's CompiledKernel; 3.6 returns it from a launch)
        if len(_COMPILED) >= 64:  # (a long-running process seeing many shapes)
            _COMPILED.pop(next(iter(_COMPILED)))
        _COMPILED[key] = compiled


_COMPILED: dict = {}
_N_TENSORS = 11  # the kernel's leading tensor parameters (u_ptr ... hlast_ptr); integers follow
# the kernel's parameters (name, default) in order
_PARAMS = [(name, None if p.default is inspect.Parameter.empty else p.default)
           for name, p in inspect.signature(_scan_fwd_gluon_kernel.fn).parameters.items()] \
    if gluon is not None else []


def states_contiguous_f32(t: torch.Tensor) -> torch.Tensor:
    """B or C ([B, N, L] or [B, G, N, L]) as float32 with stride 1 along N: a lane holds a few
    consecutive states of every step of the chunk, so each of its loads reads one row segment
    (with N contiguous along L instead, every load instruction touched one 128-byte line per
    state lane, 8 at 4 channels per warp, which made the kernel bound by L1 wavefronts)."""
    n, length = t.shape[-2:]
    if t.dtype == torch.float32 and t.stride(-2) == 1 and (t.stride(-1) == n or length == 1):
        return t
    out = torch.empty((*t.shape[:-2], length, n), dtype=torch.float32, device=t.device).transpose(-1, -2)
    return out.copy_(t)  # (one kernel: conversion and transposition)


def bc_packed(B: torch.Tensor, C: torch.Tensor) -> torch.Tensor:
    """B and C (both float16 or both bfloat16, one shape: [B, N, L] or [B, G, N, L]) interleaved
    into one int32 word per (step, state), B's bits in the low half; shape and axes as B's,
    stride 1 along N and N along L (states_contiguous_f32's layout). Half the bytes the
    kernel's B/C loads move through L1 (its limit) against two float32 copies, in one kernel
    instead of two."""
    n, length = B.shape[-2:]
    pairs = torch.empty((*B.shape[:-2], length, n, 2), dtype=B.dtype, device=B.device)
    # (into a contiguous buffer: stack's own output may take a channels-last layout from its inputs)
    torch.stack((B.transpose(-1, -2), C.transpose(-1, -2)), dim=-1, out=pairs)
    return pairs.view(torch.int32).squeeze(-1).transpose(-1, -2)


def packed_code(B: torch.Tensor, C: torch.Tensor) -> int:
    """The kernel's BC_PACKED for these B and C: 1 bfloat16, 2 float16 (both the same dtype and
    shape), else 0 (float32 copies)."""
    if B.dtype != C.dtype or B.shape != C.shape:
        return 0
    return {torch.bfloat16: 1, torch.float16: 2}.get(B.dtype, 0)


@functools.lru_cache(maxsize=None)
def available(device_index: int) -> bool:
    """Gluon importable and a Hopper GPU (compute capability 9.x): the only one this kernel was
    compiled, checked and timed on (H100); elsewhere the Triton kernels run."""
    return gluon is not None and torch.cuda.get_device_capability(device_index)[0] == 9


def supports(block_d: int, block_t: int, block_n: int, bc_row: bool, dpt: int = 1) -> bool:
    """Whether this kernel covers the tile: ``dpt`` channels per lane on 2..16 lanes, the states
    split evenly over the other lanes (32 / lanes on channels), time over them too, and the
    block's channels in one B/C group."""
    if dpt < 1 or block_d % dpt or block_d // dpt not in (2, 4, 8, 16):
        return False
    sl = 32 // (block_d // dpt)
    return bc_row and block_n % sl == 0 and block_t % sl == 0


__all__ = ["available", "bc_packed", "launch_fwd", "packed_code", "states_contiguous_f32", "supports"]

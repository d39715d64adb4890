"""Depthwise causal conv1d over L (prefill, with conv state in and out) and its one-step update.

Semantics: ``mamba_export.reference.causal_conv1d`` / ``causal_conv1d_update``.
"""

from __future__ import annotations

import triton
import triton.language as tl

from ._common import (
    check_float,
    check_same_device,
    check_shape,
    device_fn,
    kernel,
    launch,
    new_output,
    next_pow2,
    pdl_start,
    use_interpreter,
)


@kernel
def _conv_fwd_kernel(
    x_ptr, w_ptr, bias_ptr, init_ptr, out_ptr, final_ptr,
    dim, length,
    sx_b, sx_d, sx_l,
    sw_d, sw_w,
    sbias,
    si_b, si_d, si_l,
    HAS_BIAS: tl.constexpr, HAS_INIT: tl.constexpr, SILU: tl.constexpr,
    WIDTH: tl.constexpr, BLOCK_W: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_T: tl.constexpr,
):
    pid_t = tl.program_id(0)
    pid_d = tl.program_id(1)
    pid_b = tl.program_id(2)
    b64 = pid_b.to(tl.int64)
    offs_d = pid_d * BLOCK_D + tl.arange(0, BLOCK_D)
    mask_d = offs_d < dim
    d64 = offs_d.to(tl.int64)
    t = pid_t * BLOCK_T + tl.arange(0, BLOCK_T)
    mask_t = t < length
    x_rows = x_ptr + b64 * sx_b + d64 * sx_d
    init_rows = init_ptr + b64 * si_b + d64 * si_d
    t64 = t.to(tl.int64)

    acc = tl.zeros([BLOCK_D, BLOCK_T], dtype=tl.float32)
    for w in tl.static_range(WIDTH):
        # tap w reads padded position t + w, i.e. x[t + w - (WIDTH - 1)]
        src = t64 + (w - (WIDTH - 1))
        in_x = (src >= 0) & (src < length)
        xv = tl.load(x_rows[:, None] + src[None, :] * sx_l,
                     mask=mask_d[:, None] & in_x[None, :], other=0.0).to(tl.float32)
        if HAS_INIT:
            if w < WIDTH - 1:
                pos = src + (WIDTH - 1)
                in_i = (src < 0) & (pos >= 0)
                iv = tl.load(init_rows[:, None] + pos[None, :] * si_l,
                             mask=mask_d[:, None] & in_i[None, :], other=0.0).to(tl.float32)
                xv = xv + iv  # disjoint masks
        wv = tl.load(w_ptr + offs_d * sw_d + w * sw_w, mask=mask_d, other=0.0).to(tl.float32)
        acc += wv[:, None] * xv
    if HAS_BIAS:
        acc += tl.load(bias_ptr + offs_d * sbias, mask=mask_d, other=0.0).to(tl.float32)[:, None]
    if SILU:
        acc = acc * tl.sigmoid(acc)
    out_off = (b64 * dim + d64)[:, None] * length + t64[None, :]
    tl.store(out_ptr + out_off, acc.to(out_ptr.dtype.element_ty),
             mask=mask_d[:, None] & mask_t[None, :])

    if WIDTH > 1:
        if pid_t == 0:
            # final state: padded positions length .. length + WIDTH - 2
            j = tl.arange(0, BLOCK_W)
            mask_j = j < WIDTH - 1
            fsrc = length + j.to(tl.int64) - (WIDTH - 1)
            m_x = mask_d[:, None] & (mask_j & (fsrc >= 0))[None, :]
            fv = tl.load(x_rows[:, None] + fsrc[None, :] * sx_l, mask=m_x, other=0.0)
            if HAS_INIT:
                fpos = fsrc + (WIDTH - 1)
                m_i = mask_d[:, None] & (mask_j & (fsrc < 0))[None, :]
                fiv = tl.load(init_rows[:, None] + fpos[None, :] * si_l, mask=m_i, other=0.0)
                fv = tl.where(m_i, fiv.to(fv.dtype), fv)
            f_off = (b64 * dim + d64)[:, None] * (WIDTH - 1) + j[None, :]
            tl.store(final_ptr + f_off, fv.to(final_ptr.dtype.element_ty),
                     mask=mask_d[:, None] & mask_j[None, :])


@kernel
def _conv_update_kernel(
    x_ptr, state_ptr, w_ptr, bias_ptr, out_ptr, nstate_ptr,
    dim, state_len,
    sx_b, sx_d,
    ss_b, ss_d, ss_s,
    sw_d, sw_w,
    sbias,
    sn_b, sn_d, sn_s,
    HAS_BIAS: tl.constexpr, SILU: tl.constexpr, WIDTH: tl.constexpr,
    BLOCK_S: tl.constexpr, BLOCK_D: tl.constexpr, EARLY_STATE: tl.constexpr = False,
    PDL: tl.constexpr = False,
):
    """BLOCK_D channels of one batch row. EARLY_STATE: everything but the step's input x (the
    state's taps and shifted part, the weights, the bias) is read before the PDL wait (the
    caller knows the kernel before does not write the state)."""
    pid_d = tl.program_id(0)
    pid_b = tl.program_id(1)
    b64 = pid_b.to(tl.int64)
    offs_d = pid_d * BLOCK_D + tl.arange(0, BLOCK_D)
    mask_d = offs_d < dim
    d64 = offs_d.to(tl.int64)
    s_rows = state_ptr + b64 * ss_b + d64 * ss_d
    # window = [state, x] (length state_len + 1); taps are its last WIDTH entries; the new state
    # is window[1:], everything read before anything is written (in-place safe)
    j = tl.arange(0, BLOCK_S)
    from_state = (j + 1) < state_len
    shift_ptrs = s_rows[:, None] + (j + 1)[None, :] * ss_s
    shift_mask = mask_d[:, None] & from_state[None, :]
    if EARLY_STATE:
        partial, w_new = conv_step_partial(state_ptr + b64 * ss_b, w_ptr, bias_ptr, d64, mask_d, state_len,
                                           ss_d, ss_s, sw_d, sw_w, sbias, HAS_BIAS, WIDTH)
        sv = tl.load(shift_ptrs, mask=shift_mask, other=0.0)
    pdl_start(PDL)
    if not EARLY_STATE:
        partial, w_new = conv_step_partial(state_ptr + b64 * ss_b, w_ptr, bias_ptr, d64, mask_d, state_len,
                                           ss_d, ss_s, sw_d, sw_w, sbias, HAS_BIAS, WIDTH)
        sv = tl.load(shift_ptrs, mask=shift_mask, other=0.0)
    x = tl.load(x_ptr + b64 * sx_b + d64 * sx_d, mask=mask_d, other=0.0)
    acc = partial + w_new * x.to(tl.float32)
    if SILU:
        acc = acc * tl.sigmoid(acc)

    nv = tl.where(from_state[None, :], sv.to(nstate_ptr.dtype.element_ty),
                  x.to(nstate_ptr.dtype.element_ty)[:, None])
    tl.debug_barrier()
    tl.store(nstate_ptr + b64 * sn_b + d64[:, None] * sn_d + j[None, :] * sn_s, nv,
             mask=mask_d[:, None] & (j < state_len)[None, :])
    tl.store(out_ptr + b64 * dim + d64, acc.to(out_ptr.dtype.element_ty), mask=mask_d)


# ----------------------------------------------------------------------------- fused decode
# Helpers for kernels that fold the conv's decode step into their own work (Mamba-2: the SSD
# state update computes the conv outputs it reads; the gated norm, which runs after it, shifts
# the conv state, so no program overwrites a state another still reads).
@device_fn
def conv_step_partial(state_ptr, w_ptr, bias_ptr, ch, mask, state_len, s_state_c, s_state_s, sw_c, sw_k,
                      s_bias, HAS_BIAS: tl.constexpr, WIDTH: tl.constexpr):
    """The conv of channels ``ch`` at the new step without its newest tap (float32): the taps
    from the state times their weights, plus the bias; and the newest tap's weight. The window
    is [state, raw], the taps its last WIDTH entries; pointers are at the batch row, the state
    is only read. Needs nothing of the step's input, so a PDL kernel may compute it before its
    wait (conv_step_finish adds the input)."""
    acc = tl.zeros(ch.shape, dtype=tl.float32)
    for w in tl.static_range(WIDTH - 1):
        wv = tl.load(w_ptr + ch * sw_c + w * sw_k, mask=mask, other=0.0).to(tl.float32)
        tap = tl.load(state_ptr + ch * s_state_c + (state_len + 1 - WIDTH + w) * s_state_s,
                      mask=mask, other=0.0).to(tl.float32)
        acc += wv * tap
    if HAS_BIAS:
        acc += tl.load(bias_ptr + ch * s_bias, mask=mask, other=0.0).to(tl.float32)
    return acc, tl.load(w_ptr + ch * sw_c + (WIDTH - 1) * sw_k, mask=mask, other=0.0).to(tl.float32)


@device_fn
def conv_step_finish(partial, w_new, raw_ptr, ch, mask, s_raw):
    """silu(conv) of channels ``ch`` at the new step: conv_step_partial's sum plus the newest
    tap (the step's input ``raw``, pointer at the batch row) times its weight."""
    acc = partial + w_new * tl.load(raw_ptr + ch * s_raw, mask=mask, other=0.0).to(tl.float32)
    return acc * tl.sigmoid(acc)


@device_fn
def conv_state_shift(raw_ptr, state_ptr, nstate_ptr, ch, mask, state_len,
                     s_raw, s_state_c, s_state_s, sn_c, sn_s, BLOCK_S: tl.constexpr):
    """new state = old state shifted left by one with ``raw`` appended, for channels ``ch``
    (pointers at the batch row). Reads everything before writing: in place is safe."""
    j = tl.arange(0, BLOCK_S)
    from_state = (j + 1) < state_len
    sv = tl.load(state_ptr + ch[:, None] * s_state_c + (j + 1)[None, :] * s_state_s,
                 mask=mask[:, None] & from_state[None, :], other=0.0)
    raw = tl.load(raw_ptr + ch * s_raw, mask=mask, other=0.0)
    nv = tl.where(from_state[None, :], sv.to(nstate_ptr.dtype.element_ty),
                  raw.to(nstate_ptr.dtype.element_ty)[:, None])
    tl.debug_barrier()
    tl.store(nstate_ptr + ch[:, None] * sn_c + j[None, :] * sn_s, nv,
             mask=mask[:, None] & (j < state_len)[None, :])


@kernel
def _conv_commit_kernel(raw_ptr, state_ptr, nstate_ptr, dim, state_len, s_raw_b, s_raw_c,
                        s_st_b, s_st_c, s_st_s, sn_b, sn_c, sn_s,
                        BLOCK_D: tl.constexpr, BLOCK_S: tl.constexpr, PDL: tl.constexpr = False):
    pdl_start(PDL)
    b = tl.program_id(1).to(tl.int64)
    ch = tl.program_id(0) * BLOCK_D + tl.arange(0, BLOCK_D)
    conv_state_shift(raw_ptr + b * s_raw_b, state_ptr + b * s_st_b, nstate_ptr + b * sn_b, ch,
                     ch < dim, state_len, s_raw_c, s_st_c, s_st_s, sn_c, sn_s, BLOCK_S)


def conv_state_commit_fwd(raw, conv_state, out_state=None):
    """The conv state's decode-step shift alone (raw ``[B, D]`` appended): the commit that
    follows :func:`~mamba_export.kernels.ssd_update.ssd_conv_state_update_fwd` when no gated
    norm does it. Returns the new state (``out_state`` when given; it may be ``conv_state``)."""
    check_float("conv input", raw)
    check_float("conv_state", conv_state)
    if raw.dim() != 2 or conv_state.dim() != 3 or tuple(conv_state.shape[:2]) != tuple(raw.shape):
        raise ValueError(f"conv_state must be [batch, dim, S] for the input {tuple(raw.shape)}, "
                         f"got {tuple(conv_state.shape)}")
    check_float("out_state", out_state, allow_none=True)
    check_shape("out_state", out_state, tuple(conv_state.shape))
    check_same_device(raw.device, conv_state=conv_state, out_state=out_state)
    nstate = out_state if out_state is not None else new_output(tuple(conv_state.shape),
                                                                conv_state.dtype, raw.device)
    batch, dim, state_len = conv_state.shape
    block_d = 4 if use_interpreter(raw.device) else 256
    launch(_conv_commit_kernel, (triton.cdiv(dim, block_d), batch), raw.device,
           raw, conv_state, nstate, dim, state_len, *raw.stride(), *conv_state.stride(), *nstate.stride(),
           BLOCK_D=block_d, BLOCK_S=next_pow2(max(state_len, 1)), num_warps=4, pdl=True)
    return nstate


def check_conv_step(x, conv_state, weight, bias, out_state=None, name="x") -> int:
    """Validate a decode-step conv (input ``name`` ``[B, D]``, state ``[B, D, S]``, optional
    ``out_state`` like the state); returns the width."""
    check_float(name, x)
    if x.dim() != 2:
        raise ValueError(f"{name} must be [batch, dim], got shape {tuple(x.shape)}")
    batch, dim = x.shape
    width = _check_weight(weight, bias, dim)
    check_float("conv_state", conv_state)
    if conv_state.dim() != 3 or tuple(conv_state.shape[:2]) != (batch, dim):
        raise ValueError(f"conv_state must be [batch={batch}, dim={dim}, S], "
                         f"got shape {tuple(conv_state.shape)}")
    if conv_state.shape[2] < width - 1:
        raise ValueError(f"conv_state holds {conv_state.shape[2]} steps; the conv needs at least "
                         f"width - 1 = {width - 1}")
    check_float("out_state", out_state, allow_none=True)
    check_shape("out_state", out_state, tuple(conv_state.shape))
    check_same_device(x.device, conv_state=conv_state, weight=weight, bias=bias, out_state=out_state)
    return width


def _check_weight(weight, bias, dim):
    check_float("weight", weight)
    if weight.dim() != 2 or weight.shape[0] != dim or weight.shape[1] < 1:
        raise ValueError(f"weight must be [dim={dim}, width], got shape {tuple(weight.shape)}")
    check_float("bias", bias, allow_none=True)
    check_shape("bias", bias, (dim,))
    return weight.shape[1]


def causal_conv1d_fwd(x, weight, bias=None, initial_state=None, silu=False):
    """Causal depthwise conv. Returns ``(out [B, D, L] in x.dtype, final_state [B, D, W-1])``.

    ``initial_state [B, D, W-1]`` holds the W-1 inputs before x (zeros when None); the final
    state (x.dtype) is the last W-1 inputs, ready to carry into the next call. Any strides.
    """
    check_float("x", x)
    if x.dim() != 3:
        raise ValueError(f"x must be [batch, dim, length], got shape {tuple(x.shape)}")
    batch, dim, length = x.shape
    width = _check_weight(weight, bias, dim)
    check_float("initial_state", initial_state, allow_none=True)
    check_shape("initial_state", initial_state, (batch, dim, width - 1))
    check_same_device(x.device, weight=weight, bias=bias, initial_state=initial_state)
    device = x.device
    out = new_output((batch, dim, length), x.dtype, device)
    final = new_output((batch, dim, width - 1), x.dtype, device)
    if use_interpreter(device):
        block_d, block_t, num_warps = 4, 8, 1
    else:
        block_t = 64 if x.stride(2) == 1 else 16
        block_d = 16 if x.stride(2) == 1 else 64
        num_warps = 4
    has_init = initial_state is not None and width > 1
    init = initial_state if has_init else x
    grid = (max(triton.cdiv(length, block_t), 1), triton.cdiv(dim, block_d), batch)
    launch(
        _conv_fwd_kernel, grid, device,
        x, weight, bias if bias is not None else x, init, out, final,
        dim, length,
        x.stride(0), x.stride(1), x.stride(2),
        weight.stride(0), weight.stride(1),
        bias.stride(0) if bias is not None else 0,
        *(init.stride() if has_init else (0, 0, 0)),
        HAS_BIAS=bias is not None, HAS_INIT=has_init, SILU=bool(silu), WIDTH=width,
        BLOCK_W=next_pow2(max(width - 1, 1)), BLOCK_D=block_d, BLOCK_T=block_t,
        num_warps=num_warps,
    )
    return out, final


def causal_conv1d_update_fwd(x, conv_state, weight, bias=None, silu=False, out_state=None,
                             early_state=False):
    """One step. Returns ``(out [B, D] in x.dtype, new_state [B, D, S])``.

    ``conv_state [B, D, S]`` (S >= W-1) holds the last S inputs, oldest first. The new state
    (old shifted left by one, x appended) goes into ``out_state`` when given (it may be
    ``conv_state`` itself: in-place), else into a new tensor of x's dtype.
    ``early_state``: with PDL, read the state, weights and bias before waiting for the kernel
    launched just before this one; only for callers that know that kernel does not write the
    state (the Mamba-1 decode step: in_proj).
    """
    width = check_conv_step(x, conv_state, weight, bias, out_state)
    (batch, dim), state_len = x.shape, conv_state.shape[2]
    device = x.device
    out = new_output((batch, dim), x.dtype, device)
    nstate = out_state if out_state is not None else new_output(tuple(conv_state.shape),
                                                                x.dtype, device)
    block_d = 4 if use_interpreter(device) else 128
    grid = (triton.cdiv(dim, block_d), batch)
    launch(
        _conv_update_kernel, grid, device,
        x, conv_state, weight, bias if bias is not None else x, out, nstate,
        dim, state_len,
        x.stride(0), x.stride(1),
        conv_state.stride(0), conv_state.stride(1), conv_state.stride(2),
        weight.stride(0), weight.stride(1),
        bias.stride(0) if bias is not None else 0,
        nstate.stride(0), nstate.stride(1), nstate.stride(2),
        HAS_BIAS=bias is not None, SILU=bool(silu), WIDTH=width,
        BLOCK_S=next_pow2(max(state_len, 1)), BLOCK_D=block_d, EARLY_STATE=bool(early_state), num_warps=4,
        pdl=True,
    )
    return out, nstate


__all__ = ["causal_conv1d_fwd", "causal_conv1d_update_fwd", "conv_state_commit_fwd"]

"""Mamba-2 SSD chunked scan (prefill) as one Triton kernel.

Semantics: ``mamba_export.reference.ssd_scan``. x/z ``[B, L, H, P]``, dt ``[B, L, H]``, A ``[H]``
(a scalar decay per head), B/C ``[B, L, G, N]`` (head h reads group ``h // (H/G)``), D ``[H]`` or
``[H, P]``, dt_bias ``[H]``, optional softplus and dt clamp, initial state ``[B, H, P, N]``.

One program owns (batch, head, a block of P) and walks the sequence chunk by chunk, carrying
the state ``S [N, BLOCK_P]`` in registers, so nothing of size L x N is ever written and the
five kernels of the usual SSD pipeline (dt cumsum, chunk states, state passing, chunk scan,
BMM) become one launch. Per chunk of T positions, with cs the cumulative sum of dt * A:

    y   = ((C B^T) * exp(cs_t - cs_s) * dt_s * [s <= t]) @ x  +  exp(cs_t) * (C @ S)
    S'  = exp(cs_T) * S  +  (B * exp(cs_T - cs_s) * dt_s)^T @ x

four matmuls on tensor cores. As in mamba_ssm, matmul operands are in the input dtype (the
float32 intermediates W, S and x * w are rounded to it; accumulation is float32), so half
inputs run native bf16/fp16 MMAs; float32 inputs use full-precision ("ieee") matmuls so they
meet the float32 tolerance. Triton's interpreter multiplies bfloat16 operands as raw integers,
so there the rounded operands are widened to float32 (same products, exact in float32). The kernel's
chunk length is a tuning choice: the math is the same for any chunking, so the op's
``chunk_size`` argument (a property of the checkpoint's training kernel) does not select it.
"""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

from ._common import (check_float, check_same_device, check_shape, device_fn, kernel, launch,
                      new_output, next_pow2, use_interpreter)


@device_fn
def _operand(v, in_ty: tl.constexpr, WIDEN: tl.constexpr):
    """A matmul operand: rounded to the input dtype; widened to float32 again under WIDEN (the
    interpreter, whose tl.dot multiplies bfloat16 bit patterns as integers)."""
    v = v.to(in_ty)
    if WIDEN:
        v = v.to(tl.float32)
    return v


@kernel
def _ssd_scan_fwd_kernel(
    x_ptr, dt_ptr, A_ptr, B_ptr, C_ptr, D_ptr, z_ptr, bias_ptr, init_ptr, out_ptr, final_ptr,
    length, headdim, dstate, heads_per_group, dt_lo, dt_hi,
    sx_b, sx_l, sx_h, sx_p, sdt_b, sdt_l, sdt_h, sA,
    sB_b, sB_l, sB_g, sB_n, sC_b, sC_l, sC_g, sC_n, sD_h, sD_p,
    sz_b, sz_l, sz_h, sz_p, sbias, si_b, si_h, si_p, si_n,
    so_b, so_l, so_h, so_p, sf_b, sf_h, sf_p, sf_n,
    HAS_D: tl.constexpr, HAS_Z: tl.constexpr, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr,
    HAS_LIMIT: tl.constexpr, HAS_INIT: tl.constexpr, IEEE: tl.constexpr, WIDEN: tl.constexpr,
    BLOCK_T: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_N: tl.constexpr,
):
    # plain bool constexprs in the signature (what Inductor's kernel wrapper passes through)
    PRECISION: tl.constexpr = "ieee" if IEEE else "tf32"
    pid_p = tl.program_id(0)
    h = tl.program_id(1).to(tl.int64)
    b = tl.program_id(2).to(tl.int64)
    g = h // heads_per_group
    offs_t = tl.arange(0, BLOCK_T)
    offs_p = pid_p * BLOCK_P + tl.arange(0, BLOCK_P)
    offs_n = tl.arange(0, BLOCK_N)
    mask_p, mask_n = offs_p < headdim, offs_n < dstate
    mask_np = mask_n[:, None] & mask_p[None, :]
    causal = offs_t[:, None] >= offs_t[None, :]
    is_last = offs_t == BLOCK_T - 1

    A = tl.load(A_ptr + h * sA).to(tl.float32)
    if HAS_BIAS:
        bias = tl.load(bias_ptr + h * sbias).to(tl.float32)
    if HAS_D:
        Dv = tl.load(D_ptr + h * sD_h + offs_p * sD_p, mask=mask_p, other=0.0).to(tl.float32)
    x_base = x_ptr + b * sx_b + h * sx_h + offs_p[None, :] * sx_p
    dt_base = dt_ptr + b * sdt_b + h * sdt_h
    B_base = B_ptr + b * sB_b + g * sB_g + offs_n[None, :] * sB_n
    C_base = C_ptr + b * sC_b + g * sC_g + offs_n[None, :] * sC_n
    z_base = z_ptr + b * sz_b + h * sz_h + offs_p[None, :] * sz_p
    o_base = out_ptr + b * so_b + h * so_h + offs_p[None, :] * so_p

    if HAS_INIT:  # the state is kept transposed, [N, P], the layout the matmuls want
        S = tl.load(init_ptr + b * si_b + h * si_h + offs_n[:, None] * si_n + offs_p[None, :] * si_p,
                    mask=mask_np, other=0.0).to(tl.float32)
    else:
        S = tl.zeros((BLOCK_N, BLOCK_P), dtype=tl.float32)

    for t0 in range(0, length, BLOCK_T):
        t = t0 + offs_t
        mask_t = t < length
        dt = tl.load(dt_base + t * sdt_l, mask=mask_t, other=0.0).to(tl.float32)
        if HAS_BIAS:
            dt += bias
        if SOFTPLUS:
            dt = tl.where(dt <= 20.0, tl.log(1.0 + tl.exp(dt)), dt)
        if HAS_LIMIT:
            dt = tl.minimum(tl.maximum(dt, dt_lo), dt_hi)
        dt = tl.where(mask_t, dt, 0.0)  # padding: no input, decay 1
        cs = tl.cumsum(dt * A, axis=0)
        cs_end = tl.sum(tl.where(is_last, cs, 0.0), axis=0)

        mask_tp = mask_t[:, None] & mask_p[None, :]
        mask_tn = mask_t[:, None] & mask_n[None, :]
        x = tl.load(x_base + t[:, None] * sx_l, mask=mask_tp, other=0.0)
        Bc = _operand(tl.load(B_base + t[:, None] * sB_l, mask=mask_tn, other=0.0), x.dtype, WIDEN)
        Cc = _operand(tl.load(C_base + t[:, None] * sC_l, mask=mask_tn, other=0.0), x.dtype, WIDEN)
        xf = x.to(tl.float32)

        # within the chunk: causal, decay-weighted "attention" of C_t on B_s
        CB = tl.dot(Cc, tl.trans(Bc), input_precision=PRECISION)
        decay = tl.exp(tl.where(causal, cs[:, None] - cs[None, :], float("-inf")))
        W = _operand(CB * decay * dt[None, :], x.dtype, WIDEN)
        y = tl.dot(W, _operand(x, x.dtype, WIDEN), input_precision=PRECISION)
        # the state entering the chunk, read by every position
        y += tl.dot(Cc, _operand(S, x.dtype, WIDEN), input_precision=PRECISION) * tl.exp(cs)[:, None]
        # the state leaving it
        xw = _operand(xf * (tl.exp(cs_end - cs) * dt)[:, None], x.dtype, WIDEN)
        S = S * tl.exp(cs_end) + tl.dot(tl.trans(Bc), xw, input_precision=PRECISION)

        if HAS_D:
            y += xf * Dv[None, :]
        if HAS_Z:
            zv = tl.load(z_base + t[:, None] * sz_l, mask=mask_tp, other=0.0).to(tl.float32)
            y = y * (zv * tl.sigmoid(zv))
        tl.store(o_base + t[:, None] * so_l, y.to(out_ptr.dtype.element_ty), mask=mask_tp)

    tl.store(final_ptr + b * sf_b + h * sf_h + offs_n[:, None] * sf_n + offs_p[None, :] * sf_p,
             S.to(final_ptr.dtype.element_ty), mask=mask_np)


def default_config(batch: int, heads: int) -> tuple[int, int, int, int]:
    """(BLOCK_T, BLOCK_P, num_warps, num_stages), chosen by the sweep of scripts/bench_ssd.py on
    the H100 (docs/BENCHMARKS.md): 64 x 64 tiles, 4 warps, loads pipelined two deep; half-width
    P blocks when batch * heads is small, so that more programs share the GPU."""
    return (64, 64 if batch * heads >= 64 else 32, 4, 2)


def check_config(config) -> None:
    """Refuse a (BLOCK_T, BLOCK_P, num_warps, num_stages) that Triton is known to miscompile
    (the launcher and the TensorRT plugin's tactics both go through here)."""
    block_t, block_p, num_warps, num_stages = config
    if num_stages < 2 and block_t > block_p:
        # seen on the H100 with Triton 3.6: wrong results or an illegal address (bench_ssd sweep)
        raise ValueError(f"SSD scan config {tuple(config)}: num_stages=1 with BLOCK_T > BLOCK_P "
                         "miscompiles on Triton 3.6; use num_stages >= 2 or BLOCK_T <= BLOCK_P")


def ssd_scan_fwd(x, dt, A, B, C, D=None, z=None, dt_bias=None, initial_state=None,
                 dt_softplus=False, dt_limit=None, config=None):
    """Mamba-2 chunked scan. Returns ``(out [B, L, H, P] in x.dtype, final_state [B, H, P, N]
    float32)``. ``config`` (BLOCK_T, BLOCK_P, num_warps, num_stages) overrides
    :func:`default_config` (the benchmarks sweep it)."""
    for name, t in (("x", x), ("dt", dt), ("A", A), ("B", B), ("C", C)):
        check_float(name, t)
    if x.dim() != 4:
        raise ValueError(f"x must be [batch, L, heads, headdim], got shape {tuple(x.shape)}")
    if x.dtype == torch.float64:
        raise ValueError("the SSD kernel takes float32/float16/bfloat16 inputs; float64 runs the reference")
    batch, length, heads, headdim = x.shape
    if B.dim() != 4 or tuple(B.shape[:2]) != (batch, length) or heads % B.shape[2]:
        raise ValueError(f"B must be [batch, L, groups dividing {heads} heads, dstate], got {tuple(B.shape)}")
    groups, dstate = B.shape[2], B.shape[3]
    check_shape("dt", dt, (batch, length, heads))
    check_shape("A", A, (heads,))
    check_shape("C", C, (batch, length, groups, dstate))
    if D is not None and tuple(D.shape) not in ((heads,), (heads, headdim)):
        raise ValueError(f"D must be [{heads}] or [{heads}, {headdim}], got {tuple(D.shape)}")
    for name, t, shape in (("z", z, tuple(x.shape)), ("dt_bias", dt_bias, (heads,)),
                           ("initial_state", initial_state, (batch, heads, headdim, dstate))):
        check_float(name, t, allow_none=True)
        check_shape(name, t, shape)
    check_same_device(x.device, dt=dt, A=A, B=B, C=C, D=D, z=z, dt_bias=dt_bias,
                      initial_state=initial_state)
    limit = None if dt_limit is None else (float(dt_limit[0]), float(dt_limit[1]))
    has_limit = limit is not None and limit != (0.0, math.inf)

    config = tuple(config) if config else default_config(batch, heads)
    check_config(config)
    block_t, block_p, num_warps, num_stages = config
    block_p = max(16, min(block_p, next_pow2(headdim)))  # tl.dot needs every dim >= 16
    block_n = max(16, next_pow2(dstate))
    out = new_output(tuple(x.shape), x.dtype, x.device)
    final = new_output((batch, heads, headdim, dstate), torch.float32, x.device)
    d_strides = (0, 0) if D is None else ((D.stride(0), 0) if D.dim() == 1 else tuple(D.stride()))
    launch(
        _ssd_scan_fwd_kernel, (triton.cdiv(headdim, block_p), heads, batch), x.device,
        x, dt, A, B, C, x if D is None else D, x if z is None else z,
        x if dt_bias is None else dt_bias, x if initial_state is None else initial_state, out, final,
        length, headdim, dstate, heads // groups,
        limit[0] if has_limit else 0.0, limit[1] if has_limit else 0.0,
        *x.stride(), *dt.stride(), A.stride(0), *B.stride(), *C.stride(), *d_strides,
        *((0, 0, 0, 0) if z is None else z.stride()), 0 if dt_bias is None else dt_bias.stride(0),
        *((0, 0, 0, 0) if initial_state is None else initial_state.stride()),
        *out.stride(), *final.stride(),
        HAS_D=D is not None, HAS_Z=z is not None, HAS_BIAS=dt_bias is not None,
        SOFTPLUS=bool(dt_softplus), HAS_LIMIT=has_limit, HAS_INIT=initial_state is not None,
        IEEE=x.dtype == torch.float32,
        WIDEN=x.dtype == torch.bfloat16 and use_interpreter(x.device),
        BLOCK_T=block_t, BLOCK_P=block_p, BLOCK_N=block_n, num_warps=num_warps, num_stages=num_stages,
    )
    return out, final


__all__ = ["ssd_scan_fwd", "default_config", "check_config"]

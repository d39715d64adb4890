"""``x @ weight.T (+ bias)`` for the few rows of a decode step (M <= 16).

Why: at decode, every projection reads its whole weight to produce one row (or a few) per
sequence. cuBLAS picks GEMM tiles meant for many rows; a kernel that splits only the output
features over programs and streams the weight once keeps more of the GPU's memory bandwidth busy
for these shapes. The model uses it where scripts/bench_decode_linear.py measured it faster
(``use_for``).

Semantics: ``torch.nn.functional.linear`` with float32 accumulation; the output has x's dtype.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._common import check_float, check_same_device, check_shape, kernel, launch, new_output, use_interpreter

MAX_ROWS = 16


@kernel
def _decode_linear_kernel(
    x_ptr, w_ptr, b_ptr, out_ptr, M, N, K, sx_m, sx_k, sw_n, sw_k, so_m, so_n,
    HAS_BIAS: tl.constexpr, DOT: tl.constexpr, IEEE: tl.constexpr, WIDEN: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):
    """One program: BLOCK_N output features for all M rows, the whole K. DOT=False (one row):
    elementwise products summed once at the end; DOT=True: tensor-core tiles of BLOCK_M rows.
    IEEE: full float32 products (float32 weights); WIDEN: float32 operands (the interpreter)."""
    offs_n = (tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)).to(tl.int64)
    offs_m = tl.arange(0, BLOCK_M)
    offs_k = tl.arange(0, BLOCK_K)
    mask_n, mask_m = offs_n < N, offs_m < M
    if DOT:
        acc = tl.zeros((BLOCK_M, BLOCK_N), tl.float32)
    else:
        acc2 = tl.zeros((BLOCK_N, BLOCK_K), tl.float32)
    for k0 in range(0, K, BLOCK_K):
        ks = k0 + offs_k
        mask_k = ks < K
        w = tl.load(w_ptr + offs_n[:, None] * sw_n + ks[None, :] * sw_k,
                    mask=mask_n[:, None] & mask_k[None, :], other=0.0)
        if DOT:
            x = tl.load(x_ptr + offs_m[:, None] * sx_m + ks[None, :] * sx_k,
                        mask=mask_m[:, None] & mask_k[None, :], other=0.0)
            if WIDEN:
                x, w = x.to(tl.float32), w.to(tl.float32)
            if IEEE:
                acc = tl.dot(x, tl.trans(w), acc, input_precision="ieee")
            else:
                acc = tl.dot(x, tl.trans(w), acc)
        else:
            x = tl.load(x_ptr + ks * sx_k, mask=mask_k, other=0.0)
            acc2 += w.to(tl.float32) * x.to(tl.float32)[None, :]
    if DOT:
        out = acc
    else:
        out = tl.sum(acc2, axis=1)[None, :]
    if HAS_BIAS:
        out += tl.load(b_ptr + offs_n, mask=mask_n, other=0.0).to(tl.float32)[None, :]
    tl.store(out_ptr + offs_m[:, None] * so_m + offs_n[None, :] * so_n,
             out.to(out_ptr.dtype.element_ty), mask=mask_m[:, None] & mask_n[None, :])


def default_config(rows: int, features: int) -> tuple[int, int, int]:
    """(BLOCK_N, BLOCK_K, num_warps). One row: (4, 128, 8) was the fastest or within a few
    percent of it at the decode projections of the H100 sweep (scripts/bench_decode_linear.py
    --sweep): thin slices of the weight over many programs. More rows: tensor-core tiles of 32
    features, which the sweep found only level with cuBLAS (the model keeps cuBLAS there)."""
    if rows == 1:
        return (4, 128, 8)
    return (32, 128, 4) if features >= 2048 else (16, 128, 4)


def decode_linear_fwd(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None,
                      out: torch.Tensor | None = None, config: tuple[int, int, int] | None = None):
    """``x [M, K] @ weight[N, K].T + bias[N]`` for M <= 16; returns ``out [M, N]`` (x's dtype),
    written into ``out`` when given (any strides)."""
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
    block_n, block_k, warps = config or default_config(rows, features)
    dot = rows > 1
    launch(
        _decode_linear_kernel, (triton.cdiv(features, block_n),), x.device,
        x, weight, weight if bias is None else bias, out, rows, features, k,
        *x.stride(), *weight.stride(), *out.stride(),
        HAS_BIAS=bias is not None, DOT=dot, IEEE=x.dtype == torch.float32,
        WIDEN=use_interpreter(x.device), BLOCK_M=MAX_ROWS if dot else 1,
        BLOCK_N=max(block_n, 16) if dot else block_n, BLOCK_K=block_k, num_warps=warps,
    )
    return out


__all__ = ["decode_linear_fwd", "default_config", "MAX_ROWS"]

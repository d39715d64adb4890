"""``x @ weight.T (+ bias)`` for 2..16 rows of a decode step, in Gluon, the weight read straight
into the tensor cores' operand layout (CUDA, sm_80+, 16-bit operands).

Why: the Triton kernel (decode_linear._decode_linear_kernel) reads a small weight in one tile per
program before the PDL wait, but ``tl.dot`` converts that tile into the MMA operand layout through
shared memory where it is used, after the wait: a store, a barrier and a load of the whole tile
on the critical path of every 16-row projection (docs/kernel_notes.md v20, v23). Here the layouts
are chosen by hand: each thread loads its own fragments of the weight, 16 bytes at a time, into
the registers ``mma`` reads, before the wait; after it only x's fragments are loaded (from L2)
and the chain of tensor-core steps runs.

The tile: a program takes BLOCK_N output features for all rows (padded to 16) and the whole of K
(padded to G * KG, KG a power of two), cut into G contiguous groups, one per warp: a batched
[G, 16, KG] x [G, KG, BLOCK_N] product whose G partial sums are added at the end (across warps,
through shared memory). ``k_width = 8``: each thread's fragment holds 8 consecutive elements of
K (one 16-byte load); the order in which a product visits K is the layout's business, the sum is
the same. No interpreter exists for Gluon: CPU tests check the launcher's choices and run the
Triton kernel; the GPU tests compare this kernel with float64 (tests/test_kernels_decode_linear.py).
"""

from __future__ import annotations

import torch
import triton

try:  # Gluon ships with Triton >= 3.4; its layout classes are still marked experimental
    from triton.experimental import gluon
    from triton.experimental.gluon import language as gl
    from triton.experimental.gluon.language.nvidia.ampere import mma_v2
except ImportError:  # pragma: no cover - older Triton
    gluon = gl = mma_v2 = None

from ._common import next_pow2

ROWS = 16  # the mma tile's M: rows are padded to it
K_WIDTH = 8  # consecutive K elements per thread and fragment: one 16-byte load of 16-bit values


def _gluon_jit(fn):
    return gluon.jit(fn) if gluon is not None else fn


@_gluon_jit
def _rows_linear_kernel(x_ptr, w_ptr, b_ptr, out_ptr, M, N, K, sx_m, sw_n, so_m,
                        HAS_BIAS: gl.constexpr, BLOCK_N: gl.constexpr, KG: gl.constexpr,
                        G: gl.constexpr, PDL: gl.constexpr, X_DIRECT: gl.constexpr = False):
    """Program n: out[:, n * BLOCK_N : (n + 1) * BLOCK_N] over all of K (see the module)."""
    mma: gl.constexpr = gl.NVMMADistributedLayout(version=[2, 0], warps_per_cta=[G, 1, 1],
                                                  instr_shape=[1, 16, 8])
    x_layout: gl.constexpr = gl.DotOperandLayout(operand_index=0, parent=mma, k_width=8)
    w_layout: gl.constexpr = gl.DotOperandLayout(operand_index=1, parent=mma, k_width=8)
    pid = gl.program_id(0)
    # the weight as [G, KG, BLOCK_N] (weight[n, g * KG + k]) in the B operand's layout
    wg = gl.arange(0, G, layout=gl.SliceLayout(1, gl.SliceLayout(2, w_layout)))
    wk = gl.arange(0, KG, layout=gl.SliceLayout(0, gl.SliceLayout(2, w_layout)))
    wn = pid * BLOCK_N + gl.arange(0, BLOCK_N, layout=gl.SliceLayout(0, gl.SliceLayout(1, w_layout)))
    w_cols = wg[:, None, None] * KG + wk[None, :, None]
    w = gl.load(w_ptr + wn.to(gl.int64)[None, None, :] * sw_n + w_cols,
                mask=(wn < N)[None, None, :] & (w_cols < K), other=0.0)
    if PDL:  # wait for the kernel before (it writes x), then let the next one start
        gl.inline_asm_elementwise("griddepcontrol.wait; // dummy $0", "=r", [], dtype=gl.int32,
                                  is_pure=False, pack=1)
        gl.inline_asm_elementwise("griddepcontrol.launch_dependents; // dummy $0", "=r", [],
                                  dtype=gl.int32, is_pure=False, pack=1)
    # x as [G, 16, KG] (x[m, g * KG + k]): loaded in 16-byte pieces all at once, then moved
    # into the A operand's layout through shared memory
    if X_DIRECT:
        x_load: gl.constexpr = x_layout
    else:
        x_load: gl.constexpr = gl.BlockedLayout([1, 1, 8], [1, 32 * 8 // KG, KG // 8], [G, 1, 1], [2, 1, 0])
    xg = gl.arange(0, G, layout=gl.SliceLayout(1, gl.SliceLayout(2, x_load)))
    xm = gl.arange(0, 16, layout=gl.SliceLayout(0, gl.SliceLayout(2, x_load)))
    xk = gl.arange(0, KG, layout=gl.SliceLayout(0, gl.SliceLayout(1, x_load)))
    x_cols = xg[:, None, None] * KG + xk[None, None, :]
    x = gl.load(x_ptr + xm[None, :, None] * sx_m + x_cols,
                mask=(xm < M)[None, :, None] & (x_cols < K), other=0.0)
    x = gl.convert_layout(x, x_layout)
    acc = mma_v2(x, w, gl.zeros([G, 16, BLOCK_N], gl.float32, layout=mma))
    out = gl.sum(acc, axis=0)
    out_layout: gl.constexpr = gl.SliceLayout(0, mma)
    om = gl.arange(0, 16, layout=gl.SliceLayout(1, out_layout))
    on = pid * BLOCK_N + gl.arange(0, BLOCK_N, layout=gl.SliceLayout(0, out_layout))
    if HAS_BIAS:
        out += gl.load(b_ptr + on, mask=on < N, other=0.0).to(gl.float32)[None, :]
    gl.store(out_ptr + om[:, None] * so_m + on[None, :], out.to(out_ptr.dtype.element_ty),
             mask=(om < M)[:, None] & (on < N)[None, :])


def takes(x: torch.Tensor, weight: torch.Tensor, out: torch.Tensor, config: tuple[int, int, int]) -> str | None:
    """Why this kernel cannot run ``out = x @ weight.T`` with ``config``, or None when it can."""
    if x.dtype not in (torch.float16, torch.bfloat16):
        return f"16-bit operands only, got {x.dtype}"
    rows, k = x.shape
    block_n, kg, groups = config
    if not 2 <= rows <= ROWS:
        return f"2..{ROWS} rows, got {rows}"
    if k % K_WIDTH or x.stride(1) != 1 or weight.stride(1) != 1 or x.stride(0) % K_WIDTH \
            or weight.stride(0) % K_WIDTH or out.stride(1) != 1:
        return f"K and the row strides must be multiples of {K_WIDTH}, columns contiguous"
    if groups * kg < k or kg != next_pow2(kg) or groups != next_pow2(groups) or kg < 4 * K_WIDTH:
        return f"G groups of KG (powers of two, KG >= {4 * K_WIDTH}) must cover K {k}, got {config}"
    if block_n not in (8, 16, 32, 64):
        return f"BLOCK_N must be 8, 16, 32 or 64, got {block_n}"
    if gluon is None:
        return "this Triton has no Gluon"
    if x.device.type != "cuda":
        return "Gluon kernels run on CUDA only"
    return None


def rows_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, out: torch.Tensor,
                config: tuple[int, int, int], pdl: bool) -> torch.Tensor:
    """``out = x @ weight.T + bias`` with ``config = (BLOCK_N, KG, G)`` (G warps); the caller
    (decode_linear_fwd) validated the tensors and ``takes``."""
    block_n, kg, groups = config
    rows, k = x.shape
    features = weight.shape[0]
    kwargs = dict(PDL=True, launch_pdl=True) if pdl else dict(PDL=False)
    _rows_linear_kernel[(triton.cdiv(features, block_n),)](
        x, weight, weight if bias is None else bias, out, rows, features, k, x.stride(0), weight.stride(0),
        out.stride(0), HAS_BIAS=bias is not None, BLOCK_N=block_n, KG=kg, G=groups, num_warps=groups, **kwargs)
    return out

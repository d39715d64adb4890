"""Which path a layer takes: Triton launchers called directly (eager CUDA inference) or the ops.

Shared by the Mamba-1 (model.py) and Mamba-2 (mamba2.py) mixers; a module of its own so that
both import it without a cycle (model.py imports mamba2.py).
"""

from __future__ import annotations

from typing import Callable, NamedTuple

import torch
import torch.nn as nn
from torch import Tensor

from . import ops


# The model's decode steps let kernels read, before their PDL wait, what the kernel launched just
# before them never writes: the state updates the SSM state (in_proj or x_proj runs before
# them), the projections their weight. A switch for benchmarks (scripts/bench_e2e.py
# --no-early-reads).
EARLY_READS = True
# Mamba-1's state update reads its SSM state early too (with EARLY_READS; H100, 2026-11-24,
# decode b16 ms/token: mamba-2.8b 3.511 vs 3.537, mamba-1.4b 2.077 vs 2.109), and with it the
# fused dt_proj's weight (kernels/state_update.EARLY_DT_PROJ: faster at both batch sizes since
# the several-row kernel, 2026-11-24; the one-row kernel's form of 2026-11-23 had lost at 16
# rows). A switch for benchmarks (scripts/bench_e2e.py --no-early-state-mamba1).
EARLY_STATE_MAMBA1 = True
# Mamba-1's conv kernel (where the conv is not folded into in_proj) reads its conv state, weights
# and bias before its PDL wait too (with EARLY_READS; in_proj, the kernel before it, does not
# write the conv state). H100, 2026-11-24, decode ms/token, same call, two runs each, early vs
# after the wait: b16 mamba-2.8b 3.243-3.244 vs 3.440-3.441, 1.4b 1.948-1.949 vs 1.957-1.958,
# 790m 1.573-1.575 vs 1.599-1.601, 370m 0.914 vs 0.921-0.922; b1 790m 1.066 vs 1.070-1.072,
# 1.4b 1.449-1.450 vs 1.456, 2.8b level. A switch for benchmarks (scripts/bench_e2e.py
# --no-early-conv).
EARLY_CONV = True
# The decode step folds each block's residual add + RMSNorm into in_proj's kernel where in_proj
# reads its weight in one tile (decode_linear.folds_norm). A switch for benchmarks
# (scripts/bench_e2e.py --no-fold-norm).
FOLD_NORM = True
# The decode step folds the causal conv into in_proj's kernel where that reads its weight in one
# tile (in_proj_conv), and then Mamba-2's gated RMSNorm into the state update and out_proj (the
# state update writing the norm's partial sums). A switch for benchmarks
# (scripts/bench_e2e.py --no-fold-conv).
FOLD_CONV = True
# Mamba-1 folds the conv into in_proj at several rows too where in_proj's weight has at most
# CONV_ROWS_MAX_WEIGHT elements (at one row always; both with FOLD_CONV). H100, 2026-11-24, decode
# b16 ms/token folded vs the conv kernel (in_proj with K groups): mamba-130m (2.4M) 0.468 vs
# 0.480, mamba-370m (4.2M) 1.073 vs 1.060. A switch for benchmarks (scripts/bench_e2e.py
# --no-fold-conv-rows).
FOLD_CONV_ROWS = True
CONV_ROWS_MAX_WEIGHT = 3 << 20


def mamba1_folds_conv(rows: int, in_proj_numel: int) -> bool:
    """Mamba-1's own condition for folding its conv into in_proj (besides in_proj_conv's): at
    one row always, at several only for in_proj weights of at most CONV_ROWS_MAX_WEIGHT
    elements (FOLD_CONV_ROWS)."""
    return rows == 1 or (FOLD_CONV_ROWS and in_proj_numel <= CONV_ROWS_MAX_WEIGHT)


# Between two blocks whose out_proj and in_proj both read their weight in one tile, where the add
# + RMSNorm does not fold into in_proj (several rows), out_proj's epilogue does the add and the
# norm's sums and in_proj applies the norm (hands_off_norm): no add_rmsnorm kernel. A switch for
# benchmarks (scripts/bench_e2e.py --no-fold-next-norm).
FOLD_NEXT_NORM = True
# Mamba-1's x_proj asks for out_proj's weight to be brought into L2 (decode_linear_fwd's
# l2_prefetch) where that weight has at most PREFETCH_MAX_BYTES. H100, 2026-11-24, decode
# ms/token, two runs each, prefetch vs none: mamba-130m (2.4 MB) b16 0.431-0.432 vs 0.443-0.444
# (0.428 with the request before x_proj's own weight reads), b1 level; every larger model
# slower, at b1 as well (mamba-370m b16 1.008 vs 0.949-0.951, mamba-2.8b b1 2.859-2.862 vs
# 2.694-2.695; asked by the state update instead: mamba-370m b1 0.642 vs 0.610, mamba-2.8b
# 2.855 vs 2.695-2.696). A switch for benchmarks (scripts/bench_e2e.py --prefetch-max-mb; 0: none).
PREFETCH_MAX_BYTES = 3 << 20


class NormedRows(NamedTuple):
    """A block's decode input whose residual add + RMSNorm the block before began in its
    out_proj (decode_linear_fwd's ``next_norm``): ``weighted`` = the new residual rounded to
    the model dtype times the norm weight, ``sums [B, 1, n]`` float32 its squares' partial
    sums; the block's in_proj finishes the norm (``row_norm``)."""
    weighted: Tensor
    sums: Tensor


def _is_real(t: Tensor) -> bool:
    """A plain tensor or parameter: not a fake/functional tensor of a trace (a type check is
    much cheaper than ``is_fake`` on this per-layer path)."""
    return type(t) in (Tensor, nn.Parameter)


def _eager_cuda(t: Tensor) -> bool:
    """True for a real CUDA tensor in eager inference (grad off; incl. CUDA-graph capture):
    there the model calls fused Triton kernels directly, which have no autograd. Training and
    traced code (compile, export) see the ops and plain torch ops."""
    return (t.is_cuda and not torch.is_grad_enabled() and not torch.compiler.is_compiling()
            and _is_real(t) and ops.triton_available())


def cached_params(owner: nn.Module, params: tuple[Tensor, ...],
                  compute: Callable[[], tuple[Tensor, ...]]) -> tuple[Tensor, ...]:
    """``compute()`` (tensors derived from ``params``, e.g. A = -exp(A_log) in float32), cached
    on ``owner`` in eager inference so that a decode step launches no kernels for them.

    The cache is keyed on each parameter's storage, version, dtype and device: an in-place update,
    ``load_state_dict`` or ``.to()`` recomputes it. Training and traced code always recompute."""
    cacheable = not torch.is_grad_enabled() and not torch.compiler.is_compiling() and all(
        _is_real(p) for p in params)
    key = tuple((p.data_ptr(), p._version, p.dtype, p.device) for p in params) if cacheable else None
    if key is not None and key == getattr(owner, "_params_cache_key", None):
        return owner._params_cache
    values = compute()
    if key is not None:
        owner._params_cache_key, owner._params_cache = key, values
    return values


def _kernel_takes(x: Tensor, layer: nn.Linear, lm_head: bool = False, swap_ab: bool = False) -> bool:
    """Whether ``decode_linear`` sends ``layer(x)`` to the Triton kernel."""
    from .kernels import decode_linear as dl

    return x.dim() == 2 and x.dtype != torch.float64 and x.dtype == layer.weight.dtype and \
        dl.model_takes(x.shape[0], *layer.weight.shape, lm_head=lm_head, swap_ab=swap_ab)


def decode_linear(x: Tensor, layer: nn.Linear, lm_head: bool = False, l2_prefetch: Tensor | None = None,
                  swap_ab: bool = False, **fold) -> Tensor:
    """``layer(x)`` in a decode step that already took the kernel path: kernels/decode_linear.py
    where it measured faster than cuBLAS (``decode_linear.model_takes``: one row, or up to 16
    for small weights and, with ``lm_head``, the model's lm_head), else F.linear (also for
    float64). ``fold``: decode_linear_fwd's ``conv`` / ``row_norm`` / ``next_norm``, only where
    the kernel takes x (the callers check); with ``next_norm`` the result is ``(weighted, sums)``.
    ``l2_prefetch``: a later kernel's weight for the kernel to bring into L2 (a hint: dropped
    where F.linear runs). ``swap_ab``: decode_linear_fwd's (Mamba-1's mixer, where it measured
    faster); it also sends mamba-790m's in_proj to the kernel at several rows (model_takes)."""
    from .kernels import decode_linear as dl

    if _kernel_takes(x, layer, lm_head, swap_ab):
        return dl.decode_linear_fwd(x, layer.weight, layer.bias, early_weight=EARLY_READS, l2_prefetch=l2_prefetch,
                                    swap_ab=swap_ab, **fold)
    if any(v is not None for v in fold.values()):
        raise ValueError(f"a fold ({', '.join(fold)}) needs the decode_linear kernel, which does not "
                         f"take {tuple(x.shape)} {x.dtype} @ {tuple(layer.weight.shape)} {layer.weight.dtype}")
    return layer(x)


def refuse_out_fold(out_fold: dict | None) -> None:
    """A mixer's op path (traced, training, float64) has no kernel to fold into: a caller that
    asks for out_proj folds there mixed the paths up, and ignoring them would be wrong."""
    if out_fold:
        raise ValueError(f"out_proj folds ({', '.join(out_fold)}) need the eager CUDA kernel path")


def hands_off_norm(x_like: Tensor, out_proj: nn.Linear, next_in_proj: nn.Linear, next_norm: nn.Module) -> bool:
    """Whether a block's out_proj begins the next block's add + RMSNorm (``NormedRows``) in a
    decode step on the kernel path: both projections on the decode_linear kernel for
    ``x_like``'s rows and dtype, read in one tile (``decode_linear.one_tile``), and the next add
    + norm not folded into its in_proj already."""
    from .kernels import decode_linear as dl

    rows = x_like.shape[0]
    return (FOLD_NEXT_NORM and next_norm.weight.dtype == x_like.dtype and _kernel_takes(x_like, out_proj)
            and _kernel_takes(x_like, next_in_proj)
            and dl.one_tile(rows, *out_proj.weight.shape, out_proj.weight.element_size())
            and dl.one_tile(rows, *next_in_proj.weight.shape, next_in_proj.weight.element_size())
            and not (FOLD_NORM and EARLY_READS and dl.folds_norm(rows, *next_in_proj.weight.shape)))


def in_proj_conv(x_like: Tensor, in_proj: nn.Linear, conv1d: nn.Conv1d, conv_state: Tensor,
                 first: int, inplace: bool) -> tuple | None:
    """decode_linear_fwd's ``conv`` for a mixer's in_proj (``first``: its first conv column),
    or None where the kernel does not take in_proj for ``x_like`` (rows and dtype of in_proj's
    input), in_proj is not read in one tile (``decode_linear.one_tile``) or the conv state
    holds more than the window. The new conv state goes to ``conv_state`` itself when
    ``inplace``, else to a new tensor."""
    from .kernels import decode_linear as dl

    if not (FOLD_CONV and _kernel_takes(x_like, in_proj)
            and dl.one_tile(x_like.shape[0], *in_proj.weight.shape, in_proj.weight.element_size())
            and conv_state.dim() == 3 and conv_state.shape[2] == conv1d.weight.shape[-1] - 1):
        return None
    out_state = conv_state if inplace else torch.empty_like(conv_state)
    return conv_state, conv1d.weight.squeeze(1), conv1d.bias, first, out_state


def folds_add_norm(hidden: Tensor, norm: nn.Module, in_proj: nn.Linear) -> bool:
    """Whether :func:`add_norm_in_proj` applies to ``hidden`` (``decode_linear.folds_norm``: one
    row, in_proj's weight in one tile covering K; the weights in hidden's dtype). Asked before
    the conv fold for it is prepared, so that nothing is allocated for a fold that will not run."""
    from .kernels import decode_linear as dl

    return (FOLD_NORM and EARLY_READS and hidden.dim() == 2 and hidden.dtype != torch.float64
            and hidden.dtype == in_proj.weight.dtype == norm.weight.dtype
            and dl.folds_norm(hidden.shape[0], *in_proj.weight.shape))


def add_norm_in_proj(hidden: Tensor, residual: Tensor | None, norm: nn.Module, in_proj: nn.Linear,
                     residual_in_fp32: bool, conv: tuple | None = None) -> tuple[Tensor, Tensor]:
    """``(in_proj(norm(hidden + residual)), hidden + residual)`` from one kernel (a block's
    add_norm and its mixer's in_proj in a decode step that took the kernel path), where
    :func:`folds_add_norm` holds (the caller asks). The residual is float32 with
    ``residual_in_fp32``, else in the dtype it has (hidden's for the first block). ``conv``:
    the mixer's in_proj_conv, folded in as well."""
    from .kernels import decode_linear as dl

    dtype = torch.float32 if residual_in_fp32 else (hidden.dtype if residual is None else residual.dtype)
    residual_out = torch.empty(hidden.shape, dtype=dtype, device=hidden.device)
    projected = dl.decode_linear_fwd(hidden, in_proj.weight, in_proj.bias, early_weight=True,
                                     add_norm=(residual, norm.weight, norm.eps, residual_out), conv=conv)
    return projected, residual_out

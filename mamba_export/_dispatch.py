"""Which path a layer takes: Triton launchers called directly (eager CUDA inference) or the ops.

Shared by the Mamba-1 (model.py) and Mamba-2 (mamba2.py) mixers; a module of its own so that
both import it without a cycle (model.py imports mamba2.py).
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn as nn
from torch import Tensor

from . import ops


# The model's decode steps let kernels read, before their PDL wait, what the kernel launched just
# before them never writes: Mamba-2's state update the SSM state (in_proj runs before it), the
# projections their weight. (Mamba-1's state update gained nothing at batch 1 and lost at batch
# 16 on the H100, so it reads after the wait.) A switch for benchmarks (scripts/bench_e2e.py
# --no-early-reads).
EARLY_READS = True
# The decode step folds each block's residual add + RMSNorm into in_proj's kernel where in_proj
# reads its weight in one tile (decode_linear.folds_norm). A switch for benchmarks
# (scripts/bench_e2e.py --no-fold-norm).
FOLD_NORM = True


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


def decode_linear(x: Tensor, layer: nn.Linear) -> Tensor:
    """``layer(x)`` in a decode step that already took the kernel path: kernels/decode_linear.py
    where it measured faster than cuBLAS (``decode_linear.model_takes``: one row, or up to 16
    for small weights), else F.linear (also for float64)."""
    from .kernels import decode_linear as dl

    if x.dim() == 2 and x.dtype != torch.float64 and x.dtype == layer.weight.dtype and \
            dl.model_takes(x.shape[0], *layer.weight.shape):
        return dl.decode_linear_fwd(x, layer.weight, layer.bias, early_weight=EARLY_READS)
    return layer(x)


def add_norm_in_proj(hidden: Tensor, residual: Tensor | None, norm: nn.Module, in_proj: nn.Linear,
                     residual_in_fp32: bool) -> tuple[Tensor, Tensor] | None:
    """``(in_proj(norm(hidden + residual)), hidden + residual)`` from one kernel (a block's
    add_norm and its mixer's in_proj in a decode step that took the kernel path), or None where
    that kernel does not apply (``decode_linear.folds_norm``: one row, in_proj's weight in one
    tile covering K) or the weights are not in hidden's dtype. The residual is float32 with
    ``residual_in_fp32``, else in the dtype it has (hidden's for the first block)."""
    from .kernels import decode_linear as dl

    rows, (features, k) = hidden.shape[0], in_proj.weight.shape
    if not (FOLD_NORM and EARLY_READS and hidden.dim() == 2 and hidden.dtype != torch.float64
            and hidden.dtype == in_proj.weight.dtype == norm.weight.dtype
            and dl.folds_norm(rows, features, k)):
        return None
    dtype = torch.float32 if residual_in_fp32 else (hidden.dtype if residual is None else residual.dtype)
    residual_out = torch.empty(hidden.shape, dtype=dtype, device=hidden.device)
    projected = dl.decode_linear_fwd(hidden, in_proj.weight, in_proj.bias, early_weight=True,
                                     add_norm=(residual, norm.weight, norm.eps, residual_out))
    return projected, residual_out

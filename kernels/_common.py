"""Shared helpers of the Triton kernels: dual (compiled / interpreted) kernels and validation.

Interpreter mode: Triton 3.x decides at ``@triton.jit`` decoration time whether a function
becomes a compiled ``JITFunction`` or an ``InterpretedFunction`` (it reads ``TRITON_INTERPRET``
through ``triton.knobs`` when the decorator runs). So that these modules work whether or not
the variable was set before they were imported, kernels here are declared with :func:`kernel`,
which keeps the plain Python function and builds either form on demand at launch time:

* CUDA tensors and ``TRITON_INTERPRET`` unset: ``torch.library.wrap_triton(JITFunction)``, so
  Inductor sees the kernel when the caller is a traced ``triton_op``.
* CPU tensors, or ``TRITON_INTERPRET=1``: the Triton interpreter (eager only).

Helper ``@jit`` functions called from kernels (scan combine functions) are always built as
``JITFunction``; the interpreter calls their ``.fn``.
"""

from __future__ import annotations

import os

import torch
import triton
import triton.language as tl
from triton.language.extra.cuda import gdc_launch_dependents, gdc_wait
from triton.runtime.jit import JITFunction

_FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)
_EAGER_TYPES = (torch.Tensor, torch.nn.Parameter)


def interpret_requested() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


class DualKernel:
    """A Triton kernel usable compiled (CUDA) or under the interpreter (CPU)."""

    def __init__(self, fn):
        self.fn = fn
        self.__name__ = fn.__name__
        self._jit = None
        self._interp = None

    @property
    def jit(self) -> JITFunction:
        if self._jit is None:
            self._jit = JITFunction(self.fn)
        return self._jit

    @property
    def interp(self):
        if self._interp is None:
            from triton.runtime.interpreter import InterpretedFunction

            self._interp = InterpretedFunction(self.fn)
        return self._interp


def kernel(fn) -> DualKernel:
    return DualKernel(fn)


class _DeviceFunction(JITFunction):
    """A JITFunction that a kernel running in Triton's interpreter can call: compiled kernels
    inline it (its ``__call__`` is never reached there); the interpreter runs the Python body."""

    def __call__(self, *args, **kwargs):
        return self.fn(*args, **kwargs)


def device_fn(fn) -> JITFunction:
    """A ``@triton.jit`` helper (a scan combine function, a helper called from kernels) that
    works in both modes."""
    return _DeviceFunction(fn)


def use_interpreter(device: torch.device) -> bool:
    return device.type != "cuda" or interpret_requested()


# ---------------------------------------------------------------------------------------------
# programmatic dependent launch (PDL)
# ---------------------------------------------------------------------------------------------
# A decode step is a chain of small kernels, each paying a few microseconds of launch latency
# inside the CUDA graph. With PDL (sm_90+), a kernel launched with ``launch_pdl`` may start while
# the previous one runs: its programs wait at ``griddepcontrol.wait`` until the previous grid has
# finished and its writes are visible. On by default (H100, 2026-11-23: CUDA-graph decode at
# batch 1, mamba-370m 1.045 -> 0.867, mamba-2.8b 3.202 -> 2.991, mamba2-130m 0.445 -> 0.366
# ms/token; bit-equal outputs); MAMBA_EXPORT_PDL=0 turns it off (read once at import; set
# ``PDL`` to switch it at run time). Read here, not per launch: it is on every launch's path.
PDL = os.environ.get("MAMBA_EXPORT_PDL", "1") != "0"
_PDL_CAPABLE: dict[int, bool] = {}


def pdl_enabled(device: torch.device) -> bool:
    """PDL for an eager compiled launch on ``device``: requested, and the GPU is sm_90 or newer."""
    if not PDL or use_interpreter(device):
        return False
    index = device.index if device.index is not None else torch.cuda.current_device()
    if index not in _PDL_CAPABLE:
        _PDL_CAPABLE[index] = torch.cuda.get_device_capability(index)[0] >= 9
    return _PDL_CAPABLE[index]


@device_fn
def pdl_start(PDL: tl.constexpr):
    """The first statement of a kernel that :func:`launch` may start with PDL: wait for the
    previous kernel (its writes visible, nothing of ours read or written before), then let the
    next kernel's programs start (they wait in turn). Nothing at all without PDL."""
    if PDL:
        gdc_wait()
        gdc_launch_dependents()


PREFETCH_CHUNK = tl.constexpr(64 << 10)  # bytes per bulk L2 prefetch (l2_prefetch)


def prefetch_args(weight: torch.Tensor | None, stand_in: torch.Tensor) -> tuple:
    """The ``pf_ptr, pf_bytes`` kernel arguments of an ``l2_prefetch`` request for ``weight``
    (checked: contiguous, under 2 GiB, on stand_in's device), or ``(stand_in, 0)`` for none."""
    if weight is None:
        return stand_in, 0
    nbytes = weight.numel() * weight.element_size()
    if not weight.is_contiguous() or weight.device != stand_in.device or nbytes >= 1 << 31:
        raise ValueError(f"l2_prefetch must be a contiguous tensor under 2 GiB on {stand_in.device}, got "
                         f"{tuple(weight.shape)} {weight.dtype} on {weight.device}")
    return weight, nbytes // 16 * 16


@device_fn
def l2_prefetch(base_ptr, nbytes, pid, nprog, CHUNK: tl.constexpr):
    """Ask the copy engine (TMA, sm_90) to bring this program's share of the ``nbytes`` bytes
    at ``base_ptr`` into L2, in CHUNK-byte bulk prefetches issued by one thread; nothing waits
    for them (``nbytes`` a multiple of 16, base_ptr 16-byte aligned). Why: a later kernel of a
    decode step that reads its weight before its PDL wait then finds it in L2. Measured to pay
    only for small weights (mamba_export._dispatch.PREFETCH_MAX_BYTES)."""
    chunks = tl.cdiv(nbytes, CHUNK)
    per = tl.cdiv(chunks, nprog)
    base = base_ptr.to(tl.pointer_type(tl.uint8))
    for c in range(pid * per, tl.minimum(pid * per + per, chunks)):
        start = c.to(tl.int64) * CHUNK
        tl.inline_asm_elementwise(
            "{ .reg .pred p; .reg .u32 t; mov.u32 t, %tid.x; setp.eq.u32 p, t, 0; "
            "@p cp.async.bulk.prefetch.L2.global [$1], $2; mov.b32 $0, 0; }",
            "=r,l,r", [base + start, tl.minimum(nbytes - start, CHUNK).to(tl.int32)], dtype=tl.int32,
            is_pure=False, pack=1)


@device_fn
def affine_combine(a1, b1, a2, b2):
    """The scans' combine function: (a1, b1) then (a2, b2) is h -> a2 * (a1 * h + b1) + b2.
    Kernels must refer to it by this name (Inductor regenerates kernel sources from the names of
    the JIT functions they call: an import alias compiled to a NameError under torch.compile)."""
    return a1 * a2, b1 * a2 + b2


@device_fn
def softplus_f32(x):
    """log(1 + exp(x)) for float32 ``x``, as max(x, 0) + log1p(e) with e = exp(-|x|) <= 1 and
    log1p(e) = 2 atanh(s) = 2 (s + s^3/3 + ... + s^13/13), s = e / (2 + e) <= 1/3. One exp, one
    reciprocal and seven FMAs: about half the instructions of the libdevice log of 1 + exp(x),
    which is what the scan kernels spend most per (step, channel) outside the state loop
    (docs/kernel_notes.md v16). Within 2e-6 relative of float64 from x = -80 (below about -87
    the result is a float32 subnormal, which the GPU flushes to zero; log(1 + exp(x)) loses all
    precision below x ~ -16); above 20 the result rounds to x, as torch's softplus
    (threshold 20) returns."""
    e = tl.exp2(-1.4426950408889634 * tl.abs(x))
    s = e / (2.0 + e)
    s2 = s * s
    p = 2.0 / 13.0
    p = p * s2 + 2.0 / 11.0
    p = p * s2 + 2.0 / 9.0
    p = p * s2 + 2.0 / 7.0
    p = p * s2 + 2.0 / 5.0
    p = p * s2 + 2.0 / 3.0
    p = p * s2 + 2.0
    return tl.maximum(x, 0.0) + s * p


def _tracing(args) -> bool:
    """True while a graph is being captured (compile/export/fake tensors or a dispatch mode)."""
    if torch.compiler.is_compiling():
        return True
    from torch.utils._python_dispatch import _get_current_dispatch_mode

    if _get_current_dispatch_mode() is not None:
        return True
    # Eager arguments are plain tensors or parameters; fake/functional ones are other subclasses.
    # (A type check, not is_fake(): this runs on every launch and is_fake costs ~6 us per call.)
    return any(isinstance(a, torch.Tensor) and type(a) not in _EAGER_TYPES for a in args)


def launch(k: DualKernel, grid, device: torch.device, *args, num_warps: int = 4,
           num_stages: int | None = None, pdl: bool = False, **kwargs):
    """Run kernel ``k`` compiled (CUDA) or interpreted. ``pdl``: the kernel takes a ``PDL``
    constexpr and starts with :func:`pdl_start`; eager compiled launches then use programmatic
    dependent launch where :func:`pdl_enabled` (traced launches never do)."""
    if any(g == 0 for g in grid):
        return
    if pdl:  # always passed: Inductor's wrap_triton launcher does not fill in constexpr defaults
        kwargs["PDL"] = False
    if use_interpreter(device):
        k.interp[grid](*args, **kwargs)
        return
    if num_stages is not None:  # compiled only: software pipelining depth of the kernel's loops
        kwargs["num_stages"] = num_stages
    if _tracing(args):
        # seen by Inductor / export as a triton kernel node
        torch.library.wrap_triton(k.jit)[grid](*args, num_warps=num_warps, **kwargs)
    else:
        # eager: call the compiled kernel directly; wrap_triton's eager path goes through the
        # higher-order-op dispatcher and costs ~0.5 ms of host time per launch (measured on H100)
        if pdl and pdl_enabled(device):
            kwargs.update(PDL=True, launch_pdl=True)
        k.jit[grid](*args, num_warps=num_warps, **kwargs)


# ---------------------------------------------------------------------------------------------
# validation
# ---------------------------------------------------------------------------------------------


def check_float(name: str, t: torch.Tensor | None, allow_none: bool = False) -> None:
    if t is None:
        if allow_none:
            return
        raise ValueError(f"{name} is required")
    if not isinstance(t, torch.Tensor):
        raise ValueError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if t.dtype not in _FLOAT_DTYPES:
        raise ValueError(f"{name} must be float32/float16/bfloat16/float64, got {t.dtype}")


def check_shape(name: str, t: torch.Tensor | None, shape: tuple) -> None:
    if t is None:
        return
    if tuple(t.shape) != tuple(shape):
        raise ValueError(f"{name} must have shape {tuple(shape)}, got {tuple(t.shape)}")


def check_same_device(device: torch.device, **tensors) -> None:
    for name, t in tensors.items():
        if t is not None and t.device != device:
            raise ValueError(f"{name} is on {t.device}, expected {device} (same device as the input)")


# Tests set this (or MAMBA_EXPORT_POISON=1) so that launchers fill their outputs with NaN before
# the kernels run: an element a kernel fails to write then fails the check.
POISON = os.environ.get("MAMBA_EXPORT_POISON", "0") == "1"


def new_output(shape, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    if POISON:  # (indices: -1, never a valid one)
        return torch.full(shape, float("nan") if dtype.is_floating_point else -1, dtype=dtype, device=device)
    return torch.empty(shape, dtype=dtype, device=device)


_PERSISTENT: dict = {}


def persistent_buffers(key: tuple, make):
    """``make()``'s tensors, made once per ``key`` (kernel, device, shape) and kept for the
    process: scratch of kernels whose programs meet through memory (partial results and
    counters that the kernel leaves at 0 for its next call). CUDA graphs capture their
    addresses; calls on one stream run in turn, so calls of one key share them."""
    if key not in _PERSISTENT:
        _PERSISTENT[key] = make()
    return _PERSISTENT[key]


def next_pow2(n: int) -> int:
    return 1 if n <= 1 else triton.next_power_of_2(n)


def bc_layout(name: str, t: torch.Tensor, batch: int, dim: int, dstate: int, length: int | None):
    """Validate B or C; return (groups, strides (b, g, n[, l])) treating 3-D as one group.

    Scan: ``[B, N, L]`` or ``[B, G, N, L]``; state update (length None): ``[B, N]`` / ``[B, G, N]``.
    """
    tail = (dstate,) if length is None else (dstate, length)
    if t.dim() == 1 + len(tail):
        if tuple(t.shape) != (batch, *tail):
            raise ValueError(f"{name} must have shape {(batch, *tail)} or grouped "
                             f"{(batch, 'G', *tail)}, got {tuple(t.shape)}")
        groups = 1
        strides = (t.stride(0), 0) + tuple(t.stride(i) for i in range(1, t.dim()))
    elif t.dim() == 2 + len(tail):
        if t.shape[0] != batch or tuple(t.shape[2:]) != tail:
            raise ValueError(f"{name} must have shape {(batch, 'G', *tail)}, got {tuple(t.shape)}")
        groups = t.shape[1]
        if groups < 1 or dim % groups:
            raise ValueError(f"{name}: channels ({dim}) must be a multiple of groups ({groups})")
        strides = tuple(t.stride(i) for i in range(t.dim()))
    else:
        raise ValueError(f"{name} must be {len(tail) + 1}-D or {len(tail) + 2}-D, got {t.dim()}-D")
    return groups, strides

"""The selective scan as a TensorRT Python plugin with an ahead-of-time (AOT) implementation.

The plugin ``mamba_export::SelectiveScan`` (namespace ``mamba_export``, name ``SelectiveScan``,
version ``"1"``) has the signature of the ONNX node of the same name
(:mod:`mamba_export.export.onnx_scan`), described once in plain Python by :data:`SIGNATURE`;
the TensorRT registration and the tests both read it.

AOT implementation: :func:`compile_selective_scan_ptx` compiles the project's sequential-in-time
Triton scan kernel (``kernels.selective_scan._scan_fwd_seq_kernel``) to PTX with
``triton.compile`` for a given GPU architecture, with no GPU and no TensorRT needed. The kernel
is wrapped in :func:`selective_scan_trt`, whose parameters are in TensorRT's AOT order::

    u, delta, A, B, C, D, z, delta_bias, initial_state,   # the 9 input pointers (ONNX order)
    dim, length,                                          # the extra scalars (int32)
    out, last_state                                       # the 2 output pointers

All tensors are contiguous (TensorRT's LINEAR format), so every stride is derived in the kernel
from ``dim``, ``length`` and the constexpr ``DSTATE``. Launch: ``grid = (ceil(dim / BLOCK_D),
batch, 1)``, ``block = (32 * num_warps, 1, 1)`` (one warp), dynamic shared memory from the
compiled kernel's metadata; every one of these is an expression of the input shapes, so
TensorRT evaluates them at run time without Python. Triton appends hidden scratch pointer
parameters to every kernel; the scan uses no scratch, so they are removed from the PTX (and
the compile fails if a future Triton makes the kernel use them).

Dtypes: ``u, delta, B, C, z`` and ``out`` are ``T`` in {float32, float16, bfloat16};
``A, D, delta_bias, initial_state`` and ``last_state`` are float32 (the state is always fp32).
Arithmetic is fp32 whatever ``T``.

Importing this module needs neither TensorRT nor a GPU: ``tensorrt.plugin`` is imported only by
:func:`register_plugin`. This file must not use ``from __future__ import annotations``: the
plugin API reads real annotation objects from the decorated functions' signatures.
"""

import functools
from typing import Tuple

from . import _ptx
from ._ptx import (  # re-exported from here too (their home before the SSD plugin)
    TensorRTUnavailableError,
    cuda_driver_version,
    import_tensorrt,
    max_ptx_version,
    python_signature_of,
    resolve_build_target,
    set_build_target,
)

PLUGIN_NAMESPACE, TYPES = _ptx.PLUGIN_NAMESPACE, _ptx.TYPES
PLUGIN_NAME = "SelectiveScan"
PLUGIN_ID = f"{PLUGIN_NAMESPACE}::{PLUGIN_NAME}"
PLUGIN_VERSION = "1"

#: The plugin's (and the ONNX node's) signature in plain Python: (name, dtype, shape) where dtype
#: is "T" (one of TYPES, the same for all "T" entries) or a fixed dtype, and shape names symbolic
#: dimensions. The TensorRT registration and tests/test_tensorrt.py both use this.
SIGNATURE = {
    "plugin_id": PLUGIN_ID,
    "inputs": (
        ("u", "T", ("batch", "dim", "length")),
        ("delta", "T", ("batch", "dim", "length")),
        ("A", "float32", ("dim", "dstate")),
        ("B", "T", ("batch", "dstate", "length")),
        ("C", "T", ("batch", "dstate", "length")),
        ("D", "float32", ("dim",)),
        ("z", "T", ("batch", "dim", "length")),
        ("delta_bias", "float32", ("dim",)),
        ("initial_state", "float32", ("batch", "dim", "dstate")),
    ),
    "outputs": (
        ("out", "T", ("batch", "dim", "length")),
        ("last_state", "float32", ("batch", "dim", "dstate")),
    ),
    "attributes": (("delta_softplus", int),),
    "types": TYPES,
}

INPUT_NAMES = tuple(n for n, _, _ in SIGNATURE["inputs"])
OUTPUT_NAMES = tuple(n for n, _, _ in SIGNATURE["outputs"])
ATTRIBUTE_NAMES = tuple(n for n, _ in SIGNATURE["attributes"])
#: the extra scalar kernel arguments, between the inputs and the outputs (TensorRT's AOT order)
SCALAR_ARGS = ("dim", "length")
#: the kernel's runtime parameters, in order
KERNEL_ARGS = INPUT_NAMES + SCALAR_ARGS + OUTPUT_NAMES

#: launch configuration the plugin uses: one warp per program, 8 channels x ``block_t`` steps.
#: Tactic 1 (default) and 2 differ only in BLOCK_T (the H100 sweep in kernels/selective_scan.py:
#: 16 best at small batch * dim, 8 at large); TensorRT times both and keeps the faster.
BLOCK_D = 8
TACTICS = {1: {"block_t": 16}, 2: {"block_t": 8}}
DEFAULT_TACTIC = 1
NUM_WARPS = 1
_SCAN = None  # the kernel the wrapper calls, set by _build_wrapper (imports Triton lazily)


# ------------------------------------------------------------------------------ the kernel
def _build_wrapper():
    """The TensorRT-order wrapper around the project's sequential scan kernel (built lazily so
    that importing this module does not import Triton). The names the kernel body uses
    (``tl``, ``_SCAN``) are module globals: Triton resolves a kernel's names through its
    ``__globals__`` (closures are not supported by every Triton version)."""
    import triton.language as tl
    from triton.runtime.jit import JITFunction

    from mamba_export.kernels.selective_scan import _scan_fwd_seq_kernel

    globals()["tl"] = tl
    globals()["_SCAN"] = _scan_fwd_seq_kernel.jit

    def selective_scan_trt(u_ptr, delta_ptr, A_ptr, B_ptr, C_ptr, D_ptr, z_ptr, bias_ptr, h0_ptr,
                           dim, length, out_ptr, last_ptr,
                           HAS_D: tl.constexpr, HAS_Z: tl.constexpr, HAS_BIAS: tl.constexpr,
                           SOFTPLUS: tl.constexpr, HAS_H0: tl.constexpr, DSTATE: tl.constexpr,
                           BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_T: tl.constexpr):
        # contiguous [B, D, L] / [B, N, L] / [D, N] / [B, D, N]; strides in int64
        n_chunks = (length + (BLOCK_T - 1)) // BLOCK_T
        dim64 = dim.to(tl.int64)
        len64 = length.to(tl.int64)
        s_bdl = dim64 * len64
        s_bnl = len64 * DSTATE
        s_bdn = dim64 * DSTATE
        _SCAN(u_ptr, delta_ptr, A_ptr, B_ptr, C_ptr, D_ptr, z_ptr, bias_ptr, h0_ptr,
              out_ptr, last_ptr,
              dim, length, n_chunks, dim,  # ch_per_group = dim: B/C ungrouped
              s_bdl, len64, 1,             # u
              s_bdl, len64, 1,             # delta
              DSTATE, 1,                   # A
              s_bnl, 0, len64, 1,          # B (b, g, n, l)
              s_bnl, 0, len64, 1,          # C
              1, 1,                        # D, delta_bias
              s_bdl, len64, 1,             # z
              s_bdn, DSTATE, 1,            # initial_state
              HAS_D, HAS_Z, HAS_BIAS, SOFTPLUS, HAS_H0, True, DSTATE, BLOCK_N, BLOCK_D, BLOCK_T,
              1)                           # PREFETCH: tiles one chunk ahead

    # JITFunction directly (not triton.jit): never the interpreter, whatever TRITON_INTERPRET
    return JITFunction(selective_scan_trt)


@functools.lru_cache(maxsize=None)
def _wrapper():
    return _build_wrapper()


@functools.lru_cache(maxsize=64)
def compile_selective_scan_ptx(dtype: str = "float32", arch: int = 90, *, dstate: int,
                               has_z: bool = True, has_D: bool = True, has_bias: bool = True,
                               softplus: bool = True, has_initial_state: bool = True,
                               block_t: int = TACTICS[DEFAULT_TACTIC]["block_t"],
                               ptx_version: int | None = None) -> Tuple[str, str, dict]:
    """Compile the scan kernel ahead of time; returns ``(ptx, kernel_name, launch)``.

    Needs Triton only (no GPU, no TensorRT). ``dtype`` is the activation dtype ``T``
    ("float32" | "float16" | "bfloat16"), ``arch`` the compute capability (80, 86, 89, 90,
    ...), ``dstate`` the state size N (a compile-time constant). Absent options (``has_z`` ...)
    make the kernel ignore that pointer; the parameter list never changes (:data:`KERNEL_ARGS`).
    ``ptx_version`` caps the PTX ISA (e.g. 85) for older drivers; None keeps Triton's.

    ``launch`` holds: ``args`` (the parameter order), ``scalar_args``, ``grid`` (symbolic:
    ``("ceil(dim/BLOCK_D)", "batch", 1)``), ``block_d``, ``block_t``, ``block`` ``(32 *
    num_warps, 1, 1)``, ``shared_mem`` (dynamic bytes), ``num_warps``, ``arch``, ``dtype``,
    ``dstate``, ``triton`` (version), ``ptx_version`` (the ``.version`` line). See
    :func:`launch_grid` for concrete shapes.
    """
    import triton

    if dtype not in TYPES:
        raise ValueError(f"dtype must be one of {TYPES}, got {dtype!r}")
    if not isinstance(dstate, int) or dstate < 1:
        raise ValueError(f"dstate must be a positive int, got {dstate!r}")
    if block_t not in (1, 2, 4, 8, 16, 32, 64):
        raise ValueError(f"block_t must be a power of two <= 64, got {block_t}")
    if _ptx.triton_is_interpreted():
        return _ptx.compile_in_subprocess(
            compile_selective_scan_ptx, dtype=dtype, arch=arch, dstate=dstate, has_z=has_z,
            has_D=has_D, has_bias=has_bias, softplus=softplus,
            has_initial_state=has_initial_state, block_t=block_t, ptx_version=ptx_version)
    arch = int(arch)
    constexprs = dict(HAS_D=bool(has_D), HAS_Z=bool(has_z), HAS_BIAS=bool(has_bias),
                      SOFTPLUS=bool(softplus), HAS_H0=bool(has_initial_state), DSTATE=dstate,
                      BLOCK_N=1 if dstate <= 1 else triton.next_power_of_2(dstate),
                      BLOCK_D=BLOCK_D, BLOCK_T=block_t)
    t = _ptx.TRITON_TYPES[dtype]
    ptr_types = {"u": t, "delta": t, "A": "fp32", "B": t, "C": t, "D": "fp32", "z": t,
                 "delta_bias": "fp32", "initial_state": "fp32", "out": t, "last_state": "fp32"}
    runtime = ["i32" if n in SCALAR_ARGS else f"*{ptr_types[n]}" for n in KERNEL_ARGS]
    variant = (f"mamba_export_selective_scan_{t}_n{dstate}_t{block_t}_"
               f"{'z' if has_z else ''}{'d' if has_D else ''}{'b' if has_bias else ''}"
               f"{'s' if softplus else ''}{'h' if has_initial_state else ''}_sm{arch}")
    ptx, info = _ptx.compile_ptx(_wrapper(), runtime, constexprs, arch=arch, entry=variant,
                                 num_warps=NUM_WARPS, num_stages=1, ptx_version=ptx_version)
    launch = {
        "args": KERNEL_ARGS,
        "scalar_args": SCALAR_ARGS,
        "grid": ("ceil(dim/BLOCK_D)", "batch", 1),
        "block_d": BLOCK_D,
        "block_t": block_t,
        **info,
        "dtype": dtype,
        "dstate": dstate,
    }
    return ptx, variant, launch


def precompile(requests) -> None:
    """Compile several variants (dicts of :func:`compile_selective_scan_ptx` arguments) in one
    clean subprocess when Triton runs interpreted here (TRITON_INTERPRET=1 at import); a no-op
    otherwise."""
    _ptx.precompile(compile_selective_scan_ptx, requests)


def launch_grid(launch: dict, batch: int, dim: int) -> Tuple[int, int, int]:
    """The concrete grid of a ``launch`` dict for input shapes (the plugin computes the same with
    TensorRT's shape expressions)."""
    return (-(-dim // launch["block_d"]), batch, 1)


# ------------------------------------------------------------------------------ TensorRT
# The decorated functions are plain module-level functions (inspectable without TensorRT);
# register_plugin() attaches the tensorrt.plugin annotations and registers them.

def selective_scan_desc(u, delta, A, B, C, D, z, delta_bias, initial_state, delta_softplus):
    """Output descriptors: ``out`` like ``u``; ``last_state`` like ``initial_state`` (fp32)."""
    return u.like(), initial_state.like()


def selective_scan_autotune(u, delta, A, B, C, D, z, delta_bias, initial_state, delta_softplus,
                            outputs):
    import tensorrt.plugin as trtp

    return [trtp.AutoTuneCombination(_ptx.autotune_io_types(SIGNATURE), "LINEAR", list(TACTICS))]


def selective_scan_aot_impl(u, delta, A, B, C, D, z, delta_bias, initial_state, delta_softplus,
                            outputs, tactic):
    """PTX, launch parameters and extra scalars (``dim``, ``length``) for TensorRT."""
    import tensorrt as trt
    import tensorrt.plugin as trtp

    n_expr = A.shape_expr[1]
    if not n_expr.is_constant:
        raise ValueError("SelectiveScan plugin: d_state (A.shape[1]) must be a build-time constant")
    dstate = int(n_expr.constant_value())
    target = resolve_build_target()
    block_t = TACTICS.get(int(tactic), TACTICS[DEFAULT_TACTIC])["block_t"]
    ptx, name, launch = compile_selective_scan_ptx(
        _ptx.trt_dtype_name(trt, u.dtype, PLUGIN_NAME, TYPES), target["arch"], dstate=dstate,
        has_z=True, has_D=True, has_bias=True, softplus=bool(delta_softplus),
        has_initial_state=True, block_t=block_t, ptx_version=target["ptx_version"])
    batch, dim, length = u.shape_expr[0], u.shape_expr[1], u.shape_expr[2]
    params = trtp.KernelLaunchParams()
    params.grid_x = trtp.cdiv(dim, launch["block_d"])
    params.grid_y = batch
    params.grid_z = 1
    params.block_x = launch["block"][0]
    params.block_y = 1
    params.block_z = 1
    params.shared_mem = launch["shared_mem"]
    extra = trtp.SymIntExprs(len(SCALAR_ARGS))
    extra[0] = trtp.SymInt32(dim)
    extra[1] = trtp.SymInt32(length)
    return name, ptx, params, extra


def register_plugin() -> str:
    """Register ``mamba_export::SelectiveScan`` (descriptor, autotune, AOT implementation) with
    TensorRT's plugin registry; idempotent. Returns the plugin id. Raises
    :class:`TensorRTUnavailableError` without TensorRT >= 10.10."""
    return _ptx.register_aot_plugin(SIGNATURE, selective_scan_desc, selective_scan_autotune,
                                    selective_scan_aot_impl)


__all__ = [
    "ATTRIBUTE_NAMES", "INPUT_NAMES", "KERNEL_ARGS", "OUTPUT_NAMES", "PLUGIN_ID", "SCALAR_ARGS",
    "SIGNATURE", "TYPES", "TensorRTUnavailableError", "compile_selective_scan_ptx",
    "cuda_driver_version", "import_tensorrt", "launch_grid", "max_ptx_version",
    "python_signature_of", "register_plugin", "set_build_target",
]


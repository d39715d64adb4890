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

import ctypes
import functools
import inspect
import os
import re
from typing import List, Tuple

PLUGIN_NAMESPACE = "mamba_export"
PLUGIN_NAME = "SelectiveScan"
PLUGIN_ID = f"{PLUGIN_NAMESPACE}::{PLUGIN_NAME}"
PLUGIN_VERSION = "1"
MIN_TENSORRT = (10, 10)

#: dtype names the plugin supports for ``T``
TYPES = ("float32", "float16", "bfloat16")

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

_TORCH_NAMES = {"float32": "fp32", "float16": "fp16", "bfloat16": "bf16"}


class TensorRTUnavailableError(RuntimeError):
    """TensorRT (>= 10.10, with ``tensorrt.plugin`` AOT support) cannot be imported."""


def tensorrt_required_message(detail: str = "") -> str:
    need = ".".join(map(str, MIN_TENSORRT))
    msg = (f"TensorRT >= {need} is needed (Python package `tensorrt` with `tensorrt.plugin` AOT "
           f"support, on a machine with an NVIDIA GPU): pip install 'tensorrt>={need}'")
    return f"{msg} ({detail})" if detail else msg


def import_tensorrt():
    """Import ``tensorrt``; raise :class:`TensorRTUnavailableError` with a clear message if it is
    missing, too old, or lacks the AOT plugin API."""
    try:
        import tensorrt as trt
    except Exception as e:  # ImportError, or a broken install (missing libnvinfer)
        raise TensorRTUnavailableError(tensorrt_required_message(f"import tensorrt failed: {e}")) from e
    version = tuple(int(x) for x in re.findall(r"\d+", getattr(trt, "__version__", "0"))[:2])
    if version < MIN_TENSORRT:
        raise TensorRTUnavailableError(tensorrt_required_message(f"found {trt.__version__}"))
    return trt


def import_tensorrt_plugin():
    trt = import_tensorrt()
    try:
        import tensorrt.plugin as trtp
    except Exception as e:
        raise TensorRTUnavailableError(tensorrt_required_message(f"import tensorrt.plugin failed: {e}")) from e
    if not (hasattr(trtp, "aot_impl") and hasattr(trtp, "KernelLaunchParams")):
        raise TensorRTUnavailableError(tensorrt_required_message(
            f"tensorrt {trt.__version__} has no AOT Python plugins (tensorrt.plugin.aot_impl)"))
    return trt, trtp


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
              HAS_D, HAS_Z, HAS_BIAS, SOFTPLUS, HAS_H0, True, DSTATE, BLOCK_N, BLOCK_D, BLOCK_T)

    # JITFunction directly (not triton.jit): never the interpreter, whatever TRITON_INTERPRET
    return JITFunction(selective_scan_trt)


@functools.lru_cache(maxsize=None)
def _wrapper():
    return _build_wrapper()


def _ast_source(fn, dtype: str, constexprs: dict):
    """``triton.compiler.ASTSource`` across Triton versions: >= 3.2 takes a signature of every
    parameter by name ("constexpr" for constexprs) and constexprs keyed by name or by index
    path; older versions took index-keyed signatures without constexprs and ``constants``."""
    import triton

    t = _TORCH_NAMES[dtype]
    ptr_types = {"u": t, "delta": t, "A": "fp32", "B": t, "C": t, "D": "fp32", "z": t,
                 "delta_bias": "fp32", "initial_state": "fp32", "out": t, "last_state": "fp32"}
    runtime = [f"*{ptr_types[n]}" if n not in SCALAR_ARGS else "i32" for n in KERNEL_ARGS]
    names = fn.arg_names
    assert len(names) == len(KERNEL_ARGS) + len(constexprs), names
    errors = []
    sig = {names[i]: runtime[i] for i in range(len(KERNEL_ARGS))}
    sig.update({k: "constexpr" for k in constexprs})
    attempts = (
        lambda: triton.compiler.ASTSource(fn=fn, signature=sig, constexprs={
            (names.index(k),): v for k, v in constexprs.items()}),
        lambda: triton.compiler.ASTSource(fn=fn, signature=sig, constexprs=dict(constexprs)),
        lambda: triton.compiler.ASTSource(fn=fn, signature={i: runtime[i] for i in range(len(KERNEL_ARGS))},
                                          constants={names.index(k): v for k, v in constexprs.items()}),
    )
    for make in attempts:
        try:
            return make()
        except Exception as e:  # a format this Triton does not take
            errors.append(f"{type(e).__name__}: {e}")
    raise RuntimeError(f"triton {triton.__version__}: cannot build an ASTSource ({'; '.join(errors)})")


def _strip_hidden_params(ptx: str, name: str, n_args: int) -> str:
    """Drop the parameters Triton appends after the user's (global/profile scratch pointers):
    TensorRT passes exactly the inputs, the extra scalars and the outputs."""
    head = re.search(r"\.entry\s+" + re.escape(name) + r"\s*\((.*?)\)", ptx, re.S)
    if head is None:
        raise RuntimeError(f"no .entry {name} in the PTX")
    params = [p.strip() for p in head.group(1).split(",") if p.strip()]
    if len(params) < n_args:
        raise RuntimeError(f"the kernel has {len(params)} parameters, expected >= {n_args}")
    for i in range(n_args, len(params)):
        if re.search(rf"\[{re.escape(name)}_param_{i}\]", ptx):
            raise RuntimeError(f"the kernel reads hidden parameter {i} (Triton scratch memory); "
                               "TensorRT's AOT launch cannot provide it")
    body = ",\n\t".join(params[:n_args])
    return ptx[:head.start(1)] + "\n\t" + body + "\n" + ptx[head.end(1):]


def cuda_driver_version() -> int | None:
    """The CUDA driver's version (e.g. 12080), or None without a driver."""
    try:
        lib = ctypes.CDLL("libcuda.so.1")
        v = ctypes.c_int(0)
        if lib.cuDriverGetVersion(ctypes.byref(v)) == 0:
            return v.value
    except OSError:
        pass
    return None


def max_ptx_version(driver_version: int | None) -> int | None:
    """The newest PTX ISA (e.g. 87 for 8.7) a CUDA driver of ``driver_version`` can JIT-compile;
    None for an unknown or absent driver (keep Triton's default)."""
    if not driver_version:
        return None
    major, minor = driver_version // 1000, (driver_version % 1000) // 10
    if major == 11:
        return 70 + min(minor, 8)
    if major == 12:
        return {0: 80, 1: 81, 2: 82, 3: 83, 4: 84, 5: 85, 6: 85, 7: 86, 8: 87}.get(minor, 88)
    if major >= 13:
        return 90 + minor
    return None


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
    from triton.backends.compiler import GPUTarget

    if dtype not in TYPES:
        raise ValueError(f"dtype must be one of {TYPES}, got {dtype!r}")
    if not isinstance(dstate, int) or dstate < 1:
        raise ValueError(f"dstate must be a positive int, got {dstate!r}")
    if block_t not in (1, 2, 4, 8, 16, 32, 64):
        raise ValueError(f"block_t must be a power of two <= 64, got {block_t}")
    if _triton_is_interpreted():
        # Triton was imported with TRITON_INTERPRET=1 (e.g. CPU test runs): its library functions
        # are interpreter objects that cannot be compiled; compile in a clean process instead
        return _compile_in_subprocess(dtype, arch, dstate=dstate, has_z=has_z, has_D=has_D,
                                      has_bias=has_bias, softplus=softplus,
                                      has_initial_state=has_initial_state, block_t=block_t,
                                      ptx_version=ptx_version)
    arch = int(arch)
    fn = _wrapper()
    constexprs = dict(HAS_D=bool(has_D), HAS_Z=bool(has_z), HAS_BIAS=bool(has_bias),
                      SOFTPLUS=bool(softplus), HAS_H0=bool(has_initial_state), DSTATE=dstate,
                      BLOCK_N=1 if dstate <= 1 else triton.next_power_of_2(dstate),
                      BLOCK_D=BLOCK_D, BLOCK_T=block_t)
    src = _ast_source(fn, dtype, constexprs)
    options = {"num_warps": NUM_WARPS, "num_stages": 1, "enable_fp_fusion": True}
    if ptx_version is not None:
        # no newer than Triton's own ptxas assembles (it checks the PTX while compiling)
        default = _triton_default_ptx(arch)
        options["ptx_version"] = int(ptx_version) if default is None else min(int(ptx_version), default)
    try:
        compiled = triton.compile(src, target=GPUTarget("cuda", arch, 32), options=options)
    except Exception as e:
        if os.environ.get("TRITON_INTERPRET", "0") == "1":
            raise RuntimeError("compiling the scan kernel failed with TRITON_INTERPRET=1 set (Triton's "
                               "interpreter replaces its library functions); unset it") from e
        raise
    md = compiled.metadata
    for attr in ("global_scratch_size", "profile_scratch_size"):
        if getattr(md, attr, 0):
            raise RuntimeError(f"the scan kernel needs Triton {attr}={getattr(md, attr)}; "
                               "TensorRT's AOT launch cannot provide it")
    base = md.name
    variant = (f"mamba_export_selective_scan_{_TORCH_NAMES[dtype]}_n{dstate}_t{block_t}_"
               f"{'z' if has_z else ''}{'d' if has_D else ''}{'b' if has_bias else ''}"
               f"{'s' if softplus else ''}{'h' if has_initial_state else ''}_sm{arch}")
    ptx = compiled.asm["ptx"]
    ptx = _strip_hidden_params(ptx, base, len(KERNEL_ARGS))
    ptx = ptx.replace(base, variant)  # unique entry (and parameter) names per variant
    version = re.search(r"^\.version\s+(\S+)", ptx, re.M)
    launch = {
        "args": KERNEL_ARGS,
        "scalar_args": SCALAR_ARGS,
        "grid": ("ceil(dim/BLOCK_D)", "batch", 1),
        "block_d": BLOCK_D,
        "block_t": block_t,
        "num_warps": md.num_warps,
        "block": (32 * md.num_warps, 1, 1),
        "shared_mem": int(md.shared),
        "arch": arch,
        "dtype": dtype,
        "dstate": dstate,
        "triton": triton.__version__,
        "ptx_version": version.group(1) if version else None,
    }
    return ptx, variant, launch


def _triton_default_ptx(arch: int) -> int | None:
    """The PTX ISA version Triton targets by default (its bundled ptxas's), e.g. 87."""
    try:
        from triton.backends.nvidia import compiler as nv

        try:
            cuda_version = nv.get_ptxas(arch).version
        except TypeError:
            cuda_version = nv.get_ptxas().version
        return int(nv.ptx_get_version(cuda_version))
    except Exception:
        return None


def _triton_is_interpreted() -> bool:
    import triton.language.standard as std
    from triton.runtime.jit import JITFunction

    return not isinstance(std.sum, JITFunction)


_SUBPROCESS_CACHE: dict = {}


def _request_key(dtype, arch, kwargs) -> str:
    import json

    return json.dumps({"dtype": dtype, "arch": int(arch), **kwargs}, sort_keys=True)


def precompile(requests) -> None:
    """Compile several variants (dicts of :func:`compile_selective_scan_ptx` arguments) in one
    clean subprocess when Triton runs interpreted here (TRITON_INTERPRET=1 at import); a no-op
    otherwise. Saves one process start per variant."""
    if not _triton_is_interpreted():
        return
    reqs = []
    for r in requests:
        r = dict(r)
        dtype, arch = r.pop("dtype"), r.pop("arch", 90)
        full = dict(has_z=True, has_D=True, has_bias=True, softplus=True, has_initial_state=True,
                    block_t=TACTICS[DEFAULT_TACTIC]["block_t"], ptx_version=None)
        full.update(r)
        key = _request_key(dtype, arch, full)
        if key not in _SUBPROCESS_CACHE:
            reqs.append(key)
    if reqs:
        for key, result in zip(reqs, _run_subprocess(reqs)):
            _SUBPROCESS_CACHE[key] = result


def _run_subprocess(keys):
    import json
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    proc = subprocess.run([sys.executable, "-m", "mamba_export.plugins.selective_scan",
                           json.dumps(keys)], env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"compiling the scan kernel in a subprocess failed:\n{proc.stderr[-4000:]}")
    results = json.loads(proc.stdout.strip().splitlines()[-1])
    out = []
    for ptx, name, launch in results:
        for k in ("args", "scalar_args", "grid", "block"):
            launch[k] = tuple(launch[k])
        out.append((ptx, name, launch))
    return out


def _compile_in_subprocess(dtype, arch, **kwargs):
    key = _request_key(dtype, arch, kwargs)
    if key not in _SUBPROCESS_CACHE:
        _SUBPROCESS_CACHE[key] = _run_subprocess([key])[0]
    return _SUBPROCESS_CACHE[key]


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

    names = [dt for _, dt, _ in SIGNATURE["inputs"] + SIGNATURE["outputs"]]
    t_variants = "|".join(_TRT_TYPE_STR[t] for t in TYPES)  # "|": all T positions alike
    io_types = ", ".join(t_variants if d == "T" else _TRT_TYPE_STR[d] for d in names)
    return [trtp.AutoTuneCombination(io_types, "LINEAR", list(TACTICS))]


_TRT_TYPE_STR = {"float32": "FP32", "float16": "FP16", "bfloat16": "BF16"}

#: build target for the AOT implementation: arch and PTX cap (set by the engine builder)
_TARGET = {"arch": None, "ptx_version": None}


def set_build_target(arch: int | None = None, ptx_version: int | None = None) -> dict:
    """Architecture (compute capability, e.g. 90) and PTX ISA cap the plugin compiles for;
    None: the current GPU's (torch or the driver) and the newest PTX its driver JIT-compiles."""
    _TARGET["arch"] = arch
    _TARGET["ptx_version"] = ptx_version
    return resolve_build_target()


def resolve_build_target() -> dict:
    arch = _TARGET["arch"] or os.environ.get("MAMBA_EXPORT_TRT_ARCH")
    if not arch:
        try:
            import torch

            if torch.cuda.is_available():
                major, minor = torch.cuda.get_device_capability()
                arch = major * 10 + minor
        except Exception:
            arch = None
    ptx = _TARGET["ptx_version"]
    if ptx is None:
        ptx = max_ptx_version(cuda_driver_version())
    return {"arch": int(arch) if arch else 90, "ptx_version": ptx}


def _trt_dtype_name(trt, dtype) -> str:
    table = {trt.float32: "float32", trt.float16: "float16", trt.bfloat16: "bfloat16"}
    if dtype not in table:
        raise ValueError(f"SelectiveScan plugin: unsupported dtype {dtype} (expected {TYPES})")
    return table[dtype]


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
        _trt_dtype_name(trt, u.dtype), target["arch"], dstate=dstate, has_z=True, has_D=True,
        has_bias=True, softplus=bool(delta_softplus), has_initial_state=True, block_t=block_t,
        ptx_version=target["ptx_version"])
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


_REGISTERED = {"done": False}


def register_plugin() -> str:
    """Register ``mamba_export::SelectiveScan`` (descriptor, autotune, AOT implementation) with
    TensorRT's plugin registry; idempotent. Returns the plugin id. Raises
    :class:`TensorRTUnavailableError` without TensorRT >= 10.10."""
    trt, trtp = import_tensorrt_plugin()
    if _REGISTERED["done"]:
        return PLUGIN_ID
    desc_t = trtp.TensorDesc
    attr_types = dict(SIGNATURE["attributes"])
    ins = {n: desc_t for n in INPUT_NAMES}
    selective_scan_desc.__annotations__ = {**ins, **attr_types, "return": Tuple[desc_t, desc_t]}
    selective_scan_autotune.__annotations__ = {
        **ins, **attr_types, "outputs": Tuple[desc_t, desc_t], "return": List[trtp.AutoTuneCombination]}
    selective_scan_aot_impl.__annotations__ = {
        **ins, **attr_types, "outputs": Tuple[desc_t, desc_t], "tactic": int,
        "return": Tuple[str | bytes, str | bytes, trtp.KernelLaunchParams, trtp.SymExprs]}
    from tensorrt.plugin import _lib as trtp_lib  # the registry of already-defined plugins

    if PLUGIN_ID not in getattr(trtp_lib, "QDP_REGISTRY", {}):
        trtp.register(PLUGIN_ID)(selective_scan_desc)
        trtp.autotune(PLUGIN_ID)(selective_scan_autotune)
        trtp.aot_impl(PLUGIN_ID)(selective_scan_aot_impl)
    _REGISTERED["done"] = True
    return PLUGIN_ID


def python_signature_of(fn) -> Tuple[str, ...]:
    """Parameter names of a plugin function (tests compare them with :data:`SIGNATURE`)."""
    return tuple(inspect.signature(fn).parameters)


__all__ = [
    "ATTRIBUTE_NAMES", "INPUT_NAMES", "KERNEL_ARGS", "OUTPUT_NAMES", "PLUGIN_ID", "SCALAR_ARGS",
    "SIGNATURE", "TYPES", "TensorRTUnavailableError", "compile_selective_scan_ptx",
    "cuda_driver_version", "import_tensorrt", "launch_grid", "max_ptx_version", "register_plugin",
    "set_build_target",
]


if __name__ == "__main__":  # used by _run_subprocess: a JSON list of request keys
    import json
    import sys

    _results = []
    for _key in json.loads(sys.argv[1]):
        _req = json.loads(_key)
        _dtype, _arch = _req.pop("dtype"), _req.pop("arch")
        _results.append(compile_selective_scan_ptx(_dtype, _arch, **_req))
    print(json.dumps(_results))

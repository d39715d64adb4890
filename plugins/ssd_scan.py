"""The Mamba-2 SSD scan as a TensorRT Python plugin with an ahead-of-time (AOT) implementation.

The plugin ``mamba_export::SSDScan`` (version ``"1"``) has the signature of the ONNX node of the
same name (:mod:`mamba_export.export.onnx_ssd`), described once by :data:`SIGNATURE`::

    SSDScan(x [b, L, H, P], dt [b, L, H], A [H], B [b, L, H, N], C [b, L, H, N],
            initial_state [b, H, P, N]) -> (y [b, L, H, P], final_state [b, H, P, N])

no attributes. What the node computes fixes the kernel's options: its ``dt`` is already
discretised (dt_bias, softplus and the dt_limit clamp are standard ops before it), B and C are
already expanded from groups to heads, and ``y`` is taken before D and the z gate (standard ops
after it); ``initial_state`` is always an input. So the project's Triton kernel
(``kernels.ssd_scan._ssd_scan_fwd_kernel``) is compiled with HAS_BIAS, SOFTPLUS, HAS_LIMIT,
HAS_D, HAS_Z False and HAS_INIT True, one group per head.

AOT implementation: :func:`compile_ssd_scan_ptx` compiles a wrapper ``ssd_scan_trt`` whose
parameters are in TensorRT's AOT order (inputs, extra scalars, outputs)::

    x, dt, A, B, C, initial_state,   # the 6 input pointers (ONNX order)
    length, heads, headdim,          # the extra scalars (int32)
    y, final_state                   # the 2 output pointers

Tensors are contiguous (LINEAR), so the wrapper derives every stride from the scalars and the
constexpr ``DSTATE`` (N, read from B's static shape). Launch: ``grid = (ceil(headdim /
BLOCK_P), heads, batch)``, ``block = (32 * num_warps, 1, 1)``, dynamic shared memory from the
compiled kernel's metadata. Tiles (BLOCK_T, BLOCK_P, num_warps, num_stages) are the launcher's
:func:`~mamba_export.kernels.ssd_scan.default_config` choices: tactic 1 its wide-P config (batch
* heads >= 64), tactic 2 its narrow-P one; TensorRT times both.

Dtypes: ``x, B, C, y`` are ``T`` in {float32, float16, bfloat16}; ``dt`` (the discretised step),
``A`` and both states are float32. Matmul options as in the kernel's launcher: full-precision
("ieee") dots for float32, native fp16/bf16 MMAs on operands in ``T`` for halves.

Importing this module needs neither TensorRT nor Triton nor a GPU. No ``from __future__ import
annotations`` here: the plugin API reads real annotation objects from these functions.
"""

import functools
import types
from typing import Tuple

from . import _ptx
from ._ptx import TensorRTUnavailableError

PLUGIN_NAMESPACE, TYPES = _ptx.PLUGIN_NAMESPACE, _ptx.TYPES
PLUGIN_NAME = "SSDScan"
PLUGIN_ID = f"{PLUGIN_NAMESPACE}::{PLUGIN_NAME}"
PLUGIN_VERSION = "1"

#: The plugin's (and the ONNX node's) signature: (name, dtype, shape), dtype "T" (one of TYPES,
#: the same for every "T" entry) or fixed; shapes name symbolic dimensions.
SIGNATURE = {
    "plugin_id": PLUGIN_ID,
    "inputs": (
        ("x", "T", ("batch", "length", "heads", "headdim")),
        ("dt", "float32", ("batch", "length", "heads")),
        ("A", "float32", ("heads",)),
        ("B", "T", ("batch", "length", "heads", "dstate")),
        ("C", "T", ("batch", "length", "heads", "dstate")),
        ("initial_state", "float32", ("batch", "heads", "headdim", "dstate")),
    ),
    "outputs": (
        ("y", "T", ("batch", "length", "heads", "headdim")),
        ("final_state", "float32", ("batch", "heads", "headdim", "dstate")),
    ),
    "attributes": (),
    "types": TYPES,
}

INPUT_NAMES = tuple(n for n, _, _ in SIGNATURE["inputs"])
OUTPUT_NAMES = tuple(n for n, _, _ in SIGNATURE["outputs"])
ATTRIBUTE_NAMES = ()
#: the extra scalar kernel arguments, between the inputs and the outputs (TensorRT's AOT order)
SCALAR_ARGS = ("length", "heads", "headdim")
#: the kernel's runtime parameters, in order
KERNEL_ARGS = INPUT_NAMES + SCALAR_ARGS + OUTPUT_NAMES

#: tactic -> (batch, heads) for which the launcher's default_config gives that tile config:
#: 1 = wide P blocks (its choice when batch * heads >= 64), 2 = narrow (fewer rows)
TACTICS = {1: (64, 1), 2: (1, 1)}
DEFAULT_TACTIC = 1

tl = None    # triton.language, set by _make_wrapper (Triton is imported only when compiling)
_SSD = None  # the kernel each wrapper calls: set in that wrapper's own globals


# ------------------------------------------------------------------------------ the kernel
def _make_wrapper(inner):
    """``ssd_scan_trt`` calling ``inner`` (the kernel's JITFunction, or its interpreted form for
    CPU tests). Its names (``tl``, ``_SSD``) resolve through a globals dict of its own: Triton
    reads a kernel's names from ``__globals__`` (closures are not supported by every Triton
    version, and the interpreter needs ``tl`` there)."""
    import importlib

    globals()["tl"] = importlib.import_module("triton.language")

    def ssd_scan_trt(x_ptr, dt_ptr, A_ptr, B_ptr, C_ptr, h0_ptr,
                     length, heads, headdim,
                     y_ptr, final_ptr,
                     DSTATE: tl.constexpr, IEEE: tl.constexpr, WIDEN: tl.constexpr,
                     BLOCK_T: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_N: tl.constexpr):
        # contiguous x, y [b, L, H, P]; dt [b, L, H]; B, C [b, L, H, N]; states [b, H, P, N]
        len64 = length.to(tl.int64)
        h64 = heads.to(tl.int64)
        p64 = headdim.to(tl.int64)
        s_x = h64 * p64      # per position of x, y
        s_bc = h64 * DSTATE  # per position of B, C
        s_h = p64 * DSTATE   # per head of the states
        _SSD(x_ptr, dt_ptr, A_ptr, B_ptr, C_ptr, x_ptr, x_ptr, x_ptr, h0_ptr, y_ptr, final_ptr,
             length, headdim, DSTATE, 1, 0.0, 0.0,  # heads_per_group 1: B/C come per head
             len64 * s_x, s_x, p64, 1,              # x
             len64 * h64, h64, 1,                   # dt
             1,                                     # A
             len64 * s_bc, s_bc, DSTATE, 1,         # B (b, l, g = h, n)
             len64 * s_bc, s_bc, DSTATE, 1,         # C
             0, 0, 0, 0, 0, 0, 0,                   # D, z, dt_bias: absent
             h64 * s_h, s_h, DSTATE, 1,             # initial_state
             len64 * s_x, s_x, p64, 1,              # y
             h64 * s_h, s_h, DSTATE, 1,             # final_state
             # by name: a renamed or reordered kernel option fails to compile, never shifts
             HAS_D=False, HAS_Z=False, HAS_BIAS=False, SOFTPLUS=False, HAS_LIMIT=False,
             HAS_INIT=True, IEEE=IEEE, WIDEN=WIDEN, BLOCK_T=BLOCK_T, BLOCK_P=BLOCK_P,
             BLOCK_N=BLOCK_N)

    fn = types.FunctionType(ssd_scan_trt.__code__, {**globals(), "_SSD": inner}, "ssd_scan_trt")
    fn.__annotations__ = dict(ssd_scan_trt.__annotations__)
    return fn


@functools.lru_cache(maxsize=None)
def _wrapper():
    from triton.runtime.jit import JITFunction

    from mamba_export.kernels.ssd_scan import _ssd_scan_fwd_kernel

    # JITFunction directly (not triton.jit): never the interpreter, whatever TRITON_INTERPRET
    return JITFunction(_make_wrapper(_ssd_scan_fwd_kernel.jit))


def interpreted_wrapper():
    """The same wrapper under Triton's interpreter (CPU): tests launch it with the plugin's
    argument order, grid and constexprs to check the stride derivation without a GPU."""
    from triton.runtime.interpreter import InterpretedFunction

    from mamba_export.kernels.ssd_scan import _ssd_scan_fwd_kernel

    return InterpretedFunction(_make_wrapper(_ssd_scan_fwd_kernel.interp))


def tactic_config(tactic: int) -> Tuple[int, int, int, int]:
    """(BLOCK_T, BLOCK_P, num_warps, num_stages) of a tactic: the launcher's default_config,
    checked by the launcher's own guard (num_stages=1 with BLOCK_T > BLOCK_P miscompiles)."""
    from mamba_export.kernels import ssd_scan as k

    config = k.default_config(*TACTICS[tactic])
    k.check_config(config)
    return config


def block_sizes(config, dstate: int, headdim: int | None) -> Tuple[int, int]:
    """(BLOCK_P, BLOCK_N) as the launcher sizes them: tl.dot needs every dim >= 16; P blocks
    shrink to a small headdim when it is known at build time."""
    from triton import next_power_of_2

    block_p = config[1] if headdim is None else min(config[1], next_power_of_2(headdim))
    return max(16, block_p), max(16, next_power_of_2(dstate))


def dot_constexprs(dtype: str, interpreted: bool = False) -> dict:
    """The kernel's matmul options as the launcher picks them: IEEE (full-precision dots) for
    float32; halves run native fp16/bf16 MMAs on operands in the input dtype; WIDEN only under
    Triton's interpreter, which multiplies bfloat16 bit patterns as integers."""
    return {"IEEE": dtype == "float32", "WIDEN": interpreted and dtype == "bfloat16"}


@functools.lru_cache(maxsize=64)
def compile_ssd_scan_ptx(dtype: str = "float32", arch: int = 90, *, dstate: int,
                         headdim: int | None = None, tactic: int = DEFAULT_TACTIC,
                         ptx_version: int | None = None) -> Tuple[str, str, dict]:
    """Compile the SSD kernel ahead of time for TensorRT; returns ``(ptx, kernel_name, launch)``.

    Needs Triton only (no GPU, no TensorRT). ``dtype`` is ``T``, ``arch`` the compute
    capability (80, 90, ...), ``dstate`` N (a compile-time constant), ``headdim`` P when known at
    build time (narrows BLOCK_P for a small P; any P runs either way), ``tactic`` a key of
    :data:`TACTICS`, ``ptx_version`` a PTX ISA cap (e.g. 85) for older drivers.

    ``launch``: ``args`` (parameter order), ``scalar_args``, ``grid`` (symbolic), ``block_t``,
    ``block_p``, ``block_n``, ``num_stages``, ``tactic``, ``block``, ``shared_mem`` (dynamic
    bytes), ``num_warps``, ``arch``, ``dtype``, ``dstate``, ``headdim``, ``triton``,
    ``ptx_version``. :func:`launch_grid` gives the grid for concrete shapes.
    """
    if dtype not in TYPES:
        raise ValueError(f"dtype must be one of {TYPES}, got {dtype!r}")
    if not isinstance(dstate, int) or dstate < 1:
        raise ValueError(f"dstate must be a positive int, got {dstate!r}")
    if headdim is not None and (not isinstance(headdim, int) or headdim < 1):
        raise ValueError(f"headdim must be a positive int or None, got {headdim!r}")
    if tactic not in TACTICS:
        raise ValueError(f"tactic must be one of {tuple(TACTICS)}, got {tactic!r}")
    if _ptx.triton_is_interpreted():
        return _ptx.compile_in_subprocess(compile_ssd_scan_ptx, dtype=dtype, arch=arch,
                                          dstate=dstate, headdim=headdim, tactic=tactic,
                                          ptx_version=ptx_version)
    arch = int(arch)
    config = tactic_config(tactic)
    block_t, _, num_warps, num_stages = config
    block_p, block_n = block_sizes(config, dstate, headdim)
    constexprs = dict(DSTATE=dstate, **dot_constexprs(dtype), BLOCK_T=block_t, BLOCK_P=block_p,
                      BLOCK_N=block_n)
    t = _ptx.TRITON_TYPES[dtype]
    fixed = {n: _ptx.TRITON_TYPES[d] for n, d, _ in SIGNATURE["inputs"] + SIGNATURE["outputs"]
             if d != "T"}
    runtime = ["i32" if n in SCALAR_ARGS else f"*{fixed.get(n, t)}" for n in KERNEL_ARGS]
    name = (f"mamba_export_ssd_scan_{t}_n{dstate}_t{block_t}_p{block_p}_w{num_warps}"
            f"_s{num_stages}_sm{arch}")
    ptx, info = _ptx.compile_ptx(_wrapper(), runtime, constexprs, arch=arch, entry=name,
                                 num_warps=num_warps, num_stages=num_stages,
                                 ptx_version=ptx_version)
    launch = {
        "args": KERNEL_ARGS,
        "scalar_args": SCALAR_ARGS,
        "grid": ("ceil(headdim/BLOCK_P)", "heads", "batch"),
        "block_t": block_t,
        "block_p": block_p,
        "block_n": block_n,
        "num_stages": num_stages,
        "tactic": tactic,
        **info,
        "dtype": dtype,
        "dstate": dstate,
        "headdim": headdim,
    }
    return ptx, name, launch


def precompile(requests) -> None:
    """Compile several variants (dicts of :func:`compile_ssd_scan_ptx` arguments) in one clean
    subprocess when Triton runs interpreted here; a no-op otherwise."""
    _ptx.precompile(compile_ssd_scan_ptx, requests)


def launch_grid(launch: dict, batch: int, heads: int, headdim: int) -> Tuple[int, int, int]:
    """The concrete grid for input shapes (the plugin gives TensorRT the same as shape
    expressions)."""
    return (-(-headdim // launch["block_p"]), heads, batch)


# ------------------------------------------------------------------------------ TensorRT
# Plain module-level functions (inspectable without TensorRT); register_plugin() annotates and
# registers them.

def ssd_scan_desc(x, dt, A, B, C, initial_state):
    """Output descriptors: ``y`` like ``x``; ``final_state`` like ``initial_state`` (fp32)."""
    return x.like(), initial_state.like()


def ssd_scan_autotune(x, dt, A, B, C, initial_state, outputs):
    import tensorrt.plugin as trtp

    return [trtp.AutoTuneCombination(_ptx.autotune_io_types(SIGNATURE), "LINEAR", list(TACTICS))]


def ssd_scan_aot_impl(x, dt, A, B, C, initial_state, outputs, tactic):
    """PTX, launch parameters and extra scalars (``length``, ``heads``, ``headdim``)."""
    import tensorrt as trt
    import tensorrt.plugin as trtp

    n_expr = B.shape_expr[3]
    if not n_expr.is_constant:
        raise ValueError("SSDScan plugin: d_state (B.shape[3]) must be a build-time constant")
    p_expr = x.shape_expr[3]
    target = _ptx.resolve_build_target()
    ptx, name, launch = compile_ssd_scan_ptx(
        _ptx.trt_dtype_name(trt, x.dtype, PLUGIN_NAME, TYPES), target["arch"],
        dstate=int(n_expr.constant_value()),
        headdim=int(p_expr.constant_value()) if p_expr.is_constant else None,
        tactic=int(tactic) if int(tactic) in TACTICS else DEFAULT_TACTIC,
        ptx_version=target["ptx_version"])
    batch, length, heads, headdim = (x.shape_expr[i] for i in range(4))
    params = trtp.KernelLaunchParams()
    params.grid_x = trtp.cdiv(headdim, launch["block_p"])
    params.grid_y = heads
    params.grid_z = batch
    params.block_x = launch["block"][0]
    params.block_y = 1
    params.block_z = 1
    params.shared_mem = launch["shared_mem"]
    extra = trtp.SymIntExprs(len(SCALAR_ARGS))
    extra[0] = trtp.SymInt32(length)
    extra[1] = trtp.SymInt32(heads)
    extra[2] = trtp.SymInt32(headdim)
    return name, ptx, params, extra


def register_plugin() -> str:
    """Register ``mamba_export::SSDScan`` with TensorRT's plugin registry (idempotent); returns
    the plugin id. :class:`TensorRTUnavailableError` without TensorRT >= 10.10."""
    return _ptx.register_aot_plugin(SIGNATURE, ssd_scan_desc, ssd_scan_autotune, ssd_scan_aot_impl)


__all__ = [
    "ATTRIBUTE_NAMES", "INPUT_NAMES", "KERNEL_ARGS", "OUTPUT_NAMES", "PLUGIN_ID", "SCALAR_ARGS",
    "SIGNATURE", "TACTICS", "TYPES", "TensorRTUnavailableError", "compile_ssd_scan_ptx",
    "launch_grid", "register_plugin",
]

"""What the TensorRT plugins share: importing TensorRT with a clear error, compiling a Triton
kernel ahead of time to PTX for TensorRT's AOT launch, the PTX target, and compiling in a clean
subprocess when Triton runs interpreted.

Importing this module needs neither TensorRT nor Triton nor a GPU.
"""

import ctypes
import inspect
import json
import os
import re
from typing import List, Tuple

MIN_TENSORRT = (10, 10)

#: the plugins' namespace (the ONNX nodes' domain) and the dtype names they support for ``T``
PLUGIN_NAMESPACE = "mamba_export"
TYPES = ("float32", "float16", "bfloat16")

#: dtype name -> Triton's pointer element name, and -> TensorRT's type string (autotune)
TRITON_TYPES = {"float32": "fp32", "float16": "fp16", "bfloat16": "bf16"}
TRT_TYPE_STR = {"float32": "FP32", "float16": "FP16", "bfloat16": "BF16"}


# ------------------------------------------------------------------------------ TensorRT
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


def trt_dtype_name(trt, dtype, plugin: str, supported) -> str:
    """TensorRT dtype -> "float32" | "float16" | "bfloat16"."""
    table = {trt.float32: "float32", trt.float16: "float16", trt.bfloat16: "bfloat16"}
    if table.get(dtype) not in supported:
        raise ValueError(f"{plugin} plugin: unsupported dtype {dtype} (expected {supported})")
    return table[dtype]


def autotune_io_types(signature) -> str:
    """The ``AutoTuneCombination`` type string of a plugin SIGNATURE: every "T" position takes
    all of ``signature["types"]`` ("|": all T positions alike), fixed ones their own type."""
    t_variants = "|".join(TRT_TYPE_STR[t] for t in signature["types"])
    return ", ".join(t_variants if d == "T" else TRT_TYPE_STR[d]
                     for _, d, _ in signature["inputs"] + signature["outputs"])


def register_aot_plugin(signature, desc, autotune, aot_impl) -> str:
    """Register a plugin's descriptor, autotune and AOT implementation functions with
    ``tensorrt.plugin`` (idempotent); returns the plugin id. The functions are plain module
    functions; their annotations, which the plugin API reads, are set here from ``signature``."""
    _, trtp = import_tensorrt_plugin()
    from tensorrt.plugin import _lib as trtp_lib  # the registry of already-defined plugins

    plugin_id = signature["plugin_id"]
    if plugin_id in getattr(trtp_lib, "QDP_REGISTRY", {}):
        return plugin_id
    desc_t = trtp.TensorDesc
    ins = {n: desc_t for n, _, _ in signature["inputs"]}
    attrs = dict(signature["attributes"])
    n_out = len(signature["outputs"])
    outs = Tuple[(desc_t,) * n_out]
    desc.__annotations__ = {**ins, **attrs, "return": outs}
    autotune.__annotations__ = {**ins, **attrs, "outputs": outs,
                                "return": List[trtp.AutoTuneCombination]}
    aot_impl.__annotations__ = {**ins, **attrs, "outputs": outs, "tactic": int,
                                "return": Tuple[str | bytes, str | bytes, trtp.KernelLaunchParams,
                                                trtp.SymExprs]}
    trtp.register(plugin_id)(desc)
    trtp.autotune(plugin_id)(autotune)
    trtp.aot_impl(plugin_id)(aot_impl)
    return plugin_id


def python_signature_of(fn) -> Tuple[str, ...]:
    """Parameter names of a plugin function (tests compare them with a SIGNATURE)."""
    return tuple(inspect.signature(fn).parameters)


# ------------------------------------------------------------------------------ PTX target
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


#: build target of every plugin's AOT implementation: arch and PTX cap (set by the engine builder)
_TARGET = {"arch": None, "ptx_version": None}


def set_build_target(arch: int | None = None, ptx_version: int | None = None) -> dict:
    """Architecture (compute capability, e.g. 90) and PTX ISA cap the plugins compile for;
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


# ------------------------------------------------------------------------------ Triton -> PTX
def ast_source(fn, runtime_types, constexprs: dict):
    """``triton.compiler.ASTSource`` across Triton versions. ``runtime_types`` are the Triton
    types of ``fn``'s leading runtime parameters ("*fp32", "i32"), ``constexprs`` the values of
    the remaining ones by name. Triton >= 3.2 takes a signature of every parameter by name
    ("constexpr" for constexprs) and constexprs keyed by name or by index path; older versions
    took index-keyed signatures without constexprs and ``constants``."""
    import triton

    names = fn.arg_names
    n = len(runtime_types)
    assert len(names) == n + len(constexprs), (names, constexprs)
    sig = {names[i]: runtime_types[i] for i in range(n)}
    sig.update({k: "constexpr" for k in constexprs})
    attempts = (
        lambda: triton.compiler.ASTSource(fn=fn, signature=sig, constexprs={
            (names.index(k),): v for k, v in constexprs.items()}),
        lambda: triton.compiler.ASTSource(fn=fn, signature=sig, constexprs=dict(constexprs)),
        lambda: triton.compiler.ASTSource(fn=fn, signature={i: runtime_types[i] for i in range(n)},
                                          constants={names.index(k): v for k, v in constexprs.items()}),
    )
    errors = []
    for make in attempts:
        try:
            return make()
        except Exception as e:  # a format this Triton does not take
            errors.append(f"{type(e).__name__}: {e}")
    raise RuntimeError(f"triton {triton.__version__}: cannot build an ASTSource ({'; '.join(errors)})")


def strip_hidden_params(ptx: str, name: str, n_args: int) -> str:
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


def triton_default_ptx(arch: int) -> int | None:
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


def triton_is_interpreted() -> bool:
    """True when Triton was imported with TRITON_INTERPRET=1: its library functions are then
    interpreter objects that cannot be compiled (see :func:`compile_in_subprocess`)."""
    import triton.language.standard as std
    from triton.runtime.jit import JITFunction

    return not isinstance(std.sum, JITFunction)


def compile_ptx(fn, runtime_types, constexprs: dict, *, arch: int, entry: str, num_warps: int,
                num_stages: int, ptx_version: int | None = None) -> Tuple[str, dict]:
    """Compile JITFunction ``fn`` for ``sm_<arch>`` without a GPU; returns ``(ptx, info)``: the
    PTX with its entry renamed ``entry`` and only the ``runtime_types`` parameters kept, and
    ``info`` = num_warps, block, shared_mem (dynamic bytes), arch, triton, ptx_version.
    ``ptx_version`` caps the PTX ISA (for older drivers), never above what Triton's ptxas takes."""
    import triton
    from triton.backends.compiler import GPUTarget

    src = ast_source(fn, runtime_types, constexprs)
    options = {"num_warps": num_warps, "num_stages": num_stages, "enable_fp_fusion": True}
    if ptx_version is not None:
        default = triton_default_ptx(arch)
        options["ptx_version"] = int(ptx_version) if default is None else min(int(ptx_version), default)
    try:
        compiled = triton.compile(src, target=GPUTarget("cuda", arch, 32), options=options)
    except Exception as e:
        if os.environ.get("TRITON_INTERPRET", "0") == "1":
            raise RuntimeError(f"compiling {entry} failed with TRITON_INTERPRET=1 set (Triton's "
                               "interpreter replaces its library functions); unset it") from e
        raise
    md = compiled.metadata
    for attr in ("global_scratch_size", "profile_scratch_size"):
        if getattr(md, attr, 0):
            raise RuntimeError(f"{entry} needs Triton {attr}={getattr(md, attr)}; "
                               "TensorRT's AOT launch cannot provide it")
    ptx = strip_hidden_params(compiled.asm["ptx"], md.name, len(runtime_types))
    ptx = ptx.replace(md.name, entry)  # unique entry (and parameter) names per variant
    version = re.search(r"^\.version\s+(\S+)", ptx, re.M)
    return ptx, {
        "num_warps": md.num_warps,
        "block": (32 * md.num_warps, 1, 1),
        "shared_mem": int(md.shared),
        "arch": arch,
        "triton": triton.__version__,
        "ptx_version": version.group(1) if version else None,
    }


# ------------------------------------------------------------------------------ subprocess
# Test runs without a GPU import Triton with TRITON_INTERPRET=1, which makes its library
# uncompilable in that process; the compile functions then run in a clean one. A request is
# the function's "module:name" and its bound arguments (defaults applied), so a precompiled
# variant and a later direct call share one cache entry.
_SUBPROCESS_CACHE: dict = {}


def _request(fn, kwargs: dict) -> str:
    bound = inspect.signature(fn).bind(**kwargs)
    bound.apply_defaults()
    return json.dumps([f"{fn.__module__}:{fn.__qualname__}", dict(bound.arguments)], sort_keys=True)


def precompile(fn, requests) -> None:
    """Compile several variants (dicts of ``fn``'s keyword arguments) in one clean subprocess
    when Triton runs interpreted here; a no-op otherwise. Saves one process start per variant."""
    if not triton_is_interpreted():
        return
    keys = [k for k in dict.fromkeys(_request(fn, r) for r in requests) if k not in _SUBPROCESS_CACHE]
    if keys:
        _SUBPROCESS_CACHE.update(zip(keys, _run_subprocess(keys)))


def compile_in_subprocess(fn, **kwargs):
    """``fn(**kwargs)`` computed in a clean Python process (cached)."""
    key = _request(fn, kwargs)
    if key not in _SUBPROCESS_CACHE:
        _SUBPROCESS_CACHE[key] = _run_subprocess([key])[0]
    return _SUBPROCESS_CACHE[key]


def _run_subprocess(keys):
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    proc = subprocess.run([sys.executable, "-m", __name__, json.dumps(keys)], env=env,
                          capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"compiling a plugin kernel in a subprocess failed:\n{proc.stderr[-4000:]}")
    results = json.loads(proc.stdout.strip().splitlines()[-1])
    # JSON has no tuples: the launch dicts' sequences come back as tuples
    return [(ptx, name, {k: tuple(v) if isinstance(v, list) else v for k, v in launch.items()})
            for ptx, name, launch in results]


def _main(keys) -> list:
    import importlib

    results = []
    for key in keys:
        target, kwargs = json.loads(key)
        module, name = target.split(":")
        results.append(getattr(importlib.import_module(module), name)(**kwargs))
    return results


if __name__ == "__main__":  # used by _run_subprocess: a JSON list of requests
    import sys

    print(json.dumps(_main(json.loads(sys.argv[1]))))

"""TensorRT engines from the exported ONNX graphs, with the scan as an AOT plugin.

``build_engine(onnx_path, engine_path, graph=...)`` parses ``prefill.onnx`` / ``decode.onnx``
with TensorRT's ONNX parser, maps every custom scan node to the plugin of the same name
(Mamba-1's ``mamba_export::SelectiveScan``: :mod:`mamba_export.plugins.selective_scan`;
Mamba-2's ``mamba_export::SSDScan``: :mod:`mamba_export.plugins.ssd_scan`; both registered
first, the parser told to prefer a plugin over the node's ONNX function body), adds one
optimisation profile for the dynamic batch and length, and serialises the engine. The plugins'
implementations are ahead-of-time: their PTX (the project's Triton kernels) and launch
parameters are embedded in the engine, so running the engine needs neither Python nor Triton
nor a plugin library (``trtexec --loadEngine=prefill.engine`` or the C++ runtime).

Precision: ``"auto"`` (default) builds a strongly typed network, so every tensor keeps the
dtype of the ONNX graph (export the model in fp16/bf16 for a half-precision engine);
``"fp16"`` / ``"bf16"`` build a weakly typed network with that builder flag and let TensorRT
choose (the scan plugins offer fp32/fp16/bf16 activations, fp32 state).

``export_engines(artifacts_dir)`` builds both engines of an artifacts directory (which must
already hold the ONNX graphs) and records them in its manifest (format ``"tensorrt"``).

Everything here needs TensorRT >= 10.10 and raises
:class:`~mamba_export.plugins.selective_scan.TensorRTUnavailableError` without it.
"""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

from ..plugins import _ptx
from ..plugins import register_plugins
from ..plugins._ptx import TensorRTUnavailableError
from . import artifacts
from .graphs import INPUT_NAMES

DEFAULT_BATCH = (1, 1, 8)          # min, opt, max
DEFAULT_LENGTH = (1, 128, 2048)    # prefill tokens per call (longer prompts run in chunks)
PRECISIONS = ("auto", "fp16", "bf16")
# dynamic axis -> "batch" | "length", per graph input (graphs.INPUT_NAMES)
_DYNAMIC_AXES = {"input_ids": {0: "batch", 1: "length"}, "conv_state": {1: "batch"},
                 "ssm_state": {1: "batch"}}

__all__ = ["TensorRTBuildError", "TensorRTUnavailableError", "build_engine", "export_engines",
           "export_tensorrt", "require_tensorrt"]


class TensorRTBuildError(RuntimeError):
    """TensorRT could not parse or build a graph."""


def require_tensorrt():
    """The ``tensorrt`` module; :class:`TensorRTUnavailableError` (TensorRT >= 10.10 needed)."""
    return _ptx.import_tensorrt()


def _range(name: str, value) -> tuple[int, int, int]:
    lo, opt, hi = (int(v) for v in value)
    if not 1 <= lo <= opt <= hi:
        raise ValueError(f"{name} must be (min, opt, max) with 1 <= min <= opt <= max, got {value}")
    return lo, opt, hi


def _network_flags(trt, strongly_typed: bool) -> int:
    flags = 0
    ncf = trt.NetworkDefinitionCreationFlag
    if strongly_typed:
        flags |= 1 << int(ncf.STRONGLY_TYPED)
    if hasattr(ncf, "PREFER_AOT_PYTHON_PLUGINS"):
        flags |= 1 << int(ncf.PREFER_AOT_PYTHON_PLUGINS)
    return flags


def _plugin_layers(trt, network) -> list[str]:
    kinds = {getattr(trt.LayerType, k) for k in ("PLUGIN_V3", "PLUGIN_V2", "PLUGIN")
             if hasattr(trt.LayerType, k)}
    return [network.get_layer(i).name for i in range(network.num_layers)
            if network.get_layer(i).type in kinds]


def _profile_shapes(trt, tensor, batch, length):
    name = tensor.name
    dims = list(tensor.shape)
    axes = _DYNAMIC_AXES.get(name, {})
    shapes = []
    for k in range(3):
        shape = []
        for axis, d in enumerate(dims):
            if d >= 0:
                shape.append(d)
            elif axes.get(axis) == "batch":
                shape.append(batch[k])
            elif axes.get(axis) == "length":
                shape.append(length[k])
            else:
                raise TensorRTBuildError(f"input {name!r} has an unexpected dynamic axis {axis} "
                                         f"(shape {dims}); expected {INPUT_NAMES} as exported")
        shapes.append(tuple(shape))
    return shapes


def build_engine(onnx_path: str | os.PathLike, engine_path: str | os.PathLike, *, graph: str,
                 batch=DEFAULT_BATCH, length=DEFAULT_LENGTH, precision: str = "auto",
                 workspace_bytes: int | None = None, arch: int | None = None,
                 ptx_version: int | None = None, optimization_level: int | None = None,
                 verbose: bool = False, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Build and serialise a TensorRT engine from one exported ONNX graph; returns facts for the
    manifest (TensorRT version, profile, precision, plugin layers, build seconds, GPU target).

    ``batch`` / ``length`` are the profile's (min, opt, max); decode's length is always 1.
    ``arch`` / ``ptx_version`` choose the plugin's PTX target (default: this GPU and the newest
    PTX ISA its driver accepts)."""
    trt = require_tensorrt()
    if graph not in ("prefill", "decode"):
        raise ValueError(f"graph must be 'prefill' or 'decode', got {graph!r}")
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    batch = _range("batch", batch)
    length = (1, 1, 1) if graph == "decode" else _range("length", length)
    onnx_path, engine_path = Path(onnx_path), Path(engine_path)
    if not onnx_path.is_file():
        raise FileNotFoundError(f"no ONNX graph at {onnx_path}: export it first "
                                f"(`mamba-export export --formats onnx`)")
    plugin_ids = register_plugins()
    target = _ptx.set_build_target(arch, ptx_version)
    start = time.perf_counter()
    logger = trt.Logger(trt.Logger.VERBOSE if verbose else trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(_network_flags(trt, precision == "auto"))
    parser = trt.OnnxParser(network, logger)
    if hasattr(trt, "OnnxParserFlag") and hasattr(trt.OnnxParserFlag, "ENABLE_PLUGIN_OVERRIDE"):
        # newer parsers prefer a node's local ONNX function over a registered plugin unless told
        parser.set_flag(trt.OnnxParserFlag.ENABLE_PLUGIN_OVERRIDE)
    log(f"tensorrt {trt.__version__}: parsing {onnx_path.name} ({graph})")
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise TensorRTBuildError(f"TensorRT's ONNX parser rejected {onnx_path}: {errors}")
    plugins = _plugin_layers(trt, network)
    if graph == "prefill" and not plugins:
        raise TensorRTBuildError(
            f"{onnx_path.name}: no plugin layer in the parsed network: its scan nodes (one of "
            f"{', '.join(plugin_ids)}) were imported from their ONNX function body instead of "
            "the plugin (this TensorRT's parser does not let a plugin override a local function)")
    profile = builder.create_optimization_profile()
    profile_info = {}
    for i in range(network.num_inputs):
        tensor = network.get_input(i)
        lo, opt, hi = _profile_shapes(trt, tensor, batch, length)
        profile.set_shape(tensor.name, lo, opt, hi)
        profile_info[tensor.name] = {"min": list(lo), "opt": list(opt), "max": list(hi)}
    config = builder.create_builder_config()
    config.add_optimization_profile(profile)
    if precision == "fp16":
        config.set_flag(trt.BuilderFlag.FP16)
    elif precision == "bf16":
        config.set_flag(trt.BuilderFlag.BF16)
    if workspace_bytes:
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_bytes))
    if optimization_level is not None:
        config.builder_optimization_level = int(optimization_level)
    log(f"building {engine_path.name}: batch {batch}, length {length}, precision {precision}, "
        f"{len(plugins)} plugin layer(s), plugin PTX for sm_{target['arch']} "
        f"(PTX ISA cap {target['ptx_version']})")
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise TensorRTBuildError(f"TensorRT failed to build {engine_path.name} (see its log above)")
    engine_path.parent.mkdir(parents=True, exist_ok=True)
    with open(engine_path, "wb") as f:
        f.write(bytes(serialized))
    return {
        "tensorrt": trt.__version__,
        "precision": precision,
        "profile": profile_info,
        "batch": list(batch),
        "length": list(length),
        "plugins": list(plugin_ids),
        "plugin_layers": len(plugins),
        "plugin_target": {"arch": target["arch"], "ptx_version": target["ptx_version"]},
        "build_seconds": round(time.perf_counter() - start, 1),
    }


def export_engines(directory: str | os.PathLike, *, graphs=("prefill", "decode"),
                   log: Callable[[str], None] = print, **build_kwargs) -> dict:
    """Build ``prefill.engine`` / ``decode.engine`` from the ONNX graphs of an artifacts
    directory and record them in its manifest; returns the manifest."""
    require_tensorrt()
    directory = Path(directory)
    manifest = artifacts.read_manifest(directory)
    onnx_files = artifacts.files_of(manifest, "onnx")
    for graph in graphs:
        if graph not in onnx_files:
            raise artifacts.ArtifactsError(
                f"{directory} has no ONNX {graph} graph to build an engine from: export with "
                f"`mamba-export export --formats onnx,tensorrt --out {directory}`")
        name = artifacts.FILES[(graph, "tensorrt")]
        info = build_engine(directory / onnx_files[graph], directory / name, graph=graph, log=log,
                            **build_kwargs)
        artifacts.add_file(manifest, directory, name, graph, "tensorrt", **info)
        artifacts.write_manifest(manifest, directory)
    return manifest


def export_tensorrt(model, graph: str, path: str | os.PathLike, *,
                    onnx_path: str | os.PathLike | None = None, **build_kwargs) -> dict:
    """One engine for ``exporter``: from ``onnx_path`` when given (and present), else from a
    temporary ONNX export of ``model``."""
    require_tensorrt()
    if onnx_path is not None and Path(onnx_path).is_file():
        return build_engine(onnx_path, path, graph=graph, **build_kwargs)
    from .onnx import export_onnx

    with tempfile.TemporaryDirectory() as tmp:
        tmp_onnx = Path(tmp) / f"{graph}.onnx"
        export_onnx(model, graph, tmp_onnx)
        return build_engine(tmp_onnx, path, graph=graph, **build_kwargs)

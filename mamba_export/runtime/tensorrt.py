"""Serve the TensorRT engines of an artifacts directory.

``TensorRTRunner.from_artifacts(dir)`` deserialises ``prefill.engine`` and ``decode.engine``
(built by :mod:`mamba_export.export.tensorrt`) and exposes the runtime protocol shared by every
runner: ``new_state(batch)``, ``prefill(ids, state)``, ``step(ids, state)``, ``config`` and
``generate`` (:class:`mamba_export.generate.GenerationMixin`; ``cuda_graph=True`` captures the
decode step once and replays it).

Tensors in and out are torch CUDA tensors bound to the execution contexts by address: the state
never leaves the GPU and the engines run on torch's current stream. Outputs go into the runner's
ping-pong buffers (:mod:`mamba_export.runtime.base`). Prompts longer than the prefill engine's
profile (or ``prefill_chunk_size``) run in chunks, which gives the same result.

The scan inside the engines is an AOT plugin (SelectiveScan or SSDScan): its PTX is part of the
engine, so this runner needs TensorRT's Python bindings but not ``tensorrt.plugin`` nor Triton
(the plugins are registered only as a fallback if an engine does not deserialise without them).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from ..config import MambaConfig
from ..export.artifacts import ArtifactsError, files_of, read_manifest
from ..generate import _check_chunk
from ..model import MambaState
from ..plugins import register_plugins
from ..plugins import selective_scan as plugin
from ..plugins.selective_scan import TensorRTUnavailableError
from .base import GraphRunner

__all__ = ["TensorRTRunner", "TensorRTUnavailableError"]

_INPUTS = ("input_ids", "conv_state", "ssm_state")
_OUTPUTS = ("logits", "conv_state_out", "ssm_state_out")


def _torch_dtype(trt, dtype) -> torch.dtype:
    table = {trt.float32: torch.float32, trt.float16: torch.float16, trt.bfloat16: torch.bfloat16,
             trt.int64: torch.int64, trt.int32: torch.int32}
    if dtype not in table:
        raise ArtifactsError(f"engine tensor dtype {dtype} is not supported by the runner")
    return table[dtype]


class TensorRTRunner(GraphRunner):
    """Prefill and decode through TensorRT engines; same interface as the other runners."""

    def __init__(self, prefill_engine: str | os.PathLike, decode_engine: str | os.PathLike,
                 manifest: dict[str, Any], *, device_id: int = 0,
                 prefill_chunk_size: int | None = None, verbose: bool = False):
        trt = plugin.import_tensorrt()
        _check_chunk(prefill_chunk_size)
        if not torch.cuda.is_available():
            raise RuntimeError("the TensorRT runner needs a CUDA GPU visible to torch")
        self.trt = trt
        self.manifest = manifest
        self.config = MambaConfig.from_dict(manifest["config"])
        self.dtype = getattr(torch, manifest["dtype"])
        self.state_dtype = getattr(torch, manifest["state_dtype"])
        self.device = torch.device("cuda", device_id)
        self.prefill_chunk_size = prefill_chunk_size or None
        torch.cuda.set_device(self.device)
        torch.zeros(1, device=self.device)  # a current CUDA context before TensorRT runs
        self._logger = trt.Logger(trt.Logger.VERBOSE if verbose else trt.Logger.WARNING)
        self._runtime = trt.Runtime(self._logger)
        self.engines, self.contexts = {}, {}
        for graph, path in (("prefill", prefill_engine), ("decode", decode_engine)):
            self.engines[graph] = self._load(graph, Path(path))
            ctx = self.engines[graph].create_execution_context()
            if ctx is None:
                raise RuntimeError(f"TensorRT could not create an execution context for {graph}")
            self.contexts[graph] = ctx
        self._check_io()
        lo, _, hi = self.engines["prefill"].get_tensor_profile_shape("input_ids", 0)
        self.max_length = int(hi[1])
        self.max_batch = min(int(self.engines[g].get_tensor_profile_shape("input_ids", 0)[2][0])
                             for g in ("prefill", "decode"))
        self.ids_dtype = _torch_dtype(trt, self.engines["prefill"].get_tensor_dtype("input_ids"))
        self.logits_dtype = _torch_dtype(trt, self.engines["decode"].get_tensor_dtype("logits"))
        self._init_buffers()

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_artifacts(cls, directory: str | os.PathLike, **kwargs) -> "TensorRTRunner":
        plugin.import_tensorrt()  # the TensorRT error first, whatever the directory holds
        directory = Path(directory)
        manifest = read_manifest(directory)
        files = files_of(manifest, "tensorrt")
        missing = [g for g in ("prefill", "decode") if g not in files]
        if missing:
            raise ArtifactsError(
                f"{directory}: the manifest lists no TensorRT engine for {', '.join(missing)}; "
                f"build them with `mamba-export export --formats onnx,tensorrt --out {directory}` "
                "(or mamba_export.export.tensorrt.export_engines) on a machine with TensorRT")
        return cls(directory / files["prefill"], directory / files["decode"], manifest, **kwargs)

    def _load(self, graph: str, path: Path):
        if not path.is_file():
            raise ArtifactsError(f"missing TensorRT engine for the {graph} graph: {path}")
        data = path.read_bytes()
        engine = self._runtime.deserialize_cuda_engine(data)
        if engine is None:  # e.g. an engine built with a JIT plugin: register and retry
            try:
                register_plugins()
            except TensorRTUnavailableError:
                pass
            engine = self._runtime.deserialize_cuda_engine(data)
        if engine is None:
            raise ArtifactsError(
                f"TensorRT {self.trt.__version__} could not deserialise {path} (built by another "
                "TensorRT version or for another GPU?); rebuild it on this machine")
        return engine

    def _check_io(self) -> None:
        for graph, engine in self.engines.items():
            names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
            if sorted(names) != sorted(_INPUTS + _OUTPUTS):
                raise ArtifactsError(f"{graph} engine has tensors {names}, expected "
                                     f"{list(_INPUTS + _OUTPUTS)}; rebuild it from the artifacts")
            want = {"conv_state": self.dtype, "ssm_state": self.state_dtype,
                    "conv_state_out": self.dtype, "ssm_state_out": self.state_dtype}
            for name, dtype in want.items():
                have = _torch_dtype(self.trt, engine.get_tensor_dtype(name))
                if have != dtype:
                    raise ArtifactsError(f"{graph} engine's {name} is {have} but the manifest "
                                         f"declares {dtype}; rebuild the engines")

    # ------------------------------------------------------------------ limits
    def _check_batch(self, batch: int) -> None:
        if batch > self.max_batch:
            raise ValueError(f"batch {batch} exceeds the engines' profile (max {self.max_batch}); "
                             "rebuild them with a larger batch range")

    def _prefill_chunk(self, length: int) -> int:
        return min(self.prefill_chunk_size or self.max_length, self.max_length)

    # ------------------------------------------------------------------ run
    def _run(self, graph: str, ids: Tensor, state: MambaState) -> tuple[Tensor, MambaState]:
        ctx = self.contexts[graph]
        logits, conv_out, ssm_out = self._out_buffers(ids.shape[0], state)
        for name, t in (("input_ids", ids), ("conv_state", state.conv), ("ssm_state", state.ssm)):
            if tuple(ctx.get_tensor_shape(name)) != tuple(t.shape):
                ctx.set_input_shape(name, tuple(t.shape))
            ctx.set_tensor_address(name, t.data_ptr())
        for name, t in (("logits", logits), ("conv_state_out", conv_out), ("ssm_state_out", ssm_out)):
            ctx.set_tensor_address(name, t.data_ptr())
        stream = torch.cuda.current_stream(self.device).cuda_stream
        if not ctx.execute_async_v3(stream):
            raise RuntimeError(f"TensorRT failed to run the {graph} engine")
        return logits, MambaState(conv_out, ssm_out)

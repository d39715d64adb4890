"""Serve the exported ONNX graphs with ONNX Runtime.

``OrtRunner.from_artifacts(dir, provider="cpu"|"cuda")`` opens ``prefill.onnx`` and ``decode.onnx``
listed in the directory's manifest and exposes the runtime protocol of
:mod:`mamba_export.generate`: ``new_state``, ``prefill``, ``step`` (and ``generate``).

Tensors in and out are torch tensors. Both providers run through ONNX Runtime IO binding on the
tensors' memory (no numpy copies): inputs are bound in place, outputs are written into the
runner's ping-pong buffers (:mod:`mamba_export.runtime.base`; ``reuse_buffers=False`` allocates
fresh ones per call). On CUDA the state never leaves the GPU and ONNX Runtime runs on torch's
current stream.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from ..config import MambaConfig
from ..export.artifacts import ArtifactsError, files_of, read_manifest
from ..generate import _check_chunk
from ..model import MambaState
from .base import GraphRunner

_TORCH_TO_NP = {torch.float32: np.float32, torch.float16: np.float16, torch.float64: np.float64,
                torch.int64: np.int64, torch.int32: np.int32}
_ORT_TYPES = {"tensor(float)": "float32", "tensor(float16)": "float16", "tensor(double)": "float64",
              "tensor(int64)": "int64", "tensor(bfloat16)": "bfloat16"}
_PROVIDERS = {"cpu": "CPUExecutionProvider", "cuda": "CUDAExecutionProvider"}


def _torch_dtype(name: str) -> torch.dtype:
    return getattr(torch, name)


class OrtRunner(GraphRunner):
    """ONNX Runtime runner of the prefill and decode graphs of one artifacts directory."""

    def __init__(self, prefill_path: str | os.PathLike, decode_path: str | os.PathLike,
                 manifest: dict[str, Any], *, provider: str = "cpu", threads: int | None = None,
                 prefill_chunk_size: int | None = None, reuse_buffers: bool = True,
                 device_id: int = 0):
        import onnxruntime as ort

        if provider not in _PROVIDERS:
            raise ValueError(f"provider must be one of {sorted(_PROVIDERS)}, got {provider!r}")
        _check_chunk(prefill_chunk_size)
        if threads is not None and (not isinstance(threads, int) or threads < 1):
            raise ValueError(f"threads must be None or a positive int, got {threads!r}")
        self.manifest = manifest
        self.config = MambaConfig.from_dict(manifest["config"])
        self.provider = provider
        self.prefill_chunk_size = prefill_chunk_size or None
        self.reuse_buffers = reuse_buffers
        self.dtype = _torch_dtype(manifest["dtype"])
        self.state_dtype = _torch_dtype(manifest["state_dtype"])
        if provider == "cuda":
            if not torch.cuda.is_available():
                raise RuntimeError("provider='cuda' needs a CUDA GPU visible to torch")
            if "CUDAExecutionProvider" not in ort.get_available_providers():
                raise RuntimeError("provider='cuda' needs onnxruntime-gpu (CUDAExecutionProvider is not "
                                   f"available; have {ort.get_available_providers()})")
            self.device = torch.device("cuda", device_id)
            self._device_type, self._device_id = "cuda", device_id
            stream = torch.cuda.current_stream(self.device).cuda_stream
            # use_tf32=0: fp32 matmuls in full fp32, as the eager model (TF32 costs ~1e-3 parity)
            providers = [("CUDAExecutionProvider", {"device_id": device_id, "use_tf32": "0",
                                                    "user_compute_stream": str(stream)}),
                         "CPUExecutionProvider"]
        else:
            self.device = torch.device("cpu")
            self._device_type, self._device_id = "cpu", 0
            providers = ["CPUExecutionProvider"]
        opts = ort.SessionOptions()
        if threads is not None:
            opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        self.sessions = {}
        for graph, path in (("prefill", prefill_path), ("decode", decode_path)):
            path = Path(path)
            if not path.is_file():
                raise ArtifactsError(f"missing ONNX file for the {graph} graph: {path}")
            sess = ort.InferenceSession(str(path), opts, providers=providers)
            self._check_signature(graph, sess, path)
            self.sessions[graph] = sess
        self._init_buffers()

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_artifacts(cls, directory: str | os.PathLike, provider: str = "cpu",
                       threads: int | None = None, **kwargs) -> "OrtRunner":
        directory = Path(directory)
        manifest = read_manifest(directory)
        files = files_of(manifest, "onnx")
        missing = [g for g in ("prefill", "decode") if g not in files]
        if missing:
            raise ArtifactsError(f"{directory}: the manifest lists no ONNX file for {', '.join(missing)}; "
                                 f"export with `mamba-export export --formats onnx --out {directory}`")
        return cls(directory / files["prefill"], directory / files["decode"], manifest,
                   provider=provider, threads=threads, **kwargs)

    def _check_signature(self, graph: str, sess, path: Path) -> None:
        want = self.manifest.get("graphs", {}).get(graph)
        if want is None:
            raise ArtifactsError(f"the manifest has no signature for the {graph} graph")
        for kind, have in (("inputs", sess.get_inputs()), ("outputs", sess.get_outputs())):
            spec = want[kind]
            if [h.name for h in have] != [s["name"] for s in spec]:
                raise ArtifactsError(
                    f"{path.name}: {kind} {[h.name for h in have]} do not match the manifest's "
                    f"{[s['name'] for s in spec]}; re-export the artifacts")
            for h, s in zip(have, spec):
                dtype = _ORT_TYPES.get(h.type, h.type)
                static_ok = len(h.shape) == len(s["shape"]) and all(
                    not isinstance(w, int) or g == w for g, w in zip(h.shape, s["shape"]))
                if dtype != s["dtype"] or not static_ok:
                    raise ArtifactsError(
                        f"{path.name}: {kind[:-1]} {h.name!r} is {dtype} {h.shape} but the manifest "
                        f"declares {s['dtype']} {s['shape']}; re-export the artifacts")

    # ------------------------------------------------------------------ run
    def _bind(self, io, name: str, t: Tensor, output: bool = False) -> None:
        if t.dtype not in _TORCH_TO_NP:
            raise TypeError(f"{name}: dtype {t.dtype} cannot be bound to ONNX Runtime")
        fn = io.bind_output if output else io.bind_input
        fn(name, device_type=self._device_type, device_id=self._device_id,
           element_type=_TORCH_TO_NP[t.dtype], shape=tuple(t.shape), buffer_ptr=t.data_ptr())

    def _run(self, graph: str, ids: Tensor, state: MambaState) -> tuple[Tensor, MambaState]:
        sess = self.sessions[graph]
        batch = ids.shape[0]
        logits, conv_out, ssm_out = self._out_buffers(batch, state)
        io = sess.io_binding()
        self._bind(io, "input_ids", ids)
        self._bind(io, "conv_state", state.conv)
        self._bind(io, "ssm_state", state.ssm)
        self._bind(io, "logits", logits, output=True)
        self._bind(io, "conv_state_out", conv_out, output=True)
        self._bind(io, "ssm_state_out", ssm_out, output=True)
        sess.run_with_iobinding(io)
        return logits, MambaState(conv_out, ssm_out)

    def generate(self, input_ids: Tensor, max_new_tokens: int = 32, **sampling) -> Tensor:
        """As :meth:`mamba_export.MambaLM.generate` (same options), through ONNX Runtime."""
        if sampling.get("cuda_graph"):
            raise ValueError("cuda_graph=True is for the torch runtimes; ONNX Runtime keeps its own state")
        return super().generate(input_ids, max_new_tokens=max_new_tokens, **sampling)

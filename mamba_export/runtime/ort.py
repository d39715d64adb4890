"""Serve the exported ONNX graphs with ONNX Runtime.

``OrtRunner.from_artifacts(dir, provider="cpu"|"cuda")`` opens ``prefill.onnx`` and ``decode.onnx``
listed in the directory's manifest and exposes the runtime protocol of
:mod:`mamba_export.generate`: ``new_state``, ``prefill``, ``step`` (and ``generate``).

Tensors in and out are torch tensors. Both providers run through ONNX Runtime IO binding on the
tensors' memory (no numpy copies): inputs are bound in place, outputs are written into
runner-owned buffers. With ``reuse_buffers=True`` (the default) the logits and state returned by
a call live in one of two ping-pong buffer sets, so they stay valid until the second-next call of
the same batch size (the buffer set a call writes is never the one it reads); clone them to keep
them longer. On CUDA the state never leaves the GPU and ONNX Runtime runs on torch's current
stream.
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
from ..generate import generate as _generate
from ..model import MambaState

_TORCH_TO_NP = {torch.float32: np.float32, torch.float16: np.float16, torch.float64: np.float64,
                torch.int64: np.int64, torch.int32: np.int32}
_ORT_TYPES = {"tensor(float)": "float32", "tensor(float16)": "float16", "tensor(double)": "float64",
              "tensor(int64)": "int64", "tensor(bfloat16)": "bfloat16"}
_PROVIDERS = {"cpu": "CPUExecutionProvider", "cuda": "CUDAExecutionProvider"}


def _torch_dtype(name: str) -> torch.dtype:
    return getattr(torch, name)


class OrtRunner:
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
        self._buffers: dict[int, list] = {}
        self._slot: dict[int, int] = {}

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

    # ------------------------------------------------------------------ state
    def _state_shapes(self, batch: int) -> tuple[tuple[int, ...], tuple[int, ...]]:
        cfg = self.config
        return cfg.state_shapes(batch)

    def new_state(self, batch_size: int) -> MambaState:
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
        conv, ssm = self._state_shapes(batch_size)
        return MambaState(torch.zeros(conv, dtype=self.dtype, device=self.device),
                          torch.zeros(ssm, dtype=self.state_dtype, device=self.device))

    def _out_buffers(self, batch: int, state: MambaState) -> tuple[Tensor, Tensor, Tensor]:
        conv, ssm = self._state_shapes(batch)
        vocab = self.config.padded_vocab_size

        def alloc():
            return (torch.empty(batch, vocab, dtype=self.dtype, device=self.device),
                    torch.empty(conv, dtype=self.dtype, device=self.device),
                    torch.empty(ssm, dtype=self.state_dtype, device=self.device))

        if not self.reuse_buffers:
            return alloc()
        sets = self._buffers.setdefault(batch, [alloc(), alloc()])
        slot = self._slot.get(batch, 0)
        if any(state.conv.data_ptr() == s[1].data_ptr() or state.ssm.data_ptr() == s[2].data_ptr()
               for s in (sets[slot],)):
            slot ^= 1  # never write the buffers being read
        self._slot[batch] = slot ^ 1
        return sets[slot]

    # ------------------------------------------------------------------ checks
    def _check_ids(self, ids: Any, rank: int, what: str) -> Tensor:
        shape = "[batch, length]" if rank == 2 else "[batch]"
        if not isinstance(ids, Tensor):
            raise TypeError(f"{what} must be a torch.Tensor {shape} of int64 token ids, got {type(ids).__name__}")
        if ids.dtype not in (torch.int64, torch.int32):
            raise TypeError(f"{what} must be int64 token ids {shape} (the graphs' input_ids is int64), "
                            f"got {ids.dtype}")
        if ids.dim() != rank or ids.shape[0] < 1 or (rank == 2 and ids.shape[1] < 1):
            raise ValueError(f"{what} must be {shape} with batch >= 1{' and length >= 1' if rank == 2 else ''}, "
                             f"got shape {list(ids.shape)}")
        return ids.to(device=self.device, dtype=torch.int64).contiguous()

    def _check_state(self, state: Any, batch: int) -> MambaState:
        if not (isinstance(state, tuple) and len(state) == 2):
            raise TypeError("state must be a MambaState(conv, ssm) as returned by new_state()")
        conv, ssm = state
        for name, t, shape, dtype in (("conv_state", conv, self._state_shapes(batch)[0], self.dtype),
                                      ("ssm_state", ssm, self._state_shapes(batch)[1], self.state_dtype)):
            if not isinstance(t, Tensor):
                raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
            if tuple(t.shape) != shape:
                raise ValueError(f"{name} must have shape {list(shape)} (manifest: "
                                 f"[n_layer, batch, ...] with batch={batch}), got {list(t.shape)}")
            if t.dtype != dtype:
                raise TypeError(f"{name} must be {dtype} (manifest), got {t.dtype}")
            if t.device != self.device:
                raise ValueError(f"{name} must be on {self.device} for provider {self.provider!r}, got {t.device}")
        return MambaState(conv.contiguous(), ssm.contiguous())

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

    @torch.no_grad()
    def prefill(self, input_ids: Tensor, state: MambaState) -> tuple[Tensor, MambaState]:
        """Consume ``input_ids [B, L]`` from ``state``; logits of the last position ``[B, V]``.
        Prompts longer than ``prefill_chunk_size`` run in chunks (same result)."""
        ids = self._check_ids(input_ids, 2, "input_ids")
        state = self._check_state(state, ids.shape[0])
        chunk = self.prefill_chunk_size or ids.shape[1]
        for start in range(0, ids.shape[1], chunk):
            logits, state = self._run("prefill", ids[:, start:start + chunk].contiguous(), state)
        return logits, state

    @torch.no_grad()
    def step(self, token_ids: Tensor, state: MambaState) -> tuple[Tensor, MambaState]:
        """One decode step: ``token_ids [B]`` -> logits ``[B, V]`` and the next state."""
        ids = self._check_ids(token_ids, 1, "token_ids")
        state = self._check_state(state, ids.shape[0])
        return self._run("decode", ids.view(-1, 1), state)

    def generate(self, input_ids: Tensor, max_new_tokens: int = 32, **sampling) -> Tensor:
        """As :meth:`mamba_export.MambaLM.generate` (same options), through ONNX Runtime."""
        if sampling.get("cuda_graph"):
            raise ValueError("cuda_graph=True is for the torch runtimes; ONNX Runtime keeps its own state")
        sampling.setdefault("vocab_size", self.config.vocab_size)
        sampling.setdefault("prefill_chunk_size", self.prefill_chunk_size)
        ids = self._check_ids(input_ids, 2, "input_ids")
        return _generate(self.prefill, self.step, self.new_state, ids,
                         max_new_tokens=max_new_tokens, **sampling)

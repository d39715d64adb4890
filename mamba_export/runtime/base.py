"""What the graph runtimes (ONNX Runtime, TensorRT) share: state allocation and checks, the
ping-pong output buffers, and prefill (in chunks) / step over a backend's ``_run``.

Outputs are written into runner-owned buffers. With ``reuse_buffers`` (the default) the logits
and state a call returns live in one of two buffer sets per batch size, and a call never writes
the set it reads: they stay valid until the second-next call of that batch size; clone them to
keep them longer.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from ..generate import GenerationMixin
from ..model import MambaState


class GraphRunner(GenerationMixin):
    """Subclasses set ``config``, ``dtype``, ``state_dtype``, ``device``, ``prefill_chunk_size``
    and implement ``_run(graph, ids, state) -> (logits, state)`` writing into
    ``_out_buffers(batch, state)``."""

    reuse_buffers = True
    ids_dtype = torch.int64  # the graphs' input_ids dtype
    logits_dtype: torch.dtype | None = None  # default: the model dtype

    def _init_buffers(self) -> None:
        self._buffers: dict[int, list] = {}
        self._slot: dict[int, int] = {}

    # ------------------------------------------------------------------ hooks
    def _check_batch(self, batch: int) -> None:
        """Raise if the backend cannot run ``batch`` sequences (e.g. an engine's profile)."""

    def _prefill_chunk(self, length: int) -> int:
        return self.prefill_chunk_size or length

    def _run(self, graph: str, ids: Tensor, state: MambaState) -> tuple[Tensor, MambaState]:
        raise NotImplementedError

    # ------------------------------------------------------------------ state
    def new_state(self, batch_size: int) -> MambaState:
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
        self._check_batch(batch_size)
        conv, ssm = self.config.state_shapes(batch_size)
        return MambaState(torch.zeros(conv, dtype=self.dtype, device=self.device),
                          torch.zeros(ssm, dtype=self.state_dtype, device=self.device))

    def _out_buffers(self, batch: int, state: MambaState) -> tuple[Tensor, Tensor, Tensor]:
        conv, ssm = self.config.state_shapes(batch)
        vocab = self.config.padded_vocab_size

        def alloc():
            return (torch.empty(batch, vocab, dtype=self.logits_dtype or self.dtype, device=self.device),
                    torch.empty(conv, dtype=self.dtype, device=self.device),
                    torch.empty(ssm, dtype=self.state_dtype, device=self.device))

        if not self.reuse_buffers:
            return alloc()
        sets = self._buffers.setdefault(batch, [alloc(), alloc()])
        slot = self._slot.get(batch, 0)
        if (state.conv.data_ptr() == sets[slot][1].data_ptr()
                or state.ssm.data_ptr() == sets[slot][2].data_ptr()):
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
        self._check_batch(ids.shape[0])
        return ids.to(device=self.device, dtype=self.ids_dtype).contiguous()

    def _check_state(self, state: Any, batch: int) -> MambaState:
        if not (isinstance(state, tuple) and len(state) == 2):
            raise TypeError("state must be a MambaState(conv, ssm) as returned by new_state()")
        conv_shape, ssm_shape = self.config.state_shapes(batch)
        for name, t, shape, dtype in (("conv_state", state[0], conv_shape, self.dtype),
                                      ("ssm_state", state[1], ssm_shape, self.state_dtype)):
            if not isinstance(t, Tensor):
                raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
            if tuple(t.shape) != shape:
                raise ValueError(f"{name} must have shape {list(shape)} (manifest: "
                                 f"[n_layer, batch, ...] with batch={batch}), got {list(t.shape)}")
            if t.dtype != dtype:
                raise TypeError(f"{name} must be {dtype} (manifest), got {t.dtype}")
            if t.device != self.device:
                raise ValueError(f"{name} must be on {self.device}, got {t.device}")
        return MambaState(state[0].contiguous(), state[1].contiguous())

    # ------------------------------------------------------------------ run
    @torch.no_grad()
    def prefill(self, input_ids: Tensor, state: MambaState) -> tuple[Tensor, MambaState]:
        """Consume ``input_ids [B, L]`` from ``state``; logits of the last position ``[B, V]``.
        Prompts longer than the chunk size run in chunks (same result)."""
        ids = self._check_ids(input_ids, 2, "input_ids")
        state = self._check_state(state, ids.shape[0])
        chunk = self._prefill_chunk(ids.shape[1])
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
        """As :meth:`mamba_export.MambaLM.generate` (same options)."""
        sampling.setdefault("prefill_chunk_size", self.prefill_chunk_size)
        ids = self._check_ids(input_ids, 2, "input_ids").to(torch.int64)
        return super().generate(ids, max_new_tokens=max_new_tokens, **sampling)

"""``torch.compile`` of a model's three entry points with batch and length dynamic from the start.

Plain ``torch.compile(model)`` also works (one graph, no breaks) but compiles a second time
when a size first changes, and ``dynamic=True`` makes every size symbolic, so a batch equal to
``n_layer`` or ``d_state`` shares their symbol (duck sizing) and is specialised with them. Here
only the batch and length dims are marked dynamic and duck sizing is off while tracing, so one
compilation per entry point serves every batch size and length >= 2. Size 1 gets one graph of
its own (aten's matmul decomposition branches on it), as everywhere in PyTorch.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from .generate import GenerationMixin
from .model import MambaLM, MambaState


def _mark(t: Tensor, *dims: int) -> None:
    for d in dims:
        torch._dynamo.maybe_mark_dynamic(t, d)


class CompiledMamba(GenerationMixin):
    """Compiled ``forward``, ``prefill`` and ``step`` of a :class:`MambaLM` (weights shared)."""

    def __init__(self, model: MambaLM, mode: str | None = None, backend: Any = "inductor",
                 fullgraph: bool = True):
        self.model = model
        self.config = model.config
        opts = dict(mode=mode, backend=backend, fullgraph=fullgraph, dynamic=None)
        self._forward = torch.compile(model.forward, **opts)
        self._prefill = torch.compile(model.prefill, **opts)
        self._step = torch.compile(model.step, **opts)

    @staticmethod
    def _no_duck():
        return torch.fx.experimental._config.patch(use_duck_shape=False)

    def __call__(self, input_ids: Tensor) -> Tensor:
        return self.forward(input_ids)

    def forward(self, input_ids: Tensor) -> Tensor:
        _mark(input_ids, 0, 1)
        with self._no_duck():
            return self._forward(input_ids)

    def prefill(self, input_ids: Tensor, state: MambaState) -> tuple[Tensor, MambaState]:
        _mark(input_ids, 0, 1)
        _mark(state.conv, 1)
        _mark(state.ssm, 1)
        with self._no_duck():
            return self._prefill(input_ids, state)

    def step(self, token_ids: Tensor, state: MambaState) -> tuple[Tensor, MambaState]:
        _mark(token_ids, 0)
        _mark(state.conv, 1)
        _mark(state.ssm, 1)
        with self._no_duck():
            return self._step(token_ids, state)

    def parameters(self):
        """The model's parameters (the CUDA-graph cache is keyed on their storage)."""
        return self.model.parameters()

    def graph_step(self):
        """``generate(cuda_graph=True)`` captures the eager model's in-place kernel step: on the
        H100 it replays faster than Inductor's code for the step captured the same way
        (mamba-130m 0.574 vs 0.810 ms/token, docs/BENCHMARKS.md); prefill stays compiled."""
        return self.model.graph_step()

    def new_state(self, batch_size: int) -> MambaState:
        return self.model.new_state(batch_size)


def compile_model(model: MambaLM, mode: str | None = None, **kwargs) -> CompiledMamba:
    """Compile a model's forward/prefill/step once each for all batch sizes and lengths."""
    return CompiledMamba(model, mode=mode, **kwargs)

"""The two graphs every export form is built from, as plain modules with tensor-only signatures.

prefill(input_ids [B, L], conv_state, ssm_state) -> (logits [B, V], conv_state', ssm_state')
decode(input_ids [B, 1], conv_state, ssm_state)  -> (logits [B, V], conv_state', ssm_state')
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ..model import MambaLM, MambaState

GRAPHS = ("prefill", "decode")
INPUT_NAMES = ("input_ids", "conv_state", "ssm_state")
OUTPUT_NAMES = ("logits", "conv_state_out", "ssm_state_out")


class PrefillGraph(nn.Module):
    def __init__(self, model: MambaLM):
        super().__init__()
        self.model = model

    def forward(self, input_ids: Tensor, conv_state: Tensor, ssm_state: Tensor):
        logits, state = self.model.prefill(input_ids, MambaState(conv_state, ssm_state))
        return logits, state.conv, state.ssm


class DecodeGraph(nn.Module):
    def __init__(self, model: MambaLM):
        super().__init__()
        self.model = model

    def forward(self, input_ids: Tensor, conv_state: Tensor, ssm_state: Tensor):
        if input_ids.dim() != 2 or input_ids.shape[1] != 1:
            raise ValueError(f"decode takes input_ids [batch, 1], got {list(input_ids.shape)}")
        logits, state = self.model.step(input_ids[:, 0], MambaState(conv_state, ssm_state))
        return logits, state.conv, state.ssm


def graph_module(model: MambaLM, graph: str) -> nn.Module:
    if graph not in GRAPHS:
        raise ValueError(f"graph must be one of {GRAPHS}, got {graph!r}")
    return PrefillGraph(model) if graph == "prefill" else DecodeGraph(model)


def example_inputs(model: MambaLM, graph: str, batch: int = 2, length: int = 8) -> tuple[Tensor, ...]:
    """Example inputs for tracing. Sizes are >= 2 so that tracing does not specialise them."""
    length = 1 if graph == "decode" else length
    ids = torch.randint(0, model.config.vocab_size, (batch, length), device=model.device)
    state = model.new_state(batch)
    return ids, state.conv, state.ssm

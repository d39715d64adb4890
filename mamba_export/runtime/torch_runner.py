"""Runners over an artifacts directory's torch forms.

- ``TorchProgramRunner``: the ``torch.export`` programs (``prefill.pt2``/``decode.pt2``), run as
  ``ExportedProgram.module()``; with ``compiled=True`` those modules go through
  ``torch.compile`` (or the AOTInductor packages are used when the directory has them).
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import Tensor

from ..config import MambaConfig
from ..export import artifacts
from ..generate import GenerationMixin
from ..model import MambaState


class TorchProgramRunner(GenerationMixin):
    """prefill/step/new_state over exported programs; same interface as the eager model."""

    def __init__(self, directory: str | os.PathLike, compiled: bool = False, device=None):
        from ..export.programs import load_aot, load_program

        self.directory = Path(directory)
        manifest = artifacts.read_manifest(self.directory)
        self.manifest = manifest
        self.config = MambaConfig.from_dict(manifest["config"])
        self.dtype = getattr(torch, manifest["dtype"])
        self.state_dtype = getattr(torch, manifest["state_dtype"])
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        aoti = artifacts.files_of(manifest, "aoti")
        programs = artifacts.files_of(manifest, "torch")
        self.kind = "aoti" if compiled and len(aoti) == 2 else ("compile" if compiled else "torch")
        if self.kind == "aoti":
            self._prefill = load_aot(self.directory / aoti["prefill"])
            self._decode = load_aot(self.directory / aoti["decode"])
            return
        missing = [g for g in ("prefill", "decode") if g not in programs]
        if missing:
            raise artifacts.ArtifactsError(
                f"{self.directory} has no torch.export program for {', '.join(missing)}: "
                f"run `mamba-export export --formats torch --out {self.directory}`")
        self._prefill = load_program(self.directory / programs["prefill"]).module().to(self.device)
        self._decode = load_program(self.directory / programs["decode"]).module().to(self.device)
        if compiled:
            self._prefill = torch.compile(self._prefill, dynamic=True)
            self._decode = torch.compile(self._decode, dynamic=True)

    def new_state(self, batch_size: int) -> MambaState:
        conv_shape, ssm_shape = self.config.state_shapes(batch_size)
        conv = torch.zeros(conv_shape, device=self.device, dtype=self.dtype)
        ssm = torch.zeros(ssm_shape, device=self.device, dtype=self.state_dtype)
        return MambaState(conv, ssm)

    def prefill(self, input_ids: Tensor, state: MambaState) -> tuple[Tensor, MambaState]:
        logits, conv, ssm = self._prefill(input_ids.to(self.device, torch.int64), *state)
        return logits, MambaState(conv, ssm)

    def step(self, token_ids: Tensor, state: MambaState) -> tuple[Tensor, MambaState]:
        logits, conv, ssm = self._decode(token_ids.to(self.device, torch.int64)[:, None], *state)
        return logits, MambaState(conv, ssm)

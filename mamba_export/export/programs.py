"""torch.export programs (.pt2) of the prefill and decode graphs, and AOTInductor packages.

The custom ops stay single nodes in the exported programs; AOTInductor lowers them (Triton
kernels on CUDA, compiled into the package; the registered reference op on CPU, which needs
``import mamba_export`` in the loading process).
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from torch.export import Dim, ExportedProgram

from ..model import MambaLM
from .graphs import example_inputs, graph_module

MAX_BATCH = 4096
MAX_LENGTH = 1 << 24


def dynamic_shapes(graph: str) -> dict:
    batch = Dim("batch", min=1, max=MAX_BATCH)
    ids = {0: batch} if graph == "decode" else {0: batch, 1: Dim("length", min=1, max=MAX_LENGTH)}
    return {"input_ids": ids, "conv_state": {1: batch}, "ssm_state": {1: batch}}


def export_program(model: MambaLM, graph: str) -> ExportedProgram:
    """``torch.export`` of ``graph`` ("prefill" or "decode") with dynamic batch (and length)."""
    module = graph_module(model, graph).eval()
    with torch.no_grad():
        return torch.export.export(module, example_inputs(model, graph),
                                   dynamic_shapes=dynamic_shapes(graph), strict=False)


def save_program(program: ExportedProgram, path: str | os.PathLike) -> Path:
    path = Path(path)
    torch.export.save(program, str(path))
    return path


def load_program(path: str | os.PathLike) -> ExportedProgram:
    from .. import ops  # noqa: F401  (the programs reference torch.ops.mamba_export.*)

    if not Path(path).is_file():
        raise FileNotFoundError(f"no exported program at {path}")
    return torch.export.load(str(path))


def aot_compile(program: ExportedProgram, path: str | os.PathLike) -> Path:
    """Compile an exported program with AOTInductor into a ``.pt2`` package."""
    from torch._inductor import aoti_compile_and_package

    return Path(aoti_compile_and_package(program, package_path=str(path)))


def load_aot(path: str | os.PathLike):
    """Load an AOTInductor package; returns a callable taking the graph's inputs."""
    from torch._inductor import aoti_load_package

    from .. import ops  # noqa: F401

    if not Path(path).is_file():
        raise FileNotFoundError(f"no AOTInductor package at {path}")
    return aoti_load_package(str(path))

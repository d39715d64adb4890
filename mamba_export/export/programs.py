"""torch.export programs (.pt2) of the prefill and decode graphs, and AOTInductor packages.

The custom ops stay single nodes in the exported programs; AOTInductor lowers them (Triton
kernels on CUDA, compiled into the package; the registered reference op on CPU, which needs
``import mamba_export`` in the loading process).
"""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
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
    """Load an AOTInductor package; returns a callable taking the graph's inputs.

    A CUDA package is first loaded once in a separate process: on the H100 machine's torch
    2.11.0+cu130 (2026-11-24) loading any CUDA package, a plain torch module's too, killed the
    process with a segmentation fault (scripts/aoti_cuda_probe.py). This turns that into an
    error that says so instead of a crash."""
    from torch._inductor import aoti_load_package

    from .. import ops  # noqa: F401

    if not Path(path).is_file():
        raise FileNotFoundError(f"no AOTInductor package at {path}")
    if _is_cuda_package(path):
        _probe_load(Path(path))
    return aoti_load_package(str(path))


def _is_cuda_package(path: str | os.PathLike) -> bool:
    """Whether the package holds compiled CUDA kernels (``.cubin`` files)."""
    try:
        with zipfile.ZipFile(path) as archive:
            return any(name.endswith(".cubin") for name in archive.namelist())
    except zipfile.BadZipFile:
        raise ValueError(f"{path} is not an AOTInductor package (not a zip archive); build one with "
                         f"`mamba-export export --formats aoti`") from None


_PROBED: set = set()
_PROBE = ("import sys, torch, mamba_export.ops; from torch._inductor import aoti_load_package; "
          "aoti_load_package(sys.argv[1])")


def _probe_load(path: Path) -> None:
    """Load the package in a child process (once per file version); raise if the child dies."""
    key = (str(path.resolve()), path.stat().st_mtime_ns)
    if key in _PROBED:
        return
    env = dict(os.environ)  # (the child imports this package as the parent does)
    root = str(Path(__file__).resolve().parents[2])
    env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)
    done = subprocess.run([sys.executable, "-X", "faulthandler", "-c", _PROBE, str(path)], env=env,
                          capture_output=True, text=True, timeout=600)
    if done.returncode != 0:
        how = (f"was killed by signal {-done.returncode}" if done.returncode < 0
               else f"exited with status {done.returncode}")
        lines = done.stderr.strip().splitlines()
        why = next((line for line in lines if "Fatal Python error" in line), lines[-1] if lines else "")
        raise RuntimeError(
            f"this torch ({torch.__version__}) could not load the CUDA AOTInductor package {path}: a "
            f"process loading it {how}{f' ({why.strip()})' if why else ''}. Use the torch (.pt2 "
            f"programs) or ONNX runtime, or build the AOTInductor package from a CPU model.")
    _PROBED.add(key)

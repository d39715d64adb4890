"""Write an artifacts directory: eager weights, the two graphs in each requested format, and
``manifest.json`` (see :mod:`mamba_export.export.artifacts`)."""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path
from typing import Callable

from ..model import MambaLM
from . import artifacts

FORMATS = ("torch", "aoti", "onnx", "tensorrt")


def _weights_format(model: MambaLM) -> str:
    """transformers' format where its config can express the model, else mamba_ssm's (Mamba-2
    knobs transformers lacks: rmsnorm=False, D per channel, d_ssm < d_inner, ...)."""
    from ..config import ConfigError

    try:
        model.config.to_hf()
    except ConfigError:
        return "mamba_ssm"
    return "transformers"


def _export_one(model: MambaLM, graph: str, fmt: str, path: Path) -> dict:
    if fmt == "torch":
        from .programs import export_program, save_program

        save_program(export_program(model, graph), path)
        return {}
    if fmt == "aoti":
        from .programs import aot_compile, export_program

        aot_compile(export_program(model, graph), path)
        return {}
    if fmt == "onnx":
        from .onnx import export_onnx

        return export_onnx(model, graph, path)
    if fmt == "tensorrt":
        from .tensorrt import export_tensorrt

        return export_tensorrt(model, graph, path, onnx_path=path.with_name(f"{graph}.onnx"))
    raise ValueError(f"unknown format {fmt!r}: expected one of {', '.join(FORMATS)}")


def export_artifacts(model: MambaLM, out: str | os.PathLike, formats=("torch", "onnx"),
                     log: Callable[[str], None] = print) -> dict:
    """Export ``model`` into ``out``; returns the manifest."""
    formats = list(dict.fromkeys(formats))
    unknown = [f for f in formats if f not in FORMATS]
    if unknown:
        raise ValueError(f"unknown formats {unknown}: expected some of {', '.join(FORMATS)}")
    if "tensorrt" in formats:  # fail before the long exports, not after them
        from .tensorrt import require_tensorrt

        require_tensorrt()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    model = model.eval()
    log(f"saving eager weights to {out / artifacts.MODEL_DIR}")
    if (out / artifacts.MODEL_DIR).exists():
        shutil.rmtree(out / artifacts.MODEL_DIR)
    model.save_pretrained(out / artifacts.MODEL_DIR, format=_weights_format(model))
    manifest = artifacts.new_manifest(model)
    if "tensorrt" in formats and "onnx" in formats:  # engines are built from the ONNX files
        formats = [f for f in formats if f != "tensorrt"] + ["tensorrt"]
    steps = [(g, f) for f in formats for g in ("prefill", "decode")]
    for i, (graph, fmt) in enumerate(steps, 1):
        name = artifacts.FILES[(graph, fmt)]
        start = time.perf_counter()
        log(f"[{i}/{len(steps)}] {fmt}: {graph} -> {name}")
        info = _export_one(model, graph, fmt, out / name)
        artifacts.add_file(manifest, out, name, graph, fmt, **(info or {}))
        log(f"[{i}/{len(steps)}] done in {time.perf_counter() - start:.1f} s")
        artifacts.write_manifest(manifest, out)  # a partial export still describes itself
    return manifest

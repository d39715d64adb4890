"""The artifacts directory and its ``manifest.json``.

Layout::

    DIR/manifest.json      config, dtypes, graph signatures, files, versions, parity figures
    DIR/model/             the eager weights (save_pretrained), the reference for `check`
    DIR/prefill.pt2 ...    one file per graph and format (see ``FILES``)

Every writer records its files through :func:`add_file`; every reader opens the directory with
:func:`read_manifest`, which checks that the files it lists exist and that the graphs' state
shapes agree with the config, so a stale or hand-edited directory fails with a clear message.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
from pathlib import Path
from typing import Any

import torch

from ..config import MambaConfig
from ..model import MambaLM

MANIFEST = "manifest.json"
FORMAT = "mamba_export-artifacts"
VERSION = 1
MODEL_DIR = "model"
# (graph, format) -> file name
FILES = {
    ("prefill", "torch"): "prefill.pt2", ("decode", "torch"): "decode.pt2",
    ("prefill", "aoti"): "prefill_aoti.pt2", ("decode", "aoti"): "decode_aoti.pt2",
    ("prefill", "onnx"): "prefill.onnx", ("decode", "onnx"): "decode.onnx",
    ("prefill", "tensorrt"): "prefill.engine", ("decode", "tensorrt"): "decode.engine",
}


class ArtifactsError(RuntimeError):
    """An artifacts directory is missing, incomplete or inconsistent with its manifest."""


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).replace("torch.", "")


def graph_signature(model: MambaLM, graph: str) -> dict[str, Any]:
    """Names, dtypes and shapes (symbolic names for dynamic dims) of a graph's inputs/outputs."""
    cfg = model.config
    conv, ssm = (list(shape) for shape in cfg.state_shapes("batch"))
    length = 1 if graph == "decode" else "length"
    dt, st = _dtype_name(model.dtype), _dtype_name(model.state_dtype)
    return {
        "inputs": [
            {"name": "input_ids", "dtype": "int64", "shape": ["batch", length]},
            {"name": "conv_state", "dtype": dt, "shape": conv},
            {"name": "ssm_state", "dtype": st, "shape": ssm},
        ],
        "outputs": [
            {"name": "logits", "dtype": "float32" if dt == "float32" else dt,
             "shape": ["batch", cfg.padded_vocab_size]},
            {"name": "conv_state_out", "dtype": dt, "shape": conv},
            {"name": "ssm_state_out", "dtype": st, "shape": ssm},
        ],
    }


def versions() -> dict[str, str]:
    from .. import __version__

    out = {"mamba_export": __version__, "torch": torch.__version__, "python": platform.python_version()}
    for name in ("onnx", "onnxruntime", "onnxscript", "triton", "tensorrt"):
        try:
            module = __import__(name)
            out[name] = getattr(module, "__version__", "unknown")
        except ImportError:
            pass
    return out


def new_manifest(model: MambaLM) -> dict[str, Any]:
    return {
        "format": FORMAT,
        "version": VERSION,
        "config": model.config.to_dict(),
        "dtype": _dtype_name(model.dtype),
        "state_dtype": _dtype_name(model.state_dtype),
        "graphs": {g: graph_signature(model, g) for g in ("prefill", "decode")},
        "files": {},
        "versions": versions(),
        "parity": {},
    }


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def add_file(manifest: dict, directory: Path, name: str, graph: str, fmt: str, **info: Any) -> None:
    path = directory / name
    manifest["files"][name] = {"graph": graph, "format": fmt, "bytes": path.stat().st_size, **info}


def write_manifest(manifest: dict, directory: str | os.PathLike) -> Path:
    path = Path(directory) / MANIFEST
    path.write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    return path


def read_manifest(directory: str | os.PathLike) -> dict[str, Any]:
    """Read and validate ``DIR/manifest.json``."""
    directory = Path(directory)
    path = directory / MANIFEST
    if not path.is_file():
        raise ArtifactsError(
            f"{directory} has no {MANIFEST}: create it with `mamba-export export --out {directory}`")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise ArtifactsError(f"{path} is not valid JSON: {e}") from None
    if manifest.get("format") != FORMAT or manifest.get("version") != VERSION:
        raise ArtifactsError(f"{path} is not a {FORMAT} v{VERSION} manifest")
    try:
        cfg = MambaConfig.from_dict(manifest["config"])
    except (KeyError, TypeError, ValueError) as e:
        raise ArtifactsError(f"{path}: bad 'config': {e}") from None
    for graph, sig in manifest.get("graphs", {}).items():
        shapes = {s["name"]: s["shape"] for s in sig["inputs"]}
        want = list(cfg.state_shapes("batch")[1])
        if shapes.get("ssm_state") != want:
            raise ArtifactsError(
                f"{path}: graph {graph!r} declares ssm_state {shapes.get('ssm_state')} but the config "
                f"implies {want}; re-export the artifacts")
    missing = [n for n in manifest.get("files", {}) if not (directory / n).is_file()]
    if missing:
        raise ArtifactsError(f"{directory} is missing files listed in {MANIFEST}: {', '.join(missing)}")
    return manifest


def files_of(manifest: dict, fmt: str) -> dict[str, str]:
    """graph -> file name for one format, e.g. {'prefill': 'prefill.onnx', ...}."""
    return {info["graph"]: name for name, info in manifest["files"].items() if info["format"] == fmt}


def load_reference_model(directory: str | os.PathLike, device=None) -> MambaLM:
    """The eager model saved beside the graphs (the reference for parity checks)."""
    model_dir = Path(directory) / MODEL_DIR
    if not model_dir.is_dir():
        raise ArtifactsError(f"{directory} has no {MODEL_DIR}/ (the eager weights); re-export")
    return MambaLM.from_pretrained(model_dir, device=device)

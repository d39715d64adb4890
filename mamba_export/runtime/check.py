"""Parity of every available runtime of an artifacts directory against the eager model."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable

import torch

from ..export import artifacts


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.detach().double().cpu(), b.detach().double().cpu()
    return ((a - b).norm() / b.norm().clamp_min(1e-30)).item()


def available_runtimes(directory: str | os.PathLike) -> list[str]:
    manifest = artifacts.read_manifest(directory)
    out = []
    if len(artifacts.files_of(manifest, "torch")) == 2:
        out += ["torch", "compile"]
    elif len(artifacts.files_of(manifest, "aoti")) == 2:
        out.append("compile")
    if len(artifacts.files_of(manifest, "onnx")) == 2:
        try:
            import onnxruntime  # noqa: F401

            out.append("ort")
        except ImportError:
            pass
    if len(artifacts.files_of(manifest, "tensorrt")) == 2:
        from ..plugins.selective_scan import TensorRTUnavailableError, import_tensorrt

        try:
            import_tensorrt()
            out.append("tensorrt")
        except TensorRTUnavailableError:
            pass
    return out


def open_runtime(directory: str | os.PathLike, runtime: str, device=None):
    """A runner (prefill/step/new_state/generate) for ``runtime`` over the artifacts."""
    if runtime in ("torch", "compile"):
        from .torch_runner import TorchProgramRunner

        return TorchProgramRunner(directory, compiled=runtime == "compile", device=device)
    if runtime == "ort":
        from .ort import OrtRunner

        provider = "cuda" if (device or "").startswith("cuda") else "cpu"
        return OrtRunner.from_artifacts(directory, provider=provider)
    if runtime == "tensorrt":
        from .tensorrt import TensorRTRunner

        return TensorRTRunner.from_artifacts(directory)
    if runtime == "eager":
        return artifacts.load_reference_model(directory, device=device)
    raise ValueError(f"unknown runtime {runtime!r}: expected eager, torch, compile, ort or tensorrt")


def compare_with_eager(runner, eager, ids: torch.Tensor, new_tokens: int = 16) -> dict:
    """Parity of ``runner`` with the ``eager`` model on prompt ``ids``: last-position prefill
    logits, one decode step (relative errors) and greedy generation (equality)."""
    batch = ids.shape[0]
    dev = getattr(runner, "device", torch.device("cpu"))
    with torch.no_grad():
        want_prefill, state = eager.prefill(ids.to(eager.device), eager.new_state(batch))
        want_step = eager.step(ids[:, -1].to(eager.device), state)[0]
        want_tokens = eager.generate(ids.to(eager.device), max_new_tokens=new_tokens, eos_token_id=None)
        # clone: a runner may hand out reused output buffers (ONNX Runtime's ping-pong IO)
        got_prefill, got_state = runner.prefill(ids.to(dev), runner.new_state(batch))
        got_prefill = got_prefill.clone()
        got_step = runner.step(ids[:, -1].to(dev), got_state)[0].clone()
        tokens = runner.generate(ids.to(dev), max_new_tokens=new_tokens, eos_token_id=None)
    return {"prefill_logits_rel_err": _rel(got_prefill, want_prefill),
            "decode_logits_rel_err": _rel(got_step, want_step),
            "greedy_tokens_equal": bool(torch.equal(tokens.cpu(), want_tokens.cpu()))}


def check_artifacts(directory: str | os.PathLike, runtimes: list[str] | None = None,
                    batch: int = 2, length: int = 13, new_tokens: int = 16, device=None,
                    log: Callable[[str], None] = print) -> list[dict]:
    """Compare each runtime with eager on a random prompt; record the figures in the manifest."""
    directory = Path(directory)
    manifest = artifacts.read_manifest(directory)
    runtimes = runtimes or available_runtimes(directory)
    eager = artifacts.load_reference_model(directory, device="cpu")
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(0, eager.config.vocab_size, (batch, length), generator=gen)
    rows = []
    for name in runtimes:
        log(f"checking runtime {name}")
        parity = compare_with_eager(open_runtime(directory, name, device=device), eager, ids, new_tokens)
        rows.append({"runtime": name, **parity})
        manifest["parity"][name] = parity
    artifacts.write_manifest(manifest, directory)
    return rows

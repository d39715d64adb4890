"""Loading and saving checkpoints from local directories.

Two formats are read: transformers (``MambaForCausalLM`` / ``Mamba2ForCausalLM``:
``backbone.embeddings.weight`` ..., config.json with ``model_type: mamba`` / ``mamba2``) and
mamba_ssm (``MambaLMHeadModel`` with Mamba or Mamba2 mixers:
``backbone.embedding.weight`` ..., config.json with ``d_model``/``ssm_cfg``). Weights come from
safetensors (single or sharded) first, else ``pytorch_model.bin`` (sharded too) loaded with
``weights_only=True``: no file is ever unpickled with arbitrary code.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch

from .config import MambaConfig

SAFETENSORS = "model.safetensors"
SAFETENSORS_INDEX = "model.safetensors.index.json"
TORCH_BIN = "pytorch_model.bin"
TORCH_BIN_INDEX = "pytorch_model.bin.index.json"

# transformers name -> this package's (mamba_ssm's) name; all other keys are identical.
_HF_TO_NATIVE = {"backbone.embeddings.weight": "backbone.embedding.weight"}
_NATIVE_TO_HF = {v: k for k, v in _HF_TO_NATIVE.items()}


class CheckpointError(RuntimeError):
    """A checkpoint directory is incomplete, corrupt or does not match its config."""


def _read_index(path: Path) -> list[Path]:
    try:
        weight_map = json.loads(path.read_text(encoding="utf-8"))["weight_map"]
        shards = sorted(set(weight_map.values()))
        if not all(isinstance(s, str) for s in shards):
            raise TypeError("shard names must be strings")
    except (json.JSONDecodeError, KeyError, TypeError, AttributeError) as e:
        raise CheckpointError(f"{path} is not a valid shard index (needs a 'weight_map'): {e}") from None
    missing = [s for s in shards if not (path.parent / s).is_file()]
    if missing:
        raise CheckpointError(f"{path} lists shards that are missing: {', '.join(missing)}")
    return [path.parent / s for s in shards]


def find_weight_files(directory: Path) -> list[Path]:
    """The weight files of a checkpoint directory, safetensors preferred."""
    for name, index in ((SAFETENSORS, SAFETENSORS_INDEX), (TORCH_BIN, TORCH_BIN_INDEX)):
        if (directory / name).is_file():
            return [directory / name]
        if (directory / index).is_file():
            return _read_index(directory / index)
    raise FileNotFoundError(
        f"no weights in {directory}: expected one of {SAFETENSORS}, {SAFETENSORS_INDEX}, "
        f"{TORCH_BIN}, {TORCH_BIN_INDEX}"
    )


def _load_file(path: Path) -> dict[str, torch.Tensor]:
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            return load_file(str(path), device="cpu")
        except Exception as e:  # safetensors raises its own error types for bad headers/sizes
            raise CheckpointError(
                f"{path} could not be read as safetensors ({type(e).__name__}: {e}); "
                "the file is corrupt or truncated: download or save it again"
            ) from None
    try:
        state = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as e:
        raise CheckpointError(
            f"{path} could not be loaded with weights_only=True ({type(e).__name__}: {e}); "
            "it is corrupt, truncated, or holds more than tensors (convert it to safetensors)"
        ) from None
    if not isinstance(state, dict):
        raise CheckpointError(f"{path} holds a {type(state).__name__}, not a state dict")
    return state


def load_state_dict(directory: str | os.PathLike) -> dict[str, torch.Tensor]:
    """All tensors of a checkpoint directory, keys renamed to this package's names."""
    state: dict[str, torch.Tensor] = {}
    for f in find_weight_files(Path(directory)):
        state.update(_load_file(f))
    return {_HF_TO_NATIVE.get(k, k): v for k, v in state.items()}


def _check_keys(model: torch.nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    expected = {k: v.shape for k, v in model.state_dict().items()}
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong = sorted(
        f"{k}: checkpoint {list(state[k].shape)} vs model {list(expected[k])}"
        for k in set(expected) & set(state) if tuple(state[k].shape) != tuple(expected[k])
    )
    problems = []
    if missing:
        problems.append(f"missing keys: {', '.join(missing[:8])}{' ...' if len(missing) > 8 else ''}")
    if unexpected:
        problems.append(f"unexpected keys: {', '.join(unexpected[:8])}{' ...' if len(unexpected) > 8 else ''}")
    if wrong:
        problems.append(f"shape mismatches: {'; '.join(wrong[:8])}")
    if problems:
        raise CheckpointError(f"{source} does not match its config: " + " | ".join(problems))


def load_pretrained(path: str | os.PathLike, dtype: torch.dtype | None = None, device=None):
    """Build a :class:`MambaLM` from a local checkpoint directory.

    ``dtype=None`` keeps the dtype stored in the checkpoint; ``device`` defaults to CPU.
    """
    directory = Path(path)
    if not directory.is_dir():
        raise FileNotFoundError(
            f"{directory} is not a directory; from_pretrained takes a local checkpoint directory "
            "(weights cannot be downloaded here)"
        )
    cfg = MambaConfig.from_json_file(directory / "config.json")
    model = build_from_state_dict(cfg, load_state_dict(directory), str(directory))
    if dtype is None:
        dtype = model.backbone.embedding.weight.dtype
    return model.to(device=device or "cpu", dtype=dtype).eval()


def build_from_state_dict(cfg: MambaConfig, state: dict[str, torch.Tensor], source: str):
    """A :class:`MambaLM` whose parameters ARE the given tensors (no copy), keys checked."""
    from .model import MambaLM

    state = dict(state)
    if cfg.tie_embeddings:
        # A tied head is the embedding: mamba_ssm saves both, transformers only the embedding.
        # The model's state_dict lists both names, so point the head at the embedding here.
        state.pop("lm_head.weight", None)
        if "backbone.embedding.weight" in state:
            state["lm_head.weight"] = state["backbone.embedding.weight"]
    with torch.device("meta"):
        model = MambaLM(cfg, initialize=False)
    _check_keys(model, state, source)
    model.load_state_dict(state, strict=True, assign=True)
    if cfg.tie_embeddings:
        model.lm_head.weight = model.backbone.embedding.weight
    return model


def from_transformers(hf_model):
    """Wrap an in-memory transformers ``MambaForCausalLM``: the returned :class:`MambaLM` shares
    its parameter tensors (same storage, device and dtype; nothing is copied)."""
    config = getattr(hf_model, "config", None)
    if config is None or getattr(config, "model_type", None) not in ("mamba", "mamba2"):
        raise TypeError("from_transformers takes a transformers MambaForCausalLM or Mamba2ForCausalLM, "
                        f"got {type(hf_model).__name__}")
    cfg = MambaConfig.from_hf(config.to_dict())
    state = {_HF_TO_NATIVE.get(k, k): v for k, v in hf_model.state_dict().items()}
    return build_from_state_dict(cfg, state, f"{type(hf_model).__name__} in memory").eval()


def save_pretrained(model, path: str | os.PathLike, format: str = "transformers") -> None:
    """Write ``config.json`` and ``model.safetensors``.

    ``format="transformers"`` (default): transformers' MambaConfig / Mamba2Config and key names,
    so both this package and ``transformers`` load the directory. ``format="mamba_ssm"``:
    mamba_ssm's config.json and ``MambaLMHeadModel`` key names (the only choice for Mamba-2
    knobs transformers lacks: d_ssm < d_inner, D_has_hdim, rmsnorm=False, norm_before_gate)."""
    from safetensors.torch import save_file

    if format not in ("transformers", "mamba_ssm"):
        raise ValueError(f"format must be 'transformers' or 'mamba_ssm', got {format!r}")
    directory = Path(path)
    cfg: MambaConfig = model.config
    if format == "transformers":
        out_cfg = cfg.to_hf()  # raises ConfigError before anything is written
        out_cfg["torch_dtype"] = str(model.dtype).replace("torch.", "")
        rename = _NATIVE_TO_HF
    else:
        out_cfg, rename = cfg.to_mamba_ssm(), {}
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "config.json").write_text(json.dumps(out_cfg, indent=2) + "\n", encoding="utf-8")
    tensors = {}
    for name, tensor in model.state_dict().items():
        if cfg.tie_embeddings and name == "lm_head.weight":
            continue
        tensors[rename.get(name, name)] = tensor.detach().contiguous().cpu()
    save_file(tensors, str(directory / SAFETENSORS), metadata={"format": "pt"})

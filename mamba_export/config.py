"""Model configuration: every knob of mamba_ssm's Mamba block and LM, presets, and conversion
from the two config.json dialects found next to real checkpoints (HF transformers, mamba_ssm)."""

from __future__ import annotations

import dataclasses
import json
import math
import os
from dataclasses import dataclass
from typing import Any

LAYER_KINDS = ("Mamba1", "Mamba2")


class ConfigError(ValueError):
    """A configuration is unknown, contradictory or out of range."""


@dataclass
class MambaConfig:
    d_model: int = 768
    n_layer: int = 24
    vocab_size: int = 50277
    pad_vocab_size_multiple: int = 8
    # Mixer
    layer: str = "Mamba1"
    d_state: int = 16
    d_conv: int = 4
    expand: int = 2
    dt_rank: int | str = "auto"
    dt_min: float = 0.001
    dt_max: float = 0.1
    dt_init: str = "random"
    dt_scale: float = 1.0
    dt_init_floor: float = 1e-4
    conv_bias: bool = True
    bias: bool = False
    # Backbone
    rms_norm: bool = True
    norm_epsilon: float = 1e-5
    residual_in_fp32: bool = True
    tie_embeddings: bool = True
    # Mamba-2 knobs (reserved: the Mamba-2 mixer uses them)
    headdim: int = 64
    ngroups: int = 1
    chunk_size: int = 256
    # Token ids carried for generation; not used by the network itself.
    eos_token_id: int | None = None

    def __post_init__(self) -> None:
        self.validate()

    # ----------------------------------------------------------------- derived sizes
    @property
    def d_inner(self) -> int:
        return self.expand * self.d_model

    @property
    def resolved_dt_rank(self) -> int:
        if self.dt_rank == "auto":
            return math.ceil(self.d_model / 16)
        return int(self.dt_rank)

    @property
    def padded_vocab_size(self) -> int:
        m = self.pad_vocab_size_multiple
        return self.vocab_size if m <= 1 else ((self.vocab_size + m - 1) // m) * m

    def validate(self) -> None:
        if self.layer not in LAYER_KINDS:
            raise ConfigError(
                f"unknown layer {self.layer!r}: expected one of {', '.join(LAYER_KINDS)}"
            )
        for name in ("d_model", "n_layer", "vocab_size", "d_state", "expand", "pad_vocab_size_multiple"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ConfigError(f"{name} must be a positive integer, got {value!r}")
        if not isinstance(self.d_conv, int) or not 2 <= self.d_conv <= 4:
            raise ConfigError(f"d_conv must be 2, 3 or 4 (the conv kernels' widths), got {self.d_conv!r}")
        if self.dt_rank != "auto" and (not isinstance(self.dt_rank, int) or self.dt_rank < 1):
            raise ConfigError(f"dt_rank must be 'auto' or a positive integer, got {self.dt_rank!r}")
        if self.dt_init not in ("random", "constant"):
            raise ConfigError(f"dt_init must be 'random' or 'constant', got {self.dt_init!r}")
        if not 0 < self.dt_min <= self.dt_max:
            raise ConfigError(f"need 0 < dt_min <= dt_max, got dt_min={self.dt_min}, dt_max={self.dt_max}")
        if not self.rms_norm:
            raise ConfigError("rms_norm=False (LayerNorm) is not supported: every published Mamba uses RMSNorm")
        if self.layer == "Mamba2" and self.d_inner % self.headdim:
            raise ConfigError(f"d_inner ({self.d_inner}) must be a multiple of headdim ({self.headdim})")

    # ----------------------------------------------------------------- presets
    @classmethod
    def preset(cls, name: str, **overrides: Any) -> "MambaConfig":
        """The published model shapes (state-spaces/mamba-*, mamba2-*), by name."""
        if name not in PRESETS:
            raise ConfigError(f"unknown preset {name!r}: available {', '.join(sorted(PRESETS))}")
        return cls(**{**PRESETS[name], **overrides})

    # ----------------------------------------------------------------- serialisation
    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "MambaConfig":
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise ConfigError(f"unknown MambaConfig keys: {', '.join(unknown)}")
        return cls(**data)

    @classmethod
    def from_hf(cls, hf: dict[str, Any]) -> "MambaConfig":
        """From a transformers ``MambaConfig`` / ``Mamba2Config`` dict (config.json)."""
        model_type = hf.get("model_type")
        if model_type != "mamba":
            raise ConfigError(
                f"config.json has model_type={model_type!r}; only 'mamba' is supported here"
                + (" (Mamba-2 lands with the Mamba-2 mixer)" if model_type == "mamba2" else "")
            )
        inner = hf.get("intermediate_size")
        expand = hf.get("expand", 2)
        hidden = hf["hidden_size"]
        if inner is not None and inner != expand * hidden:
            raise ConfigError(
                f"intermediate_size={inner} contradicts expand*hidden_size={expand * hidden}"
            )
        if hf.get("hidden_act", "silu") != "silu":
            raise ConfigError(f"hidden_act={hf['hidden_act']!r} is not supported (Mamba uses 'silu')")
        if hf.get("time_step_init_scheme", "random") not in ("random", "constant"):
            raise ConfigError(f"unknown time_step_init_scheme {hf['time_step_init_scheme']!r}")
        vocab = {"vocab_size": hf["vocab_size"], "pad_vocab_size_multiple": 1}  # stored padded
        saved = hf.get("mamba_export")
        if isinstance(saved, dict):
            vocab = {k: saved[k] for k in vocab}
            padded = cls(**vocab).padded_vocab_size
            if padded != hf["vocab_size"]:
                raise ConfigError(f"mamba_export.vocab_size pads to {padded}, but vocab_size is {hf['vocab_size']}")
        return cls(
            d_model=hidden,
            n_layer=hf["num_hidden_layers"],
            **vocab,
            d_state=hf.get("state_size", 16),
            d_conv=hf.get("conv_kernel", 4),
            expand=expand,
            dt_rank=hf.get("time_step_rank", "auto"),
            dt_min=hf.get("time_step_min", 0.001),
            dt_max=hf.get("time_step_max", 0.1),
            dt_init=hf.get("time_step_init_scheme", "random"),
            dt_scale=hf.get("time_step_scale", 1.0),
            dt_init_floor=hf.get("time_step_floor", 1e-4),
            conv_bias=hf.get("use_conv_bias", True),
            bias=hf.get("use_bias", False),
            norm_epsilon=hf.get("layer_norm_epsilon", 1e-5),
            residual_in_fp32=hf.get("residual_in_fp32", True),
            tie_embeddings=hf.get("tie_word_embeddings", True),
            eos_token_id=hf.get("eos_token_id"),
        )

    def to_hf(self) -> dict[str, Any]:
        """A transformers ``MambaConfig`` dict that loads the same weights."""
        if self.layer != "Mamba1":
            raise ConfigError("to_hf: only Mamba1 configs map to transformers' MambaConfig here")
        return {
            "model_type": "mamba",
            "architectures": ["MambaForCausalLM"],
            "vocab_size": self.padded_vocab_size,
            "hidden_size": self.d_model,
            "intermediate_size": self.d_inner,
            "num_hidden_layers": self.n_layer,
            "state_size": self.d_state,
            "conv_kernel": self.d_conv,
            "expand": self.expand,
            "time_step_rank": self.resolved_dt_rank,
            "time_step_min": self.dt_min,
            "time_step_max": self.dt_max,
            "time_step_init_scheme": self.dt_init,
            "time_step_scale": self.dt_scale,
            "time_step_floor": self.dt_init_floor,
            "use_conv_bias": self.conv_bias,
            "use_bias": self.bias,
            "layer_norm_epsilon": self.norm_epsilon,
            "residual_in_fp32": self.residual_in_fp32,
            "tie_word_embeddings": self.tie_embeddings,
            "hidden_act": "silu",
            "eos_token_id": self.eos_token_id,
            # Extra key (kept by transformers): the unpadded vocabulary, so a reload masks padding.
            "mamba_export": {"vocab_size": self.vocab_size,
                             "pad_vocab_size_multiple": self.pad_vocab_size_multiple},
        }

    @classmethod
    def from_mamba_ssm(cls, cfg: dict[str, Any]) -> "MambaConfig":
        """From a mamba_ssm ``MambaConfig`` dict (config.json of state-spaces/mamba-*)."""
        known = {
            "d_model", "n_layer", "vocab_size", "ssm_cfg", "rms_norm", "residual_in_fp32",
            "fused_add_norm", "pad_vocab_size_multiple", "tie_embeddings", "d_intermediate",
            "attn_layer_idx", "attn_cfg",
        }
        unknown = sorted(set(cfg) - known)
        if unknown:
            raise ConfigError(f"unknown mamba_ssm config keys: {', '.join(unknown)}")
        if cfg.get("d_intermediate", 0):
            raise ConfigError("d_intermediate > 0 (MLP blocks between mixers) is not supported")
        if cfg.get("attn_layer_idx"):
            raise ConfigError("attn_layer_idx (hybrid attention layers) is not supported")
        ssm = dict(cfg.get("ssm_cfg") or {})
        layer = ssm.pop("layer", "Mamba1")
        if layer not in LAYER_KINDS:
            raise ConfigError(
                f"ssm_cfg.layer={layer!r} is unknown: expected one of {', '.join(LAYER_KINDS)}"
            )
        if layer == "Mamba2":
            raise ConfigError("ssm_cfg.layer='Mamba2': the Mamba-2 mixer is not available yet")
        ssm_keys = {
            "d_state", "d_conv", "expand", "dt_rank", "dt_min", "dt_max", "dt_init", "dt_scale",
            "dt_init_floor", "conv_bias", "bias", "use_fast_path",
        }
        bad = sorted(set(ssm) - ssm_keys)
        if bad:
            raise ConfigError(f"unknown ssm_cfg keys for {layer}: {', '.join(bad)}")
        ssm.pop("use_fast_path", None)
        return cls(
            d_model=cfg["d_model"],
            n_layer=cfg["n_layer"],
            vocab_size=cfg["vocab_size"],
            pad_vocab_size_multiple=cfg.get("pad_vocab_size_multiple", 8),
            rms_norm=cfg.get("rms_norm", True),
            residual_in_fp32=cfg.get("residual_in_fp32", True),
            tie_embeddings=cfg.get("tie_embeddings", True),
            layer=layer,
            **ssm,
        )

    def to_mamba_ssm(self) -> dict[str, Any]:
        ssm = {
            k: getattr(self, k)
            for k in ("d_state", "d_conv", "expand", "dt_rank", "dt_min", "dt_max", "dt_init",
                      "dt_scale", "dt_init_floor", "conv_bias", "bias")
        }
        ssm["layer"] = self.layer
        return {
            "d_model": self.d_model, "n_layer": self.n_layer, "vocab_size": self.vocab_size,
            "ssm_cfg": ssm, "rms_norm": self.rms_norm, "residual_in_fp32": self.residual_in_fp32,
            "fused_add_norm": True, "pad_vocab_size_multiple": self.pad_vocab_size_multiple,
            "tie_embeddings": self.tie_embeddings,
        }

    @classmethod
    def from_json_file(cls, path: str | os.PathLike) -> "MambaConfig":
        """Read a config.json of either dialect (or this package's own) and convert it."""
        try:
            with open(path, encoding="utf-8") as f:
                data = json.load(f)
        except FileNotFoundError:
            raise FileNotFoundError(f"no config.json at {path}") from None
        except json.JSONDecodeError as e:
            raise ConfigError(f"{path} is not valid JSON: {e}") from None
        return cls.from_any_dict(data, source=str(path))

    @classmethod
    def from_any_dict(cls, data: dict[str, Any], source: str = "config") -> "MambaConfig":
        if "model_type" in data:
            return cls.from_hf(data)
        if "ssm_cfg" in data or "fused_add_norm" in data:
            return cls.from_mamba_ssm(data)
        if "d_model" in data and "n_layer" in data:
            return cls.from_dict(data)
        raise ConfigError(
            f"{source}: not a Mamba config (expected transformers keys like 'model_type'/'hidden_size' "
            "or mamba_ssm keys like 'd_model'/'ssm_cfg')"
        )


_V = 50277
PRESETS: dict[str, dict[str, Any]] = {
    "mamba-130m": dict(d_model=768, n_layer=24, vocab_size=_V),
    "mamba-370m": dict(d_model=1024, n_layer=48, vocab_size=_V),
    "mamba-790m": dict(d_model=1536, n_layer=48, vocab_size=_V),
    "mamba-1.4b": dict(d_model=2048, n_layer=48, vocab_size=_V),
    "mamba-2.8b": dict(d_model=2560, n_layer=64, vocab_size=_V),
    # A tiny random-initialised model for demos and smoke tests.
    "mamba-tiny": dict(d_model=128, n_layer=4, vocab_size=1000, d_state=16),
}
_MAMBA2 = dict(layer="Mamba2", d_state=128, headdim=64, ngroups=1, chunk_size=256, vocab_size=_V)
for _name, _dm, _nl in (("mamba2-130m", 768, 24), ("mamba2-370m", 1024, 48),
                        ("mamba2-780m", 1536, 48), ("mamba2-1.3b", 2048, 48),
                        ("mamba2-2.7b", 2560, 64)):
    PRESETS[_name] = dict(_MAMBA2, d_model=_dm, n_layer=_nl)

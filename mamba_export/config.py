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
_INF = float("inf")
# mamba_ssm's per-layer default for d_state (Mamba: 16, Mamba2: 128).
_DEFAULT_D_STATE = {"Mamba1": 16, "Mamba2": 128}


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
    d_state: int | None = None  # None: mamba_ssm's default for the layer (16 / 128)
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
    # Mamba-2 knobs (mamba_ssm.modules.mamba2.Mamba2; ignored by the Mamba-1 mixer)
    headdim: int = 64
    ngroups: int = 1
    chunk_size: int = 256
    d_ssm: int | None = None  # None: d_inner; smaller: the rest of d_inner is a gated MLP
    A_init_range: tuple[float, float] = (1.0, 16.0)
    D_has_hdim: bool = False  # D [nheads] (False) or [d_ssm] (True)
    rmsnorm: bool = True  # gated RMSNorm on y (True) or y * silu(z) inside the scan (False)
    norm_before_gate: bool = False
    dt_limit: tuple[float, float] = (0.0, _INF)  # clamp of softplus(dt + dt_bias)
    learnable_init_states: bool = False  # only False: published checkpoints have none
    # Token ids carried for generation; not used by the network itself.
    eos_token_id: int | None = None

    def __post_init__(self) -> None:
        if self.d_state is None and self.layer in _DEFAULT_D_STATE:
            self.d_state = _DEFAULT_D_STATE[self.layer]
        # JSON gives lists: keep tuples so that configs compare equal after a round trip.
        for name in ("dt_limit", "A_init_range"):
            value = getattr(self, name)
            if isinstance(value, list):
                setattr(self, name, tuple(value))
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

    # Mamba-2 sizes (mamba_ssm's names)
    @property
    def resolved_d_ssm(self) -> int:
        """Channels that go through the SSM (d_inner unless ``d_ssm`` is set)."""
        return self.d_inner if self.d_ssm is None else self.d_ssm

    @property
    def nheads(self) -> int:
        return self.resolved_d_ssm // self.headdim

    @property
    def d_mlp(self) -> int:
        """Width of Mamba-2's gated-MLP branch (0 unless d_ssm < d_inner)."""
        return self.d_inner - self.resolved_d_ssm

    @property
    def conv_dim(self) -> int:
        """Channels of the causal conv (and of the conv state): x for Mamba-1; x, B, C for Mamba-2."""
        if self.layer == "Mamba2":
            return self.resolved_d_ssm + 2 * self.ngroups * self.d_state
        return self.d_inner

    @property
    def d_in_proj(self) -> int:
        if self.layer == "Mamba2":
            return 2 * self.d_inner + 2 * self.ngroups * self.d_state + self.nheads
        return 2 * self.d_inner

    def state_shapes(self, batch) -> tuple[tuple, tuple]:
        """Whole-model (conv, ssm) state shapes for ``batch`` sequences (an int, or a symbolic
        name such as "batch" for graph signatures)."""
        return ((self.n_layer, batch, self.conv_dim, self.d_conv - 1),
                (self.n_layer, batch, *self.ssm_state_shape))

    @property
    def ssm_state_shape(self) -> tuple[int, ...]:
        """Per-sequence SSM state of one layer: ``(d_inner, N)`` or Mamba-2's ``(H, P, N)``."""
        if self.layer == "Mamba2":
            return (self.nheads, self.headdim, self.d_state)
        return (self.d_inner, self.d_state)

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
        if self.layer == "Mamba2":
            self._validate_mamba2()

    def _validate_mamba2(self) -> None:
        for name in ("headdim", "ngroups", "chunk_size"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ConfigError(f"{name} must be a positive integer, got {value!r}")
        if self.d_ssm is not None and (not isinstance(self.d_ssm, int) or isinstance(self.d_ssm, bool)
                                       or not 1 <= self.d_ssm <= self.d_inner):
            raise ConfigError(f"d_ssm must be None or an integer in [1, d_inner={self.d_inner}], got {self.d_ssm!r}")
        what = "d_inner" if self.d_ssm is None else "d_ssm"
        d_ssm = self.resolved_d_ssm
        if d_ssm % self.headdim:
            raise ConfigError(f"{what} ({d_ssm}) must be a multiple of headdim ({self.headdim})")
        if self.nheads % self.ngroups:
            raise ConfigError(f"the number of heads ({self.nheads} = {what} / headdim) must be a multiple "
                              f"of ngroups ({self.ngroups})")
        lo_hi = self.A_init_range
        if not (isinstance(lo_hi, tuple) and len(lo_hi) == 2 and 0 < lo_hi[0] <= lo_hi[1]):
            raise ConfigError(f"A_init_range must be (lo, hi) with 0 < lo <= hi, got {lo_hi!r}")
        lim = self.dt_limit
        if not (isinstance(lim, tuple) and len(lim) == 2
                and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in lim)
                and 0.0 <= lim[0] < lim[1]):
            raise ConfigError(f"dt_limit must be (lo, hi) with 0 <= lo < hi (hi may be inf), got {lim!r}")
        if self.learnable_init_states:
            raise ConfigError("learnable_init_states=True is not supported (no published checkpoint uses "
                              "it; the initial state is an input of prefill)")
        for name in ("D_has_hdim", "rmsnorm", "norm_before_gate"):
            if not isinstance(getattr(self, name), bool):
                raise ConfigError(f"{name} must be a bool, got {getattr(self, name)!r}")

    @property
    def has_dt_limit(self) -> bool:
        """True when dt_limit clamps (mamba_ssm applies it only when not (0, inf))."""
        return tuple(self.dt_limit) != (0.0, _INF)

    # ----------------------------------------------------------------- presets
    @classmethod
    def preset(cls, name: str, **overrides: Any) -> "MambaConfig":
        """The published model shapes (state-spaces/mamba-*, mamba2-*), by name."""
        if name not in PRESETS:
            raise ConfigError(f"unknown preset {name!r}: available {', '.join(sorted(PRESETS))}")
        return cls(**{**PRESETS[name], **overrides})

    # ----------------------------------------------------------------- serialisation
    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        for name in ("dt_limit", "A_init_range"):
            data[name] = list(data[name])
        return data

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
        if model_type == "mamba2":
            return cls._from_hf_mamba2(hf)
        if model_type != "mamba":
            raise ConfigError(
                f"config.json has model_type={model_type!r}; supported: 'mamba', 'mamba2'"
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
        return cls(
            d_model=hidden,
            n_layer=hf["num_hidden_layers"],
            **cls._vocab_from_hf(hf),
            d_state=hf.get("state_size", 16),
            d_conv=hf.get("conv_kernel", 4),
            expand=expand,
            dt_rank=hf.get("time_step_rank", "auto"),
            dt_init=hf.get("time_step_init_scheme", "random"),
            dt_scale=hf.get("time_step_scale", 1.0),
            tie_embeddings=hf.get("tie_word_embeddings", True),
            **cls._common_from_hf(hf),
        )

    @staticmethod
    def _common_from_hf(hf: dict[str, Any]) -> dict[str, Any]:
        """The keys transformers' Mamba and Mamba2 configs share, with the same defaults."""
        return dict(
            dt_min=hf.get("time_step_min", 0.001),
            dt_max=hf.get("time_step_max", 0.1),
            dt_init_floor=hf.get("time_step_floor", 1e-4),
            conv_bias=hf.get("use_conv_bias", True),
            bias=hf.get("use_bias", False),
            norm_epsilon=hf.get("layer_norm_epsilon", 1e-5),
            residual_in_fp32=hf.get("residual_in_fp32", True),
            eos_token_id=hf.get("eos_token_id"),
        )

    @classmethod
    def _vocab_from_hf(cls, hf: dict[str, Any]) -> dict[str, int]:
        vocab = {"vocab_size": hf["vocab_size"], "pad_vocab_size_multiple": 1}  # stored padded
        saved = hf.get("mamba_export")
        if isinstance(saved, dict):
            vocab = {k: saved[k] for k in vocab}
            padded = cls(d_model=1, n_layer=1, **vocab).padded_vocab_size
            if padded != hf["vocab_size"]:
                raise ConfigError(f"mamba_export.vocab_size pads to {padded}, but vocab_size is {hf['vocab_size']}")
        return vocab

    @classmethod
    def _from_hf_mamba2(cls, hf: dict[str, Any]) -> "MambaConfig":
        """From a transformers ``Mamba2Config`` dict. transformers' Mamba2 always uses the gated
        RMSNorm with the gate applied before the norm (mamba_ssm's norm_before_gate=False), one
        eps (``layer_norm_epsilon``) for every norm, D per head and no MLP branch."""
        where = "model_type='mamba2' (Mamba-2)"
        need = ("hidden_size", "num_hidden_layers", "vocab_size")
        missing = [k for k in need if k not in hf]
        if missing:
            raise ConfigError(f"{where}: config.json lacks {', '.join(missing)}")
        hidden, expand = hf["hidden_size"], hf.get("expand", 2)
        heads, head_dim = hf.get("num_heads", 128), hf.get("head_dim", 64)
        if heads * head_dim != expand * hidden:
            raise ConfigError(f"{where}: num_heads*head_dim ({heads}*{head_dim}={heads * head_dim}) must "
                              f"equal expand*hidden_size ({expand}*{hidden}={expand * hidden})")
        inner = hf.get("intermediate_size")
        if inner is not None and inner != expand * hidden:
            raise ConfigError(f"{where}: intermediate_size={inner} contradicts expand*hidden_size={expand * hidden}")
        if hf.get("hidden_act", "silu") not in ("silu", "swish"):
            raise ConfigError(f"{where}: hidden_act={hf['hidden_act']!r} is not supported (Mamba uses 'silu')")
        if not hf.get("rms_norm", True):
            raise ConfigError(f"{where}: rms_norm=False is not supported (transformers' Mamba2 always "
                              "applies the gated RMSNorm)")
        limit = hf.get("time_step_limit", (0.0, _INF))
        return cls(
            layer="Mamba2",
            d_model=hidden,
            n_layer=hf["num_hidden_layers"],
            **cls._vocab_from_hf(hf),
            d_state=hf.get("state_size", 128),
            d_conv=hf.get("conv_kernel", 4),
            expand=expand,
            headdim=head_dim,
            ngroups=hf.get("n_groups", 8),
            chunk_size=hf.get("chunk_size", 256),
            dt_limit=_float_pair("time_step_limit", limit),
            tie_embeddings=hf.get("tie_word_embeddings", False),
            **cls._common_from_hf(hf),
        )

    def _to_hf_mamba2(self) -> dict[str, Any]:
        unsupported = [name for name, bad in (
            ("d_ssm < d_inner (gated-MLP branch)", self.d_mlp > 0),
            ("rmsnorm=False", not self.rmsnorm),
            ("norm_before_gate=True", self.norm_before_gate),
            ("D_has_hdim=True", self.D_has_hdim),
        ) if bad]
        if unsupported:
            raise ConfigError("to_hf: transformers' Mamba2 cannot express " + ", ".join(unsupported)
                              + " (save in mamba_ssm format instead)")
        return {
            "model_type": "mamba2",
            "architectures": ["Mamba2ForCausalLM"],
            "vocab_size": self.padded_vocab_size,
            "hidden_size": self.d_model,
            "num_hidden_layers": self.n_layer,
            "num_heads": self.nheads,
            "head_dim": self.headdim,
            "state_size": self.d_state,
            "expand": self.expand,
            "conv_kernel": self.d_conv,
            "n_groups": self.ngroups,
            "chunk_size": self.chunk_size,
            "use_bias": self.bias,
            "use_conv_bias": self.conv_bias,
            "hidden_act": "silu",
            "layer_norm_epsilon": self.norm_epsilon,
            "residual_in_fp32": self.residual_in_fp32,
            "time_step_min": self.dt_min,
            "time_step_max": self.dt_max,
            "time_step_floor": self.dt_init_floor,
            "time_step_limit": list(self.dt_limit),
            "tie_word_embeddings": self.tie_embeddings,
            "eos_token_id": self.eos_token_id,
            "pad_token_id": None,
            "bos_token_id": None,
            "mamba_export": {"vocab_size": self.vocab_size,
                             "pad_vocab_size_multiple": self.pad_vocab_size_multiple},
        }

    def to_hf(self) -> dict[str, Any]:
        """A transformers ``MambaConfig`` / ``Mamba2Config`` dict that loads the same weights."""
        if self.layer == "Mamba2":
            return self._to_hf_mamba2()
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
            ssm_keys = set(_MAMBA2_SSM_KEYS) | {"use_mem_eff_path", "conv_init", "activation"}
        else:
            ssm_keys = {
                "d_state", "d_conv", "expand", "dt_rank", "dt_min", "dt_max", "dt_init", "dt_scale",
                "dt_init_floor", "conv_bias", "bias", "use_fast_path",
            }
        bad = sorted(set(ssm) - ssm_keys)
        if bad:
            raise ConfigError(f"unknown ssm_cfg keys for {layer}: {', '.join(bad)}")
        ssm.pop("use_fast_path", None)
        ssm.pop("use_mem_eff_path", None)
        for k in ("dt_limit", "A_init_range"):
            if k in ssm:
                ssm[k] = _float_pair(f"ssm_cfg.{k}", ssm[k])
        ssm.pop("conv_init", None)  # an init-only knob
        if ssm.pop("activation", "silu") not in ("silu", "swish"):
            raise ConfigError("ssm_cfg.activation must be 'silu' (or 'swish')")
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
        keys = _MAMBA2_SSM_KEYS if self.layer == "Mamba2" else (
            "d_state", "d_conv", "expand", "dt_rank", "dt_min", "dt_max", "dt_init", "dt_scale",
            "dt_init_floor", "conv_bias", "bias")
        ssm = {k: getattr(self, k) for k in keys}
        for k in ("dt_limit", "A_init_range"):
            if k in ssm:
                ssm[k] = list(ssm[k])
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


def _json_float(name: str, value: Any) -> float:
    """A float from config.json: a number, "Infinity"/"inf", or transformers 5's
    ``{"__float__": "Infinity"}`` encoding of non-finite floats."""
    if isinstance(value, dict) and set(value) == {"__float__"}:
        value = value["__float__"]
    try:
        if isinstance(value, bool):
            raise TypeError
        return float(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{name}: expected a number, got {value!r}") from None


def _float_pair(name: str, value: Any) -> tuple[float, float]:
    if not isinstance(value, (list, tuple)) or len(value) != 2:
        raise ConfigError(f"{name} must be a pair [lo, hi], got {value!r}")
    return (_json_float(name, value[0]), _json_float(name, value[1]))


# ssm_cfg keys of mamba_ssm's Mamba2 that this package reads and writes.
_MAMBA2_SSM_KEYS = (
    "d_state", "d_conv", "expand", "headdim", "d_ssm", "ngroups", "A_init_range", "D_has_hdim",
    "rmsnorm", "norm_before_gate", "dt_min", "dt_max", "dt_init_floor", "dt_limit", "bias",
    "conv_bias", "chunk_size", "learnable_init_states",
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
# state-spaces/mamba2-*: config.json has ssm_cfg {"layer": "Mamba2"} (mamba_ssm defaults: d_state 128,
# headdim 64, ngroups 1, expand 2, chunk 256) and pad_vocab_size_multiple 16 (50277 -> 50288 rows).
_MAMBA2 = dict(layer="Mamba2", d_state=128, headdim=64, ngroups=1, chunk_size=256, vocab_size=_V,
               pad_vocab_size_multiple=16)
for _name, _dm, _nl in (("mamba2-130m", 768, 24), ("mamba2-370m", 1024, 48),
                        ("mamba2-780m", 1536, 48), ("mamba2-1.3b", 2048, 48),
                        ("mamba2-2.7b", 2560, 64)):
    PRESETS[_name] = dict(_MAMBA2, d_model=_dm, n_layer=_nl)

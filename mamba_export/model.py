"""The Mamba language model, written to be compiled and exported.

Parameter names follow mamba_ssm (``backbone.embedding``, ``backbone.layers.i.mixer.*``,
``backbone.norm_f``, ``lm_head``), so its checkpoints load as they are. All sequence math goes
through the ``torch.ops.mamba_export`` ops; the state of the whole model is two tensors
(:class:`MambaState`), so prefill and decode have fixed, exportable signatures.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from . import _dispatch, ops  # noqa: F401  (ops registers torch.ops.mamba_export.*)
from ._dispatch import (NormedRows, _eager_cuda, add_norm_in_proj, cached_params, decode_linear, folds_add_norm,
                        hands_off_norm, in_proj_conv, refuse_out_fold)
from .config import MambaConfig
from .generate import GenerationMixin
from .mamba2 import Mamba2Mixer


class MambaState(NamedTuple):
    """Recurrent state of the whole model.

    conv: ``[n_layer, B, conv_dim, d_conv - 1]`` in the model dtype (the last inputs of the conv;
    conv_dim = d_inner for Mamba-1, d_ssm + 2*ngroups*d_state for Mamba-2);
    ssm: ``[n_layer, B, d_inner, d_state]`` (Mamba-1) or ``[n_layer, B, nheads, headdim, d_state]``
    (Mamba-2) in float32.
    """

    conv: Tensor
    ssm: Tensor


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float = 1e-5, device=None, dtype=None):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim, device=device, dtype=dtype))

    def forward(self, x: Tensor) -> Tensor:
        xf = x.float()
        xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
        return (xf * self.weight.float()).to(self.weight.dtype)


class MambaMixer(nn.Module):
    """Mamba-1 (S6) mixer: in_proj -> causal conv -> selective scan gated by z -> out_proj."""

    def __init__(self, cfg: MambaConfig, layer_idx: int = 0, device=None, dtype=None):
        super().__init__()
        kw = dict(device=device, dtype=dtype)
        self.cfg = cfg
        self.layer_idx = layer_idx
        d_inner, dt_rank, n = cfg.d_inner, cfg.resolved_dt_rank, cfg.d_state
        self.in_proj = nn.Linear(cfg.d_model, 2 * d_inner, bias=cfg.bias, **kw)
        self.conv1d = nn.Conv1d(d_inner, d_inner, cfg.d_conv, groups=d_inner,
                                padding=cfg.d_conv - 1, bias=cfg.conv_bias, **kw)
        self.x_proj = nn.Linear(d_inner, dt_rank + 2 * n, bias=False, **kw)
        self.dt_proj = nn.Linear(dt_rank, d_inner, bias=True, **kw)
        self.A_log = nn.Parameter(torch.empty(d_inner, n, **kw))
        self.D = nn.Parameter(torch.empty(d_inner, **kw))
        self.out_proj = nn.Linear(d_inner, cfg.d_model, bias=cfg.bias, **kw)

    def linears(self) -> tuple[nn.Linear, ...]:
        return (self.in_proj, self.x_proj, self.out_proj)

    @torch.no_grad()
    def reset_ssm_parameters(self) -> None:
        """mamba_ssm's init: dt_proj so that softplus(bias) spans [dt_min, dt_max] log-uniformly,
        A = -(1..N) per channel, D = 1."""
        cfg = self.cfg
        std = cfg.resolved_dt_rank ** -0.5 * cfg.dt_scale
        if cfg.dt_init == "constant":
            nn.init.constant_(self.dt_proj.weight, std)
        else:
            nn.init.uniform_(self.dt_proj.weight, -std, std)
        log_min, log_max = math.log(cfg.dt_min), math.log(cfg.dt_max)
        dt = torch.exp(torch.rand(cfg.d_inner) * (log_max - log_min) + log_min)
        dt = dt.clamp(min=cfg.dt_init_floor)
        self.dt_proj.bias.copy_(dt + torch.log(-torch.expm1(-dt)))  # inverse softplus
        a = torch.arange(1, cfg.d_state + 1, dtype=torch.float32).repeat(cfg.d_inner, 1)
        self.A_log.copy_(torch.log(a))
        self.D.fill_(1.0)

    def _ssm_params(self) -> tuple[Tensor, Tensor, Tensor]:
        """A, D, dt bias in the state precision (float32; float64 for a float64 model).

        In eager inference they are cached (keyed on the parameters' versions), so a decode
        step launches no kernels for them."""
        def compute():
            dt = torch.float64 if self.A_log.dtype == torch.float64 else torch.float32
            return -torch.exp(self.A_log.to(dt)), self.D.to(dt), self.dt_proj.bias.to(dt)

        return cached_params(self, (self.A_log, self.D, self.dt_proj.bias), compute)

    def _split_x_dbl(self, x_dbl: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        r, n = self.cfg.resolved_dt_rank, self.cfg.d_state
        return x_dbl[..., :r], x_dbl[..., r : r + n], x_dbl[..., r + n :]

    def forward(self, hidden: Tensor, conv_state: Tensor | None = None,
                ssm_state: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor]:
        """hidden ``[B, L, d_model]`` -> (out ``[B, L, d_model]``, conv_state', ssm_state')."""
        xz = self.in_proj(hidden).transpose(1, 2)  # [B, 2*d_inner, L]
        x, z = xz.chunk(2, dim=1)
        conv, scan = torch.ops.mamba_export.causal_conv1d, torch.ops.mamba_export.selective_scan
        if _eager_cuda(x):  # same kernels, minus the op dispatch's host time (prefill is host-bound)
            from .kernels.causal_conv1d import causal_conv1d_fwd as conv
            from .kernels.selective_scan import selective_scan_fwd as scan
        x, conv_state = conv(x, self.conv1d.weight.squeeze(1), self.conv1d.bias, conv_state, True)
        x_dbl = self.x_proj(x.transpose(1, 2))  # [B, L, r + 2N]
        dt_low, B, C = self._split_x_dbl(x_dbl)
        dt = F.linear(dt_low, self.dt_proj.weight).transpose(1, 2)  # [B, d_inner, L]
        A, D, dt_bias = self._ssm_params()
        y, ssm_state = scan(x, dt, A, B.transpose(1, 2), C.transpose(1, 2), D, z, dt_bias, True, ssm_state)
        return self.out_proj(y.transpose(1, 2)), conv_state, ssm_state

    def in_proj_conv(self, x_like: Tensor, conv_state: Tensor, inplace: bool) -> tuple | None:
        """The conv folded into in_proj's decode kernel (``_dispatch.in_proj_conv``; x is
        in_proj's first half), or None: at one row, and at several for small in_proj weights
        (``_dispatch.FOLD_CONV_ROWS``; before in_proj's K groups the folded 16-row kernel
        spilled, and mamba-130m's b16 step measured 0.553 vs 0.538 ms/token with the conv
        kernel, H100, 2026-11-23)."""
        if not _dispatch.mamba1_folds_conv(x_like.shape[0], self.in_proj.weight.numel()):
            return None
        return in_proj_conv(x_like, self.in_proj, self.conv1d, conv_state, 0, inplace)

    def step(self, hidden: Tensor | None, conv_state: Tensor, ssm_state: Tensor,
             inplace: bool = False, projected: Tensor | None = None,
             conv: tuple | None = None, out_fold: dict | None = None) -> tuple[Tensor, Tensor, Tensor]:
        """hidden ``[B, d_model]`` -> (out ``[B, d_model]``, conv_state', ssm_state').

        ``inplace`` writes the new states into ``conv_state`` / ``ssm_state`` and returns them
        (on eager CUDA the kernels write there directly: no copies). ``projected``: in_proj's
        output, already computed (Block.step, eager CUDA), hidden then unused; with ``conv``
        (the ``in_proj_conv`` it was computed with) its x half is already silu(conv).
        ``out_fold``: out_proj's decode_linear_fwd folds (Block.step's ``next_norm``)."""
        weight = self.conv1d.weight.squeeze(1)
        A, D, dt_bias = self._ssm_params()
        # eager CUDA: kernels called directly (in-place states, conv in in_proj, dt_proj fused)
        if projected is not None or _eager_cuda(hidden):
            from .kernels.causal_conv1d import causal_conv1d_update_fwd
            from .kernels.state_update import selective_state_update_fwd

            # (swap_ab: in_proj and out_proj may take weight @ x.T tiles, kernels/decode_linear.SWAP_AB)
            if projected is None:
                conv = self.in_proj_conv(hidden, conv_state, inplace)
                projected = decode_linear(hidden, self.in_proj, conv=conv, swap_ab=True)
            x, z = projected.chunk(2, dim=-1)
            if conv is not None:
                new_conv = conv[4]
            else:
                x, new_conv = causal_conv1d_update_fwd(x, conv_state, weight, self.conv1d.bias, True,
                                                       out_state=conv_state if inplace else None,
                                                       early_state=_dispatch.EARLY_READS and _dispatch.EARLY_CONV)
            out_w = self.out_proj.weight
            prefetch = out_w if out_w.numel() * out_w.element_size() <= _dispatch.PREFETCH_MAX_BYTES else None
            dt_low, B, C = self._split_x_dbl(decode_linear(x, self.x_proj, l2_prefetch=prefetch))
            y, new_ssm = selective_state_update_fwd(
                ssm_state, x, dt_low, A, B, C, D, z, dt_bias, True,
                out_state=ssm_state if inplace else None, dt_proj_weight=self.dt_proj.weight,
                early_state=_dispatch.EARLY_READS and _dispatch.EARLY_STATE_MAMBA1)
            return decode_linear(y, self.out_proj, swap_ab=True, **(out_fold or {})), new_conv, new_ssm
        refuse_out_fold(out_fold)
        x, z = self.in_proj(hidden).chunk(2, dim=-1)
        x, new_conv = torch.ops.mamba_export.causal_conv1d_update(
            x, conv_state, weight, self.conv1d.bias, True)
        dt_low, B, C = self._split_x_dbl(self.x_proj(x))
        dt = F.linear(dt_low, self.dt_proj.weight)
        y, new_ssm = torch.ops.mamba_export.selective_state_update(
            ssm_state, x, dt, A, B, C, D, z, dt_bias, True)
        if inplace:
            new_conv = conv_state.copy_(new_conv)
            new_ssm = ssm_state.copy_(new_ssm)
        return self.out_proj(y), new_conv, new_ssm


class Block(nn.Module):
    """Pre-norm residual block: residual += hidden; hidden = mixer(norm(residual))."""

    def __init__(self, cfg: MambaConfig, layer_idx: int, device=None, dtype=None):
        super().__init__()
        self.residual_in_fp32 = cfg.residual_in_fp32
        self.norm = RMSNorm(cfg.d_model, cfg.norm_epsilon, device=device, dtype=dtype)
        mixer = Mamba2Mixer if cfg.layer == "Mamba2" else MambaMixer
        self.mixer = mixer(cfg, layer_idx, device=device, dtype=dtype)

    def step(self, hidden: Tensor | NormedRows, residual: Tensor | None, conv_state: Tensor,
             ssm_state: Tensor, inplace: bool, next_norm: nn.Module | None = None
             ) -> tuple[Tensor | NormedRows, Tensor, Tensor, Tensor]:
        """One decode step of the block: (mixer out, residual', conv_state', ssm_state'). On
        eager CUDA the add + norm is folded into in_proj's kernel where that applies
        (``_dispatch.folds_add_norm``, ``add_norm_in_proj``): one launch less per layer.
        ``hidden`` may be the block before's ``NormedRows`` (residual then already includes its
        out): in_proj finishes the norm. ``next_norm`` (the next block's norm; the caller checked
        ``hands_off_norm``): out_proj begins that block's add + norm and the block returns
        ``NormedRows`` and the next residual."""
        fused = None
        if isinstance(hidden, NormedRows):
            conv = self.mixer.in_proj_conv(hidden.weighted, conv_state, inplace)
            projected = decode_linear(hidden.weighted, self.mixer.in_proj,
                                      row_norm=(hidden.sums, self.norm.eps), conv=conv)
            fused = projected, residual
        elif _eager_cuda(hidden) and folds_add_norm(hidden, self.norm, self.mixer.in_proj):
            conv = self.mixer.in_proj_conv(hidden, conv_state, inplace)
            fused = add_norm_in_proj(hidden, residual, self.norm, self.mixer.in_proj,
                                     self.residual_in_fp32, conv=conv)
        if fused is None:
            normed, residual = self.add_norm(hidden, residual)
        else:
            projected, residual = fused
        out_fold = None
        if next_norm is not None:
            dtype = torch.float32 if self.residual_in_fp32 else residual.dtype
            next_residual = torch.empty(residual.shape, dtype=dtype, device=residual.device)
            out_fold = dict(next_norm=(residual, next_norm.weight, next_residual))
        if fused is None:
            out, conv, ssm = self.mixer.step(normed, conv_state, ssm_state, inplace, out_fold=out_fold)
        else:
            out, conv, ssm = self.mixer.step(None, conv_state, ssm_state, inplace, projected=projected,
                                             conv=conv, out_fold=out_fold)
        if next_norm is not None:
            return NormedRows(*out), next_residual, conv, ssm
        return out, residual, conv, ssm

    def add_norm(self, hidden: Tensor, residual: Tensor | None) -> tuple[Tensor, Tensor]:
        if _eager_cuda(hidden):
            from .kernels.rmsnorm import add_rmsnorm_fwd

            return add_rmsnorm_fwd(hidden, residual, self.norm.weight, self.norm.eps,
                                   self.residual_in_fp32, early_residual=_dispatch.EARLY_READS)
        residual = hidden if residual is None else hidden + residual
        normed = self.norm(residual.to(self.norm.weight.dtype))
        if self.residual_in_fp32:
            residual = residual.float()
        return normed, residual


class Backbone(nn.Module):
    def __init__(self, cfg: MambaConfig, device=None, dtype=None):
        super().__init__()
        self.embedding = nn.Embedding(cfg.padded_vocab_size, cfg.d_model, device=device, dtype=dtype)
        self.layers = nn.ModuleList(Block(cfg, i, device=device, dtype=dtype) for i in range(cfg.n_layer))
        self.norm_f = RMSNorm(cfg.d_model, cfg.norm_epsilon, device=device, dtype=dtype)

    def final_norm(self, hidden: Tensor, residual: Tensor | None) -> Tensor:
        if _eager_cuda(hidden):
            from .kernels.rmsnorm import add_rmsnorm_fwd

            return add_rmsnorm_fwd(hidden, residual, self.norm_f.weight, self.norm_f.eps, False,
                                   early_residual=_dispatch.EARLY_READS)[0]
        residual = hidden if residual is None else hidden + residual
        return self.norm_f(residual.to(self.norm_f.weight.dtype))


class MambaLM(GenerationMixin, nn.Module):
    """Mamba language model: ``forward`` (full sequence), ``prefill`` and ``step`` (decode)."""

    supports_inplace_step = True

    def __init__(self, cfg: MambaConfig, device=None, dtype=None, initialize: bool = True):
        super().__init__()
        self.config = cfg
        self.backbone = Backbone(cfg, device=device, dtype=dtype)
        self.lm_head = nn.Linear(cfg.d_model, cfg.padded_vocab_size, bias=False, device=device, dtype=dtype)
        if cfg.tie_embeddings:
            self.lm_head.weight = self.backbone.embedding.weight
        if initialize:
            self.reset_parameters()

    # ------------------------------------------------------------------ construction
    @torch.no_grad()
    def reset_parameters(self) -> None:
        """mamba_ssm's init: embeddings N(0, 0.02), Linear biases 0, out_proj scaled by
        1/sqrt(n_layer) after Kaiming init, SSM parameters as in the mixer."""
        nn.init.normal_(self.backbone.embedding.weight, std=0.02)
        for block in self.backbone.layers:
            mixer = block.mixer
            for lin in mixer.linears():
                lin.reset_parameters()
                if lin.bias is not None:
                    nn.init.zeros_(lin.bias)
            mixer.conv1d.reset_parameters()
            mixer.reset_ssm_parameters()
            nn.init.kaiming_uniform_(mixer.out_proj.weight, a=math.sqrt(5))
            mixer.out_proj.weight /= math.sqrt(self.config.n_layer)
            block.norm.weight.fill_(1.0)
        self.backbone.norm_f.weight.fill_(1.0)
        if not self.config.tie_embeddings:
            self.lm_head.reset_parameters()

    @classmethod
    def from_pretrained(cls, path, dtype: torch.dtype | None = None, device=None) -> "MambaLM":
        """Load a local checkpoint directory (transformers Mamba/Mamba2 or mamba_ssm format)."""
        from .checkpoint import load_pretrained

        return load_pretrained(path, dtype=dtype, device=device)

    @classmethod
    def from_transformers(cls, hf_model) -> "MambaLM":
        """Wrap an in-memory transformers ``MambaForCausalLM`` / ``Mamba2ForCausalLM``, sharing its
        weights (no copy)."""
        from .checkpoint import from_transformers

        return from_transformers(hf_model)

    def save_pretrained(self, path, format: str = "transformers") -> None:
        """Write safetensors + config.json that this package and ``transformers`` both load
        (``format="mamba_ssm"``: mamba_ssm's config and key names)."""
        from .checkpoint import save_pretrained

        save_pretrained(self, path, format=format)

    @property
    def dtype(self) -> torch.dtype:
        return self.backbone.embedding.weight.dtype

    @property
    def state_dtype(self) -> torch.dtype:
        """SSM state precision: float32 (float64 for a float64 model, the exact reference)."""
        return torch.float64 if self.dtype == torch.float64 else torch.float32

    @property
    def device(self) -> torch.device:
        return self.backbone.embedding.weight.device

    # ------------------------------------------------------------------ state
    def new_state(self, batch_size: int, device=None, dtype: torch.dtype | None = None) -> MambaState:
        """Zero state for ``batch_size`` sequences (conv in the model dtype, ssm in float32)."""
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
        cfg = self.config
        device = self.device if device is None else device
        dtype = self.dtype if dtype is None else dtype
        conv_shape, ssm_shape = cfg.state_shapes(batch_size)
        conv = torch.zeros(conv_shape, device=device, dtype=dtype)
        ssm = torch.zeros(ssm_shape, device=device, dtype=self.state_dtype)
        return MambaState(conv, ssm)

    def _check_ids(self, ids: Tensor, rank: int, what: str) -> None:
        if not isinstance(ids, Tensor):
            raise TypeError(f"{what} must be a torch.Tensor of token ids, got {type(ids).__name__}")
        if ids.dtype not in (torch.int64, torch.int32):
            raise TypeError(f"{what} must be int64 or int32 token ids, got {ids.dtype}")
        if ids.dim() != rank:
            shape = "[batch, length]" if rank == 2 else "[batch]"
            raise ValueError(f"{what} must be {shape}, got shape {list(ids.shape)}")
        if ids.device != self.device:
            raise ValueError(f"{what} is on {ids.device} but the model is on {self.device}")

    def _check_state(self, state: MambaState, batch: int) -> None:
        if not (isinstance(state, tuple) and len(state) == 2):
            raise TypeError("state must be a MambaState(conv, ssm) as returned by new_state()")
        cfg = self.config
        conv, ssm = state
        want_conv, want_ssm = cfg.state_shapes(batch)
        if tuple(conv.shape) != want_conv:
            raise ValueError(f"conv state must be {list(want_conv)}, got {list(conv.shape)}")
        if tuple(ssm.shape) != want_ssm:
            raise ValueError(f"ssm state must be {list(want_ssm)}, got {list(ssm.shape)}")
        if ssm.dtype != self.state_dtype:
            raise TypeError(f"ssm state must be {self.state_dtype}, got {ssm.dtype}")
        if conv.dtype != self.dtype:
            raise TypeError(f"conv state must be in the model dtype {self.dtype}, got {conv.dtype}")
        if conv.device != self.device or ssm.device != self.device:
            raise ValueError(f"state must be on {self.device}, got conv on {conv.device}, ssm on {ssm.device}")

    # ------------------------------------------------------------------ compute
    def _run(self, input_ids: Tensor, state: MambaState | None) -> tuple[Tensor, MambaState | None]:
        hidden = self.backbone.embedding(input_ids)
        residual = None
        convs, ssms = [], []
        for i, block in enumerate(self.backbone.layers):
            normed, residual = block.add_norm(hidden, residual)
            conv_i = None if state is None else state.conv[i]
            ssm_i = None if state is None else state.ssm[i]
            hidden, conv_i, ssm_i = block.mixer(normed, conv_i, ssm_i)
            convs.append(conv_i)
            ssms.append(ssm_i)
        hidden = self.backbone.final_norm(hidden, residual)
        new_state = MambaState(torch.stack(convs), torch.stack(ssms))
        return hidden, new_state

    def forward(self, input_ids: Tensor) -> Tensor:
        """Logits ``[B, L, V]`` for a whole sequence from a zero state."""
        self._check_ids(input_ids, 2, "input_ids")
        hidden, _ = self._run(input_ids, None)
        return self.lm_head(hidden)

    def prefill(self, input_ids: Tensor, state: MambaState) -> tuple[Tensor, MambaState]:
        """Consume ``input_ids [B, L]`` from ``state``; logits of the last position ``[B, V]``."""
        self._check_ids(input_ids, 2, "input_ids")
        if input_ids.shape[1] < 1:
            raise ValueError("prefill needs at least one token per sequence (L >= 1)")
        self._check_state(state, input_ids.shape[0])
        hidden, new_state = self._run(input_ids, MambaState(*state))
        return self.lm_head(hidden[:, -1]), new_state

    def step(self, token_ids: Tensor, state: MambaState,
             inplace: bool = False) -> tuple[Tensor, MambaState]:
        """One decode step: ``token_ids [B]`` -> logits ``[B, V]`` and the next state.

        ``inplace=True`` updates ``state``'s tensors and returns them (the CUDA-graph decode
        path: no state copies); the default leaves ``state`` untouched (the exported graph)."""
        self._check_ids(token_ids, 1, "token_ids")
        self._check_state(state, token_ids.shape[0])
        backbone = self.backbone
        eager = _eager_cuda(token_ids) and _eager_cuda(backbone.embedding.weight)
        if eager:
            from .kernels.embedding import embedding_fwd

            hidden = embedding_fwd(token_ids, backbone.embedding.weight)
        else:
            hidden = backbone.embedding(token_ids)
        residual = None
        convs, ssms = [], []
        layers = backbone.layers
        for i, block in enumerate(layers):
            nxt = layers[i + 1] if i + 1 < len(layers) else None
            hand_off = eager and nxt is not None and hands_off_norm(
                hidden if isinstance(hidden, Tensor) else hidden.weighted, block.mixer.out_proj,
                nxt.mixer.in_proj, nxt.norm)
            hidden, residual, conv_i, ssm_i = block.step(hidden, residual, state.conv[i], state.ssm[i],
                                                         inplace, next_norm=nxt.norm if hand_off else None)
            convs.append(conv_i)
            ssms.append(ssm_i)
        next_state = MambaState(state.conv, state.ssm) if inplace else \
            MambaState(torch.stack(convs), torch.stack(ssms))
        hidden = backbone.final_norm(hidden, residual)
        logits = decode_linear(hidden, self.lm_head, lm_head=True) if eager else self.lm_head(hidden)
        return logits, next_state

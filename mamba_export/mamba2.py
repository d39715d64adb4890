"""The Mamba-2 (SSD) mixer, with mamba_ssm's parameter names (``in_proj``, ``conv1d``,
``dt_bias``, ``A_log``, ``D``, ``norm``, ``out_proj``), so mamba_ssm and transformers
``Mamba2ForCausalLM`` checkpoints load as they are.

in_proj -> [z0, x0 | z | xBC | dt]; causal conv + SiLU over xBC (x, B, C together: d_ssm + 2*G*N
channels); SSD scan over heads (``torch.ops.mamba_export.ssd_scan``; decode:
``ssd_state_update``); gated RMSNorm of y with z (per group of d_ssm/ngroups channels); the
optional gated-MLP branch silu(z0) * x0 when d_ssm < d_inner; out_proj.

State per layer: conv ``[B, d_ssm + 2*G*N, d_conv - 1]`` (model dtype), ssm ``[B, H, P, N]``
(float32; float64 for a float64 model).
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from . import _dispatch, ops  # noqa: F401  (ops registers torch.ops.mamba_export.*)
from ._dispatch import _eager_cuda, _kernel_takes, cached_params, decode_linear, in_proj_conv, refuse_out_fold
from .config import MambaConfig


class RMSNormGated(nn.Module):
    """mamba_ssm's ``RMSNormGated``: RMS norm over groups of ``group_size`` channels, with the
    gate ``silu(z)`` applied before (``norm_before_gate=False``, the Mamba2 default) or after
    the norm. Computed in float32 (float64 for float64 inputs), as mamba_ssm's reference."""

    def __init__(self, dim: int, eps: float, group_size: int, norm_before_gate: bool,
                 device=None, dtype=None):
        super().__init__()
        self.eps, self.group_size, self.norm_before_gate = eps, group_size, norm_before_gate
        self.weight = nn.Parameter(torch.ones(dim, device=device, dtype=dtype))

    def forward(self, x: Tensor, z: Tensor | None = None) -> Tensor:
        cdt = torch.float64 if x.dtype == torch.float64 else torch.float32
        xf = x.to(cdt)
        gate = None if z is None else F.silu(z.to(cdt))
        if gate is not None and not self.norm_before_gate:
            xf = xf * gate
        grouped = xf.unflatten(-1, (-1, self.group_size))
        grouped = grouped * torch.rsqrt(grouped.pow(2).mean(-1, keepdim=True) + self.eps)
        out = grouped.flatten(-2) * self.weight.to(cdt)
        if gate is not None and self.norm_before_gate:
            out = out * gate
        return out.to(x.dtype)


class Mamba2Mixer(nn.Module):
    """Mamba-2 mixer (mamba_ssm ``Mamba2``; ``learnable_init_states`` unsupported)."""

    def __init__(self, cfg: MambaConfig, layer_idx: int = 0, device=None, dtype=None):
        super().__init__()
        kw = dict(device=device, dtype=dtype)
        self.cfg = cfg
        self.layer_idx = layer_idx
        d_ssm, heads = cfg.resolved_d_ssm, cfg.nheads
        self.in_proj = nn.Linear(cfg.d_model, cfg.d_in_proj, bias=cfg.bias, **kw)
        self.conv1d = nn.Conv1d(cfg.conv_dim, cfg.conv_dim, cfg.d_conv, groups=cfg.conv_dim,
                                padding=cfg.d_conv - 1, bias=cfg.conv_bias, **kw)
        self.dt_bias = nn.Parameter(torch.empty(heads, **kw))
        self.A_log = nn.Parameter(torch.empty(heads, **kw))
        self.D = nn.Parameter(torch.empty(d_ssm if cfg.D_has_hdim else heads, **kw))
        if cfg.rmsnorm:
            self.norm = RMSNormGated(d_ssm, cfg.norm_epsilon, d_ssm // cfg.ngroups,
                                     cfg.norm_before_gate, **kw)
        self.out_proj = nn.Linear(cfg.d_inner, cfg.d_model, bias=cfg.bias, **kw)
        self._dt_limit = [float(v) for v in cfg.dt_limit] if cfg.has_dt_limit else None

    def linears(self) -> tuple[nn.Linear, ...]:
        return (self.in_proj, self.out_proj)

    @torch.no_grad()
    def reset_ssm_parameters(self) -> None:
        """mamba_ssm's init: softplus(dt_bias) log-uniform in [dt_min, dt_max] (floored),
        A uniform in A_init_range (stored as log), D = 1, norm weight 1."""
        cfg = self.cfg
        heads = cfg.nheads
        log_min, log_max = math.log(cfg.dt_min), math.log(cfg.dt_max)
        dt = torch.exp(torch.rand(heads) * (log_max - log_min) + log_min).clamp(min=cfg.dt_init_floor)
        self.dt_bias.copy_(dt + torch.log(-torch.expm1(-dt)))  # inverse softplus
        self.A_log.copy_(torch.log(torch.empty(heads).uniform_(*cfg.A_init_range)))
        self.D.fill_(1.0)
        if self.cfg.rmsnorm:
            self.norm.weight.fill_(1.0)

    def _A(self) -> Tensor:
        dt = torch.float64 if self.A_log.dtype == torch.float64 else torch.float32
        return -torch.exp(self.A_log.to(dt))

    def _D(self) -> Tensor:
        return self.D.view(self.cfg.nheads, self.cfg.headdim) if self.cfg.D_has_hdim else self.D

    def _ssm_params(self) -> tuple[Tensor, Tensor, Tensor]:
        """A, D, dt_bias in the state precision, cached in eager inference (as Mamba-1's):
        the eager CUDA decode step then launches no kernels for them."""
        def compute():
            dt = torch.float64 if self.A_log.dtype == torch.float64 else torch.float32
            return -torch.exp(self.A_log.to(dt)), self._D().to(dt), self.dt_bias.to(dt)

        return cached_params(self, (self.A_log, self.D, self.dt_bias), compute)

    def _split(self, zxbcdt: Tensor):
        cfg = self.cfg
        return torch.split(zxbcdt, [cfg.d_mlp, cfg.d_mlp, cfg.resolved_d_ssm, cfg.conv_dim, cfg.nheads], dim=-1)

    def _gate(self, y: Tensor, z: Tensor, z0: Tensor, x0: Tensor) -> Tensor:
        """out_proj's input: the gated norm of y, after the gated-MLP branch when there is one."""
        if self.cfg.rmsnorm:
            y = self.norm(y, z)
        if self.cfg.d_mlp > 0:
            y = torch.cat([F.silu(z0) * x0, y], dim=-1)
        return y

    def _finish(self, y: Tensor, z: Tensor, z0: Tensor, x0: Tensor) -> Tensor:
        return self.out_proj(self._gate(y, z, z0, x0))

    def forward(self, hidden: Tensor, conv_state: Tensor | None = None,
                ssm_state: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor]:
        """hidden ``[B, L, d_model]`` -> (out ``[B, L, d_model]``, conv_state', ssm_state')."""
        kernels = _eager_cuda(hidden) and hidden.dtype != torch.float64  # float64: the exact reference
        return self._forward(hidden, conv_state, ssm_state, kernels)

    def _forward(self, hidden: Tensor, conv_state: Tensor | None, ssm_state: Tensor | None,
                 kernels: bool) -> tuple[Tensor, Tensor, Tensor]:
        """``forward`` through the ops (what compile / export / training see) or, ``kernels``,
        with the Triton launchers called directly (eager CUDA inference; tests also run it on
        CPU in the interpreter): the same kernels without the op dispatch's host time, plus the
        one-kernel gated norm."""
        cfg = self.cfg
        batch, length = hidden.shape[0], hidden.shape[1]
        H, P, G, N = cfg.nheads, cfg.headdim, cfg.ngroups, cfg.d_state
        if kernels:
            from .kernels.causal_conv1d import causal_conv1d_fwd as conv
            from .kernels.ssd_scan import ssd_scan_fwd

            A, D, dt_bias = self._ssm_params()
            scan = lambda x, dt, B, C, z, h0: ssd_scan_fwd(  # noqa: E731
                x, dt, A, B, C, D, z, dt_bias, h0, True, self._dt_limit)
            finish = self._norm_out
        else:
            conv = torch.ops.mamba_export.causal_conv1d
            scan = lambda x, dt, B, C, z, h0: torch.ops.mamba_export.ssd_scan(  # noqa: E731
                x, dt, self._A(), B, C, cfg.chunk_size, self._D(), z, self.dt_bias, h0, True,
                self._dt_limit)
            finish = self._finish
        z0, x0, z, xBC, dt = self._split(self.in_proj(hidden))
        xBC, conv_state = conv(xBC.transpose(1, 2), self.conv1d.weight.squeeze(1), self.conv1d.bias,
                               conv_state, True)
        x, B, C = torch.split(xBC.transpose(1, 2), [cfg.resolved_d_ssm, G * N, G * N], dim=-1)
        y, ssm_state = scan(x.reshape(batch, length, H, P), dt, B.reshape(batch, length, G, N),
                            C.reshape(batch, length, G, N),
                            None if cfg.rmsnorm else z.reshape(batch, length, H, P), ssm_state)
        return finish(y.reshape(batch, length, -1), z, z0, x0), conv_state, ssm_state

    def in_proj_conv(self, x_like: Tensor, conv_state: Tensor, inplace: bool) -> tuple | None:
        """The conv folded into in_proj's decode kernel (``_dispatch.in_proj_conv``; xBC
        follows z0, x0 and z), or None where it does not apply."""
        cfg = self.cfg
        return in_proj_conv(x_like, self.in_proj, self.conv1d, conv_state,
                            2 * cfg.d_mlp + cfg.resolved_d_ssm, inplace)

    def step(self, hidden: Tensor | None, conv_state: Tensor, ssm_state: Tensor,
             inplace: bool = False, projected: Tensor | None = None,
             conv: tuple | None = None, out_fold: dict | None = None) -> tuple[Tensor, Tensor, Tensor]:
        """hidden ``[B, d_model]`` -> (out ``[B, d_model]``, conv_state', ssm_state');
        ``inplace`` writes the new states into the given ones and returns those (on eager CUDA
        the kernels write there directly: no copies). ``projected``: in_proj's output, already
        computed (Block.step, eager CUDA), hidden then unused; with ``conv`` (the
        ``in_proj_conv`` it was computed with) its xBC columns are already silu(conv).
        ``out_fold``: out_proj's decode_linear_fwd folds (Block.step's ``next_norm``)."""
        # (float64 keeps the op path: the exact reference)
        if projected is not None or (_eager_cuda(hidden) and hidden.dtype != torch.float64):
            return self._step_kernels(hidden, conv_state, ssm_state, inplace, projected, conv, out_fold or {})
        refuse_out_fold(out_fold)
        cfg = self.cfg
        batch = hidden.shape[0]
        H, P, G, N = cfg.nheads, cfg.headdim, cfg.ngroups, cfg.d_state
        z0, x0, z, xBC, dt = self._split(self.in_proj(hidden))
        xBC, new_conv = torch.ops.mamba_export.causal_conv1d_update(
            xBC, conv_state, self.conv1d.weight.squeeze(1), self.conv1d.bias, True)
        x, B, C = torch.split(xBC, [cfg.resolved_d_ssm, G * N, G * N], dim=-1)
        y, new_ssm = torch.ops.mamba_export.ssd_state_update(
            ssm_state, x.reshape(batch, H, P), dt, self._A(), B.reshape(batch, G, N),
            C.reshape(batch, G, N), self._D(), None if cfg.rmsnorm else z.reshape(batch, H, P),
            self.dt_bias, True, self._dt_limit)
        if inplace:
            new_conv = conv_state.copy_(new_conv)
            new_ssm = ssm_state.copy_(new_ssm)
        return self._finish(y.reshape(batch, -1), z, z0, x0), new_conv, new_ssm

    def _step_kernels(self, hidden: Tensor | None, conv_state: Tensor, ssm_state: Tensor,
                      inplace: bool, projected: Tensor | None = None, conv: tuple | None = None,
                      out_fold: dict | None = None) -> tuple[Tensor, Tensor, Tensor]:
        """``step`` with the Triton launchers called directly (eager CUDA; tests also run it
        on CPU, in Triton's interpreter); states written in place when ``inplace``, A/D/dt_bias
        cached. Decode is launch-bound: each kernel saved counts. Where in_proj's kernel reads
        its weight in one tile, the conv runs in its epilogue (``in_proj_conv``) and, with the
        gate-first RMSNorm and out_proj on the kernel too, the norm is folded into the state
        update and out_proj: three kernels (``_step_folded``). Else: in_proj, conv + SSD state
        update in one kernel, the gated norm (which also shifts the conv state), out_proj."""
        from .kernels.ssd_update import ssd_conv_state_update_fwd

        cfg = self.cfg
        batch = conv_state.shape[0]
        if projected is None:
            conv = self.in_proj_conv(hidden, conv_state, inplace)
            projected = decode_linear(hidden, self.in_proj, conv=conv)
        out_fold = out_fold or {}
        if conv is not None:
            return self._step_folded(projected, conv[4], ssm_state, inplace, out_fold)
        A, D, dt_bias = self._ssm_params()
        z0, x0, z, xBC, dt = self._split(projected)
        y, new_ssm = ssd_conv_state_update_fwd(
            ssm_state, xBC, conv_state, self.conv1d.weight.squeeze(1), self.conv1d.bias, dt, A,
            cfg.ngroups, D, None if cfg.rmsnorm else z.reshape(batch, cfg.nheads, cfg.headdim),
            dt_bias, True, self._dt_limit, out_state=ssm_state if inplace else None,
            early_state=_dispatch.EARLY_READS)
        y = y.reshape(batch, -1)
        new_conv = conv_state if inplace else torch.empty_like(conv_state)
        if not cfg.rmsnorm:
            from .kernels.causal_conv1d import conv_state_commit_fwd

            conv_state_commit_fwd(xBC, conv_state, new_conv)
            return decode_linear(self._gate(y, z, z0, x0), self.out_proj, **out_fold), new_conv, new_ssm
        return self._norm_out(y, z, z0, x0, (xBC, conv_state, new_conv), out_fold), new_conv, new_ssm

    def _step_folded(self, projected: Tensor, new_conv: Tensor, ssm_state: Tensor,
                     inplace: bool, out_fold: dict) -> tuple[Tensor, Tensor, Tensor]:
        """The rest of the kernel step after an in_proj whose epilogue ran the conv: the SSD
        state update on the conv's output; then, with the gate-first norm and out_proj on the
        decode_linear kernel, the state update gates y and writes the norm's partial sums and
        out_proj applies the norm (no norm kernel), else the gated norm kernel and out_proj."""
        from .kernels.ssd_update import ssd_state_update_fwd

        cfg = self.cfg
        batch, H, P, G, N = projected.shape[0], cfg.nheads, cfg.headdim, cfg.ngroups, cfg.d_state
        A, D, dt_bias = self._ssm_params()
        z0, x0, z, xBC, dt = self._split(projected)
        x, B, C = torch.split(xBC, [cfg.resolved_d_ssm, G * N, G * N], dim=-1)
        # (several norm groups: out_proj scales its operand per column, fine for one row; on
        # a one-tile tensor-core operand that made Triton 3.6 spill, so batches keep the kernel)
        fold_norm = cfg.rmsnorm and not cfg.norm_before_gate and cfg.d_mlp == 0 and \
            (G == 1 or batch == 1) and _kernel_takes(x, self.out_proj)
        gate = z.view(batch, H, P) if fold_norm or not cfg.rmsnorm else None
        outs = ssd_state_update_fwd(
            ssm_state, x.view(batch, H, P), dt, A, B.view(batch, G, N), C.view(batch, G, N), D, gate,
            dt_bias, True, self._dt_limit, out_state=ssm_state if inplace else None,
            early_state=_dispatch.EARLY_READS, norm_weight=self.norm.weight if fold_norm else None)
        y, new_ssm = outs[0].view(batch, -1), outs[1]
        if fold_norm:
            sums = outs[2].view(batch, G, -1)  # head h's sums in norm group h // (H / G)
            out = decode_linear(y, self.out_proj, row_norm=(sums, self.norm.eps), **out_fold)
        elif cfg.rmsnorm:
            out = self._norm_out(y, z, z0, x0, out_fold=out_fold)
        else:
            out = decode_linear(self._gate(y, z, z0, x0), self.out_proj, **out_fold)
        return out, new_conv, new_ssm

    def _norm_out(self, y: Tensor, z: Tensor, z0: Tensor, x0: Tensor, conv_commit=None,
                  out_fold: dict | None = None) -> Tensor:
        """``_finish`` with the gated norm as one Triton kernel (eager CUDA / interpreter) and,
        for one decode row, out_proj as the Triton GEMV; ``conv_commit`` is passed on to the
        norm (decode), ``out_fold`` to out_proj's decode_linear (decode)."""
        from .kernels.gated_rmsnorm import gated_rmsnorm_fwd

        out_fold = out_fold or {}
        if not self.cfg.rmsnorm:
            return decode_linear(self._gate(y, z, z0, x0), self.out_proj, **out_fold)
        norm, d_mlp = self.norm, self.cfg.d_mlp
        # with a gated-MLP branch the norm writes the right-hand columns of out_proj's input
        full = y.new_empty(*y.shape[:-1], self.cfg.d_inner) if d_mlp else None
        y = gated_rmsnorm_fwd(y, z, norm.weight, norm.eps, norm.group_size, norm.norm_before_gate,
                              out=None if full is None else full[..., d_mlp:], conv_commit=conv_commit)
        if d_mlp:
            torch.mul(F.silu(z0), x0, out=full[..., :d_mlp])
            y = full
        return decode_linear(y, self.out_proj, **out_fold)

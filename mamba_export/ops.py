"""The ops, registered with ``torch.library`` as ``torch.ops.mamba_export.*``.

Each public op is a ``triton_op``: on CUDA its body launches the Triton kernels of
``mamba_export.kernels`` through ``wrap_triton`` (so Inductor sees and can schedule them); on
any other device it calls a private opaque op that runs the reference math. The private op keeps
CPU graphs small and shape-generic (the reference's loop over time is never unrolled into a
traced graph). ``torch.export`` keeps the public ops as single nodes.

With ``TRITON_INTERPRET=1`` in the environment, eager calls on CPU tensors run the Triton kernels
in Triton's interpreter: that is how CI exercises the kernels without a GPU. Traced calls (fake
tensors, ``torch.compile``) always take the reference branch on CPU. One exception on CUDA: the
scan's Gluon kernel cannot be scheduled by Inductor, so compiled code reaches it through the
opaque op ``_selective_scan_gluon`` (see ``kernels.selective_scan.gluon_for_inductor``). Under
``torch.export`` and AOTInductor the Triton branches choose their kernels from the example
sizes without recording guards, so exported programs keep batch and length dynamic
(``_kernel_choice``).

The mamba_ssm-compatible wrappers (same argument names, order and layouts) are at the bottom.
"""

from __future__ import annotations

import contextlib
import functools
import os

import torch
from torch import Tensor
from torch.library import custom_op, register_fake, triton_op

from . import reference as ref

_FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)


# --------------------------------------------------------------------------- dispatch helpers
@functools.lru_cache(maxsize=None)
def triton_available() -> bool:
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True


def _runs_triton(t: Tensor) -> bool:
    """CUDA tensors run Triton; eager CPU tensors do too under ``TRITON_INTERPRET=1``."""
    if t.device.type == "cuda":
        return True
    return (
        t.device.type == "cpu"
        and type(t) is torch.Tensor  # not a fake/functional tensor: eager call
        and os.environ.get("TRITON_INTERPRET") == "1"
        and t.dtype != torch.float64  # the interpreter path mirrors the GPU's dtypes
        and triton_available()
    )


def _kernel_choice(t: Tensor):
    """Context for a Triton branch's launcher call. The launchers pick kernels and block sizes
    from the sizes (scan_config, launch_config, ...); traced by ``torch.export`` or
    AOTInductor on symbolic sizes, each such comparison records a guard that narrows the
    program's dynamic range (export of a CUDA model's prefill raised ConstraintViolationError:
    guards "length <= 8191", "batch < 33/4"). Every choice computes the same values, so there
    the comparisons read the example sizes and record no guard: the program launches the
    kernels chosen for its example inputs, at every size. ``torch.compile`` keeps its guards (a
    size across a threshold recompiles with the kernels chosen for it)."""
    sym = next((s for s in t.shape if isinstance(s, torch.SymInt)), None)
    if sym is None:  # (eager calls: concrete sizes)
        return contextlib.nullcontext()
    from torch._inductor.virtualized import V

    if not (torch.compiler.is_exporting() or V.aot_compilation):
        return contextlib.nullcontext()
    return sym.node.shape_env.suppress_guards()


def _check(cond: bool, msg: str) -> None:
    if not cond:
        raise ValueError(msg)


def _check_float(name: str, t: Tensor | None) -> None:
    if t is not None:
        _check(t.dtype in _FLOAT_DTYPES, f"{name} must be a floating tensor, got {t.dtype}")


def _check_same_device(**tensors: Tensor | None) -> None:
    devices = {name: t.device for name, t in tensors.items() if t is not None}
    if len(set(devices.values())) > 1:
        listing = ", ".join(f"{n} on {d}" for n, d in devices.items())
        raise ValueError(f"all tensors must be on one device: {listing}")


def _check_bc(name: str, t: Tensor, batch: int, dim: int, dstate: int, tail: tuple[int, ...]) -> None:
    """B/C are ``[B, N, *tail]`` or grouped ``[B, G, N, *tail]`` with G dividing dim."""
    if t.dim() == 2 + len(tail):
        _check(tuple(t.shape) == (batch, dstate, *tail),
               f"{name} must be [batch, d_state{', L' if tail else ''}] = "
               f"{[batch, dstate, *tail]}, got {list(t.shape)}")
    elif t.dim() == 3 + len(tail):
        groups = t.shape[1]
        _check(tuple(t.shape) == (batch, groups, dstate, *tail) and groups > 0 and dim % groups == 0,
               f"{name} grouped must be [batch, groups, d_state{', L' if tail else ''}] with groups "
               f"dividing {dim} channels, got {list(t.shape)}")
    else:
        raise ValueError(f"{name} has rank {t.dim()}; expected {2 + len(tail)} or {3 + len(tail)}")


def check_scan_inputs(u, delta, A, B, C, D, z, delta_bias, initial_state) -> None:
    _check(u.dim() == 3, f"u must be [batch, dim, L], got shape {list(u.shape)}")
    batch, dim, length = u.shape
    for name, t in (("u", u), ("delta", delta), ("A", A), ("B", B), ("C", C), ("D", D), ("z", z),
                    ("delta_bias", delta_bias), ("initial_state", initial_state)):
        _check_float(name, t)
    _check_same_device(u=u, delta=delta, A=A, B=B, C=C, D=D, z=z, delta_bias=delta_bias,
                       initial_state=initial_state)
    _check(tuple(delta.shape) == (batch, dim, length),
           f"delta must match u {list(u.shape)}, got {list(delta.shape)}")
    _check(A.dim() == 2 and A.shape[0] == dim,
           f"A must be [dim, d_state] with dim={dim}, got {list(A.shape)}")
    dstate = A.shape[1]
    _check_bc("B", B, batch, dim, dstate, (length,))
    _check_bc("C", C, batch, dim, dstate, (length,))
    if z is not None:
        _check(tuple(z.shape) == (batch, dim, length), f"z must match u {list(u.shape)}, got {list(z.shape)}")
    for name, t in (("D", D), ("delta_bias", delta_bias)):
        if t is not None:
            _check(tuple(t.shape) == (dim,), f"{name} must be [{dim}], got {list(t.shape)}")
    if initial_state is not None:
        _check(tuple(initial_state.shape) == (batch, dim, dstate),
               f"initial_state must be [{batch}, {dim}, {dstate}], got {list(initial_state.shape)}")


def check_state_update_inputs(state, x, dt, A, B, C, D, z, dt_bias) -> None:
    _check(x.dim() == 2, f"x must be [batch, dim], got shape {list(x.shape)}")
    batch, dim = x.shape
    for name, t in (("state", state), ("x", x), ("dt", dt), ("A", A), ("B", B), ("C", C), ("D", D),
                    ("z", z), ("dt_bias", dt_bias)):
        _check_float(name, t)
    _check_same_device(state=state, x=x, dt=dt, A=A, B=B, C=C, D=D, z=z, dt_bias=dt_bias)
    _check(A.dim() == 2 and A.shape[0] == dim, f"A must be [dim, d_state] with dim={dim}, got {list(A.shape)}")
    dstate = A.shape[1]
    _check(tuple(state.shape) == (batch, dim, dstate),
           f"state must be [{batch}, {dim}, {dstate}], got {list(state.shape)}")
    _check(tuple(dt.shape) == (batch, dim), f"dt must match x {list(x.shape)}, got {list(dt.shape)}")
    _check_bc("B", B, batch, dim, dstate, ())
    _check_bc("C", C, batch, dim, dstate, ())
    if z is not None:
        _check(tuple(z.shape) == (batch, dim), f"z must match x {list(x.shape)}, got {list(z.shape)}")
    for name, t in (("D", D), ("dt_bias", dt_bias)):
        if t is not None:
            _check(tuple(t.shape) == (dim,), f"{name} must be [{dim}], got {list(t.shape)}")


def check_conv_inputs(x, weight, bias, state, *, update: bool) -> None:
    rank = 2 if update else 3
    _check(x.dim() == rank, f"x must be {'[batch, dim]' if update else '[batch, dim, L]'}, got {list(x.shape)}")
    for name, t in (("x", x), ("weight", weight), ("bias", bias), ("conv_state", state)):
        _check_float(name, t)
    _check_same_device(x=x, weight=weight, bias=bias, conv_state=state)
    batch, dim = x.shape[0], x.shape[1]
    _check(weight.dim() == 2 and weight.shape[0] == dim and 2 <= weight.shape[1] <= 4,
           f"weight must be [dim={dim}, width in 2..4], got {list(weight.shape)}")
    width = weight.shape[1]
    if bias is not None:
        _check(tuple(bias.shape) == (dim,), f"bias must be [{dim}], got {list(bias.shape)}")
    if state is not None:
        ok = state.dim() == 3 and tuple(state.shape[:2]) == (batch, dim)
        ok = ok and (state.shape[2] >= width - 1 if update else state.shape[2] == width - 1)
        _check(ok, f"conv state must be [{batch}, {dim}, {'>=' if update else ''}{width - 1}], "
                   f"got {list(state.shape)}")


def _empty_if_none(t: Tensor | None, like: Tensor) -> Tensor:
    return like.new_empty(0) if t is None else t


def _none_if_empty(t: Tensor) -> Tensor | None:
    return None if t.numel() == 0 else t


# --------------------------------------------------------------------------- reference ops (opaque)
@custom_op("mamba_export::_selective_scan_reference", mutates_args=())
def _selective_scan_reference(
    u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Tensor | None, z: Tensor | None,
    delta_bias: Tensor | None, delta_softplus: bool, initial_state: Tensor | None,
) -> tuple[Tensor, Tensor]:
    return ref.selective_scan(u, delta, A, B, C, D, z, delta_bias, delta_softplus, initial_state)


@register_fake("mamba_export::_selective_scan_reference")
def _(u, delta, A, B, C, D, z, delta_bias, delta_softplus, initial_state):
    return torch.empty_like(u, memory_format=torch.contiguous_format), u.new_empty(
        u.shape[0], u.shape[1], A.shape[1], dtype=ref.compute_dtype(u))


@custom_op("mamba_export::_selective_scan_reference_bwd", mutates_args=())
def _selective_scan_reference_bwd(
    u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Tensor | None, z: Tensor | None,
    delta_bias: Tensor | None, delta_softplus: bool, initial_state: Tensor | None,
    dout: Tensor, dlast_state: Tensor | None,
) -> list[Tensor]:
    grads = ref.selective_scan_backward(u, delta, A, B, C, D, z, delta_bias, delta_softplus,
                                        initial_state, dout, dlast_state)
    return [_empty_if_none(g, u).contiguous() for g in grads]


@register_fake("mamba_export::_selective_scan_reference_bwd")
def _(u, delta, A, B, C, D, z, delta_bias, delta_softplus, initial_state, dout, dlast_state):
    return [u.new_empty(0) if t is None else torch.empty_like(t, memory_format=torch.contiguous_format)
            for t in (u, delta, A, B, C, D, z, delta_bias, initial_state)]


@custom_op("mamba_export::_selective_state_update_reference", mutates_args=())
def _selective_state_update_reference(
    state: Tensor, x: Tensor, dt: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Tensor | None,
    z: Tensor | None, dt_bias: Tensor | None, dt_softplus: bool,
) -> tuple[Tensor, Tensor]:
    return ref.selective_state_update(state, x, dt, A, B, C, D, z, dt_bias, dt_softplus)


@register_fake("mamba_export::_selective_state_update_reference")
def _(state, x, dt, A, B, C, D, z, dt_bias, dt_softplus):
    return torch.empty_like(x, memory_format=torch.contiguous_format), torch.empty_like(
        state, memory_format=torch.contiguous_format)


@custom_op("mamba_export::_causal_conv1d_reference", mutates_args=())
def _causal_conv1d_reference(
    x: Tensor, weight: Tensor, bias: Tensor | None, initial_state: Tensor | None, silu: bool,
) -> tuple[Tensor, Tensor]:
    return ref.causal_conv1d(x, weight, bias, initial_state, silu)


@register_fake("mamba_export::_causal_conv1d_reference")
def _(x, weight, bias, initial_state, silu):
    return torch.empty_like(x, memory_format=torch.contiguous_format), x.new_empty(
        x.shape[0], x.shape[1], weight.shape[1] - 1)


@custom_op("mamba_export::_causal_conv1d_update_reference", mutates_args=())
def _causal_conv1d_update_reference(
    x: Tensor, conv_state: Tensor, weight: Tensor, bias: Tensor | None, silu: bool,
) -> tuple[Tensor, Tensor]:
    return ref.causal_conv1d_update(x, conv_state, weight, bias, silu)


@register_fake("mamba_export::_causal_conv1d_update_reference")
def _(x, conv_state, weight, bias, silu):
    return torch.empty_like(x, memory_format=torch.contiguous_format), conv_state.new_empty(
        conv_state.shape, dtype=x.dtype)


# --------------------------------------------------------------------------- kernels, opaque
@custom_op("mamba_export::_selective_scan_gluon", mutates_args=())
def _selective_scan_gluon(
    u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Tensor | None, z: Tensor | None,
    delta_bias: Tensor | None, delta_softplus: bool, initial_state: Tensor | None,
) -> tuple[Tensor, Tensor]:
    """The scan's CUDA kernels called eagerly from compiled code, where they pick the Gluon
    kernel that Inductor cannot schedule itself (kernels.selective_scan.gluon_for_inductor)."""
    from .kernels.selective_scan import selective_scan_fwd

    return selective_scan_fwd(u, delta, A, B, C, D, z, delta_bias, delta_softplus, initial_state)


@register_fake("mamba_export::_selective_scan_gluon")
def _(u, delta, A, B, C, D, z, delta_bias, delta_softplus, initial_state):
    return torch.empty_like(u, memory_format=torch.contiguous_format), u.new_empty(
        u.shape[0], u.shape[1], A.shape[1], dtype=torch.float32)


# --------------------------------------------------------------------------- public ops
@triton_op("mamba_export::selective_scan", mutates_args=())
def selective_scan(
    u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Tensor | None = None,
    z: Tensor | None = None, delta_bias: Tensor | None = None, delta_softplus: bool = False,
    initial_state: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """Selective scan; returns ``(out [B, D, L], last_state [B, D, N] float32)``."""
    check_scan_inputs(u, delta, A, B, C, D, z, delta_bias, initial_state)
    if _runs_triton(u):
        from .kernels.selective_scan import gluon_for_inductor, selective_scan_fwd

        with _kernel_choice(u):
            if gluon_for_inductor(u, delta, A, B, C, initial_state):
                return torch.ops.mamba_export._selective_scan_gluon(
                    u, delta, A, B, C, D, z, delta_bias, delta_softplus, initial_state)
            return selective_scan_fwd(u, delta, A, B, C, D, z, delta_bias, delta_softplus,
                                      initial_state)
    return torch.ops.mamba_export._selective_scan_reference(
        u, delta, A, B, C, D, z, delta_bias, delta_softplus, initial_state)


@triton_op("mamba_export::selective_scan_bwd", mutates_args=())
def selective_scan_bwd(
    u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Tensor | None, z: Tensor | None,
    delta_bias: Tensor | None, delta_softplus: bool, initial_state: Tensor | None,
    dout: Tensor, dlast_state: Tensor | None,
) -> list[Tensor]:
    """Gradients of the scan for (u, delta, A, B, C, D, z, delta_bias, initial_state); an
    empty tensor stands for an input that was None."""
    if _runs_triton(u):
        from .kernels.selective_scan import selective_scan_bwd as kernel_bwd

        with _kernel_choice(u):
            grads = kernel_bwd(u, delta, A, B, C, D, z, delta_bias, delta_softplus, initial_state,
                               dout, dlast_state)
        return [_empty_if_none(g, u).contiguous() for g in grads]
    return torch.ops.mamba_export._selective_scan_reference_bwd(
        u, delta, A, B, C, D, z, delta_bias, delta_softplus, initial_state, dout, dlast_state)


def _scan_setup_context(ctx, inputs, output):
    u, delta, A, B, C, D, z, delta_bias, delta_softplus, initial_state = inputs
    ctx.delta_softplus = delta_softplus
    ctx.save_for_backward(u, delta, A, B, C, D, z, delta_bias, initial_state)


def _scan_backward(ctx, dout, dlast_state):
    u, delta, A, B, C, D, z, delta_bias, initial_state = ctx.saved_tensors
    grads = torch.ops.mamba_export.selective_scan_bwd(
        u, delta, A, B, C, D, z, delta_bias, ctx.delta_softplus, initial_state,
        dout.contiguous(), dlast_state)
    grads = [_none_if_empty(g) for g in grads]
    du, ddelta, dA, dB, dC, dD, dz, ddelta_bias, dinit = grads
    return du, ddelta, dA, dB, dC, dD, dz, ddelta_bias, None, dinit


selective_scan.register_autograd(_scan_backward, setup_context=_scan_setup_context)


@triton_op("mamba_export::selective_state_update", mutates_args=())
def selective_state_update_op(
    state: Tensor, x: Tensor, dt: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Tensor | None = None,
    z: Tensor | None = None, dt_bias: Tensor | None = None, dt_softplus: bool = False,
) -> tuple[Tensor, Tensor]:
    """One decode step of the scan; returns ``(out [B, D], new_state [B, D, N])`` (functional)."""
    check_state_update_inputs(state, x, dt, A, B, C, D, z, dt_bias)
    if _runs_triton(x):
        from .kernels.state_update import selective_state_update_fwd

        with _kernel_choice(x):
            return selective_state_update_fwd(state, x, dt, A, B, C, D, z, dt_bias, dt_softplus)
    return torch.ops.mamba_export._selective_state_update_reference(
        state, x, dt, A, B, C, D, z, dt_bias, dt_softplus)


@triton_op("mamba_export::causal_conv1d", mutates_args=())
def causal_conv1d(
    x: Tensor, weight: Tensor, bias: Tensor | None = None, initial_state: Tensor | None = None,
    silu: bool = False,
) -> tuple[Tensor, Tensor]:
    """Causal depthwise conv; returns ``(out [B, D, L], final_state [B, D, W-1])``."""
    check_conv_inputs(x, weight, bias, initial_state, update=False)
    if _runs_triton(x):
        from .kernels.causal_conv1d import causal_conv1d_fwd

        with _kernel_choice(x):
            return causal_conv1d_fwd(x, weight, bias, initial_state, silu)
    return torch.ops.mamba_export._causal_conv1d_reference(x, weight, bias, initial_state, silu)


def _conv_setup_context(ctx, inputs, output):
    x, weight, bias, initial_state, silu = inputs
    ctx.silu = silu
    ctx.save_for_backward(x, weight, bias, initial_state)


def _conv_backward(ctx, dout, dfinal_state):
    x, weight, bias, initial_state = ctx.saved_tensors
    dx, dweight, dbias, dinit = ref.causal_conv1d_backward(
        x, weight, bias, initial_state, ctx.silu, dout, dfinal_state)
    return dx, dweight, dbias, dinit, None


causal_conv1d.register_autograd(_conv_backward, setup_context=_conv_setup_context)


@triton_op("mamba_export::causal_conv1d_update", mutates_args=())
def causal_conv1d_update_op(
    x: Tensor, conv_state: Tensor, weight: Tensor, bias: Tensor | None = None, silu: bool = False,
) -> tuple[Tensor, Tensor]:
    """One decode step of the conv; returns ``(out [B, D], new_state)`` (functional)."""
    check_conv_inputs(x, weight, bias, conv_state, update=True)
    if _runs_triton(x):
        from .kernels.causal_conv1d import causal_conv1d_update_fwd

        with _kernel_choice(x):
            return causal_conv1d_update_fwd(x, conv_state, weight, bias, silu)
    return torch.ops.mamba_export._causal_conv1d_update_reference(x, conv_state, weight, bias, silu)


# --------------------------------------------------------------------------- Mamba-2 (SSD)
# ``ssd_scan`` (prefill) and ``ssd_state_update`` (decode) have the layouts of mamba_ssm's
# ``mamba_chunk_scan_combined`` and of its Mamba2 decode step, with one head-level decode op:
# dt ``[B, H]``, A ``[H]`` (not the per-channel ``[H, P, N]`` repeat mamba_ssm feeds its
# ``selective_state_update``), so the decode graph carries H scalars per step, not H*P*N.
# On CUDA (and eager CPU under TRITON_INTERPRET=1) both run one Triton kernel each
# (kernels/ssd_scan.py, kernels/ssd_update.py); float64 and plain CPU run the reference math.
def _check_dt_limit(dt_limit) -> None:
    if dt_limit is not None:
        _check(len(dt_limit) == 2 and 0.0 <= dt_limit[0] < dt_limit[1],
               f"dt_limit must be [lo, hi] with 0 <= lo < hi, got {list(dt_limit)}")


def _check_ssd_common(x_name, heads, hdim, A, D, dt_bias, B, C, batch, tail, dt_limit) -> int:
    _check(A.dim() == 1 and A.shape[0] == heads, f"A must be [nheads={heads}], got {list(A.shape)}")
    _check(B.dim() == len(tail) + 3 and tuple(B.shape[:len(tail) + 1]) == (batch, *tail),
           f"B must be [batch, {'L, ' if tail else ''}ngroups, d_state], got {list(B.shape)}")
    groups, dstate = B.shape[-2], B.shape[-1]
    _check(groups > 0 and heads % groups == 0,
           f"B has {groups} groups, which must divide the {heads} heads of {x_name}")
    _check(tuple(C.shape) == tuple(B.shape), f"C must match B {list(B.shape)}, got {list(C.shape)}")
    if D is not None:
        _check(tuple(D.shape) in ((heads,), (heads, hdim)),
               f"D must be [{heads}] or [{heads}, {hdim}], got {list(D.shape)}")
    if dt_bias is not None:
        _check(tuple(dt_bias.shape) == (heads,), f"dt_bias must be [{heads}], got {list(dt_bias.shape)}")
    _check_dt_limit(dt_limit)
    return dstate


def check_ssd_scan_inputs(x, dt, A, B, C, chunk_size, D, z, dt_bias, initial_state, dt_limit) -> None:
    _check(x.dim() == 4, f"x must be [batch, L, nheads, headdim], got shape {list(x.shape)}")
    batch, length, heads, hdim = x.shape
    for name, t in (("x", x), ("dt", dt), ("A", A), ("B", B), ("C", C), ("D", D), ("z", z),
                    ("dt_bias", dt_bias), ("initial_state", initial_state)):
        _check_float(name, t)
    _check_same_device(x=x, dt=dt, A=A, B=B, C=C, D=D, z=z, dt_bias=dt_bias, initial_state=initial_state)
    _check(isinstance(chunk_size, int) and chunk_size >= 1, f"chunk_size must be a positive int, got {chunk_size!r}")
    _check(tuple(dt.shape) == (batch, length, heads), f"dt must be [{batch}, {length}, {heads}], got {list(dt.shape)}")
    dstate = _check_ssd_common("x", heads, hdim, A, D, dt_bias, B, C, batch, (length,), dt_limit)
    if z is not None:
        _check(tuple(z.shape) == tuple(x.shape), f"z must match x {list(x.shape)}, got {list(z.shape)}")
    if initial_state is not None:
        want = (batch, heads, hdim, dstate)
        _check(tuple(initial_state.shape) == want,
               f"initial_state must be {list(want)}, got {list(initial_state.shape)}")


def check_ssd_state_update_inputs(state, x, dt, A, B, C, D, z, dt_bias, dt_limit) -> None:
    _check(x.dim() == 3, f"x must be [batch, nheads, headdim], got shape {list(x.shape)}")
    batch, heads, hdim = x.shape
    for name, t in (("state", state), ("x", x), ("dt", dt), ("A", A), ("B", B), ("C", C), ("D", D),
                    ("z", z), ("dt_bias", dt_bias)):
        _check_float(name, t)
    _check_same_device(state=state, x=x, dt=dt, A=A, B=B, C=C, D=D, z=z, dt_bias=dt_bias)
    _check(tuple(dt.shape) == (batch, heads), f"dt must be [{batch}, {heads}], got {list(dt.shape)}")
    dstate = _check_ssd_common("x", heads, hdim, A, D, dt_bias, B, C, batch, (), dt_limit)
    want = (batch, heads, hdim, dstate)
    _check(tuple(state.shape) == want, f"state must be {list(want)}, got {list(state.shape)}")
    if z is not None:
        _check(tuple(z.shape) == tuple(x.shape), f"z must match x {list(x.shape)}, got {list(z.shape)}")


@custom_op("mamba_export::_ssd_scan_reference", mutates_args=())
def _ssd_scan_reference(
    x: Tensor, dt: Tensor, A: Tensor, B: Tensor, C: Tensor, chunk_size: int, D: Tensor | None,
    z: Tensor | None, dt_bias: Tensor | None, initial_state: Tensor | None, dt_softplus: bool,
    dt_limit: list[float] | None,
) -> tuple[Tensor, Tensor]:
    out, state = ref.ssd_scan(x, dt, A, B, C, chunk_size, D, z, dt_bias, initial_state, dt_softplus, dt_limit)
    return out.contiguous(), state.contiguous()


@register_fake("mamba_export::_ssd_scan_reference")
def _(x, dt, A, B, C, chunk_size, D, z, dt_bias, initial_state, dt_softplus, dt_limit):
    return torch.empty_like(x, memory_format=torch.contiguous_format), x.new_empty(
        x.shape[0], x.shape[2], x.shape[3], B.shape[-1], dtype=ref.compute_dtype(x))


@triton_op("mamba_export::ssd_scan", mutates_args=())
def ssd_scan(
    x: Tensor, dt: Tensor, A: Tensor, B: Tensor, C: Tensor, chunk_size: int = 256,
    D: Tensor | None = None, z: Tensor | None = None, dt_bias: Tensor | None = None,
    initial_state: Tensor | None = None, dt_softplus: bool = False,
    dt_limit: list[float] | None = None,
) -> tuple[Tensor, Tensor]:
    """Mamba-2 chunked SSD scan; returns ``(out [B, L, H, P], final_state [B, H, P, N] float32)``.

    CUDA (and eager CPU under ``TRITON_INTERPRET=1``): one Triton kernel, whose chunk length is
    its own (the result does not depend on ``chunk_size``); float64 runs the reference."""
    check_ssd_scan_inputs(x, dt, A, B, C, chunk_size, D, z, dt_bias, initial_state, dt_limit)
    if _runs_triton(x) and x.dtype != torch.float64:
        from .kernels.ssd_scan import ssd_scan_fwd

        with _kernel_choice(x):
            return ssd_scan_fwd(x, dt, A, B, C, D, z, dt_bias, initial_state, dt_softplus, dt_limit)
    if x.device.type == "cuda":
        out, state = ref.ssd_scan(x, dt, A, B, C, chunk_size, D, z, dt_bias, initial_state,
                                  dt_softplus, dt_limit)
        return out.contiguous(), state.contiguous()
    return torch.ops.mamba_export._ssd_scan_reference(
        x, dt, A, B, C, chunk_size, D, z, dt_bias, initial_state, dt_softplus, dt_limit)


def _ssd_setup_context(ctx, inputs, output):
    x, dt, A, B, C, chunk_size, D, z, dt_bias, initial_state, dt_softplus, dt_limit = inputs
    ctx.chunk_size, ctx.dt_softplus, ctx.dt_limit = chunk_size, dt_softplus, dt_limit
    ctx.save_for_backward(x, dt, A, B, C, D, z, dt_bias, initial_state)


def _ssd_backward(ctx, dout, dfinal_state):
    """Reference backward: autograd through the chunked form (plain torch ops, any device).
    Eager training only: a traced backward (compile/export of training) is not supported yet;
    an explicit SSD backward (and its Triton kernel) is future work."""
    x, dt, A, B, C, D, z, dt_bias, initial_state = ctx.saved_tensors
    dx, ddt, dA, dB, dC, dD, dz, dbias, dinit = ref.ssd_scan_backward(
        x, dt, A, B, C, ctx.chunk_size, D, z, dt_bias, initial_state, ctx.dt_softplus, ctx.dt_limit,
        dout, dfinal_state)
    return dx, ddt, dA, dB, dC, None, dD, dz, dbias, dinit, None, None


ssd_scan.register_autograd(_ssd_backward, setup_context=_ssd_setup_context)


@custom_op("mamba_export::_ssd_state_update_reference", mutates_args=())
def _ssd_state_update_reference(
    state: Tensor, x: Tensor, dt: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Tensor | None,
    z: Tensor | None, dt_bias: Tensor | None, dt_softplus: bool, dt_limit: list[float] | None,
) -> tuple[Tensor, Tensor]:
    out, new_state = ref.ssd_state_update(state, x, dt, A, B, C, D, z, dt_bias, dt_softplus, dt_limit)
    return out.contiguous(), new_state.contiguous()


@register_fake("mamba_export::_ssd_state_update_reference")
def _(state, x, dt, A, B, C, D, z, dt_bias, dt_softplus, dt_limit):
    return torch.empty_like(x, memory_format=torch.contiguous_format), torch.empty_like(
        state, memory_format=torch.contiguous_format)


@triton_op("mamba_export::ssd_state_update", mutates_args=())
def ssd_state_update(
    state: Tensor, x: Tensor, dt: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Tensor | None = None,
    z: Tensor | None = None, dt_bias: Tensor | None = None, dt_softplus: bool = False,
    dt_limit: list[float] | None = None,
) -> tuple[Tensor, Tensor]:
    """One Mamba-2 decode step; returns ``(out [B, H, P], new_state [B, H, P, N])`` (functional).

    CUDA (and eager CPU under ``TRITON_INTERPRET=1``): one Triton kernel for all heads."""
    check_ssd_state_update_inputs(state, x, dt, A, B, C, D, z, dt_bias, dt_limit)
    if _runs_triton(x):
        from .kernels.ssd_update import ssd_state_update_fwd

        with _kernel_choice(x):
            return ssd_state_update_fwd(state, x, dt, A, B, C, D, z, dt_bias, dt_softplus,
                                        dt_limit)
    return torch.ops.mamba_export._ssd_state_update_reference(
        state, x, dt, A, B, C, D, z, dt_bias, dt_softplus, dt_limit)


# --------------------------------------------------------------------------- mamba_ssm-compatible API
def _eager_kernel_call(tensors) -> bool:
    """True when a drop-in may launch the kernel directly: real (not traced) tensors on a
    device that runs Triton, none needing a gradient, half/float32 inputs. Why: the op's
    dispatch is host time that an eager call waits for; on the H100 machine (2026-11-25,
    scripts/bench_scan_host.py, B1 D5120 L2048) a scan call took 187.5 us of host time through
    torch.ops and 118.9 us straight to the launcher, against ~110 us on the GPU."""
    x = tensors[0]
    return (type(x) is Tensor and _runs_triton(x) and x.dtype != torch.float64
            and not torch.compiler.is_compiling()
            and not any(t is not None and t.requires_grad for t in tensors))


def _silu_flag(activation: str | None) -> bool:
    if activation in (None, "identity"):
        return False
    if activation in ("silu", "swish"):
        return True
    raise ValueError(f"activation must be None, 'silu' or 'swish', got {activation!r}")


def selective_scan_fn(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False,
                      return_last_state=False, initial_state=None):
    """Drop-in for ``mamba_ssm.ops.selective_scan_interface.selective_scan_fn`` (real A only),
    plus ``initial_state [B, D, N]``."""
    if _eager_kernel_call((u, delta, A, B, C, D, z, delta_bias, initial_state)):
        from .kernels.selective_scan import selective_scan_fwd

        out, last_state = selective_scan_fwd(u, delta, A, B, C, D, z, delta_bias, bool(delta_softplus),
                                             initial_state)
    else:
        out, last_state = torch.ops.mamba_export.selective_scan(
            u, delta, A, B, C, D, z, delta_bias, bool(delta_softplus), initial_state)
    return (out, last_state) if return_last_state else out


def selective_state_update(state, x, dt, A, B, C, D=None, z=None, dt_bias=None, dt_softplus=False):
    """Drop-in for mamba_ssm's ``selective_state_update``: updates ``state`` in place and
    returns the output ``[B, D]``."""
    if _eager_kernel_call((x, state, dt, A, B, C, D, z, dt_bias)):  # the kernel writes state itself
        from .kernels.state_update import selective_state_update_fwd

        return selective_state_update_fwd(state, x, dt, A, B, C, D, z, dt_bias, bool(dt_softplus),
                                          out_state=state)[0]
    out, new_state = torch.ops.mamba_export.selective_state_update(
        state, x, dt, A, B, C, D, z, dt_bias, bool(dt_softplus))
    state.copy_(new_state)
    return out


def causal_conv1d_fn(x, weight, bias=None, seq_idx=None, initial_states=None,
                     return_final_states=False, final_states_out=None, activation=None):
    """Drop-in for ``causal_conv1d.causal_conv1d_fn`` (no ``seq_idx``)."""
    if seq_idx is not None:
        raise NotImplementedError("seq_idx (packed variable-length sequences) is not supported")
    if _eager_kernel_call((x, weight, bias, initial_states)):
        from .kernels.causal_conv1d import causal_conv1d_fwd

        out, final_state = causal_conv1d_fwd(x, weight, bias, initial_states, _silu_flag(activation))
    else:
        out, final_state = torch.ops.mamba_export.causal_conv1d(
            x, weight, bias, initial_states, _silu_flag(activation))
    if final_states_out is not None:
        final_states_out.copy_(final_state)
        final_state = final_states_out
    return (out, final_state) if return_final_states else out


def causal_conv1d_update(x, conv_state, weight, bias=None, activation=None):
    """Drop-in for ``causal_conv1d.causal_conv1d_update`` with x ``[B, D]`` or ``[B, D, 1]``:
    shifts ``conv_state`` in place and returns the output shaped like x."""
    squeeze = x.dim() == 3
    if squeeze:
        if x.shape[-1] != 1:
            raise ValueError(f"causal_conv1d_update takes one step; x has L={x.shape[-1]}")
        x = x[..., 0]
    if _eager_kernel_call((x, conv_state, weight, bias)):  # the kernel shifts conv_state itself
        from .kernels.causal_conv1d import causal_conv1d_update_fwd

        out = causal_conv1d_update_fwd(x, conv_state, weight, bias, _silu_flag(activation),
                                       out_state=conv_state)[0]
    else:
        out, new_state = torch.ops.mamba_export.causal_conv1d_update(
            x, conv_state, weight, bias, _silu_flag(activation))
        conv_state.copy_(new_state)
    return out.unsqueeze(-1) if squeeze else out


def mamba_chunk_scan_combined(x, dt, A, B, C, chunk_size, D=None, z=None, dt_bias=None,
                              initial_states=None, seq_idx=None, cu_seqlens=None, dt_softplus=False,
                              dt_limit=(0.0, float("inf")), return_final_states=False,
                              return_varlen_states=False):
    """Drop-in for ``mamba_ssm.ops.triton.ssd_combined.mamba_chunk_scan_combined`` (no
    ``seq_idx`` / ``cu_seqlens``): x ``[B, L, H, P]``, dt ``[B, L, H]``, A ``[H]``, B/C
    ``[B, L, G, N]``; returns out, or ``(out, final_states [B, H, P, N])``."""
    if seq_idx is not None or cu_seqlens is not None or return_varlen_states:
        raise NotImplementedError("seq_idx / cu_seqlens (packed variable-length sequences) are not supported")
    limit = None if tuple(dt_limit) == (0.0, float("inf")) else [float(v) for v in dt_limit]
    tensors = (x, dt, A, B, C, D, z, dt_bias, initial_states)
    if _eager_kernel_call(tensors):  # the kernel itself: the op's dispatch costs host time
        from .kernels.ssd_scan import ssd_scan_fwd

        _check_dt_limit(limit)  # the launcher validates the rest
        out, final = ssd_scan_fwd(x, dt, A, B, C, D, z, dt_bias, initial_states, bool(dt_softplus), limit)
    else:
        out, final = torch.ops.mamba_export.ssd_scan(
            x, dt, A, B, C, int(chunk_size), D, z, dt_bias, initial_states, bool(dt_softplus), limit)
    return (out, final) if return_final_states else out


def mamba2_state_update(state, x, dt, A, B, C, D=None, z=None, dt_bias=None, dt_softplus=False,
                        dt_limit=(0.0, float("inf"))):
    """Head-level Mamba-2 decode step, in place on ``state [B, H, P, N]`` (as mamba_ssm's
    ``selective_state_update`` mutates its state); x ``[B, H, P]``, dt ``[B, H]``, A ``[H]``,
    B/C ``[B, G, N]``. Returns the output ``[B, H, P]``."""
    limit = None if tuple(dt_limit) == (0.0, float("inf")) else [float(v) for v in dt_limit]
    if _eager_kernel_call((x, state, dt, A, B, C, D, z, dt_bias)):  # the kernel writes state itself
        from .kernels.ssd_update import ssd_state_update_fwd

        _check_dt_limit(limit)  # the launcher validates the rest
        return ssd_state_update_fwd(state, x, dt, A, B, C, D, z, dt_bias, bool(dt_softplus), limit,
                                    out_state=state)[0]
    out, new_state = torch.ops.mamba_export.ssd_state_update(
        state, x, dt, A, B, C, D, z, dt_bias, bool(dt_softplus), limit)
    state.copy_(new_state)
    return out

"""The Mamba-2 kernels (kernels/ssd_scan.py, kernels/ssd_update.py) against the float64
reference; in Triton's interpreter on CPU, natively on CUDA. Outputs are poisoned (NaN) before
the kernels run."""

import math

import pytest
import torch
from _util import rel_err

from mamba_export import reference as ref
from mamba_export.kernels import _common

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
# bf16/fp16: outputs and the matmul operands round to the input dtype (the output's rounding
# alone is ~1.7e-3 of the norm in bf16). Triton's interpreter rounds float32 -> bfloat16 by
# truncation (twice the error of the GPU's round-to-nearest), so on CPU bf16 gets 1e-2.
TOL = {torch.float32: 1e-5, torch.float16: 5e-3,
       torch.bfloat16: 5e-3 if DEVICE == "cuda" else 1e-2}


@pytest.fixture(autouse=True)
def _poison(monkeypatch):
    monkeypatch.setattr(_common, "POISON", True)


def ssd_inputs(batch, length, heads, headdim, dstate, groups, dtype, d_per_p=False, seed=0):
    """Fresh random Mamba-2 scan inputs at model-like magnitudes (dt raw, before bias/softplus)."""
    g = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=g)  # noqa: E731
    return dict(
        x=r(batch, length, heads, headdim).to(dtype), dt=(r(batch, length, heads) * 0.5 - 1).to(dtype),
        A=-torch.rand(heads, generator=g) * 2 - 0.1, B=r(batch, length, groups, dstate).to(dtype),
        C=r(batch, length, groups, dstate).to(dtype), D=r(heads, headdim) if d_per_p else r(heads),
        z=r(batch, length, heads, headdim).to(dtype), dt_bias=r(heads) * 0.1,
        initial_state=r(batch, heads, headdim, dstate))


SCAN_CASES = [  # batch, L, heads, headdim, dstate, groups, D per channel, dt_limit, config
    (1, 1, 2, 5, 7, 1, False, None, (16, 16, 4, 1)),             # L = 1, batch 1, tiny P and N
    (2, 37, 4, 16, 16, 2, True, (0.01, 0.5), (16, 16, 4, 1)),    # L not a multiple of the chunk, G > 1
    (1, 70, 3, 20, 5, 3, False, (0.0, math.inf), (32, 16, 4, 2)),  # P not a multiple of the block
    (2, 64, 2, 32, 32, 1, False, None, None),                    # default config, L = one chunk
]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("with_z,with_init", [(True, True), (False, False)])
@pytest.mark.parametrize("case", SCAN_CASES)
def test_ssd_scan_kernel(dtype, with_z, with_init, case):
    from mamba_export.kernels.ssd_scan import ssd_scan_fwd

    batch, length, heads, headdim, dstate, groups, d_per_p, limit, config = case
    kw = ssd_inputs(batch, length, heads, headdim, dstate, groups, dtype, d_per_p)
    if not with_z:
        kw["z"] = None
    if not with_init:
        kw["initial_state"] = None
    on = {k: None if v is None else v.to(DEVICE) for k, v in kw.items()}
    out, final = ssd_scan_fwd(**on, dt_softplus=True, dt_limit=limit, config=config)
    want_out, want_final = ref.ssd_scan_loop(
        **{k: None if v is None else v.double() for k, v in kw.items()}, dt_softplus=True, dt_limit=limit)
    assert out.dtype == dtype and final.dtype == torch.float32
    assert rel_err(out.cpu(), want_out) <= TOL[dtype]
    assert rel_err(final.cpu(), want_final) <= TOL[dtype]


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("batch,heads", [(1, 80), (3, 24)])
def test_gpu_ssd_scan_kernel_model_shapes(dtype, batch, heads):
    """The default configurations at mamba2-2.7b / -130m head shapes (P 64, N 128)."""
    from mamba_export.kernels.ssd_scan import ssd_scan_fwd

    kw = ssd_inputs(batch, 333, heads, 64, 128, 1, dtype)
    kw["z"] = None
    out, final = ssd_scan_fwd(**{k: None if v is None else v.cuda() for k, v in kw.items()},
                              dt_softplus=True)
    want_out, want_final = ref.ssd_scan(*(kw[k].double() for k in ("x", "dt", "A", "B", "C")), 64,
                                        kw["D"].double(), None, kw["dt_bias"].double(),
                                        kw["initial_state"].double(), True, None)
    assert rel_err(out.cpu(), want_out) <= TOL[dtype]
    assert rel_err(final.cpu(), want_final) <= TOL[dtype]


def test_ssd_scan_kernel_refuses_miscompiling_config():
    from mamba_export.kernels.ssd_scan import ssd_scan_fwd

    kw = ssd_inputs(1, 5, 2, 16, 16, 1, torch.float32)
    with pytest.raises(ValueError, match="miscompiles on Triton 3.6"):
        ssd_scan_fwd(**kw, config=(64, 16, 4, 1))


def test_ssd_scan_kernel_strided_model_layout():
    """x, B and C as the Mamba-2 mixer passes them: views into one conv output with time stride 1."""
    from mamba_export.kernels.ssd_scan import ssd_scan_fwd

    batch, length, heads, headdim, dstate, groups = 2, 21, 4, 16, 8, 2
    xbc = torch.randn(batch, heads * headdim + 2 * groups * dstate, length).to(DEVICE).transpose(1, 2)
    x, B, C = torch.split(xbc, [heads * headdim, groups * dstate, groups * dstate], dim=-1)
    x = x.reshape(batch, length, heads, headdim)
    B, C = (t.reshape(batch, length, groups, dstate) for t in (B, C))
    dt = torch.randn(batch, 3 * length, heads, device=DEVICE)[:, ::3]
    A = -torch.rand(heads, device=DEVICE) - 0.1
    out, final = ssd_scan_fwd(x, dt, A, B, C, dt_softplus=True)
    want_out, want_final = ref.ssd_scan_loop(*(t.cpu().double() for t in (x, dt, A, B, C)), dt_softplus=True)
    assert rel_err(out.cpu(), want_out) <= 1e-5
    assert rel_err(final.cpu(), want_final) <= 1e-5


def test_ssd_scan_op_runs_the_kernel_and_matches_chunked_reference():
    """The public op (what the model calls) routes here to the kernel; chunk_size does not change
    the result."""
    kw = ssd_inputs(2, 45, 4, 16, 16, 2, torch.float32)
    on = {k: v.to(DEVICE) for k, v in kw.items()}
    order = ("x", "dt", "A", "B", "C")
    out, final = torch.ops.mamba_export.ssd_scan(*(on[k] for k in order), 8, on["D"], on["z"],
                                                 on["dt_bias"], on["initial_state"], True, None)
    want_out, want_final = ref.ssd_scan(*(kw[k].double() for k in order), 16, kw["D"].double(),
                                        kw["z"].double(), kw["dt_bias"].double(),
                                        kw["initial_state"].double(), True, None)
    assert rel_err(out.cpu(), want_out) <= 1e-5
    assert rel_err(final.cpu(), want_final) <= 1e-5


def test_ssd_scan_kernel_rejects_bad_input():
    from mamba_export.kernels.ssd_scan import ssd_scan_fwd

    kw = ssd_inputs(2, 5, 4, 8, 6, 2, torch.float32)
    with pytest.raises(ValueError, match="groups dividing"):
        ssd_scan_fwd(**{**kw, "B": torch.randn(2, 5, 3, 6)})
    with pytest.raises(ValueError, match="dt must have shape"):
        ssd_scan_fwd(**{**kw, "dt": torch.randn(2, 4, 4)})
    with pytest.raises(ValueError, match="initial_state must have shape"):
        ssd_scan_fwd(**{**kw, "initial_state": torch.randn(2, 4, 8, 5)})
    with pytest.raises(ValueError, match="float64 runs the reference"):
        ssd_scan_fwd(**{k: v.double() for k, v in kw.items()})


@pytest.mark.parametrize("dtype,bound", [(torch.float32, 1e-5), (torch.bfloat16, 5e-3)])
@pytest.mark.parametrize("batch,heads,headdim,dstate,groups,d_per_p,limit", [
    (1, 3, 5, 7, 1, False, None),
    (2, 4, 16, 16, 2, True, (0.01, 0.5)),
    (3, 6, 8, 3, 3, False, (0.0, math.inf)),
])
@pytest.mark.parametrize("early_state", [False, True])
def test_ssd_state_update_kernel(dtype, bound, batch, heads, headdim, dstate, groups, d_per_p, limit,
                                 early_state):
    from mamba_export.kernels.ssd_update import ssd_state_update_fwd

    x, z = (torch.randn(batch, heads, headdim).to(dtype) for _ in range(2))
    dt = (torch.randn(batch, heads) * 0.5 - 1).to(dtype)
    B, C = (torch.randn(batch, groups, dstate).to(dtype) for _ in range(2))
    A, bias = -torch.rand(heads) * 2 - 0.1, torch.randn(heads) * 0.1
    D = torch.randn(heads, headdim) if d_per_p else torch.randn(heads)
    state = torch.randn(batch, heads, headdim, dstate)
    out_state = torch.full_like(state, float("nan"))
    on = lambda *ts: [t.to(DEVICE) for t in ts]  # noqa: E731
    y, new = ssd_state_update_fwd(*on(state, x, dt, A, B, C, D, z, bias), True, limit,
                                  out_state=out_state.to(DEVICE), early_state=early_state)
    d64 = lambda t: t.double()  # noqa: E731
    want_y, want_state = ref.ssd_state_update(*map(d64, (state, x, dt, A, B, C, D, z, bias)), True, limit)
    assert rel_err(y.cpu(), want_y) <= bound
    assert rel_err(new.cpu(), want_state) <= (1e-5 if dtype == torch.float32 else bound)


@pytest.mark.parametrize("dtype,bound", [(torch.float32, 1e-5), (torch.float16, 5e-3)])
@pytest.mark.parametrize("batch,heads,headdim", [(1, 3, 40), (2, 4, 7)])
@pytest.mark.parametrize("early_state", [False, True])
def test_ssd_state_update_norm_sums(dtype, bound, batch, heads, headdim, early_state):
    """``norm_weight``: the gated output v = y16 * silu(z) (y rounded first, as the op path's
    gated norm sees it) times the norm weight, and per head partial sums of v^2 that add up to
    the head's total."""
    from mamba_export.kernels.ssd_update import ssd_state_update_fwd

    g = torch.Generator().manual_seed(batch)
    r = lambda *s: torch.randn(*s, generator=g)  # noqa: E731
    x, z = r(batch, heads, headdim).to(dtype), r(batch, heads, headdim).to(dtype)
    dt, A, bias = (r(batch, heads) * 0.5 - 1).to(dtype), -torch.rand(heads, generator=g) - 0.1, r(heads) * 0.1
    B, C = r(batch, 1, 6).to(dtype), r(batch, 1, 6).to(dtype)
    D, state, nw = r(heads), r(batch, heads, headdim, 6), (1 + 0.2 * r(heads * headdim)).to(dtype)
    on = lambda *ts: [t.to(DEVICE) for t in ts]  # noqa: E731
    out, new, sums = ssd_state_update_fwd(*on(state, x, dt, A, B, C, D, z, bias), True, None,
                                          norm_weight=nw.to(DEVICE), early_state=early_state)
    y, want_state = ref.ssd_state_update(*(t.double() for t in (state, x, dt, A, B, C, D)), None,
                                         bias.double(), True, None)
    gated = y.to(dtype).double() * torch.nn.functional.silu(z.double())
    assert rel_err(out.cpu(), gated * nw.double().view(heads, headdim)) <= bound
    assert rel_err(new.cpu(), want_state) <= 1e-5
    assert sums.dtype == torch.float32 and sums.shape[:2] == (batch, heads)
    assert rel_err(sums.cpu().sum(-1), gated.pow(2).sum(-1)) <= 2 * bound
    with pytest.raises(ValueError, match="needs z"):
        ssd_state_update_fwd(*on(state, x, dt, A, B, C, D), norm_weight=nw.to(DEVICE))


def test_ssd_state_update_kernel_rejects_bad_shapes():
    from mamba_export.kernels.ssd_update import ssd_state_update_fwd

    x = torch.randn(2, 4, 8)
    with pytest.raises(ValueError, match="groups dividing"):
        ssd_state_update_fwd(torch.randn(2, 4, 8, 5), x, torch.randn(2, 4), torch.randn(4),
                             torch.randn(2, 3, 5), torch.randn(2, 3, 5))
    with pytest.raises(ValueError, match="state must have shape"):
        ssd_state_update_fwd(torch.randn(2, 4, 8, 6), x, torch.randn(2, 4), torch.randn(4),
                             torch.randn(2, 2, 5), torch.randn(2, 2, 5))


@pytest.mark.parametrize("dtype,bound", [(torch.float32, 1e-5), (torch.bfloat16, 2e-2)])
@pytest.mark.parametrize("extra", [dict(), dict(d_ssm=48, norm_before_gate=True, D_has_hdim=True,
                                                dt_limit=(0.01, 0.5)), dict(rmsnorm=False)])
def test_direct_launch_prefill_equals_reference(dtype, bound, extra):
    """``Mamba2Mixer._forward(..., kernels=True)`` (what prefill runs on eager CUDA: conv, SSD scan and
    gated-norm kernels) against the mixer's forward in float64 (the reference ops)."""
    from mamba_export.config import MambaConfig
    from mamba_export.mamba2 import Mamba2Mixer

    cfg = MambaConfig(layer="Mamba2", d_model=32, d_state=6, headdim=8, ngroups=2, **extra)
    torch.manual_seed(2)
    mixer = Mamba2Mixer(cfg, dtype=torch.float64)
    with torch.no_grad():
        for p in mixer.parameters():
            p.copy_(torch.randn_like(p) * 0.3)
        mixer.reset_ssm_parameters()
    batch, length = 2, 19
    hidden = torch.randn(batch, length, cfg.d_model, dtype=torch.float64)
    conv = torch.randn(batch, cfg.conv_dim, cfg.d_conv - 1, dtype=torch.float64)
    ssm = torch.randn(batch, cfg.nheads, cfg.headdim, cfg.d_state, dtype=torch.float64)
    with torch.no_grad():
        want = mixer(hidden, conv, ssm)
        mixer_d = mixer.to(DEVICE, dtype)
        on = lambda t, dt=dtype: t.to(DEVICE, dt)  # noqa: E731
        got = mixer_d._forward(on(hidden), on(conv), on(ssm, torch.float32), kernels=True)
    for g, w, b in zip(got, want, (bound, bound, 1e-5 if dtype == torch.float32 else bound)):
        assert rel_err(g.cpu(), w) <= b


def test_drop_in_chunk_scan_eager_path_matches_op():
    """``ops.mamba_chunk_scan_combined`` runs the kernel directly when nothing needs a gradient,
    and through the op (autograd) when something does; both give the reference numbers."""
    from mamba_export.ops import mamba_chunk_scan_combined

    kw = ssd_inputs(1, 23, 4, 16, 8, 2, torch.float32)
    on = {k: v.to(DEVICE) for k, v in kw.items()}
    args = (on["x"], on["dt"], on["A"], on["B"], on["C"], 16)
    out, final = mamba_chunk_scan_combined(*args, D=on["D"], dt_bias=on["dt_bias"], dt_softplus=True,
                                           initial_states=on["initial_state"], return_final_states=True)
    want_out, want_final = ref.ssd_scan_loop(*(kw[k].double() for k in ("x", "dt", "A", "B", "C")),
                                             D=kw["D"].double(), dt_bias=kw["dt_bias"].double(),
                                             initial_state=kw["initial_state"].double(), dt_softplus=True)
    assert rel_err(out.cpu(), want_out) <= 1e-5 and rel_err(final.cpu(), want_final) <= 1e-5
    x = on["x"].clone().requires_grad_(True)
    out_g = mamba_chunk_scan_combined(x, *args[1:], D=on["D"], dt_bias=on["dt_bias"], dt_softplus=True,
                                      initial_states=on["initial_state"])
    out_g.sum().backward()
    assert rel_err(out_g.detach().cpu(), want_out) <= 1e-5 and torch.isfinite(x.grad).all()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("batch,heads,headdim,groups,dstate,width,state_len,with_bias", [
    (1, 4, 8, 2, 6, 4, 3, True), (3, 3, 5, 1, 7, 2, 4, False)])
@pytest.mark.parametrize("early_state", [False, True])
def test_fused_conv_state_update_equals_conv_then_update(dtype, batch, heads, headdim, groups,
                                                         dstate, width, state_len, with_bias, early_state):
    """``ssd_conv_state_update_fwd`` (conv folded into the SSD decode kernel, conv state only
    read) then ``conv_state_commit_fwd`` == the conv update kernel then the SSD update kernel.
    (early_state: the state, parameters and the conv state's taps read before the PDL wait.)"""
    from mamba_export.kernels.causal_conv1d import causal_conv1d_update_fwd, conv_state_commit_fwd
    from mamba_export.kernels.ssd_update import ssd_conv_state_update_fwd, ssd_state_update_fwd

    conv_dim = heads * headdim + 2 * groups * dstate
    r = lambda *s: torch.randn(*s).to(DEVICE)  # noqa: E731
    xbc, cst = r(batch, conv_dim).to(dtype), r(batch, conv_dim, state_len).to(dtype)
    w, cb = r(conv_dim, width), r(conv_dim) if with_bias else None
    ssm, dt, D, bias = r(batch, heads, headdim, dstate), r(batch, heads), r(heads), r(heads)
    A = -torch.rand(heads).to(DEVICE)
    xc, want_conv = causal_conv1d_update_fwd(xbc, cst, w, cb, True)
    x, B, C = torch.split(xc.float(), [heads * headdim, groups * dstate, groups * dstate], dim=-1)
    want_y, want_ssm = ssd_state_update_fwd(ssm, x.reshape(batch, heads, headdim), dt, A,
                                            B.reshape(batch, groups, dstate), C.reshape(batch, groups, dstate),
                                            D, None, bias, True, None)
    before = cst.clone()
    y, new_ssm = ssd_conv_state_update_fwd(ssm, xbc, cst, w, cb, dt, A, groups, D, None, bias, True, None,
                                           out_state=ssm, early_state=early_state)
    assert torch.equal(cst, before) and new_ssm is ssm  # conv state read only; ssm in place
    assert y.dtype == dtype
    # bf16: the unfused path rounds the conv outputs to bf16, the fused one keeps float32
    assert rel_err(y.float().cpu(), want_y.cpu()) <= TOL[dtype]
    assert rel_err(ssm.cpu(), want_ssm.cpu()) <= TOL[dtype]
    assert conv_state_commit_fwd(xbc, cst, cst) is cst
    assert torch.equal(cst, want_conv)
    with pytest.raises(ValueError, match="xBC must have shape"):
        ssd_conv_state_update_fwd(ssm, xbc[:, 1:], cst[:, 1:], w[1:], None, dt, A, groups)
    with pytest.raises(ValueError, match="ngroups"):
        ssd_conv_state_update_fwd(ssm, xbc, cst, w, cb, dt, A, heads + 1)


GRAD_NAMES = ("x", "dt", "A", "B", "C", "D", "z", "dt_bias", "initial_state")


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("case", [(1, 1, 2, 5, 7, 1, False, None),
                                  (2, 37, 4, 16, 16, 2, True, (0.01, 0.5)),
                                  (1, 70, 3, 20, 5, 3, False, None)])
def test_ssd_scan_op_gradients_match_float64(dtype, case):
    """Gradients of ``torch.ops.mamba_export.ssd_scan`` for every input (through its registered
    backward, on the test device) against float64 autograd of the per-timestep reference loop on
    the same rounded inputs, with random output and final-state cotangents; L = 1, L not a
    multiple of the chunk, G > 1, D per channel, dt_limit. Bounds as for the outputs."""
    batch, length, heads, headdim, dstate, groups, d_per_p, limit = case
    kw = ssd_inputs(batch, length, heads, headdim, dstate, groups, dtype, d_per_p, seed=7)
    g = torch.Generator().manual_seed(8)
    # out is in the input dtype, so its gradient is too: the cotangent the backward sees is
    # d_out rounded to that dtype, which the float64 side gets as well
    d_out = torch.randn(batch, length, heads, headdim, generator=g).to(dtype).float()
    d_final = torch.randn(batch, heads, headdim, dstate, generator=g)

    def grads(inputs, device, cot_dtype, run):
        leaves = {k: v.to(device).clone().requires_grad_(True) for k, v in inputs.items()}
        out, final = run(leaves)
        loss = (out.to(cot_dtype) * d_out.to(device, cot_dtype)).sum() + \
            (final.to(cot_dtype) * d_final.to(device, cot_dtype)).sum()
        return dict(zip(GRAD_NAMES, torch.autograd.grad(loss, [leaves[k] for k in GRAD_NAMES])))

    got = grads(kw, DEVICE, torch.float32, lambda a: torch.ops.mamba_export.ssd_scan(
        a["x"], a["dt"], a["A"], a["B"], a["C"], 16, a["D"], a["z"], a["dt_bias"], a["initial_state"],
        True, limit))
    want = grads({k: v.double() for k, v in kw.items()}, "cpu", torch.float64, lambda a: ref.ssd_scan_loop(
        a["x"], a["dt"], a["A"], a["B"], a["C"], D=a["D"], z=a["z"], dt_bias=a["dt_bias"],
        initial_state=a["initial_state"], dt_softplus=True, dt_limit=limit))
    for name in GRAD_NAMES:
        assert got[name].dtype == kw[name].dtype, name
        assert rel_err(got[name].cpu(), want[name]) <= TOL[dtype], (name, rel_err(got[name].cpu(), want[name]))

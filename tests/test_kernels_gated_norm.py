"""The gated RMSNorm kernel (kernels/gated_rmsnorm.py) against ``RMSNormGated`` in float64, and
the Mamba-2 decode step with the launchers called directly (``Mamba2Mixer._step_kernels``, the
eager CUDA path) against the op path; in Triton's interpreter on CPU, natively on CUDA.

Outputs are poisoned (NaN) before the kernels run. Errors are ||out - ref|| / ||ref|| against
float64 math on the same rounded inputs: fp32 <= 1e-5, fp16/bf16 <= 5e-3. On CPU the interpreter
rounds float32 -> bfloat16 by truncation (~3.3e-3 on average here, against ~2e-3 on a GPU), so
every case has >= 200 outputs, which keeps the bf16 figure clear of the bound.
"""

import pytest
import torch
from _util import rel_err

from mamba_export import MambaConfig
from mamba_export.kernels import _common
from mamba_export.kernels.gated_rmsnorm import gated_rmsnorm_fwd
from mamba_export.mamba2 import Mamba2Mixer, RMSNormGated

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
TOL = {torch.float32: 1e-5, torch.float16: 5e-3, torch.bfloat16: 5e-3, torch.float64: 1e-12}


@pytest.fixture(autouse=True)
def _poison(monkeypatch):
    monkeypatch.setattr(_common, "POISON", True)


def norm_inputs(rows, dim, dtype, seed=0):
    """x contiguous; z a column slice of a wider buffer (as in the mixer: a slice of in_proj's
    output); a weight around 1."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(*rows, dim, generator=g).to(dtype)
    z = torch.randn(*rows, 2 * dim, generator=g).to(dtype)[..., dim:]
    w = (1 + 0.5 * torch.randn(dim, generator=g)).to(dtype)
    return x, z, w


def reference(x, z, w, eps, group_size, norm_before_gate):
    norm = RMSNormGated(w.shape[0], eps, group_size, norm_before_gate, dtype=torch.float64)
    with torch.no_grad():
        norm.weight.copy_(w.double())
        return norm(x.double(), None if z is None else z.double())


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16, torch.float64])
@pytest.mark.parametrize("rows,dim,group_size", [
    ((1,), 231, 77),     # one row, 3 groups of a non-power-of-2 size
    ((3,), 96, 96),      # one group
    ((2, 5), 36, 12),    # two leading dims
    ((4,), 130, 65),
])
@pytest.mark.parametrize("norm_before_gate", [False, True])
@pytest.mark.parametrize("has_z", [True, False])
def test_matches_rmsnormgated_float64(dtype, rows, dim, group_size, norm_before_gate, has_z):
    x, z, w = norm_inputs(rows, dim, dtype)
    z = z if has_z else None
    dev = lambda t: None if t is None else t.to(DEVICE)  # noqa: E731
    if dtype == torch.float64 and DEVICE == "cuda":  # float64 is interpreter-only (see launcher)
        with pytest.raises(ValueError, match="float64 on CUDA is not supported"):
            gated_rmsnorm_fwd(dev(x), dev(z), dev(w), 1e-5, group_size, norm_before_gate)
        return
    out = gated_rmsnorm_fwd(dev(x), dev(z), dev(w), 1e-5, group_size, norm_before_gate)
    assert out.shape == x.shape and out.dtype == dtype
    assert rel_err(out.cpu(), reference(x, z, w, 1e-5, group_size, norm_before_gate)) <= TOL[dtype]


def test_writes_into_a_column_view_of_a_wider_buffer():
    """``out=`` a slice of out_proj's input: the mixer's gated-MLP columns stay as they are."""
    x, z, w = norm_inputs((3,), 40, torch.float32)
    x, z, w = x.to(DEVICE), z.to(DEVICE), w.to(DEVICE)
    full = torch.full((3, 47), 7.0, device=DEVICE)
    got = gated_rmsnorm_fwd(x, z, w, 1e-5, 20, False, out=full[:, 7:])
    assert got.data_ptr() == full[:, 7:].data_ptr()
    assert torch.equal(full[:, :7], torch.full((3, 7), 7.0, device=DEVICE))
    assert torch.equal(full[:, 7:], gated_rmsnorm_fwd(x, z, w, 1e-5, 20, False))


def test_inputs_of_any_strides():
    x, z, w = norm_inputs((4, 2), 12, torch.float32)
    xs = x[::2].transpose(0, 1)  # [2, 2, 12]; leading dims not viewable as one: copied
    zs = z[::2].transpose(0, 1)
    out = gated_rmsnorm_fwd(xs.to(DEVICE), zs.to(DEVICE), w.to(DEVICE), 1e-5, 4, False)
    assert rel_err(out.cpu(), reference(xs, zs, w, 1e-5, 4, False)) <= 1e-5


def test_bad_inputs_raise_value_errors():
    x, z, w = norm_inputs((2,), 12, torch.float32)
    with pytest.raises(ValueError, match="group_size must be a positive int dividing the 12"):
        gated_rmsnorm_fwd(x, z, w, 1e-5, 5, False)
    with pytest.raises(ValueError, match="group_size"):
        gated_rmsnorm_fwd(x, z, w, 1e-5, 0, False)
    with pytest.raises(ValueError, match=r"weight must have shape \(12,\)"):
        gated_rmsnorm_fwd(x, z, w[:6], 1e-5, 6, False)
    with pytest.raises(ValueError, match=r"z must have shape \(2, 12\)"):
        gated_rmsnorm_fwd(x, z[:1], w, 1e-5, 6, False)
    with pytest.raises(ValueError, match="x must be float32/float16/bfloat16/float64"):
        gated_rmsnorm_fwd(x.int(), z, w, 1e-5, 6, False)
    with pytest.raises(ValueError, match="x must be"):
        gated_rmsnorm_fwd(torch.randn(2, 0), None, torch.randn(0), 1e-5, 1, False)
    with pytest.raises(ValueError, match="out must have x's dtype"):
        gated_rmsnorm_fwd(x, z, w, 1e-5, 6, False, out=torch.empty(2, 12, dtype=torch.float16))
    with pytest.raises(ValueError, match=r"out must have shape \(2, 12\)"):
        gated_rmsnorm_fwd(x, z, w, 1e-5, 6, False, out=torch.empty(2, 13))
    with pytest.raises(ValueError, match="weight is on meta"):
        gated_rmsnorm_fwd(x, z, w.to("meta"), 1e-5, 6, False)
    out = torch.empty(4, 2, 12)[::2].transpose(0, 1)  # leading dims not viewable as one
    with pytest.raises(ValueError, match="out with shape .* cannot be viewed as"):
        gated_rmsnorm_fwd(torch.randn(2, 2, 12), None, w, 1e-5, 6, False, out=out)


# ----------------------------------------------------------------------------- the decode step
MIXERS = {
    "default": dict(),
    "mlp+norm_before_gate+D_hdim+limit": dict(d_ssm=48, norm_before_gate=True, D_has_hdim=True,
                                              dt_limit=(0.01, 0.5)),
    "no_rmsnorm": dict(rmsnorm=False),
}


# path vs path, both rounding to bf16 between kernels over three steps (the interpreter by
# truncation, ~2x the error of rounding): the bf16 bound is looser than against float64
BF16_STEP_BOUND = 1e-2 if DEVICE == "cuda" else 2e-2


@pytest.mark.parametrize("dtype,bound", [(torch.float32, 1e-5), (torch.bfloat16, BF16_STEP_BOUND)])
@pytest.mark.parametrize("extra", MIXERS.values(), ids=MIXERS.keys())
@pytest.mark.parametrize("batch", [1, 2])
def test_direct_launch_step_equals_op_step(dtype, bound, extra, batch):
    """``_step_kernels`` (what ``step`` runs on eager CUDA) vs ``step``'s op path, functional and
    in place, over a few steps (A/D/dt_bias then come from the cache). in_proj/out_proj take
    the Triton GEMV (float32 sums in another order than F.linear: not bitwise)."""
    cfg = MambaConfig(layer="Mamba2", d_model=32, d_state=6, headdim=8, ngroups=2, **extra)
    torch.manual_seed(1)
    mixer = Mamba2Mixer(cfg, dtype=dtype).to(DEVICE)
    with torch.no_grad():
        for p in mixer.parameters():
            p.copy_(torch.randn_like(p) * 0.3)
        mixer.reset_ssm_parameters()
        mixer.norm.weight.normal_() if cfg.rmsnorm else None
    conv = torch.randn(batch, cfg.conv_dim, cfg.d_conv - 1, device=DEVICE).to(dtype)
    ssm = torch.randn(batch, cfg.nheads, cfg.headdim, cfg.d_state, device=DEVICE)
    conv_f, ssm_f = conv.clone(), ssm.clone()     # the fused path, functional
    conv_ip, ssm_ip = conv.clone(), ssm.clone()   # the fused path, in place
    with torch.no_grad():
        for _ in range(3):
            h = torch.randn(batch, cfg.d_model, device=DEVICE).to(dtype)
            want, conv, ssm = mixer.step(h, conv, ssm)  # ops on CPU; on CUDA the same path
            inputs = conv_f, ssm_f
            before = conv_f.clone(), ssm_f.clone()
            got, conv_f, ssm_f = mixer._step_kernels(h, conv_f, ssm_f, False)
            assert torch.equal(inputs[0], before[0]) and torch.equal(inputs[1], before[1])  # untouched
            got_ip, conv_r, ssm_r = mixer._step_kernels(h, conv_ip, ssm_ip, True)
            assert conv_r is conv_ip and ssm_r is ssm_ip
            assert torch.equal(conv_f, conv_ip) and torch.equal(ssm_f, ssm_ip) and torch.equal(got, got_ip)
            # (the fused kernel also keeps the conv outputs in float32 where the op path rounds
            # them to the model dtype)
            assert rel_err(conv_f.cpu(), conv.cpu()) <= bound
            assert rel_err(ssm_f.cpu(), ssm.cpu()) <= bound
            assert rel_err(got.cpu(), want.cpu()) <= bound


def test_ssm_params_cache_follows_parameter_updates():
    cfg = MambaConfig(layer="Mamba2", d_model=32, d_state=6, headdim=8)
    mixer = Mamba2Mixer(cfg)
    with torch.no_grad():
        mixer.reset_ssm_parameters()
        A, D, bias = mixer._ssm_params()
        assert mixer._ssm_params()[0] is A  # cached
        mixer.A_log.add_(0.5)  # in-place update: a new version
        A2 = mixer._ssm_params()[0]
        assert A2 is not A and torch.allclose(A2, -torch.exp(mixer.A_log.float()))
    A3 = mixer._ssm_params()[0]  # grad enabled: recomputed, not cached
    assert A3 is not A2 and A3.requires_grad

"""Decode-path kernels the model calls directly on eager CUDA (fused conv + x_proj and
dt_proj + state update, fused add+RMSNorm) against the reference ops; in Triton's interpreter
on CPU."""

import pytest
import torch
from _util import rel_err

import mamba_export as me

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


@pytest.mark.parametrize("cfg", [
    dict(d_model=24, d_state=16, d_conv=4, dt_rank="auto"),
    dict(d_model=33, d_state=5, d_conv=2, dt_rank=7, conv_bias=False),
    dict(d_model=40, d_state=3, d_conv=3),
])
@pytest.mark.parametrize("batch", [1, 3])
def test_fused_decode_kernels_match_mixer_step(cfg, batch):
    from mamba_export.kernels.decode import conv_xproj, ssm_step

    config = me.MambaConfig(n_layer=1, vocab_size=10, **cfg)
    mixer = me.MambaLM(config).backbone.layers[0].mixer
    hidden = torch.randn(batch, config.d_model)
    conv = torch.randn(batch, config.d_inner, config.d_conv - 1)
    ssm = torch.randn(batch, config.d_inner, config.d_state)
    with torch.no_grad():
        want_out, want_conv, want_ssm = mixer.step(hidden, conv, ssm)  # reference ops on CPU
        x, z = mixer.in_proj(hidden).chunk(2, dim=-1)
        A, D, dt_bias = mixer._ssm_params()
        to = lambda t: None if t is None else t.to(DEVICE)
        new_conv, new_ssm = torch.full_like(to(conv), float("nan")), torch.full_like(to(ssm), float("nan"))
        xc, parts = conv_xproj(to(x), to(conv), to(mixer.conv1d.weight.squeeze(1)), to(mixer.conv1d.bias),
                               to(mixer.x_proj.weight), new_conv)
        y = ssm_step(parts, xc, to(z), to(ssm), to(A), to(D), to(dt_bias), to(mixer.dt_proj.weight), new_ssm)
        out = mixer.out_proj(y.cpu())
    assert rel_err(out, want_out) < 1e-5
    assert torch.equal(new_conv.cpu(), want_conv)
    assert rel_err(new_ssm.cpu(), want_ssm) < 1e-5


@pytest.mark.parametrize("residual_in_fp32", [True, False])
def test_fused_add_rmsnorm_matches_block_add_norm(residual_in_fp32):
    from mamba_export.kernels.rmsnorm import add_rmsnorm_fwd
    from mamba_export.model import RMSNorm

    norm = RMSNorm(40, eps=1e-5)
    with torch.no_grad():
        norm.weight.normal_()
    x, res = torch.randn(3, 5, 40), torch.randn(3, 5, 40)
    out, res_out = add_rmsnorm_fwd(x.to(DEVICE), res.to(DEVICE), norm.weight.to(DEVICE), 1e-5,
                                   residual_in_fp32)
    assert torch.allclose(res_out.cpu(), x + res, atol=1e-6)
    assert rel_err(out.cpu(), norm(x + res)) < 1e-6
    out0, res0 = add_rmsnorm_fwd(x.to(DEVICE), None, norm.weight.to(DEVICE), 1e-5, residual_in_fp32)
    assert torch.equal(res0.cpu(), x) and rel_err(out0.cpu(), norm(x)) < 1e-6

"""Decode-path kernels the model calls directly on eager CUDA (fused dt_proj state update,
fused add+RMSNorm), against the reference; in Triton's interpreter on CPU."""

import pytest
import torch
from _util import rel_err

from mamba_export import reference as ref

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


@pytest.mark.parametrize("early_state", [False, True])
@pytest.mark.parametrize("config", [None, (32, 4, 1), (16, 4, 16), (16, 2, 8), (8, 1, 4)])
@pytest.mark.parametrize("dtype,bound", [(torch.float32, 1e-5), (torch.bfloat16, 5e-3)])
@pytest.mark.parametrize("batch,dim,rank,dstate,groups", [(1, 7, 3, 5, 0), (3, 24, 5, 16, 2),
                                                         (6, 9, 4, 16, 3), (16, 37, 20, 16, 0)])
def test_state_update_with_fused_dt_proj(dtype, bound, batch, dim, rank, dstate, groups, config,
                                         early_state, monkeypatch):
    """config: the launcher's choice (None), or forced: one row per program on 4 warps, or
    every batch row of a channel block in one program, dt_proj as a tensor-core product (the
    several-row kernel; in blocks of 8 rows with (16, 2, 8), the model's at 16 rows). early_state:
    the state and A read before the PDL wait (where PDL is off, as in the interpreter, only
    the order of the loads changes)."""
    from mamba_export.kernels import state_update as su
    from mamba_export.kernels.state_update import selective_state_update_fwd

    if config:
        monkeypatch.setattr(su, "launch_config", lambda *a: config)

    bc = (batch, groups, dstate) if groups else (batch, dstate)
    x, z = (torch.randn(batch, dim).to(dtype) for _ in range(2))
    low = torch.randn(batch, rank).to(dtype)
    W = (torch.randn(dim, rank) * 0.3).to(dtype)
    B, C = torch.randn(*bc).to(dtype), torch.randn(*bc).to(dtype)
    A, D, bias = -torch.rand(dim, dstate) - 0.1, torch.randn(dim), torch.randn(dim) * 0.1
    state = torch.randn(batch, dim, dstate)
    dev = lambda *ts: [t.to(DEVICE) for t in ts]
    y, new = selective_state_update_fwd(*dev(state, x, low, A, B, C, D, z, bias), True,
                                        dt_proj_weight=W.to(DEVICE), early_state=early_state)
    dt = low.double() @ W.double().T
    want_y, want_state = ref.selective_state_update(
        state.double(), x.double(), dt, A.double(), B.double(), C.double(), D.double(), z.double(),
        bias.double(), True)
    assert rel_err(y.cpu(), want_y) <= bound
    assert rel_err(new.cpu(), want_state) <= 1e-5 if dtype == torch.float32 else bound


def test_state_update_launch_rules():
    """Row blocks per program where the one-row kernel would re-read the fused dt_proj weight
    (H100 decode A/Bs, docs/kernel_notes.md v16, v22), one row per program otherwise (on 4 warps
    for more than 8 rows of at most 2048 channels); the interpreter's small one-row config."""
    from mamba_export.kernels.state_update import launch_config

    assert launch_config(16, 5120, 16, rank=160) == (16, 2, 8)  # mamba-2.8b
    assert launch_config(8, 5120, 16, rank=160) == (16, 2, 16)
    assert launch_config(16, 4096, 16, rank=128) == (16, 2, 16)  # mamba-1.4b
    assert launch_config(8, 4096, 16, rank=128) == (8, 2, 8)
    assert launch_config(32, 5120, 16, rank=160) == (16, 2, 16)  # (row blocks of 16)
    assert launch_config(4, 4096, 16, rank=128) == (4, 1, 4)
    assert launch_config(2, 4096, 16, rank=128)[2] == 1
    assert launch_config(16, 2048, 16, rank=64) == (8, 2, 8)  # mamba-370m
    assert launch_config(16, 1536, 16, rank=48) == (8, 2, 8)  # mamba-130m
    assert launch_config(8, 1536, 16, rank=48)[2] == 1
    assert launch_config(16, 2048, 16) == (32, 4, 1)  # (dt given)
    assert launch_config(16, 3072, 16, rank=96) == (8, 2, 8)  # mamba-790m
    assert launch_config(8, 2048, 16, rank=64) == (16, 1, 1)
    assert launch_config(16, 5120, 16)[2] == 1  # dt given: no weight to share
    assert launch_config(1, 5120, 16, rank=160) == (4, 1, 1)
    assert launch_config(16, 5120, 16, interpret=True, rank=160) == (4, 1, 1)


@pytest.mark.parametrize("residual_in_fp32", [True, False])
@pytest.mark.parametrize("early", [False, True])
def test_fused_add_rmsnorm_matches_block_add_norm(residual_in_fp32, early):
    """(early: the residual and the weight read before the PDL wait.)"""
    from mamba_export.kernels.rmsnorm import add_rmsnorm_fwd
    from mamba_export.model import RMSNorm

    norm = RMSNorm(40, eps=1e-5)
    with torch.no_grad():
        norm.weight.normal_()
    x, res = torch.randn(3, 5, 40), torch.randn(3, 5, 40)
    out, res_out = add_rmsnorm_fwd(x.to(DEVICE), res.to(DEVICE), norm.weight.to(DEVICE), 1e-5,
                                   residual_in_fp32, early_residual=early)
    assert torch.allclose(res_out.cpu(), x + res, atol=1e-6)
    assert rel_err(out.cpu(), norm(x + res)) < 1e-6
    out0, res0 = add_rmsnorm_fwd(x.to(DEVICE), None, norm.weight.to(DEVICE), 1e-5, residual_in_fp32,
                                 early_residual=early)
    assert torch.equal(res0.cpu(), x) and rel_err(out0.cpu(), norm(x)) < 1e-6

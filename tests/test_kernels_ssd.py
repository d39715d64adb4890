"""The Mamba-2 decode-step kernel (kernels/ssd_update.py) against the float64 reference; in
Triton's interpreter on CPU, natively on CUDA."""

import math

import pytest
import torch
from _util import rel_err

from mamba_export import reference as ref

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


@pytest.mark.parametrize("dtype,bound", [(torch.float32, 1e-5), (torch.bfloat16, 5e-3)])
@pytest.mark.parametrize("batch,heads,headdim,dstate,groups,d_per_p,limit", [
    (1, 3, 5, 7, 1, False, None),
    (2, 4, 16, 16, 2, True, (0.01, 0.5)),
    (3, 6, 8, 3, 3, False, (0.0, math.inf)),
])
def test_ssd_state_update_kernel(dtype, bound, batch, heads, headdim, dstate, groups, d_per_p, limit):
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
                                  out_state=out_state.to(DEVICE))
    d64 = lambda t: t.double()  # noqa: E731
    want_y, want_state = ref.ssd_state_update(*map(d64, (state, x, dt, A, B, C, D, z, bias)), True, limit)
    assert rel_err(y.cpu(), want_y) <= bound
    assert rel_err(new.cpu(), want_state) <= (1e-5 if dtype == torch.float32 else bound)


def test_ssd_state_update_kernel_rejects_bad_shapes():
    from mamba_export.kernels.ssd_update import ssd_state_update_fwd

    x = torch.randn(2, 4, 8)
    with pytest.raises(ValueError, match="groups dividing"):
        ssd_state_update_fwd(torch.randn(2, 4, 8, 5), x, torch.randn(2, 4), torch.randn(4),
                             torch.randn(2, 3, 5), torch.randn(2, 3, 5))
    with pytest.raises(ValueError, match="state must have shape"):
        ssd_state_update_fwd(torch.randn(2, 4, 8, 6), x, torch.randn(2, 4), torch.randn(4),
                             torch.randn(2, 2, 5), torch.randn(2, 2, 5))

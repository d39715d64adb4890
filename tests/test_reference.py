"""The reference math against independent, plainly written float64 loops."""

import pytest
import torch
import torch.nn.functional as F
from _util import rel_err, scan_inputs

from mamba_export import reference as ref


def naive_scan(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False,
               initial_state=None):
    """Per-timestep, per-channel loop in float64: the definition, written out."""
    batch, dim, length = u.shape
    n = A.shape[1]
    groups = B.shape[1] if B.dim() == 4 else 1
    out = torch.zeros(batch, dim, length, dtype=torch.float64)
    last = torch.zeros(batch, dim, n, dtype=torch.float64)
    for b in range(batch):
        for d in range(dim):
            g = d // (dim // groups)
            h = torch.zeros(n, dtype=torch.float64) if initial_state is None else initial_state[b, d].double()
            for t in range(length):
                dt = delta[b, d, t].double() + (0 if delta_bias is None else delta_bias[d].double())
                if delta_softplus:
                    dt = torch.log1p(torch.exp(dt))
                Bt = B[b, g, :, t] if B.dim() == 4 else B[b, :, t]
                Ct = C[b, g, :, t] if C.dim() == 4 else C[b, :, t]
                h = torch.exp(dt * A[d].double()) * h + dt * Bt.double() * u[b, d, t].double()
                y = (h * Ct.double()).sum()
                if D is not None:
                    y = y + D[d].double() * u[b, d, t].double()
                if z is not None:
                    zt = z[b, d, t].double()
                    y = y * zt / (1 + torch.exp(-zt))
                out[b, d, t] = y
            last[b, d] = h
    return out, last


@pytest.mark.parametrize("batch,dim,length,dstate,groups,options", [
    (1, 3, 1, 1, 0, True),
    (2, 4, 7, 3, 0, True),
    (2, 6, 9, 4, 2, True),
    (1, 5, 130, 2, 0, False),  # crosses the reference's internal time block
])
def test_scan_matches_naive_loop(batch, dim, length, dstate, groups, options):
    args = scan_inputs(batch, dim, length, dstate, groups, with_options=options)
    out, last = ref.selective_scan(**args)
    want_out, want_last = naive_scan(**args)
    assert out.dtype == torch.float64 and last.dtype == torch.float64
    assert rel_err(out, want_out) < 1e-12
    assert rel_err(last, want_last) < 1e-12


def test_scan_in_two_calls_equals_one():
    args = scan_inputs(2, 5, 13, 4)
    out, last = ref.selective_scan(**args)
    first = {k: (v[..., :6] if k in ("u", "delta", "z", "B", "C") else v) for k, v in args.items()}
    second = {k: (v[..., 6:] if k in ("u", "delta", "z", "B", "C") else v) for k, v in args.items()}
    out1, mid = ref.selective_scan(**first)
    second["initial_state"] = mid
    out2, last2 = ref.selective_scan(**second)
    assert rel_err(torch.cat([out1, out2], -1), out) < 1e-13
    assert rel_err(last2, last) < 1e-13


def test_low_precision_computes_in_float32_with_float32_state():
    args = scan_inputs(2, 4, 9, 3, dtype=torch.bfloat16)
    out, last = ref.selective_scan(**args)
    assert out.dtype == torch.bfloat16 and last.dtype == torch.float32
    exact = {k: (v.double() if isinstance(v, torch.Tensor) else v) for k, v in args.items()}
    want, want_last = ref.selective_scan(**exact)
    assert rel_err(out, want) < 5e-3
    assert rel_err(last, want_last) < 1e-5


@pytest.mark.parametrize("groups", [0, 2])
def test_scan_backward_matches_autograd(groups):
    args = scan_inputs(2, 4, 6, 3, groups)
    names = ["u", "delta", "A", "B", "C", "D", "z", "delta_bias", "initial_state"]
    leaves = {k: args[k].clone().requires_grad_(True) for k in names}
    out, last = ref.selective_scan(**leaves, delta_softplus=True)
    dout, dlast = torch.randn_like(out), torch.randn_like(last)
    grads = torch.autograd.grad([out, last], [leaves[k] for k in names], [dout, dlast])
    mine = ref.selective_scan_backward(*[args[k] for k in names[:8]], True, args["initial_state"],
                                       dout, dlast)
    for name, got, want in zip(names, mine, grads):
        assert rel_err(got, want) < 1e-12, name


def test_scan_backward_without_optionals():
    args = scan_inputs(1, 3, 5, 2, with_options=False)
    leaves = {k: v.clone().requires_grad_(True) for k, v in args.items()}
    out, _ = ref.selective_scan(**leaves)
    dout = torch.randn_like(out)
    want = torch.autograd.grad(out, list(leaves.values()), dout)
    got = ref.selective_scan_backward(args["u"], args["delta"], args["A"], args["B"], args["C"],
                                      None, None, None, False, None, dout, None)
    assert got[5:] == [None, None, None, None]
    for g, w in zip(got[:5], want):
        assert rel_err(g, w) < 1e-12


@pytest.mark.parametrize("groups", [0, 2])
def test_state_update_is_one_scan_step(groups):
    args = scan_inputs(3, 4, 1, 5, groups)
    out, last = ref.selective_scan(**args)
    B, C = args["B"][..., 0], args["C"][..., 0]
    y, new_state = ref.selective_state_update(
        args["initial_state"], args["u"][..., 0], args["delta"][..., 0], args["A"], B, C,
        args["D"], args["z"][..., 0], args["delta_bias"], True)
    assert rel_err(y, out[..., 0]) < 1e-13
    assert rel_err(new_state, last) < 1e-13


def naive_conv(x, weight, bias, initial_state, silu):
    batch, dim, length = x.shape
    width = weight.shape[1]
    hist = torch.zeros(batch, dim, width - 1, dtype=torch.float64) if initial_state is None else initial_state.double()
    full = torch.cat([hist, x.double()], -1)
    out = torch.zeros(batch, dim, length, dtype=torch.float64)
    for t in range(length):
        acc = (full[..., t : t + width] * weight.double()).sum(-1)
        if bias is not None:
            acc = acc + bias.double()
        out[..., t] = F.silu(acc) if silu else acc
    return out, full[..., -(width - 1):]


@pytest.mark.parametrize("width,length,silu,use_bias,use_state", [
    (4, 1, True, True, True), (4, 2, False, False, False), (3, 11, True, False, True),
    (2, 5, True, True, False),
])
def test_conv_matches_naive_loop(width, length, silu, use_bias, use_state):
    x = torch.randn(2, 5, length, dtype=torch.float64)
    weight = torch.randn(5, width, dtype=torch.float64)
    bias = torch.randn(5, dtype=torch.float64) if use_bias else None
    init = torch.randn(2, 5, width - 1, dtype=torch.float64) if use_state else None
    out, final = ref.causal_conv1d(x, weight, bias, init, silu)
    want, want_final = naive_conv(x, weight, bias, init, silu)
    assert rel_err(out, want) < 1e-13
    assert torch.equal(final, want_final)


@pytest.mark.parametrize("state_len", [3, 5])
def test_conv_update_steps_equal_conv(state_len):
    width = 4
    x = torch.randn(2, 6, 7, dtype=torch.float64)
    weight, bias = torch.randn(6, width, dtype=torch.float64), torch.randn(6, dtype=torch.float64)
    out, final = ref.causal_conv1d(x, weight, bias, None, True)
    state = torch.zeros(2, 6, state_len, dtype=torch.float64)
    for t in range(7):
        y, state = ref.causal_conv1d_update(x[..., t], state, weight, bias, True)
        assert rel_err(y, out[..., t]) < 1e-13
    assert torch.equal(state[..., -(width - 1):], final)

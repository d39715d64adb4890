"""The registered ops: CPU paths equal the reference, registrations pass opcheck, the
mamba_ssm-compatible wrappers keep mamba_ssm's calling conventions, bad input is rejected."""

import pytest
import torch
from _util import rel_err, scan_inputs

import mamba_export as me
from mamba_export import reference as ref

OPS = torch.ops.mamba_export


def _scan_positional(a):
    return (a["u"], a["delta"], a["A"], a["B"], a["C"], a.get("D"), a.get("z"), a.get("delta_bias"),
            a.get("delta_softplus", False), a.get("initial_state"))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64])
@pytest.mark.parametrize("groups", [0, 2])
def test_scan_op_equals_reference(dtype, groups):
    args = scan_inputs(2, 6, 5, 3, groups, dtype=dtype)
    out, last = OPS.selective_scan(*_scan_positional(args))
    want, want_last = ref.selective_scan(**args)
    assert torch.equal(out, want) and torch.equal(last, want_last)
    assert out.dtype == dtype and last.dtype == (torch.float64 if dtype == torch.float64 else torch.float32)


def test_scan_op_gradients_match_float64_finite_differences():
    args = scan_inputs(2, 3, 4, 2, 0)
    pos = list(_scan_positional(args))
    for i in (0, 1, 2, 3, 4, 5, 6, 7, 9):
        pos[i] = pos[i].clone().requires_grad_(True)
    assert torch.autograd.gradcheck(lambda *t: OPS.selective_scan(*t[:8], True, t[8]),
                                    tuple(pos[:8] + [pos[9]]))


def test_conv_op_gradients_match_float64_finite_differences():
    x = torch.randn(2, 3, 6, dtype=torch.float64, requires_grad=True)
    w = torch.randn(3, 4, dtype=torch.float64, requires_grad=True)
    b = torch.randn(3, dtype=torch.float64, requires_grad=True)
    h = torch.randn(2, 3, 3, dtype=torch.float64, requires_grad=True)
    for silu in (False, True):
        assert torch.autograd.gradcheck(lambda *t: OPS.causal_conv1d(*t, silu), (x, w, b, h))
        assert torch.autograd.gradcheck(lambda *t: OPS.causal_conv1d(*t, None, None, silu), (x[:, :, :2], w))


def test_opcheck_all_ops():
    args = scan_inputs(2, 4, 5, 3, 2, dtype=torch.float32)
    pos = list(_scan_positional(args))
    pos[0] = pos[0].requires_grad_(True)
    torch.library.opcheck(OPS.selective_scan, tuple(pos))
    x, dt, z = (torch.randn(2, 4) for _ in range(3))
    torch.library.opcheck(OPS.selective_state_update, (
        torch.randn(2, 4, 3), x, dt, args["A"], torch.randn(2, 3), torch.randn(2, 3), args["D"], z,
        args["delta_bias"], True))
    w, b = torch.randn(4, 4), torch.randn(4)
    torch.library.opcheck(OPS.causal_conv1d, (torch.randn(2, 4, 7), w, b, torch.randn(2, 4, 3), True))
    torch.library.opcheck(OPS.causal_conv1d_update, (x, torch.randn(2, 4, 3), w, b, True))


def test_selective_scan_fn_signature_and_return_last_state():
    args = scan_inputs(1, 4, 6, 2, with_options=False, dtype=torch.float32)
    out = me.selective_scan_fn(args["u"], args["delta"], args["A"], args["B"], args["C"])
    out2, last = me.selective_scan_fn(args["u"], args["delta"], args["A"], args["B"], args["C"],
                                      return_last_state=True)
    want, want_last = ref.selective_scan(**args)
    assert torch.equal(out, want) and torch.equal(out2, want) and torch.equal(last, want_last)


def test_selective_state_update_mutates_state_in_place_like_mamba_ssm():
    state = torch.randn(2, 4, 3)
    before = state.clone()
    x, dt, z = (torch.randn(2, 4) for _ in range(3))
    A, B, C, D = -torch.rand(4, 3), torch.randn(2, 3), torch.randn(2, 3), torch.randn(4)
    out = me.selective_state_update(state, x, dt, A, B, C, D, z=z, dt_bias=None, dt_softplus=True)
    want, want_state = ref.selective_state_update(before, x, dt, A, B, C, D, z, None, True)
    assert torch.equal(out, want) and torch.equal(state, want_state)


def test_causal_conv1d_wrappers():
    x, w, b = torch.randn(2, 5, 9), torch.randn(5, 4), torch.randn(5)
    out, final = me.causal_conv1d_fn(x, w, b, initial_states=None, return_final_states=True, activation="silu")
    want, want_final = ref.causal_conv1d(x, w, b, None, True)
    assert torch.equal(out, want) and torch.equal(final, want_final)
    state = torch.zeros(2, 5, 4)  # mamba_ssm keeps d_conv columns; W-1 also works
    for t in range(9):
        y = me.causal_conv1d_update(x[..., t : t + 1], state, w, b, activation="silu")
        assert y.shape == (2, 5, 1)
        assert rel_err(y[..., 0], want[..., t]) < 1e-6
    with pytest.raises(ValueError, match="activation"):
        me.causal_conv1d_fn(x, w, b, activation="relu")


@pytest.mark.parametrize("change,match", [
    (dict(u=torch.randn(2, 6)), r"u must be \[batch, dim, L\]"),
    (dict(delta=torch.randn(2, 6, 4)), "delta must match u"),
    (dict(A=torch.randn(5, 3)), r"A must be \[dim, d_state\]"),
    (dict(B=torch.randn(2, 4, 3, 5)), "grouped"),
    (dict(C=torch.randn(2, 4, 5)), r"C must be \[batch, d_state, L\]"),
    (dict(D=torch.randn(7)), r"D must be \[6\]"),
    (dict(u=torch.randint(0, 3, (2, 6, 5))), "floating"),
    (dict(initial_state=torch.randn(2, 6, 4)), "initial_state must be"),
    (dict(A=torch.randn(6, 3, device="meta")), "one device"),
])
def test_scan_rejects_bad_input_clearly(change, match):
    args = scan_inputs(2, 6, 5, 3, dtype=torch.float32)
    args.update(change)
    with pytest.raises(ValueError, match=match):
        OPS.selective_scan(*_scan_positional(args))


def test_state_update_and_conv_reject_bad_input():
    x = torch.randn(2, 4)
    with pytest.raises(ValueError, match="state must be"):
        OPS.selective_state_update(torch.randn(2, 4, 5), x, x, -torch.rand(4, 3), torch.randn(2, 3),
                                   torch.randn(2, 3), None, None, None, True)
    with pytest.raises(ValueError, match="width in 2..4"):
        OPS.causal_conv1d(torch.randn(2, 4, 3), torch.randn(4, 6), None, None, True)
    with pytest.raises(ValueError, match="conv state"):
        OPS.causal_conv1d_update(x, torch.randn(2, 4, 1), torch.randn(4, 4), None, True)


def test_export_keeps_each_op_as_one_node():
    class Scan(torch.nn.Module):
        def forward(self, u, delta, A, B, C):
            out, last = OPS.selective_scan(u, delta, A, B, C, None, None, None, True, None)
            y, s = OPS.causal_conv1d(out, A[:, :2], None, None, True)
            return y, last, s

    args = scan_inputs(2, 4, 5, 3, with_options=False, dtype=torch.float32)
    ep = torch.export.export(Scan(), (args["u"], args["delta"], args["A"], args["B"], args["C"]))
    targets = [str(n.target) for n in ep.graph.nodes if n.op == "call_function"]
    assert targets.count("mamba_export.selective_scan.default") == 1
    assert targets.count("mamba_export.causal_conv1d.default") == 1
    assert not any("_reference" in t for t in targets)

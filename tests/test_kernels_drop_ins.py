"""The mamba_ssm-compatible drop-ins (mamba_export.ops) on the kernels: eager calls that need no
gradient launch the kernel directly, without the op's dispatch (host time an eager call waits
for), and give the reference's numbers; in Triton's interpreter on CPU."""

import pytest
import torch
from _util import rel_err as _rel_err, scan_inputs

import mamba_export as me
from mamba_export import ops
from mamba_export import reference as ref

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
BOUNDS = {torch.float32: 1e-5, torch.float16: 5e-3, torch.bfloat16: 5e-3}


@pytest.fixture
def no_op_dispatch(monkeypatch):
    """Fail any call that reaches a public op's body (each validates its inputs first)."""
    def fail(*args, **kwargs):
        raise AssertionError("the drop-in went through the op's dispatch")
    for name in ("check_scan_inputs", "check_state_update_inputs", "check_conv_inputs",
                 "check_ssd_state_update_inputs"):
        monkeypatch.setattr(ops, name, fail)


def rel_err(out, want):
    """Relative error against the CPU float64 reference, wherever ``out`` lives."""
    return _rel_err(out.cpu(), want)


def _rounded(t, dtype):
    """``t`` in ``dtype`` and that rounded value in float64 (the reference's input)."""
    low = t.to(device=DEVICE, dtype=dtype)
    return low, low.double().cpu()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("batch,dim,length,dstate", [(1, 5, 1, 3), (2, 7, 19, 4)])
def test_selective_scan_fn_launches_the_kernel(no_op_dispatch, dtype, batch, dim, length, dstate):
    args = scan_inputs(batch, dim, length, dstate)
    low = {k: v.to(DEVICE, dtype if k in ("u", "delta", "B", "C", "z") else torch.float32)
           if isinstance(v, torch.Tensor) else v for k, v in args.items()}
    want, want_last = ref.selective_scan(**{k: v.double().cpu() if isinstance(v, torch.Tensor) else v
                                            for k, v in low.items()})
    out, last = me.selective_scan_fn(low["u"], low["delta"], low["A"], low["B"], low["C"], low["D"], low["z"],
                                     low["delta_bias"], True, return_last_state=True,
                                     initial_state=low["initial_state"])
    assert out.dtype == dtype and last.dtype == torch.float32
    assert rel_err(out, want) < BOUNDS[dtype] and rel_err(last, want_last) < BOUNDS[dtype]


@pytest.mark.parametrize("state_dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("batch,dim,dstate", [(1, 3, 2), (3, 9, 16)])
def test_selective_state_update_writes_the_state_in_place(no_op_dispatch, state_dtype, batch, dim, dstate):
    state, state64 = _rounded(torch.randn(batch, dim, dstate), state_dtype)
    x, x64 = _rounded(torch.randn(batch, dim), torch.float32)
    dt, dt64 = _rounded(torch.randn(batch, dim) * 0.5 - 1, torch.float32)
    z, z64 = _rounded(torch.randn(batch, dim), torch.float32)
    A, A64 = _rounded(-torch.rand(dim, dstate) - 0.1, torch.float32)
    B, B64 = _rounded(torch.randn(batch, dstate), torch.float32)
    C, C64 = _rounded(torch.randn(batch, dstate), torch.float32)
    D, D64 = _rounded(torch.randn(dim), torch.float32)
    bias, bias64 = _rounded(torch.randn(dim) * 0.1, torch.float32)
    want, want_state = ref.selective_state_update(state64, x64, dt64, A64, B64, C64, D64, z64, bias64, True)
    address = state.data_ptr()
    out = me.selective_state_update(state, x, dt, A, B, C, D, z=z, dt_bias=bias, dt_softplus=True)
    assert state.data_ptr() == address and state.dtype == state_dtype
    assert rel_err(out, want) < 1e-5
    assert rel_err(state, want_state) < BOUNDS[state_dtype]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("width", [2, 4])
def test_causal_conv1d_drop_ins_launch_the_kernels(no_op_dispatch, dtype, width):
    x, x64 = _rounded(torch.randn(2, 5, 9), dtype)
    w, w64 = _rounded(torch.randn(5, width), dtype)
    b, b64 = _rounded(torch.randn(5), dtype)
    want, want_final = ref.causal_conv1d(x64, w64, b64, None, True)
    out, final = me.causal_conv1d_fn(x, w, b, return_final_states=True, activation="silu")
    assert rel_err(out, want) < BOUNDS[dtype] and rel_err(final, want_final) < BOUNDS[dtype]
    state = torch.zeros(2, 5, width, device=DEVICE, dtype=dtype)  # (mamba_ssm keeps d_conv columns)
    address = state.data_ptr()
    for t in range(9):
        y = me.causal_conv1d_update(x[..., t : t + 1], state, w, b, activation="silu")
        assert y.shape == (2, 5, 1) and state.data_ptr() == address
        assert rel_err(y[..., 0], want[..., t]) < BOUNDS[dtype]
    assert torch.equal(state[..., -1], x[..., -1])  # the state holds the latest inputs


@pytest.mark.parametrize("dt_limit", [(0.0, float("inf")), (0.01, 0.5)])
@pytest.mark.parametrize("batch,heads,headdim,groups,dstate", [(1, 2, 3, 1, 5), (3, 4, 8, 2, 16)])
def test_mamba2_state_update_writes_the_state_in_place(no_op_dispatch, batch, heads, headdim, groups, dstate,
                                                       dt_limit):
    state, state64 = _rounded(torch.randn(batch, heads, headdim, dstate), torch.float32)
    x, x64 = _rounded(torch.randn(batch, heads, headdim), torch.bfloat16)
    z, z64 = _rounded(torch.randn(batch, heads, headdim), torch.bfloat16)
    dt, dt64 = _rounded(torch.randn(batch, heads) * 0.5 - 1, torch.bfloat16)
    A, A64 = _rounded(-torch.rand(heads) - 0.1, torch.float32)
    B, B64 = _rounded(torch.randn(batch, groups, dstate), torch.bfloat16)
    C, C64 = _rounded(torch.randn(batch, groups, dstate), torch.bfloat16)
    D, D64 = _rounded(torch.randn(heads), torch.float32)
    bias, bias64 = _rounded(torch.randn(heads) * 0.1, torch.float32)
    limit = None if dt_limit == (0.0, float("inf")) else dt_limit
    want, want_state = ref.ssd_state_update(state64, x64, dt64, A64, B64, C64, D64, z64, bias64, True, limit)
    address = state.data_ptr()
    out = ops.mamba2_state_update(state, x, dt, A, B, C, D, z, bias, dt_softplus=True, dt_limit=dt_limit)
    assert state.data_ptr() == address and out.dtype == torch.bfloat16
    assert rel_err(out, want) < 5e-3 and rel_err(state, want_state) < 1e-5


def test_drop_ins_needing_a_gradient_go_through_the_op(no_op_dispatch):
    """The direct path has no autograd: an input that requires grad takes the op (which
    validates first, here the patched check)."""
    args = scan_inputs(1, 4, 6, 2, with_options=False, dtype=torch.float32, device=DEVICE)
    args["u"].requires_grad_(True)
    with pytest.raises(AssertionError, match="dispatch"):
        me.selective_scan_fn(args["u"], args["delta"], args["A"], args["B"], args["C"])

"""Which tensors Inductor's mutation analysis finds written by each kernel launch (run by
tests/test_inductor_mutations.py in a fresh process: TRITON_INTERPRET must be unset when Triton
is imported, and the CPU test session sets it).

Every launch the kernels' launchers make on small CPU inputs is recorded instead of run, and
``identify_accessed_tensors`` (what ``wrap_triton`` uses under torch.compile) analyses its TTIR,
compiled for sm_90 (no GPU needed). Prints one JSON line per launch: case, kernel, the written
arguments, those that share storage with the case's inputs, and whether the analysis failed
(when it fails torch assumes every input written).
"""

import json
import logging
import math
import sys

import torch
import triton
import torch._higher_order_ops.triton_kernel_wrap as tkw
from triton.backends.compiler import GPUTarget

from mamba_export.kernels import (
    causal_conv1d,
    decode_linear,
    gated_rmsnorm,
    selective_scan,
    ssd_scan,
    ssd_update,
    state_update,
)

MODULES = (causal_conv1d, decode_linear, gated_rmsnorm, selective_scan, ssd_scan, ssd_update,
           state_update)


class _Sm90:
    """Stands in for Triton's active driver: only the compile target is asked for."""

    def get_current_target(self):
        return GPUTarget("cuda", 90, 32)


LAUNCHES = []


def record(k, grid, device, *args, num_warps=4, num_stages=None, pdl=False, **kwargs):
    """Stands in for _common.launch: keep (kernel, every argument by name)."""
    named = dict(zip(k.jit.arg_names, args))
    named.update({n: v for n, v in kwargs.items() if n in k.jit.arg_names})
    if pdl:
        named["PDL"] = False
    LAUNCHES.append((k.jit, named))


class _AnalysisFailed(logging.Handler):
    """Notices torch's fallback message when the analysis itself fails."""

    def __init__(self):
        super().__init__()
        self.failed = False

    def emit(self, record):
        self.failed = self.failed or "assuming every input is mutated" in record.getMessage()


def report(case, inputs):
    """Analyse the launches made since the last report (none of ``inputs`` may look written;
    the cases pass separate output state buffers, not in-place ones)."""
    storage = lambda t: t.untyped_storage().data_ptr()  # noqa: E731
    protected = {storage(t) for t in inputs if isinstance(t, torch.Tensor)}
    if not LAUNCHES:
        print(json.dumps(dict(case=case, kernel=None)))
    for fn, named in LAUNCHES:
        watch = _AnalysisFailed()
        tkw.log.addHandler(watch)
        try:
            accesses = tkw.identify_accessed_tensors(fn, named, {})
        finally:
            tkw.log.removeHandler(watch)
        written = sorted(dep.name for dep in accesses.read_writes.writes)
        inputs_written = [n for n in written if isinstance(named[n], torch.Tensor)
                          and storage(named[n]) in protected]
        print(json.dumps(dict(case=case, kernel=fn.__name__, written=written,
                              inputs_written=inputs_written, failed=watch.failed)))
    LAUNCHES.clear()


def scan_inputs(groups, with_options, dtype=torch.float32):
    batch, dim, length, dstate = 2, 8, 37, 4
    r = lambda *s: torch.randn(*s).to(dtype)  # noqa: E731
    bc = (batch, dstate, length) if groups is None else (batch, groups, dstate, length)
    kw = dict(u=r(batch, dim, length), delta=r(batch, dim, length), A=-torch.rand(dim, dstate),
              B=r(*bc), C=r(*bc))
    if with_options:
        kw.update(D=torch.randn(dim), z=r(batch, dim, length), delta_bias=torch.randn(dim),
                  delta_softplus=True, initial_state=torch.randn(batch, dim, dstate))
    return kw


def scan_forward(kind, groups, with_options):
    real = selective_scan.scan_config

    def config(*args, **kwargs):
        cfg = real(*args, **dict(kwargs, kind=kind))
        return dict(cfg, SEGMENTS=3) if kind == "split" else cfg

    selective_scan.scan_config = config
    try:
        kw = scan_inputs(groups, with_options, torch.bfloat16)
        selective_scan.selective_scan_fwd(**kw)
    finally:
        selective_scan.scan_config = real
    report(f"selective_scan_fwd {kind} groups={groups} options={with_options}", kw.values())


def scan_backward(groups, with_options):
    kw = scan_inputs(groups, with_options)
    full = [kw.get(n) for n in ("u", "delta", "A", "B", "C", "D", "z", "delta_bias")]
    dout, dlast = torch.randn_like(kw["u"]), torch.randn(2, 8, 4)
    selective_scan.selective_scan_bwd(*full, kw.get("delta_softplus", False),
                                      kw.get("initial_state"), dout, dlast)
    report(f"selective_scan_bwd groups={groups} options={with_options}",
           [*kw.values(), dout, dlast])


def state_update_step():
    batch, dim, dstate = 3, 8, 4
    ins = dict(state=torch.randn(batch, dim, dstate), x=torch.randn(batch, dim),
               dt=torch.randn(batch, dim), A=-torch.rand(dim, dstate), B=torch.randn(batch, dstate),
               C=torch.randn(batch, dstate), D=torch.randn(dim), z=torch.randn(batch, dim),
               dt_bias=torch.randn(dim))
    state_update.selective_state_update_fwd(**ins, dt_softplus=True,
                                            out_state=torch.empty_like(ins["state"]))
    report("selective_state_update_fwd", ins.values())


def conv():
    x, w, b, init = torch.randn(2, 8, 9), torch.randn(8, 4), torch.randn(8), torch.randn(2, 8, 3)
    causal_conv1d.causal_conv1d_fwd(x, w, b, init, silu=True)
    report("causal_conv1d_fwd", [x, w, b, init])
    xt, state = torch.randn(2, 8), torch.randn(2, 8, 3)
    causal_conv1d.causal_conv1d_update_fwd(xt, state, w, b, True, out_state=torch.empty_like(state))
    report("causal_conv1d_update_fwd", [xt, state, w, b])
    causal_conv1d.conv_state_commit_fwd(xt, state, torch.empty_like(state))
    report("conv_state_commit_fwd", [xt, state])


def ssd():
    batch, length, heads, headdim, dstate, groups = 2, 37, 4, 16, 16, 2
    r = torch.randn
    ins = dict(x=r(batch, length, heads, headdim), dt=r(batch, length, heads), A=-torch.rand(heads),
               B=r(batch, length, groups, dstate), C=r(batch, length, groups, dstate), D=r(heads),
               z=r(batch, length, heads, headdim), dt_bias=r(heads),
               initial_state=r(batch, heads, headdim, dstate))
    ssd_scan.ssd_scan_fwd(**ins, dt_softplus=True, dt_limit=(0.0, math.inf), config=(16, 16, 4, 1))
    report("ssd_scan_fwd", ins.values())


def ssd_steps():
    batch, heads, headdim, dstate, groups, width, state_len = 2, 4, 8, 6, 2, 4, 3
    conv_dim = heads * headdim + 2 * groups * dstate
    r = torch.randn
    state, dt, A, D, bias = (r(batch, heads, headdim, dstate), r(batch, heads), -torch.rand(heads),
                             r(heads), r(heads))
    x, z, B, C = (r(batch, heads, headdim), r(batch, heads, headdim), r(batch, groups, dstate),
                  r(batch, groups, dstate))
    ssd_update.ssd_state_update_fwd(state, x, dt, A, B, C, D, z, bias, True, None,
                                    out_state=torch.empty_like(state))
    report("ssd_state_update_fwd", [state, dt, A, D, bias, x, z, B, C])
    xbc, cst, w, cb = r(batch, conv_dim), r(batch, conv_dim, state_len), r(conv_dim, width), \
        r(conv_dim)
    ssd_update.ssd_conv_state_update_fwd(state, xbc, cst, w, cb, dt, A, groups, D, None, bias, True,
                                         None, out_state=torch.empty_like(state))
    report("ssd_conv_state_update_fwd", [state, dt, A, D, bias, xbc, cst, w, cb])


def norms_and_linear():
    """(rmsnorm's fused add + norm is launched directly by the CUDA decode step, never traced.)"""
    x, z, w = torch.randn(2, 16), torch.randn(2, 16), torch.randn(16)
    gated_rmsnorm.gated_rmsnorm_fwd(x, z, w, 1e-5, 8, False)
    report("gated_rmsnorm_fwd", [x, z, w])
    weight, bias = torch.randn(24, 16), torch.randn(24)
    decode_linear.decode_linear_fwd(x[:1], weight, bias)
    report("decode_linear_fwd", [x, weight, bias])


def main():
    for module in MODULES:
        if hasattr(module, "launch"):
            module.launch = record
    triton.runtime.driver.set_active(_Sm90())
    torch.manual_seed(0)
    for kind in ("seq", "chunk", "split"):
        for groups, with_options in ((None, True), (2, False)):
            scan_forward(kind, groups, with_options)
    for groups, with_options in ((None, True), (2, False)):
        scan_backward(groups, with_options)
    state_update_step()
    conv()
    ssd()
    ssd_steps()
    norms_and_linear()


if __name__ == "__main__":
    sys.exit(main())

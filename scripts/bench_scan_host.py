"""Host (CPU) time per eager scan-forward call, by stage (needs CUDA): where the microseconds
between two kernels go when the GPU time is ~0.1 ms. 200 calls each, no synchronisation inside.

    PYTHONPATH=scripts:. python3 scripts/bench_scan_host.py [--shape 1,5120,2048]"""

from __future__ import annotations

import argparse
import time

import torch

from bench_kernels import scan_inputs
import mamba_export.ops  # (registers torch.ops.mamba_export; the drop-ins)
from mamba_export.kernels import _common, scan_gluon
from mamba_export.kernels import selective_scan as ss


def per_call_us(fn, n=200):
    fn()
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(n):
        fn()
    us = (time.perf_counter() - t0) / n * 1e6
    torch.cuda.synchronize()
    return us


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--shape", default="1,5120,2048")
    ap.add_argument("--profile", action="store_true", help="cProfile of the default call, top functions")
    args = ap.parse_args()
    b, d, l = (int(v) for v in args.shape.split(","))
    x = scan_inputs(b, d, l)
    u, dt, A, B, C, D, z, bias = (x[k] for k in ("u", "delta", "A", "B", "C", "D", "z", "delta_bias"))
    cfg = ss.scan_config(b, d, l, u.dtype, u.device)
    seq_cfg = ss.scan_config(b, d, l, u.dtype, u.device, allow_gluon=False)
    ins = (u, dt, A, B, C, D, z, bias)
    launched = {}  # the Gluon launcher's arguments in the default call, replayed alone below
    real_launch = scan_gluon.launch_fwd
    scan_gluon.launch_fwd = lambda *a, **k: launched.update(a=a, k=k) or real_launch(*a, **k)
    ss._run_fwd(*ins, True, None, cfg)
    scan_gluon.launch_fwd = real_launch
    stages = {
        "selective_scan_fwd (default)": lambda: ss.selective_scan_fwd(*ins, True),
        "torch.ops selective_scan": lambda: torch.ops.mamba_export.selective_scan(*ins, True),
        "selective_scan_fn (drop-in)": lambda: mamba_export.ops.selective_scan_fn(*ins, True),
        f"_run_fwd {cfg['KIND']}": lambda: ss._run_fwd(*ins, True, None, cfg),
        f"_run_fwd {seq_cfg['KIND']} (Triton)": lambda: ss._run_fwd(*ins, True, None, seq_cfg),
        "_validate": lambda: ss._validate(u, dt, A, B, C, D, z, bias, None),
        "scan_config": lambda: ss.scan_config(b, d, l, u.dtype, u.device),
        "B, C to float32 [L, N]": lambda: [scan_gluon.states_contiguous_f32(t) for t in (B, C)],
        "new_output x2": lambda: (_common.new_output((b, d, l), u.dtype, u.device),
                                  _common.new_output((b, d, 16), torch.float32, u.device)),
        "_tracing": lambda: _common._tracing((u,)),
    }
    if launched:  # (a GPU the Gluon kernel serves)
        stages["Gluon kernel launch alone"] = lambda: real_launch(*launched["a"], **launched["k"])
        grid, *a = launched["a"]
        k = dict(launched["k"])
        k.pop("maxnreg", None)
        stages["Gluon launch through the JIT (uncached)"] = \
            lambda: scan_gluon._scan_fwd_gluon_kernel[grid](*a, num_warps=1, **k)
        stages["B, C packed (16-bit)"] = lambda: scan_gluon.bc_packed(B, C)
    for name, fn in stages.items():
        print(f"{name:40s} {per_call_us(fn):8.1f} us")
    if args.profile:
        import cProfile
        import pstats

        fn = stages["selective_scan_fwd (default)"]
        with cProfile.Profile() as prof:
            for _ in range(200):
                fn()
        pstats.Stats(prof).sort_stats("tottime").print_stats(18)


if __name__ == "__main__":
    main()

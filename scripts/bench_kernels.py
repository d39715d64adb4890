"""Benchmarks of the Triton kernels (needs CUDA). Medians of triton.testing.do_bench, random data.

    python3 scripts/bench_kernels.py [--out results.json] [--quick] [--sweep]

Prints a table last; --out writes every figure (with GPU, versions, date) as JSON.
Floors: the exp unit (MUFU ex2: 16 per clock per SM on Hopper; D*L*N exps per scan) and memory
(u, delta, z, out once each, B and C once, at the copy bandwidth measured here).
"""

from __future__ import annotations

import argparse
import datetime
import json
import subprocess
import sys

import torch
import triton

from mamba_export import selective_scan_fn
from mamba_export.kernels import selective_scan as ss
from mamba_export.kernels.causal_conv1d import causal_conv1d_fwd, causal_conv1d_update_fwd
from mamba_export.kernels.state_update import selective_state_update_fwd


def bench(fn, warmup=25, rep=100):
    return triton.testing.do_bench(fn, warmup=warmup, rep=rep, return_mode="median")


def sm_clock_hz():
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=clocks.max.sm", "--format=csv,noheader,nounits"],
                             capture_output=True, text=True, timeout=20).stdout.strip().splitlines()
        return float(out[0]) * 1e6
    except Exception:
        return 1.98e9


def copy_bandwidth():
    n = 1 << 30
    a = torch.empty(n, dtype=torch.uint8, device="cuda")
    b = torch.empty_like(a)
    ms = bench(lambda: b.copy_(a))
    return 2 * n / (ms * 1e-3)


def scan_inputs(batch, dim, length, dstate=16, dtype=torch.bfloat16, seed=0):
    g = torch.Generator(device="cuda").manual_seed(seed)
    r = lambda *s: torch.randn(*s, device="cuda", generator=g)  # noqa: E731
    return dict(u=r(batch, dim, length).to(dtype), delta=r(batch, dim, length).to(dtype) * 0.5,
                A=-torch.rand(dim, dstate, device="cuda", generator=g) * 4 - 0.1,
                B=r(batch, dstate, length).to(dtype), C=r(batch, dstate, length).to(dtype),
                D=r(dim), z=r(batch, dim, length).to(dtype), delta_bias=r(dim) * 0.5 - 2.0,
                delta_softplus=True)


def floors(batch, dim, length, dstate, elt, exp_rate, bw):
    exps = batch * dim * length * dstate
    bytes_ = 4 * batch * dim * length * elt + 2 * batch * dstate * length * elt
    return exps / exp_rate * 1e3, bytes_ / bw * 1e3


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=None)
    ap.add_argument("--sweep", action="store_true", help="time several block configurations")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--scan-only", action="store_true", help="scan forward only")
    ap.add_argument("--split", action="store_true",
                    help="time the L-split scan kernel (segments) against the default")
    args = ap.parse_args()

    props = torch.cuda.get_device_properties(0)
    clock = sm_clock_hz()
    exp_rate = 16 * props.multi_processor_count * clock
    bw = copy_bandwidth()
    meta = dict(date=datetime.date.today().isoformat(), gpu=props.name,
                sms=props.multi_processor_count, sm_clock_max_hz=clock, torch=torch.__version__,
                triton=triton.__version__, copy_bandwidth_Bps=bw, exp_rate_per_s=exp_rate)
    print(json.dumps(meta), flush=True)
    rows = []

    def record(kind, shape, ms, **extra):
        row = dict(kind=kind, shape=shape, ms=ms, **extra)
        rows.append(row)
        print(json.dumps(row), flush=True)

    # ---- scan forward: the targets -------------------------------------------------------
    targets = {(1, 5120, 2048): 0.100, (8, 5120, 2048): 0.73, (4, 1536, 65536): 4.4}
    for (b, d, l), target in targets.items():
        kw = scan_inputs(b, d, l)
        fn = lambda: ss.selective_scan_fwd(**kw)  # noqa: E731
        fn()
        ms = bench(fn)
        try:  # device time alone (host launch overhead removed): one CUDA-graph replay
            ms_graph = triton.testing.do_bench_cudagraph(fn, rep=100, return_mode="median")
        except Exception as e:
            ms_graph = None
            print("cudagraph timing failed:", repr(e)[:200])
        # the public drop-in a user calls (mamba_export.selective_scan_fn, last state returned)
        public = lambda: selective_scan_fn(**kw, return_last_state=True)  # noqa: E731
        public()
        fe, fm = floors(b, d, l, 16, 2, exp_rate, bw)
        record("scan_fwd_bf16", f"B{b} D{d} L{l} N16", ms, target_ms=target, graph_ms=ms_graph,
               dropin_ms=bench(public), exp_floor_ms=fe, mem_floor_ms=fm,
               cfg=ss.scan_config(b, d, l, torch.bfloat16, torch.device("cuda")))
        if args.split:
            segs = {1: [2, 4, 8], 8: [2]}.get(b, [2, 4, 8])
            sweep = [dict(KIND="split", BLOCK_D=bd, BLOCK_T=16, num_warps=1, SEGMENTS=sg, BC_F32=f)
                     for sg in segs for bd, f in ((8, True), (4, False))]
            for cfg in sweep:
                try:
                    f2 = lambda: ss._run_fwd(kw["u"], kw["delta"], kw["A"], kw["B"], kw["C"],  # noqa: E731
                                             kw["D"], kw["z"], kw["delta_bias"], True, None, cfg)
                    f2()
                    record("scan_fwd_bf16_split", f"B{b} D{d} L{l} N16", bench(f2, 10, 50),
                           cfg=cfg)
                except Exception as e:
                    record("scan_fwd_bf16_split", f"B{b} D{d} L{l} N16", None, cfg=cfg,
                           error=repr(e)[:200])
        if args.sweep:
            sweep = [dict(KIND="chunk", BLOCK_D=4, BLOCK_T=256, num_warps=2)]
            sweep += [dict(KIND="seq", BLOCK_D=bd, BLOCK_T=bt, num_warps=1, BC_F32=f)
                      for bd, bt, f in [(4, 8, True), (4, 16, True), (4, 32, True), (4, 16, False),
                                        (8, 8, True), (8, 16, True), (8, 8, False),
                                        (8, 16, False)]]
            for cfg in sweep:
                try:
                    f2 = lambda: ss._run_fwd(kw["u"], kw["delta"], kw["A"], kw["B"], kw["C"],  # noqa: E731
                                             kw["D"], kw["z"], kw["delta_bias"], True, None, cfg)
                    f2()
                    record("scan_fwd_bf16_sweep", f"B{b} D{d} L{l} N16", bench(f2, 10, 50),
                           cfg=cfg)
                except Exception as e:  # keep going: a sweep point may not compile
                    record("scan_fwd_bf16_sweep", f"B{b} D{d} L{l} N16", None, cfg=cfg,
                           error=repr(e)[:200])
        # the model's layout: u, delta, z are views of [B, L, 2D]-like buffers (channel stride 1)
        xz = torch.randn(b, l, 3 * d, device="cuda").to(torch.bfloat16)
        km = dict(kw, u=xz[..., :d].transpose(1, 2), delta=xz[..., d:2 * d].transpose(1, 2) * 0.5,
                  z=xz[..., 2 * d:].transpose(1, 2))
        fm_ = lambda: ss.selective_scan_fwd(**km)  # noqa: E731
        fm_()
        record("scan_fwd_bf16_model_layout", f"B{b} D{d} L{l} N16", bench(fm_),
               cfg=ss.scan_config(b, d, l, torch.bfloat16, torch.device("cuda"),
                                  channel_contiguous=True))
        for bd, bt, f in ([(8, 16, True), (8, 16, False), (8, 8, True), (4, 16, False),
                           (8, 32, True)] if args.sweep else []):
            cfg = dict(KIND="seq", BLOCK_D=bd, BLOCK_T=bt, num_warps=1, BC_F32=f)
            f2 = lambda: ss._run_fwd(km["u"], km["delta"], km["A"], km["B"], km["C"],  # noqa: E731
                                     km["D"], km["z"], km["delta_bias"], True, None, cfg)
            f2()
            record("scan_fwd_bf16_model_layout_sweep", f"B{b} D{d} L{l} N16", bench(f2, 10, 50),
                   cfg=cfg)
        del xz, km
        del kw
        torch.cuda.empty_cache()

    # ---- scan forward vs L (130m shape, batch 1) -----------------------------------------
    lengths = [2048, 16384, 131072, 1048576] if args.quick else \
        [2048, 4096, 8192, 16384, 65536, 262144, 1048576]
    for l in lengths:
        kw = scan_inputs(1, 1536, l)
        fn = lambda: ss.selective_scan_fwd(**kw)  # noqa: E731
        fn()
        ms = bench(fn, 10, 50)
        fe, fm = floors(1, 1536, l, 16, 2, exp_rate, bw)
        record("scan_fwd_vs_L", f"B1 D1536 L{l} N16", ms, length=l, ns_per_token=ms * 1e6 / l,
               exp_floor_ms=fe, mem_floor_ms=fm)
        # (channels per warp, B/C converted to fp32) x segments
        split_cfgs = [dict(KIND="split", BLOCK_D=bd, BLOCK_T=16, num_warps=1, SEGMENTS=sg, BC_F32=f)
                      for sg in (8, 16) for bd, f in ((8, True), (4, False))]
        for cfg in split_cfgs if args.split else []:
            f2 = lambda: ss._run_fwd(kw["u"], kw["delta"], kw["A"], kw["B"], kw["C"],  # noqa: E731
                                     kw["D"], kw["z"], kw["delta_bias"], True, None, cfg)
            f2()
            ms2 = bench(f2, 10, 50)
            record("scan_fwd_vs_L_split", f"B1 D1536 L{l} N16", ms2, length=l,
                   ns_per_token=ms2 * 1e6 / l, cfg=cfg)
        del kw
        torch.cuda.empty_cache()

    # ---- scan backward -------------------------------------------------------------------
    for (b, d, l) in ([] if args.scan_only else [(1, 5120, 2048), (8, 5120, 2048)]):
        kw = scan_inputs(b, d, l)
        kw["initial_state"] = torch.randn(b, d, 16, device="cuda")
        out, last = ss.selective_scan_fwd(**kw)
        dout = torch.randn_like(out)
        dlast = torch.randn_like(last)
        fn = lambda: ss.selective_scan_bwd(kw["u"], kw["delta"], kw["A"], kw["B"], kw["C"],  # noqa: E731
                                           kw["D"], kw["z"], kw["delta_bias"], True,
                                           kw["initial_state"], dout, dlast)
        fn()
        ms = bench(fn, 10, 50)
        fe, _ = floors(b, d, l, 16, 2, exp_rate, bw)
        record("scan_bwd_bf16", f"B{b} D{d} L{l} N16", ms, exp_floor_fwd_ms=fe)
        del kw, out, dout
        torch.cuda.empty_cache()

    # ---- decode and conv -----------------------------------------------------------------
    for b in (() if args.scan_only else (1, 64)):
        d, n = 5120, 16
        g = torch.Generator(device="cuda").manual_seed(1)
        r = lambda *s: torch.randn(*s, device="cuda", generator=g)  # noqa: E731
        state = r(b, d, n)
        kw = dict(x=r(b, d).bfloat16(), dt=r(b, d).bfloat16(), A=-torch.rand(d, n, device="cuda"),
                  B=r(b, n).bfloat16(), C=r(b, n).bfloat16(), D=r(d), z=r(b, d).bfloat16(),
                  dt_bias=r(d), dt_softplus=True)
        fn = lambda: selective_state_update_fwd(state, **kw, out_state=state)  # noqa: E731
        fn()
        ms = bench(fn)
        record("state_update_bf16_inplace", f"B{b} D{d} N{n}", ms,
               mem_floor_ms=2 * b * d * n * 4 / bw * 1e3)
    for layout in (() if args.scan_only else ("contiguous", "model")):
        b, d, l = 8, 5120, 2048
        if layout == "model":
            x = torch.randn(b, l, 2 * d, device="cuda").bfloat16()[..., :d].transpose(1, 2)
        else:
            x = torch.randn(b, d, l, device="cuda").bfloat16()
        w = torch.randn(d, 4, device="cuda")
        bias = torch.randn(d, device="cuda")
        fn = lambda: causal_conv1d_fwd(x, w, bias, None, True)  # noqa: E731
        fn()
        ms = bench(fn)
        record(f"conv1d_fwd_bf16_{layout}", f"B{b} D{d} L{l} W4", ms,
               mem_floor_ms=2 * b * d * l * 2 / bw * 1e3)
    for b in (() if args.scan_only else (1, 64)):
        d = 5120
        x = torch.randn(b, d, device="cuda").bfloat16()
        st = torch.randn(b, d, 3, device="cuda").bfloat16()
        fn = lambda: causal_conv1d_update_fwd(x, st, w, bias, True, out_state=st)  # noqa: E731
        fn()
        record("conv1d_update_bf16_inplace", f"B{b} D{d} W4", bench(fn))

    # ---- compiled kernels: registers and spills -----------------------------------------
    from mamba_export.kernels import causal_conv1d as cc, state_update as su
    for k in (ss._scan_fwd_seq_kernel, ss._scan_fwd_split_kernel, ss._scan_fwd_kernel, ss._scan_bwd_kernel, cc._conv_fwd_kernel,
              cc._conv_update_kernel, su._state_update_kernel):
        try:
            for caches in k.jit.device_caches.values():
                for compiled in caches[0].values():
                    md = compiled.metadata
                    consts = {kk: vv for kk, vv in getattr(compiled, "src", None).constants.items()
                              if "BLOCK" in str(kk)} if hasattr(compiled, "src") else {}
                    print(f"{k.__name__}: regs={compiled.n_regs} spills={compiled.n_spills} "
                          f"warps={md.num_warps} {consts}")
        except Exception as e:  # informational only
            print(f"{k.__name__}: no resource info ({e!r:.80})")

    # ---- table ---------------------------------------------------------------------------
    print()
    print(f"{props.name}  torch {torch.__version__}  triton {triton.__version__}  "
          f"copy {bw / 1e12:.2f} TB/s  exp {exp_rate / 1e12:.2f} T/s")
    print(f"{'kind':32s} {'shape':24s} {'ms':>9s} {'target':>7s} {'floor':>7s} {'extra'}")
    for r in rows:
        floor = max(r.get("exp_floor_ms", 0) or 0, r.get("mem_floor_ms", 0) or 0)
        extra = r.get("cfg", "") if ("sweep" in r["kind"] or r["kind"].endswith("split")) else (
            f"{r['ns_per_token']:.3f} ns/tok" if "ns_per_token" in r else "")
        if r["kind"].endswith("split"):
            c = r["cfg"]
            extra = f"split S{c['SEGMENTS']} {c['BLOCK_D']}x{c['BLOCK_T']}" + (
                " bf16 B/C" if not c.get("BC_F32", True) else "") + (
                f"  {r['ns_per_token']:.3f} ns/tok" if "ns_per_token" in r else "")
        if r.get("graph_ms"):
            extra = f"graph replay {r['graph_ms']:.4f} ms"
        if r.get("dropin_ms"):
            extra += f", selective_scan_fn {r['dropin_ms']:.4f} ms"
        ms = f"{r['ms']:.4f}" if r["ms"] is not None else "ERR"
        tgt = f"{r['target_ms']:.3f}" if "target_ms" in r else ""
        print(f"{r['kind']:32s} {r['shape']:24s} {ms:>9s} {tgt:>7s} "
              f"{(f'{floor:.4f}' if floor else ''):>7s} {extra}")
    if args.out:
        with open(args.out, "w") as f:
            json.dump(dict(meta=meta, rows=rows), f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())

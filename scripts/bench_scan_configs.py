"""Times the Mamba-1 scan forward under given block configurations (needs CUDA), for choosing
scan_config's defaults. do_bench medians, bench_kernels.py's inputs (bf16, z + D + delta_bias +
softplus, N = 16), the target shapes of issue #3 unless --shapes.

    python3 scripts/bench_scan_configs.py --configs seq:16x4,seq:32x4:f32,split:16x4:s4 [--out f.json]

A config is KIND:BLOCK_DxBLOCK_T[:f32][:sS][:wW][:pP][:rR][:cC][:bcnow][:bcf32] (f32: B and C converted to
float32 up front; sS: S segments for the split kernel; wW: W warps; pP: the seq kernel's prefetch
distance in chunks; for the gluon kernel: rR at most R registers per thread, cC C channels per
lane, bcnow B/C loaded when used rather than a chunk ahead, bcf32 16-bit B/C as two float32
copies rather than packed into one word per state). "default" is scan_config's choice."""

from __future__ import annotations

import argparse
import datetime
import json
import time

import torch
import triton

from bench_kernels import bench, scan_inputs
from mamba_export.kernels import selective_scan as ss

TARGET_SHAPES = "1,5120,2048;8,5120,2048;4,1536,65536"


def parse_config(spec: str, batch: int, dim: int, length: int, model_layout: bool,
                 dtype: torch.dtype = torch.bfloat16) -> dict:
    if spec == "default":
        return ss.scan_config(batch, dim, length, dtype, torch.device("cuda"), channel_contiguous=model_layout)
    kind, tiles, *flags = spec.split(":")
    block_d, block_t = (int(v) for v in tiles.split("x"))
    cfg = dict(KIND=kind, BLOCK_D=block_d, BLOCK_T=block_t, num_warps=1, BC_F32="f32" in flags)
    for f in flags:
        if f.startswith("s"):
            cfg["SEGMENTS"] = int(f[1:])
        if f.startswith("w"):
            cfg["num_warps"] = int(f[1:])
        if f.startswith("p"):
            cfg["PREFETCH"] = int(f[1:])
        if f.startswith("r"):
            cfg["MAXNREG"] = int(f[1:])
        if f.startswith("c"):
            cfg["DPT"] = int(f[1:])
        if f == "bcnow":
            cfg["BC_AHEAD"] = False
        if f == "bcf32":
            cfg["BC_PACKED"] = False
    return cfg


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--configs", default="default")
    ap.add_argument("--shapes", default=TARGET_SHAPES, help="batch,dim,length;...")
    ap.add_argument("--model-layout", action="store_true",
                    help="u, delta, z as the model passes them: [B, L, D] buffers seen as [B, D, L]")
    ap.add_argument("--prefill-layout", action="store_true",
                    help="as the model's prefill passes them: u time-contiguous (the conv's output), "
                         "delta and z channel-contiguous (views of [B, L, D] buffers)")
    ap.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16", "float32"],
                    help="u, delta, z, B, C (bench_kernels.py's scan inputs in this dtype)")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    dtype = getattr(torch, args.dtype)
    rows = []
    meta = dict(date=datetime.date.today().isoformat(), gpu=torch.cuda.get_device_name(),
                torch=torch.__version__, triton=triton.__version__,
                model_layout=args.model_layout, prefill_layout=args.prefill_layout, dtype=args.dtype)
    print(json.dumps(meta), flush=True)
    for shape in args.shapes.split(";"):
        b, d, l = (int(v) for v in shape.split(","))
        kw = scan_inputs(b, d, l, dtype=dtype)
        if args.model_layout or args.prefill_layout:
            for name in ("delta", "z") if args.prefill_layout else ("u", "delta", "z"):
                kw[name] = kw[name].transpose(1, 2).contiguous().transpose(1, 2)
        for spec in args.configs.split(","):
            cfg = parse_config(spec, b, d, l, args.model_layout, dtype)
            fn = lambda: ss._run_fwd(kw["u"], kw["delta"], kw["A"], kw["B"], kw["C"],  # noqa: E731
                                     kw["D"], kw["z"], kw["delta_bias"], True, None, cfg)
            ms_graph = host_us = None
            try:
                fn()
                ms = bench(fn, 10, 50)
                # device time alone (a CUDA-graph replay) and the host's time per eager call
                ms_graph = triton.testing.do_bench_cudagraph(fn, rep=50, return_mode="median")
                torch.cuda.synchronize()
                t0 = time.perf_counter()
                for _ in range(20):
                    fn()
                host_us = (time.perf_counter() - t0) / 20 * 1e6
                torch.cuda.synchronize()
            except Exception as e:  # a config may not compile (registers, shared memory)
                ms, cfg = None, dict(cfg, error=repr(e)[:200])
            rows.append(dict(shape=f"B{b} D{d} L{l}", spec=spec, cfg=cfg, ms=ms, graph_ms=ms_graph,
                             host_us=host_us))
            print(json.dumps(rows[-1]), flush=True)
        del kw
        torch.cuda.empty_cache()
    print(f"{'shape':22s} {'config':22s} {'ms':>8s} {'graph ms':>9s} {'host us':>8s}")
    fmt = lambda v, n: "-" if v is None else f"{v:.{n}f}"  # noqa: E731
    for r in rows:
        print(f"{r['shape']:22s} {r['spec']:22s} {fmt(r['ms'], 4):>8s} {fmt(r['graph_ms'], 4):>9s} "
              f"{fmt(r['host_us'], 0):>8s}")
    if args.out:
        with open(args.out, "w") as f:
            json.dump(dict(meta, rows=rows), f, indent=1)


if __name__ == "__main__":
    main()

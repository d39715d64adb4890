"""Decode-step projections: cuBLAS (F.linear) vs kernels/decode_linear.py (needs CUDA).

    python3 scripts/bench_decode_linear.py [--out results.json]
                                           [--sweep | --stages-sweep | --k-groups-sweep | --swap-sweep]
                                           [--shapes TEXT] [--rows 1,16]

Each shape is a projection of a preset (in_proj, x_proj, dt_proj, out_proj, lm_head) at 1 or 16
rows, fp16. Timing as in a decode step: one CUDA graph of calls over distinct weight copies
(>= 256 MB in all, so weights come from HBM as they do when 24+ layers run in turn), replayed;
time per call = median replay / copies. Every Triton config is first checked against float64
(relative error <= 5e-3); "default" is the launcher's own choice (default_config), "best" the
fastest of the sweep. Triton configs run as the model runs them (early_weight=True: a config
whose BLOCK_K covers K reads the weight before the PDL wait). The floor is the weight's bytes at
the measured copy bandwidth.
"""

from __future__ import annotations

import argparse
import datetime
import itertools
import json
import sys

import torch

from mamba_export.kernels import decode_linear as dl

from bench_kernels import copy_bandwidth  # scripts/ is on sys.path when this file runs

# (name, N, K): the decode projections of mamba-130m, mamba2-130m, mamba-2.8b, mamba2-2.7b (and
# mamba-370m's, mamba-790m's and mamba-1.4b's)
SHAPES = [
    ("m1-130m in_proj", 3072, 768), ("m1-130m x_proj", 80, 1536), ("m1-130m dt_proj", 1536, 48),
    ("130m out_proj", 768, 1536), ("m2-130m in_proj", 3352, 768), ("130m lm_head", 50280, 768),
    ("m1-2.8b in_proj", 10240, 2560), ("m1-2.8b x_proj", 192, 5120), ("2.8b out_proj", 2560, 5120),
    ("m2-2.7b in_proj", 10576, 2560), ("2.8b lm_head", 50280, 2560),
    ("m1-370m in_proj", 4096, 1024), ("m1-370m x_proj", 96, 2048), ("370m out_proj", 1024, 2048),
    ("m1-790m x_proj", 128, 3072), ("m1-1.4b in_proj", 8192, 2048), ("m1-1.4b x_proj", 160, 4096),
    ("1.4b out_proj", 2048, 4096), ("m1-790m in_proj", 6144, 1536), ("790m out_proj", 1536, 3072),
]
# (BLOCK_N, BLOCK_K, num_warps, SPLIT)
SWEEP = {1: list(itertools.product((4, 8), (128, 256), (4, 8), (1, 2, 4, 8, 16))),
         16: list(itertools.product((16, 32, 64), (64, 128), (4,), (1, 2, 4, 8, 16)))  # tensor cores
         + list(itertools.product((64, 128), (64, 128, 256), (8,), (1,)))
         + list(itertools.product((4, 8), (64, 128), (4, 8), (1, 2)))}  # elementwise

# (--stages-sweep) the K loop's pipelining depth with the tensor-core tiles at 16 rows:
# (BLOCK_N, BLOCK_K, num_warps, SPLIT, num_stages)
STAGES_SWEEP = list(dict.fromkeys(  # (in order, without repeats)
    list(itertools.product((16, 32, 64), (128, 256), (4,), (1, 2, 4), (2, 3, 4, 5)))
    + list(itertools.product((32, 64, 128), (256, 512), (4, 8), (1, 2), (4, 5, 6, 7)))))


# (--swap-sweep) the K loop with swap_ab (weight @ x.T: the features on the product's M side, the
# warpgroup MMA on Hopper) at any row count: (BLOCK_N, BLOCK_K, num_warps, SPLIT, num_stages,
# k_groups, swap_ab); configs whose stages exceed shared memory fail to build and are skipped
SWAP_SWEEP = ([(bn, bk, 4, 1, st, 1, 1) for bn in (64, 128) for bk in (128, 256) for st in (3, 5)]
              + [(128, bk, 8, 1, st, 1, 1) for bk in (128, 256) for st in (3, 4)]
              + [(64, bk, 4, split, st, 1, 1) for bk in (128, 256) for split in (2, 4) for st in (3, 4)])


def k_groups_configs(n: int, k: int) -> list:
    """(--k-groups-sweep) tensor-core tiles at several rows whose K tiles are cut into k_groups
    batched products: (BLOCK_N, BLOCK_K, num_warps, SPLIT, num_stages, k_groups); small or
    narrow weights in one tile (or SPLIT slices of one tile each), the others in a K loop."""
    kp = dl.next_pow2(k)
    if n > 512 and not dl._small_weight(n, k):
        return list(itertools.product((32, 64), (128, 256), (4,), (1,), (3, 5), (2, 4)))
    out = []
    for split in (1, 2) if kp <= 2048 else (2, 4):
        bk = max(16, kp // split)
        for bn, warps, groups in itertools.product((16, 32), (4, 8), (4, 8, 16)):
            if bk // groups >= 16 and groups >= warps // 2 and (16 + bn) * bk * 2 <= dl._ONE_TILE_SMEM:
                out.append((bn, bk, warps, split, 1, groups))
    return out


def one_tile_configs(rows: int, k: int) -> list:
    """Configs whose BLOCK_K covers all of K (the weight read before the PDL wait, as the model
    runs them), up to 32K weight elements per program."""
    kp = dl.next_pow2(k)
    widths = (2, 4, 8, 16) if rows == 1 else (16, 32)
    return [(bn, kp, w, 1) for bn in widths for w in (4, 8) if bn * kp <= 32768]


def graph_ms_per_call(fn, copies: int, reps: int = 15) -> float:
    """Median time of one call inside a CUDA graph of ``copies`` calls (fn(i) uses copy i)."""
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for i in range(copies):  # warm-up / compile outside the capture
            fn(i)
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for i in range(copies):
            fn(i)
    times = []
    for _ in range(reps + 2):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        graph.replay()
        b.record()
        b.synchronize()
        times.append(a.elapsed_time(b))
    return sorted(times[2:])[reps // 2] / copies


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--out", default=None)
    p.add_argument("--sweep", action="store_true", help="every config of SWEEP (else the default)")
    p.add_argument("--stages-sweep", action="store_true",
                   help="at several rows, every config of STAGES_SWEEP (tensor-core tiles with the K "
                        "loop's num_stages)")
    p.add_argument("--k-groups-sweep", action="store_true",
                   help="at several rows, the default and every config of k_groups_configs (K cut into "
                        "batched tensor-core products)")
    p.add_argument("--swap-sweep", action="store_true",
                   help="the default and every config of SWAP_SWEEP (the K loop as weight @ x.T), at every row count")
    p.add_argument("--shapes", default=None, help="only shapes whose name contains one of these texts (comma-separated)")
    p.add_argument("--rows", default="1,16", help="row counts (comma-separated)")
    args = p.parse_args()
    if not torch.cuda.is_available():
        print("needs CUDA", file=sys.stderr)
        return 1
    bw = copy_bandwidth()
    rows_out = []
    print(f"{torch.cuda.get_device_name()} | torch {torch.__version__} | copy {bw / 1e12:.2f} TB/s")
    print(f"{'shape':18s} {'M':>3s} {'floor':>7s} {'cuBLAS':>7s} {'default':>7s} {'best':>7s}  config (ms per call)")
    for name, n, k in SHAPES:
        if args.shapes and not any(text in name for text in args.shapes.split(",")):
            continue
        size = n * k * 2
        copies = max(8, min(512, (256 << 20) // size))
        ws = [torch.randn(n, k, device="cuda", dtype=torch.float16) * k ** -0.5 for _ in range(copies)]
        for m in (int(r) for r in args.rows.split(",")):
            x = torch.randn(m, k, device="cuda", dtype=torch.float16)
            outs = torch.empty(copies, m, n, device="cuda", dtype=torch.float16)
            want = x.double() @ ws[0].double().T
            cublas = graph_ms_per_call(lambda i: torch.matmul(x, ws[i].T, out=outs[i]), copies)
            default = dl.default_config(m, n, k)
            sweep = SWEEP[1 if m == 1 else 16] + one_tile_configs(m, k)
            if args.stages_sweep:
                sweep = STAGES_SWEEP if m > 1 else []
            if args.k_groups_sweep:
                sweep = k_groups_configs(n, k) if m > 1 else []
            if args.swap_sweep:  # (and one tile covering K where weight and x fit in shared memory)
                kp = dl.next_pow2(k)
                sweep = SWAP_SWEEP + [(bn, kp, w, 1, 1, 1, 1) for bn, w in ((64, 4), (128, 8))
                                      if (bn + dl.MAX_ROWS) * kp * 2 <= dl._ONE_TILE_SMEM]
            configs = [default] + [c for c in sweep if c != default] \
                if args.sweep or args.stages_sweep or args.k_groups_sweep or args.swap_sweep else [default]
            best, default_ms, timed = None, None, []
            for cfg in configs:
                outs.fill_(float("nan"))
                try:
                    dl.decode_linear_fwd(x, ws[0], out=outs[0], config=cfg, early_weight=True)
                except Exception as e:  # noqa: BLE001  (a config Triton cannot build)
                    print(f"  {cfg}: {type(e).__name__}", file=sys.stderr)
                    continue
                err = ((outs[0].double() - want).norm() / want.norm()).item()
                if not err <= 5e-3:
                    print(f"  {name} M{m} {cfg}: rel err {err:.2e} (rejected)", file=sys.stderr)
                    continue
                t = graph_ms_per_call(lambda i: dl.decode_linear_fwd(x, ws[i], out=outs[i], config=cfg,
                                                                early_weight=True),
                                      copies)
                timed.append((t, cfg))
                if cfg == default:
                    default_ms = t
                if best is None or t < best[0]:
                    best = (t, cfg, err)
            floor = size / bw * 1e3
            rows_out.append(dict(shape=name, N=n, K=k, M=m, floor_ms=floor, cublas_ms=cublas,
                                 default_config=default, default_ms=default_ms,
                                 best_ms=best and best[0], best_config=best and best[1],
                                 rel_err=best and best[2], timed=sorted(timed)))
            dflt = f"{default_ms:7.4f}" if default_ms else "   -   "
            tri = f"{best[0]:7.4f}  {best[1]}" if best else "   -   "
            print(f"{name:18s} {m:3d} {floor:7.4f} {cublas:7.4f} {dflt} {tri}", flush=True)
            if len(timed) > 1:
                print("    fastest: " + ", ".join(f"{cfg} {t * 1e3:.1f}" for t, cfg in sorted(timed)[:6]) + " us",
                      flush=True)
    if args.out:
        meta = dict(date=datetime.date.today().isoformat(), gpu=torch.cuda.get_device_name(),
                    torch=torch.__version__, copy_bw=bw, sweep=args.sweep, stages_sweep=args.stages_sweep,
                    swap_sweep=args.swap_sweep)
        with open(args.out, "w") as f:
            json.dump(dict(meta=meta, rows=rows_out), f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())

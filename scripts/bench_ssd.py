"""Benchmarks of the Mamba-2 SSD scan kernel (needs CUDA). Medians of triton.testing.do_bench.

    python3 scripts/bench_ssd.py [--out results.json] [--sweep]

The #7 target: B1 L2048 H80 P64 N128 bf16 (mamba2-2.7b's mixer), D + dt_bias + softplus +
final state, timed as one whole call of the drop-in ``mamba_chunk_scan_combined`` (the call
mamba_ssm users make). Also: the torch.ops op (its dispatch adds host time), a CUDA-graph replay
of the op (device time without host overhead), the reference torch ops, a tiny shape (host
cost alone), time vs L, and (--sweep) block configurations. Each timed shape is first checked against the float64 reference.
Floors: memory (x, out, dt, B, C once at the measured copy bandwidth) and the TF32 tensor-core
work of the four per-chunk matmuls (at 495 TFLOP/s dense, H100 SXM's datasheet rate).
"""

from __future__ import annotations

import argparse
import datetime
import json
import subprocess
import sys

import torch
import triton

from mamba_export import ops  # noqa: F401  (registers torch.ops.mamba_export)
from mamba_export import reference as ref
from mamba_export.kernels import ssd_scan as ks
from mamba_export.ops import mamba_chunk_scan_combined

from bench_kernels import bench, copy_bandwidth  # noqa: E402  (scripts/ is on sys.path when run)

TF32_FLOPS = 495e12


def inputs(batch, length, heads, headdim, dstate, groups, dtype=torch.bfloat16, seed=0):
    g = torch.Generator(device="cuda").manual_seed(seed)
    r = lambda *s: torch.randn(*s, device="cuda", generator=g)  # noqa: E731
    return dict(x=r(batch, length, heads, headdim).to(dtype), dt=(r(batch, length, heads) * 0.5 - 1).to(dtype),
                A=-torch.rand(heads, device="cuda", generator=g) * 2 - 0.1,
                B=r(batch, length, groups, dstate).to(dtype), C=r(batch, length, groups, dstate).to(dtype),
                D=r(heads), dt_bias=r(heads) * 0.1)


def rel_err(out, want):
    return ((out.double() - want).norm() / want.norm()).item()


def floors(batch, length, heads, headdim, dstate, groups, elt, bw, block_t=64):
    bytes_ = batch * length * (2 * heads * headdim + heads + 2 * groups * dstate) * elt
    flops = 2 * batch * heads * length * (block_t * dstate + block_t * headdim + 2 * dstate * headdim)
    return bytes_ / bw * 1e3, flops / TF32_FLOPS * 1e3



def time_shape(shape, record, bw, target_ms):
    """Check one shape against float64, then time the op (default config) and the reference."""
    batch, length, heads, headdim, dstate, groups = shape
    label = f"B{batch} L{length} H{heads} P{headdim} N{dstate} G{groups}"
    kw = inputs(*shape)
    order = ("x", "dt", "A", "B", "C")
    op = lambda: torch.ops.mamba_export.ssd_scan(  # noqa: E731
        *(kw[k] for k in order), 256, kw["D"], None, kw["dt_bias"], None, True, None)
    out, final = op()
    errs = {}
    if length <= 16384:  # correctness at the timed shape (float64 chunked reference)
        want_out, want_final = ref.ssd_scan(*(kw[k].double() for k in order), 256, kw["D"].double(),
                                            None, kw["dt_bias"].double(), None, True, None)
        errs = dict(out_rel_err=rel_err(out, want_out), state_rel_err=rel_err(final, want_final))
    fm, fc = floors(*shape, 2, bw)
    graph_ms = triton.testing.do_bench_cudagraph(op, rep=100, return_mode="median")
    dropin = lambda: mamba_chunk_scan_combined(  # noqa: E731
        *(kw[k] for k in order), 256, D=kw["D"], dt_bias=kw["dt_bias"], dt_softplus=True,
        return_final_states=True)
    record("ssd_scan_dropin_bf16", label, bench(dropin), graph_ms=graph_ms, mem_floor_ms=fm,
           tc_floor_ms=fc, target_ms=target_ms, **errs)
    record("ssd_scan_op_bf16", label, bench(op))
    if length <= 16384:
        refn = lambda: ref.ssd_scan(*(kw[k] for k in order), 256, kw["D"], None,  # noqa: E731
                                    kw["dt_bias"], None, True, None)
        record("ssd_scan_reference_torch_ops", label, bench(refn, 5, 20))


# num_stages=1 with BLOCK_T > BLOCK_P miscompiles on Triton 3.6 (the launcher refuses it)
SWEEP = [(bt, bp, w, st) for bt in (32, 64) for bp in (16, 32, 64) for w in (4, 8) for st in (2, 3)
         if (bt, bp, w) in ((32, 32, 4), (32, 64, 4), (64, 32, 4), (64, 64, 4), (64, 64, 8))]
SWEEP += [(128, bp, w, st) for bp in (32, 64) for w in (4, 8) for st in (2, 3)]
SWEEP_SHAPES = [(1, 2048, 80, 64, 128, 1), (8, 2048, 80, 64, 128, 1)]


def time_config(cfg, record):
    """One block configuration on the target shapes (run in its own process by --sweep: a
    configuration that faults must not take the others down)."""
    for shape in SWEEP_SHAPES:
        kw = inputs(*shape)
        order = ("x", "dt", "A", "B", "C")
        fn = lambda: ks.ssd_scan_fwd(*(kw[k] for k in order), kw["D"], None,  # noqa: E731
                                     kw["dt_bias"], None, True, None, config=cfg)
        out, _ = fn()
        want, _ = ref.ssd_scan(*(kw[k].double() for k in order), 256, kw["D"].double(), None,
                               kw["dt_bias"].double(), None, True, None)
        err = rel_err(out, want)
        record("ssd_scan_sweep", "B{} L{} H{} P{} N{} G{}".format(*shape),
               bench(fn, 10, 30) if err < 5e-3 else None, cfg=list(cfg), out_rel_err=err)


def sweep(record):
    for cfg in SWEEP:
        cmd = [sys.executable, __file__, "--config", *map(str, cfg)]
        try:
            res = subprocess.run(cmd, capture_output=True, text=True, timeout=90)
            got = [json.loads(line) for line in res.stdout.splitlines() if line.startswith('{"kind"')]
            for row in got:
                record(**row)
            if res.returncode or not got:
                record("ssd_scan_sweep", "all", None, cfg=list(cfg), error=res.stderr.strip()[-160:])
        except subprocess.TimeoutExpired:
            record("ssd_scan_sweep", "all", None, cfg=list(cfg), error="timeout")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=None)
    ap.add_argument("--sweep", action="store_true", help="time block configurations")
    ap.add_argument("--config", type=int, nargs=4, help="time one configuration (T P warps stages)")
    args = ap.parse_args()
    if args.config:
        time_config(tuple(args.config), lambda kind, shape, ms, **extra: print(
            json.dumps(dict(kind=kind, shape=shape, ms=ms, **extra)), flush=True))
        return 0
    props = torch.cuda.get_device_properties(0)
    bw = copy_bandwidth()
    meta = dict(date=datetime.date.today().isoformat(), gpu=props.name, torch=torch.__version__,
                triton=triton.__version__, copy_bandwidth_Bps=bw)
    print(json.dumps(meta), flush=True)
    rows = []

    def record(kind, shape, ms, **extra):
        row = dict(kind=kind, shape=shape, ms=ms, **extra)
        rows.append(row)
        print(json.dumps(row), flush=True)

    shapes = [(1, 2048, 80, 64, 128, 1), (1, 64, 24, 64, 128, 1), (8, 2048, 80, 64, 128, 1), (1, 2048, 24, 64, 128, 1),
              (1, 16384, 80, 64, 128, 1), (1, 131072, 24, 64, 128, 1)]
    for shape in shapes:
        time_shape(shape, record, bw, 0.25 if shape == shapes[0] else None)
        torch.cuda.empty_cache()
    if args.sweep:
        sweep(record)

    try:
        for caches in ks._ssd_scan_fwd_kernel.jit.device_caches.values():
            for compiled in caches[0].values():
                consts = {k[0][0] if isinstance(k, tuple) else k: v for k, v in compiled.src.constants.items()
                          if "BLOCK" in str(k) or "DTYPE" in str(k)} if hasattr(compiled, "src") else ""
                print(f"ssd kernel {consts}: regs={compiled.n_regs} spills={compiled.n_spills} "
                      f"warps={compiled.metadata.num_warps} stages={compiled.metadata.num_stages} "
                      f"shared={compiled.metadata.shared}")
    except Exception as e:  # informational only
        print(f"no resource info ({e!r:.80})")

    print(f"\n{props.name}  torch {torch.__version__}  triton {triton.__version__}  copy {bw / 1e12:.2f} TB/s")
    print(f"{'kind':30s} {'shape':34s} {'ms':>8s} {'graph':>8s} {'target':>7s} {'floor':>7s} extra")
    best = {}
    for r in rows:
        if r["kind"] == "ssd_scan_sweep":
            if r["ms"] is not None and r["ms"] < best.get(r["shape"], (1e9,))[0]:
                best[r["shape"]] = (r["ms"], r["cfg"])
            elif r["ms"] is None:
                print(f"sweep point {r['cfg']} failed: {r.get('error') or r.get('out_rel_err')}")
            continue
        floor = max(r.get("mem_floor_ms") or 0, r.get("tc_floor_ms") or 0)
        extra = f"err {r['out_rel_err']:.1e}/{r['state_rel_err']:.1e}" if "out_rel_err" in r else ""
        print(f"{r['kind']:30s} {r['shape']:34s} {r['ms']:8.4f} {r.get('graph_ms') or 0:8.4f} "
              f"{r.get('target_ms') or '':>7} {floor:7.4f} {extra}")
    for shape, (ms, cfg) in best.items():
        print(f"{'ssd_scan_sweep best':30s} {shape:34s} {ms:8.4f} cfg (T, P, warps, stages) {cfg}")
    if args.out:
        with open(args.out, "w") as f:
            json.dump(dict(meta=meta, rows=rows), f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Runs the Mamba-1 scan forward a few times at one shape, for Nsight Compute (needs CUDA).

    PYTHONPATH=scripts:. ncu --clock-control none --kernel-name regex:_scan_fwd --launch-skip 2 \
        --launch-count 1 --section SpeedOfLight --section ComputeWorkloadAnalysis \
        --section Occupancy --section LaunchStats --section SchedulerStats \
        --section WarpStateStats --section InstructionStats --section MemoryWorkloadAnalysis \
        python3 scripts/ncu_scan.py --shape 1,5120,2048 [--kind seq] [--block-d 4 --block-t 16]

(how docs/data/ncu_scan_2026-11-24_s9_*.txt were taken; per-instruction stall samples:
``--section SourceCounters --page source --print-source sass --csv``). The inputs are
bench_kernels.py's (bf16, z + D + delta_bias + softplus, N = 16)."""

from __future__ import annotations

import argparse

import torch

from bench_kernels import scan_inputs
from mamba_export.kernels import selective_scan as ss


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--shape", default="1,5120,2048", help="batch,dim,length")
    ap.add_argument("--kind", default=None, help="seq / chunk / split (default: scan_config's)")
    ap.add_argument("--block-d", type=int, default=None)
    ap.add_argument("--block-t", type=int, default=None)
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args()
    batch, dim, length = (int(v) for v in args.shape.split(","))
    x = scan_inputs(batch, dim, length)
    cfg = ss.scan_config(batch, dim, length, x["u"].dtype, x["u"].device, kind=args.kind)
    if args.block_d:
        cfg["BLOCK_D"] = args.block_d
    if args.block_t:
        cfg["BLOCK_T"] = args.block_t
    print("config", cfg)
    for _ in range(args.repeat):
        ss._run_fwd(x["u"], x["delta"], x["A"], x["B"], x["C"], x["D"], x["z"], x["delta_bias"],
                    True, None, cfg)
    torch.cuda.synchronize()


if __name__ == "__main__":
    main()

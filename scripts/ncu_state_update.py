"""Runs the Mamba-1 decode state update a few times at one model's layer shape, for Nsight Compute
(needs CUDA).

    PYTHONPATH=scripts:. ncu --clock-control none --kernel-name regex:_state_update --launch-skip 2 \
        --launch-count 1 --section SpeedOfLight --section MemoryWorkloadAnalysis \
        --section WarpStateStats --section Occupancy --section LaunchStats \
        python3 scripts/ncu_state_update.py --preset mamba-2.8b --batch 16

Inputs as scripts/bench_state_update.py's (fp16 activations, float32 state, dt_proj fused)."""

from __future__ import annotations

import argparse

import torch

from bench_state_update import layer_inputs, run
from mamba_export import MambaConfig


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--preset", default="mamba-2.8b")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args()
    inp = layer_inputs(MambaConfig.preset(args.preset), args.batch, 1)
    for _ in range(args.repeat):
        run(inp, inp["states"][0], inp["states"][0])
    torch.cuda.synchronize()


if __name__ == "__main__":
    main()

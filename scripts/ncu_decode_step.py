"""Runs a few eager decode steps of one model, for Nsight Compute on the step's kernels as the
model launches them (weights read from HBM, the folds in place; needs CUDA). Without PDL
(MAMBA_EXPORT_PDL=0) each kernel runs alone.

    MAMBA_EXPORT_PDL=0 PYTHONPATH=scripts:. ncu --clock-control none \
        --kernel-name regex:_decode_linear --launch-skip 200 --launch-count 4 \
        --section SpeedOfLight --section MemoryWorkloadAnalysis --section WarpStateStats \
        --section Occupancy --section LaunchStats --section SchedulerStats \
        python3 scripts/ncu_decode_step.py --preset mamba-130m --batch 16

(skip past the prefill and the first steps; the launch order per layer is in
scripts/profile_decode_step.py's output)."""

from __future__ import annotations

import argparse

import torch

import mamba_export as me
from mamba_export.generate import greedy_tokens


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--preset", default="mamba-130m")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--steps", type=int, default=4)
    args = ap.parse_args()
    model = me.MambaLM(me.MambaConfig.preset(args.preset), device="cuda", dtype=torch.float16).eval()
    vocab = model.config.vocab_size
    ids = torch.randint(0, vocab, (args.batch, 16), device="cuda")
    with torch.no_grad():
        logits, state = model.prefill(ids, model.new_state(args.batch))
        tok = greedy_tokens(logits, vocab)
        for _ in range(args.steps):
            tok = greedy_tokens(model.step(tok, state, inplace=True)[0], vocab)
    torch.cuda.synchronize()


if __name__ == "__main__":
    main()

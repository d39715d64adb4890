"""Host (CPU) time of one eager prefill (needs CUDA): where the eager prefill loses to the CUDA
graph's replay of the same kernels. Prints the host time per call (no synchronisation inside),
the GPU time (CUDA events) and a cProfile of the host's busiest functions.

    PYTHONPATH=scripts:. python3 scripts/profile_prefill_host.py [--preset mamba-2.8b] [--length 2048]"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import time

import torch

import mamba_export as me


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--preset", default="mamba-2.8b")
    ap.add_argument("--length", type=int, default=2048)
    ap.add_argument("--dtype", default="float16", choices=["float16", "bfloat16"])
    ap.add_argument("--top", type=int, default=25)
    args = ap.parse_args()
    model = me.MambaLM(me.MambaConfig.preset(args.preset), device="cuda",
                       dtype=getattr(torch, args.dtype)).eval()
    ids = torch.randint(0, model.config.vocab_size, (1, args.length), device="cuda")
    state = model.new_state(1)
    with torch.no_grad():
        for _ in range(3):
            model.prefill(ids, state)
        torch.cuda.synchronize()
        host, gpu = [], []
        for _ in range(5):
            a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            a.record()
            t0 = time.perf_counter()
            model.prefill(ids, state)
            host.append((time.perf_counter() - t0) * 1e3)
            b.record()
            b.synchronize()
            gpu.append(a.elapsed_time(b))
        print(f"{args.preset} 1x{args.length} {args.dtype}: host {sorted(host)[2]:.2f} ms per call "
              f"(no sync inside), events {sorted(gpu)[2]:.2f} ms")
        with cProfile.Profile() as prof:
            for _ in range(3):
                model.prefill(ids, state)
            torch.cuda.synchronize()
    stats = pstats.Stats(prof)
    stats.sort_stats("tottime").print_stats(args.top)
    stats.sort_stats("cumtime").print_stats(args.top)


if __name__ == "__main__":
    main()

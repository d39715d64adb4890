"""Host-side cost of an eager (or compiled) prefill (cProfile), to find what keeps the GPU waiting.

Usage (GPU machine): python3 scripts/profile_host.py [--preset mamba-2.8b] [--length 64] [--compiled]
"""

import argparse
import cProfile
import pstats
import time

import torch

import mamba_export as me
from mamba_export.compiled import compile_model

p = argparse.ArgumentParser()
p.add_argument("--preset", default="mamba-2.8b")
p.add_argument("--length", type=int, default=64)
p.add_argument("--compiled", action="store_true", help="compile_model(model)'s prefill")
args = p.parse_args()
model = me.MambaLM(me.MambaConfig.preset(args.preset), device="cuda", dtype=torch.float16).eval()
if args.compiled:
    model = compile_model(model)
ids = torch.randint(0, 1000, (1, args.length), device="cuda")
state = model.new_state(1)
with torch.no_grad():
    for _ in range(3):
        model.prefill(ids, state)
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(5):
        model.prefill(ids, state)
    torch.cuda.synchronize()
    print(f"prefill 1x{args.length}: {(time.perf_counter() - start) / 5 * 1e3:.2f} ms wall")
    prof = cProfile.Profile()
    prof.enable()
    model.prefill(ids, state)
    torch.cuda.synchronize()
    prof.disable()
stats = pstats.Stats(prof)
stats.sort_stats("tottime").print_stats(22)
stats.sort_stats("cumulative").print_stats(25)

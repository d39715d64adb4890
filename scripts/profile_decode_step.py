"""Where a decode step's GPU time goes, per kernel position in a layer (needs CUDA).

    python3 scripts/profile_decode_step.py [--presets mamba-2.8b] [--batches 1,16] [--no-pdl]
                                           [--out results.json]

Runs the eager in-place step plus the greedy selection (as the CUDA-graph decode replays it) a few
times under torch.profiler, lists the kernels of each step in launch order, finds the period
of the per-layer kernel sequence and prints, for each position in a layer, the kernel's name and
its median duration over the layers and steps; the kernels outside the layers (embedding, final
norm, lm_head, greedy) are summed. With PDL on (the default on sm_90+) a kernel's span includes
the time its programs sat at their dependency wait, so per-kernel figures are cleaner with
``--no-pdl`` (each kernel then runs alone; the step itself is slower).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys

import torch

import mamba_export as me
from mamba_export.generate import greedy_tokens
from mamba_export.kernels import _common as kernel_common


def kernel_spans(model, batch: int, steps: int = 5) -> list[list[tuple[str, float]]]:
    """[(kernel name, us)] per step, in start order."""
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile

    vocab = model.config.vocab_size
    ids = torch.randint(0, vocab, (batch, 16), device="cuda")
    with torch.no_grad():
        logits, state = model.prefill(ids, model.new_state(batch))
        tok = greedy_tokens(logits, vocab)
        run = lambda: greedy_tokens(model.step(tok, state, inplace=True)[0], vocab)  # noqa: E731
        for _ in range(3):
            run()
        torch.cuda.synchronize()
        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            for _ in range(steps):
                run()
            torch.cuda.synchronize()
    events = sorted((e for e in prof.events() if e.device_type == DeviceType.CUDA),
                    key=lambda e: e.time_range.start)
    spans = [(e.name, e.time_range.elapsed_us()) for e in events]
    if len(spans) % steps:
        raise RuntimeError(f"{len(spans)} kernels in {steps} steps: not the same kernels per step")
    per = len(spans) // steps
    return [spans[i * per:(i + 1) * per] for i in range(steps)]


def layer_period(names: list[str], layers: int) -> tuple[int, int]:
    """(first kernel of the layers, kernels per layer): the period P for which the middle of the
    step repeats every P kernels for all layers."""
    for period in range(1, len(names) // layers + 1):
        for first in range(0, len(names) - period * layers + 1):
            block = names[first:first + period]
            if all(names[first + i * period:first + (i + 1) * period] == block for i in range(layers)):
                return first, period
    raise RuntimeError("no per-layer period found in the step's kernels")


def breakdown(steps: list[list[tuple[str, float]]], layers: int) -> dict:
    names = [n for n, _ in steps[0]]
    first, period = layer_period(names, layers)
    positions = []
    for p in range(period):
        times = [s[first + i * period + p][1] for s in steps for i in range(layers)]
        positions.append({"position": p, "kernel": names[first + p], "median_us": statistics.median(times)})
    ends = [sum(t for j, (_, t) in enumerate(s) if not first <= j < first + period * layers) for s in steps]
    totals = [sum(t for _, t in s) for s in steps]
    return {"layer": positions, "ends_us": statistics.median(ends),
            "end_kernels": names[:first] + names[first + period * layers:],
            "step_kernel_us": statistics.median(totals)}


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--presets", default="mamba-130m,mamba-2.8b")
    p.add_argument("--batches", default="1,16")
    p.add_argument("--no-pdl", action="store_true", help="launch without programmatic dependent launch")
    p.add_argument("--out", default=None)
    args = p.parse_args()
    if not torch.cuda.is_available():
        print("profile_decode_step.py needs CUDA", file=sys.stderr)
        return 1
    if args.no_pdl:
        kernel_common.PDL = False
    torch.manual_seed(0)
    results = {"device": torch.cuda.get_device_name(), "torch": torch.__version__, "pdl": kernel_common.PDL,
               "rows": []}
    for name in args.presets.split(","):
        cfg = me.MambaConfig.preset(name)
        model = me.MambaLM(cfg, device="cuda", dtype=torch.float16).eval()
        for batch in (int(b) for b in args.batches.split(",")):
            row = {"model": name, "batch": batch, **breakdown(kernel_spans(model, batch), cfg.n_layer)}
            results["rows"].append(row)
            print(f"\n{name} batch {batch} ({'PDL' if kernel_common.PDL else 'no PDL'}): "
                  f"kernel time per step {row['step_kernel_us']:.1f} us")
            for pos in row["layer"]:
                print(f"  {pos['position']:>2} {pos['kernel'][:40]:<40} {pos['median_us']:8.2f} us")
            layer_us = sum(pos["median_us"] for pos in row["layer"])
            print(f"  per layer {layer_us:.2f} us x {cfg.n_layer}; outside the layers "
                  f"{row['ends_us']:.1f} us ({', '.join(k[:24] for k in row['end_kernels'])})")
        del model
        torch.cuda.empty_cache()
    if args.out:
        with open(args.out, "w") as f:
            json.dump(results, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())

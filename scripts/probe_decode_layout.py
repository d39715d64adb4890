"""Why a model's decode step runs slower when other models were built before it in the process.

The twentieth session saw mamba-790m's batch-16 step at 1.465 ms/token in a five-preset
bench_e2e run and 1.365 with that preset alone, same code and machine (docs/kernel_notes.md
v27 d). This script replays such a process as a list of actions, so that one call can tell
which part of "a model before" matters:

  build:NAME   build a preset (fp16, random init); it becomes the current model
  time:B       decode ms/token of the current model at batch B (bench_e2e.decode_ms)
  first:B      the same for the first model still alive
  drop         drop every reference this script holds to the models
  gc           gc.collect()
  empty        torch.cuda.empty_cache()
  clearbuf     forget the kernels' persistent scratch (kernels._common._PERSISTENT)
  sleep:S      sleep S seconds (the GPU idles)
  prefill:B    an eager prefill of 128 tokens at batch B on the current model
  eager:B      two eager in-place steps at batch B (on a new side stream with side:B)
  emptygraph   capture and replay a graph of one small kernel
  forget:I     destroy capture I (again:I then fails)
  tiny:N       capture a graph of N tiny dependent kernels (torch add_, no model), time it like
               replay:B and keep it for again:I
  pdl:0|1      the kernels' programmatic dependent launch off / on for later captures
  mem          allocated / reserved CUDA memory and the allocator's segment count
  keepgraphs   from now on keep every captured step alive (their memory is not reused)
  block:GIB    allocate GIB GiB and hold it (later allocations come from new segments)
  replay:B     the captured step alone at batch B: graph replays without the greedy selection
               (the capture is kept: again:I replays capture I again, in order from 0)
  prof:B       the same replays under torch.profiler: device time per kernel name, summed
  large:K;E    several-row projections from K inputs and E elements take the Triton kernel, not
               cuBLAS (kernels.decode_linear.LARGE_MIN_K / _SWAP, LARGE_MIN_ELEMENTS)

Usage: python3 scripts/probe_decode_layout.py build:mamba-790m,time:16,drop,empty,build:mamba-790m,time:16
"""

from __future__ import annotations

import argparse
import functools
import gc
import time

import torch

import bench_e2e
import mamba_export as me
from bench_e2e import decode_ms
from mamba_export.generate import CudaGraphStep
from mamba_export.kernels import _common as kernel_common
from mamba_export.kernels import decode_linear

KEPT: list = []
CAPTURES: list = []  # (step, tokens) of each replay:B, for again:I


class KeptGraphStep(CudaGraphStep):
    """A CudaGraphStep that stays alive after decode_ms returns (keepgraphs)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        KEPT.append(self)


def replay_ms(model, batch: int, tokens: int, profile: bool = False) -> float:
    """ms per replay of the captured in-place step, the token ids fixed (no selection); with
    ``profile``, each kernel's device time per replay is printed too."""
    ids = torch.randint(0, model.config.vocab_size, (batch, 128), device="cuda")
    with torch.no_grad():
        logits, state = model.prefill(ids, model.new_state(batch))
        step = bench_e2e.CudaGraphStep(functools.partial(model.step, inplace=True), state)
        tok = bench_e2e.SELECT(logits, model.config.vocab_size)
        for _ in range(3):
            step(tok, state)
        CAPTURES.append(step)
    return time_replays(step, tokens, profile)


class _Captured:
    def __init__(self, graph, keep):
        self._graph, self._keep = graph, keep


def tiny_graph(n: int) -> _Captured:
    """A captured graph of ``n`` dependent one-block kernels: replay time is launch latency."""
    x = torch.zeros(256, device="cuda")
    x.add_(1)
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for _ in range(n):
            x.add_(1)
    CAPTURES.append(_Captured(graph, x))
    return CAPTURES[-1]


def time_replays(step, tokens: int, profile: bool = False) -> float:
    with torch.no_grad():
        torch.cuda.synchronize()
        prof = torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) if profile else None
        if prof is not None:
            prof.__enter__()
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        for _ in range(tokens):
            step._graph.replay()
        b.record()
        b.synchronize()
        if prof is not None:
            prof.__exit__(None, None, None)
            rows = [(getattr(e, "device_time_total", 0) or getattr(e, "cuda_time_total", 0), e.count, e.key)
                    for e in prof.key_averages()]
            for us, count, name in sorted(rows, reverse=True)[:14]:
                print(f"[probe]   {us / tokens:8.2f} us/replay {count // tokens:4d}x  {name[:90]}", flush=True)
    return a.elapsed_time(b) / tokens


def memory_line() -> str:
    stats = torch.cuda.memory_stats()
    return (f"allocated {torch.cuda.memory_allocated() / 2**30:.2f} GiB, reserved "
            f"{torch.cuda.memory_reserved() / 2**30:.2f} GiB, segments {stats.get('segment.all.current', 0)}, "
            f"persistent buffers {len(kernel_common._PERSISTENT)}")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("actions", help="comma-separated actions (see above)")
    p.add_argument("--tokens", type=int, default=128, help="timed steps per measurement")
    args = p.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("probe_decode_layout.py needs a CUDA device")
    models: list = []
    held: list = []
    for action in args.actions.split(","):
        verb, _, arg = action.partition(":")
        if verb == "build":
            models.append(me.MambaLM(me.MambaConfig.preset(arg), device="cuda", dtype=torch.float16).eval())
            print(f"[probe] build {arg}: {memory_line()}", flush=True)
        elif verb in ("time", "first", "replay", "prof"):
            if not models:
                raise SystemExit(f"{action}: no model built")
            index = 0 if verb == "first" else len(models) - 1
            run = {"replay": replay_ms, "prof": functools.partial(replay_ms, profile=True)}.get(
                verb, lambda m, b, t: decode_ms(m, b, 128, t))
            ms = run(models[index], int(arg), args.tokens)
            print(f"[probe] {action} (model {index}): {ms:.3f} ms/token at {time.time():.2f}", flush=True)
        elif verb in ("prefill", "eager", "side"):
            model, batch = models[-1], int(arg)
            ids = torch.randint(0, model.config.vocab_size, (batch, 128), device="cuda")
            with torch.no_grad():
                logits, state = model.prefill(ids, model.new_state(batch))
                tok = bench_e2e.SELECT(logits, model.config.vocab_size)
                stream = torch.cuda.Stream() if verb == "side" else torch.cuda.current_stream()
                stream.wait_stream(torch.cuda.current_stream())
                with torch.cuda.stream(stream):
                    for _ in range(0 if verb == "prefill" else 2):
                        model.step(tok, state, inplace=True)
                torch.cuda.current_stream().wait_stream(stream)
            torch.cuda.synchronize()
        elif verb == "emptygraph":
            x = torch.zeros(1024, device="cuda")
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                x.add_(1)
            graph.replay()
            held.append(graph)
        elif verb == "tiny":
            ms = time_replays(tiny_graph(int(arg)), args.tokens)
            print(f"[probe] {action} (capture {len(CAPTURES) - 1}): {ms:.3f} ms/replay", flush=True)
        elif verb == "forget":
            CAPTURES[int(arg)] = None
            gc.collect()
            torch.cuda.synchronize()
        elif verb == "pdl":
            kernel_common.PDL = arg == "1"
        elif verb == "sleep":
            time.sleep(float(arg))
        elif verb == "again":
            ms = time_replays(CAPTURES[int(arg)], args.tokens)
            print(f"[probe] {action}: {ms:.3f} ms/token at {time.time():.2f}", flush=True)
        elif verb == "large":
            k, elements = (int(v) for v in arg.split(";"))
            decode_linear.LARGE_MIN_K = decode_linear.LARGE_MIN_K_SWAP = k
            decode_linear.LARGE_MIN_ELEMENTS = elements
        elif verb == "keepgraphs":
            bench_e2e.CudaGraphStep = KeptGraphStep
        elif verb == "block":
            held.append(torch.empty(int(float(arg) * 2**30), dtype=torch.uint8, device="cuda"))
        elif verb == "drop":
            models.clear()
        elif verb == "gc":
            gc.collect()
        elif verb == "empty":
            torch.cuda.empty_cache()
        elif verb == "clearbuf":
            kernel_common._PERSISTENT.clear()
        elif verb == "mem":
            print(f"[probe] {memory_line()}", flush=True)
        else:
            raise SystemExit(f"unknown action {action!r}; see --help")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

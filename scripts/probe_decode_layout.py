"""What in a process slows its CUDA-graph decode steps: a process replayed as a list of actions.

Written for the twentieth session's "run layout" effect (docs/kernel_notes.md v27 d, v28):
mamba-790m's batch-16 step took 1.465 ms/token in a five-preset bench_e2e run and 1.365 with
that preset alone. The actions below took it apart on the H100 machine (2026-11-25): it is the
number of CUDA graphs the process has captured. Past a few, every graph of the process replays
slower, the tiny graphs of ``tiny:N`` too, which contain none of this package's kernels.

  build:NAME   build a preset (fp16, random init); it becomes the current model
  time:B       decode ms/token of the current model at batch B (bench_e2e.decode_ms: a new
               capture, freed after)
  first:B      the same for the first model built
  replay:B     a new capture of the current model's step at batch B, its replays timed alone
               (no greedy selection); kept as capture I (numbered from 0 with tiny:N's)
  prof:B       replay:B under torch.profiler: device time per kernel name per replay
  tiny:N       a new capture of N dependent one-block kernels (torch's add_), timed and kept
  captureonly:N  the same graph captured and kept but never instantiated (keep_graph=True)
  again:I      time capture I's replays again
  forget:I     destroy capture I
  upload:I     cudaGraphUpload of capture I (through the CUDA runtime torch loaded)
  keepgraphs   from now on keep time:B's captures alive
  prefill:B    an eager prefill of 128 tokens at batch B (current model)
  eager:B      that prefill and two eager in-place steps; side:B the steps on a new stream
  emptygraph   capture and replay a graph of one small kernel
  pdl:0|1      the kernels' programmatic dependent launch off / on for later captures
  large:K;E    several-row projections from K inputs and E elements take the Triton kernel, not
               cuBLAS (kernels.decode_linear.LARGE_MIN_K / _SWAP, LARGE_MIN_ELEMENTS)
  block:GIB    allocate GIB GiB and hold it (later allocations come from new segments)
  drop         drop the script's references to the models (captures keep their own)
  gc, empty    gc.collect(), torch.cuda.empty_cache()
  clearbuf     forget the kernels' persistent scratch (kernels._common._PERSISTENT)
  sleep:S      sleep S seconds (the GPU idles)
  mem          allocated / reserved CUDA memory, the allocator's segments, persistent scratch

Usage: python3 scripts/probe_decode_layout.py build:mamba-790m,replay:16,replay:16,again:0
"""

from __future__ import annotations

import argparse
import ctypes
import functools
import gc
import time

import torch

import bench_e2e
import mamba_export as me
from mamba_export.generate import CudaGraphStep
from mamba_export.kernels import _common as kernel_common
from mamba_export.kernels import decode_linear


class KeptGraphStep(CudaGraphStep):
    """A CudaGraphStep that outlives decode_ms (keepgraphs)."""

    kept: list = []

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        KeptGraphStep.kept.append(self)


class Probe:
    """The process's state: models built, captures kept (anything with a ``_graph``), held
    allocations."""

    def __init__(self, tokens: int):
        self.tokens = tokens
        self.models: list = []
        self.captures: list = []
        self.held: list = []

    # -- models and decode timings --------------------------------------------------------
    def build(self, name: str) -> None:
        self.models.append(me.MambaLM(me.MambaConfig.preset(name), device="cuda", dtype=torch.float16).eval())
        self.say(f"build {name}: {memory_line()}")

    def model(self, first: bool = False):
        if not self.models:
            raise SystemExit("build a model first (build:NAME)")
        return self.models[0 if first else -1]

    def time(self, batch: str, first: bool = False) -> None:
        ms = bench_e2e.decode_ms(self.model(first), int(batch), 128, self.tokens)
        self.say(f"{'first' if first else 'time'}:{batch}: {ms:.3f} ms/token")

    @torch.no_grad()
    def prefilled(self, batch: str):
        """The current model, the greedy tokens after a random 128-token prompt and its state."""
        model, rows = self.model(), int(batch)
        ids = torch.randint(0, model.config.vocab_size, (rows, 128), device="cuda")
        logits, state = model.prefill(ids, model.new_state(rows))
        return model, bench_e2e.SELECT(logits, model.config.vocab_size), state

    def replay(self, batch: str, profile: bool = False) -> None:
        model, tok, state = self.prefilled(batch)
        with torch.no_grad():
            step = bench_e2e.CudaGraphStep(functools.partial(model.step, inplace=True), state)
            for _ in range(3):  # capture, then warm replays
                step(tok, state)
        self.captures.append(step)
        self.again(str(len(self.captures) - 1), profile)

    def prefill_and_steps(self, batch: str, steps: int = 0, side: bool = False) -> None:
        model, tok, state = self.prefilled(batch)
        with torch.no_grad():
            stream = torch.cuda.Stream() if side else torch.cuda.current_stream()
            stream.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(stream):
                for _ in range(steps):
                    model.step(tok, state, inplace=True)
            torch.cuda.current_stream().wait_stream(stream)
        torch.cuda.synchronize()

    # -- captures ---------------------------------------------------------------------------
    def tiny(self, n: str, instantiate: bool = True) -> None:
        """A graph of n dependent one-block kernels: its replay time is launch latency."""
        x = torch.zeros(256, device="cuda")
        x.add_(1)
        torch.cuda.synchronize()
        graph = torch.cuda.CUDAGraph(keep_graph=not instantiate)
        with torch.cuda.graph(graph):
            for _ in range(int(n)):
                x.add_(1)
        self.captures.append(_Captured(graph, x))
        if instantiate:
            self.again(str(len(self.captures) - 1))

    def again(self, index: str, profile: bool = False) -> None:
        ms = time_replays(self.captures[int(index)]._graph, self.tokens, profile)
        self.say(f"capture {index}: {ms:.3f} ms/replay")

    def forget(self, index: str) -> None:
        self.captures[int(index)] = None
        gc.collect()
        torch.cuda.synchronize()

    def upload(self, index: str) -> None:
        graph = self.captures[int(index)]._graph
        err = _cudart().cudaGraphUpload(ctypes.c_void_p(graph.raw_cuda_graph_exec()),
                                        ctypes.c_void_p(torch.cuda.current_stream().cuda_stream))
        torch.cuda.synchronize()
        if err != 0:
            raise SystemExit(f"upload:{index}: cudaGraphUpload returned {err}")

    def empty_graph(self) -> None:
        x = torch.zeros(1024, device="cuda")
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            x.add_(1)
        graph.replay()
        self.held.append((graph, x))

    # -- process state ----------------------------------------------------------------------
    def large(self, arg: str) -> None:
        k, elements = (int(v) for v in arg.split(";"))
        decode_linear.LARGE_MIN_K = decode_linear.LARGE_MIN_K_SWAP = k
        decode_linear.LARGE_MIN_ELEMENTS = elements

    def block(self, gib: str) -> None:
        self.held.append(torch.empty(int(float(gib) * 2**30), dtype=torch.uint8, device="cuda"))

    @staticmethod
    def say(msg: str) -> None:
        print(f"[probe] {msg} (t={time.time():.2f})", flush=True)

    def run(self, action: str) -> None:
        verb, _, arg = action.partition(":")
        actions = {
            "build": self.build, "time": self.time, "first": lambda b: self.time(b, first=True),
            "replay": self.replay, "prof": lambda b: self.replay(b, profile=True), "tiny": self.tiny,
            "again": self.again,
            "captureonly": lambda n: self.tiny(n, instantiate=False), "forget": self.forget, "upload": self.upload,
            "prefill": self.prefill_and_steps, "eager": lambda b: self.prefill_and_steps(b, 2),
            "side": lambda b: self.prefill_and_steps(b, 2, side=True), "large": self.large,
            "block": self.block, "sleep": lambda s: time.sleep(float(s)),
            "pdl": lambda on: setattr(kernel_common, "PDL", on == "1"),
        }
        no_arg = {
            "emptygraph": self.empty_graph, "drop": self.models.clear, "gc": gc.collect,
            "empty": torch.cuda.empty_cache, "clearbuf": kernel_common._PERSISTENT.clear,
            "mem": lambda: self.say(memory_line()),
            "keepgraphs": lambda: setattr(bench_e2e, "CudaGraphStep", KeptGraphStep),
        }
        if verb in actions and arg:
            actions[verb](arg)
        elif verb in no_arg and not arg:
            no_arg[verb]()
        else:
            raise SystemExit(f"unknown or malformed action {action!r}; see --help")


class _Captured:
    """A kept capture that is not a CudaGraphStep: the graph and the memory it runs on."""

    def __init__(self, graph, keep):
        self._graph, self._keep = graph, keep


def time_replays(graph, tokens: int, profile: bool = False) -> float:
    """ms per replay of ``graph``, ``tokens`` replays between two CUDA events; with ``profile``,
    each kernel's device time per replay is printed too."""
    torch.cuda.synchronize()
    prof = torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) if profile else None
    if prof is not None:
        prof.__enter__()
    a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    a.record()
    for _ in range(tokens):
        graph.replay()
    b.record()
    b.synchronize()
    if prof is not None:
        prof.__exit__(None, None, None)
        rows = [(getattr(e, "device_time_total", 0) or getattr(e, "cuda_time_total", 0), e.count, e.key)
                for e in prof.key_averages()]
        for us, count, name in sorted(rows, reverse=True)[:14]:
            print(f"[probe]   {us / tokens:8.2f} us/replay {count // tokens:4d}x  {name[:90]}", flush=True)
    return a.elapsed_time(b) / tokens


def _cudart():
    for name in ("libcudart.so.13", "libcudart.so.12", "libcudart.so"):
        try:
            return ctypes.CDLL(name)
        except OSError:
            continue
    raise SystemExit("upload: no CUDA runtime library found")


def memory_line() -> str:
    stats = torch.cuda.memory_stats()
    return (f"allocated {torch.cuda.memory_allocated() / 2**30:.2f} GiB, reserved "
            f"{torch.cuda.memory_reserved() / 2**30:.2f} GiB, segments {stats.get('segment.all.current', 0)}, "
            f"persistent buffers {len(kernel_common._PERSISTENT)}")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("actions", help="comma-separated actions (see above)")
    p.add_argument("--tokens", type=int, default=128, help="timed steps (replays) per measurement")
    args = p.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("probe_decode_layout.py needs a CUDA device")
    probe = Probe(args.tokens)
    for action in args.actions.split(","):
        probe.run(action)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

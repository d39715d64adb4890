"""End-to-end GPU benchmarks at the published shapes (random weights, mamba_ssm init).

- decode: ms/token at batch 1 and 16, fp16, prompt 128, greedy, CUDA graphs (the replayed step
  plus the argmax, timed with CUDA events over many tokens), the eager kernels' step and
  Inductor's (``compile_model``) captured the same way, against the weight-reading floor
  (parameter bytes over the device-to-device copy bandwidth measured here);
- prefill: batch 1, whole model, CUDA events, median of repeats; eager and compiled, each also
  captured in a CUDA graph as ``generate(cuda_graph=True, prefill_chunk_size=...)`` does;
- long prefill: time per token at 16K and 1M tokens for the mamba-130m shape.

Each preset runs in a child process of its own (``--in-process``: all in this one), since a
process's CUDA graphs replay slower once it has captured a few (see ``presets_in_children``).

Usage: python3 scripts/bench_e2e.py [--quick] [--out results.json]
"""

from __future__ import annotations

import argparse
import functools
import importlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

import torch

import mamba_export as me
from mamba_export.compiled import compile_model
from mamba_export.generate import CudaGraphStep, greedy_tokens
from mamba_export.kernels import _common as kernel_common
from mamba_export.kernels import decode_linear


def log(msg: str) -> None:
    print(f"[bench_e2e] {msg}", file=sys.stderr, flush=True)


def copy_bandwidth() -> float:
    """Bytes/s of a large device-to-device copy (read + write counted)."""
    src = torch.empty(2 * 1024**3 // 2, dtype=torch.float16, device="cuda").normal_()
    dst = torch.empty_like(src)
    for _ in range(3):
        dst.copy_(src)
    times = []
    for _ in range(10):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        dst.copy_(src)
        b.record()
        b.synchronize()
        times.append(a.elapsed_time(b) / 1e3)
    del src, dst
    return 2 * 2 * 1024**3 / statistics.median(times)


def cuda_time_ms(fn, reps: int = 10, warmup: int = 2) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(reps):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        fn()
        b.record()
        b.synchronize()
        times.append(a.elapsed_time(b))
    return statistics.median(times)


def param_bytes(model) -> int:
    seen, total = set(), 0
    for p in model.parameters():
        if p.data_ptr() not in seen:
            seen.add(p.data_ptr())
            total += p.numel() * p.element_size()
    return total


# the decode step's switches in mamba_export._dispatch (on by default): flag, name, what the flag does
DISPATCH_SWITCHES = [
    ("--no-early-reads", "EARLY_READS", "the state updates read the state and projections their "
     "weight after their PDL wait (default: before)"),
    ("--no-early-state-mamba1", "EARLY_STATE_MAMBA1", "Mamba-1's state update reads the state and "
     "dt_proj's weight after its PDL wait (default: before)"),
    ("--no-early-conv", "EARLY_CONV", "Mamba-1's conv kernel reads its state, weights and bias after its "
     "PDL wait (default: before)"),
    ("--no-fold-norm", "FOLD_NORM", "each block's add + RMSNorm as its own kernel (default: folded into "
     "in_proj where it reads its weight in one tile)"),
    ("--no-fold-conv", "FOLD_CONV", "the conv and Mamba-2's gated norm as kernels of their own (default: the "
     "conv in in_proj's epilogue and the norm in out_proj where those take the Triton kernel)"),
    ("--no-fold-conv-rows", "FOLD_CONV_ROWS", "Mamba-1's conv as its own kernel at several rows (default: "
     "folded into in_proj where that reads its weight in one tile of at most CONV_ROWS_MAX_WEIGHT elements)"),
    ("--no-fold-next-norm", "FOLD_NEXT_NORM", "the add + RMSNorm between blocks as its own kernel where it "
     "does not fold into in_proj (default: begun in out_proj's epilogue, finished in the next in_proj)"),
]

# the decode kernels' switches in mamba_export.kernels (on by default): flag, module, name, what
# the flag does (recorded in the JSON under the flag's name)
KERNEL_SWITCHES = [
    ("--cublas-lm-head", "decode_linear", "LM_HEAD", "the lm_head at several rows on cuBLAS (default: "
     "kernels/decode_linear.py)"),
    ("--split-k-loop", "decode_linear", "SPLIT_EARLY", "the wide models' x_proj at several rows loops over K "
     "after its PDL wait (default: one tile per K slice, read before it)"),
    ("--split-out-proj", "decode_linear", "DEEP_OUT_PROJ", "the widest models' out_proj at several rows with K "
     "split in 4 (default: unsplit, pipelined 5 deep)"),
    ("--no-k-groups", "decode_linear", "K_GROUPS", "tensor-core tiles read in one tile multiply all of their K "
     "in one product (default: in K groups, one batched product)"),
    ("--cublas-large-weights", "decode_linear", "LARGE_WEIGHTS", "the large in_proj / out_proj of the wide "
     "models at several rows on cuBLAS (default: kernels/decode_linear.py)"),
    ("--late-constants", "decode_linear", "EARLY_CONSTANTS", "the one-row projections' folds read their "
     "parameters (norm weights, conv weights) after the PDL wait (default: before it)"),
    ("--late-dt-proj", "state_update", "EARLY_DT_PROJ", "the Mamba-1 state update reads dt_proj's weight "
     "after its PDL wait (default: before it)"),
    ("--late-bias-d", "state_update", "EARLY_BIAS_D", "the Mamba-1 state update reads dt_bias and D after "
     "its PDL wait (default: before it)"),
    ("--late-x-z", "state_update", "EARLY_X_Z", "the Mamba-1 state update reads x and z after its PDL wait "
     "(default: before it)"),
    ("--no-swap-ab", "decode_linear", "SWAP_AB", "the K-loop projections at several rows as x @ weight.T in "
     "16-row tensor-core tiles everywhere (default: weight @ x.T where default_config says so)"),
    ("--late-first-tile", "decode_linear", "EARLY_FIRST_TILE", "the K-loop projections at several rows read their "
     "first weight tile after their PDL wait (default: before it)"),
    ("--late-norm-residual", "rmsnorm", "EARLY_RESIDUAL", "the add + RMSNorm kernel reads the residual and "
     "the norm weight after its PDL wait (default: before it)"),
    ("--late-ssd-known", "ssd_update", "EARLY_KNOWN", "the Mamba-2 state update reads its parameters and "
     "the conv state's taps after its PDL wait (default: before it)"),
]

# greedy selection as generate() does it (--torch-argmax: torch's argmax instead)
SELECT = greedy_tokens


def decode_ms(model, batch: int, prompt: int, tokens: int, runner=None, graph: bool = True) -> float:
    """ms per generated token: graph-replayed step + greedy selection, `tokens` steps timed
    together."""
    runner = runner or model
    ids = torch.randint(0, model.config.vocab_size, (batch, prompt), device="cuda")
    with torch.no_grad():
        logits, state = model.prefill(ids, model.new_state(batch))
        step = runner.step
        if getattr(runner, "supports_inplace_step", False):
            step = functools.partial(runner.step, inplace=True)  # as generate(cuda_graph=True)
        if graph:
            step = CudaGraphStep(step, state)
        tok = SELECT(logits, model.config.vocab_size)
        for _ in range(3):  # capture / compile / warm
            logits, state = step(tok, state)
            tok = SELECT(logits, model.config.vocab_size)
        torch.cuda.synchronize()
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        for _ in range(tokens):
            logits, state = step(tok, state)
            tok = SELECT(logits, model.config.vocab_size)
        b.record()
        b.synchronize()
    return a.elapsed_time(b) / tokens


def profile(model, what: str, batch: int = 1, length: int = 2048) -> None:
    """Per-kernel CUDA time of an eager decode step (in place, as the CUDA-graph decode runs it,
    with the greedy selection that decode_ms times) or prefill (where the time goes)."""
    from torch.profiler import ProfilerActivity, profile as torch_profile

    ids = torch.randint(0, model.config.vocab_size, (batch, length if what == "prefill" else 16),
                        device="cuda")
    with torch.no_grad():
        logits, state = model.prefill(ids, model.new_state(batch))
        tok = SELECT(logits, model.config.vocab_size)
        run = (lambda: model.prefill(ids, model.new_state(batch))) if what == "prefill" else \
            (lambda: SELECT(model.step(tok, state, inplace=True)[0], model.config.vocab_size))
        for _ in range(3):
            run()
        torch.cuda.synchronize()
        with torch_profile(activities=[ProfilerActivity.CUDA]) as prof:
            for _ in range(5):
                run()
            torch.cuda.synchronize()
    print(f"--- {model.config.d_model=} {what} batch {batch} (5 calls)", file=sys.stderr)
    print(prof.key_averages().table(sort_by="cuda_time_total", row_limit=12, max_name_column_width=50),
          file=sys.stderr)


def prefill_ms(model, batch: int, length: int, reps: int = 5, graph: bool = False) -> float:
    """Eager (or compiled: any runner) prefill, or (graph=True) the prefill captured once in a
    CUDA graph and replayed, as generate(cuda_graph=True, prefill_chunk_size=length) does."""
    ids = torch.randint(0, model.config.vocab_size, (batch, length), device="cuda")
    state = model.new_state(batch)
    with torch.no_grad():
        run = CudaGraphStep(model.prefill, state) if graph else model.prefill
        return cuda_time_ms(lambda: run(ids, state), reps=reps)


# Each preset runs in a process of its own (unless --in-process): on the H100 machine (driver
# 580.159.04, CUDA 13, 2026-11-25) every CUDA graph of a process replays slower once a few graphs
# have been captured in it (three 100-node graphs of torch's add_ kernel at 1.10 us per node, all
# of them at 1.26-1.28 from the fourth capture on, destroyed graphs included; mamba-790m's b16
# step 1.358 -> 1.456 ms/token from its second capture; scripts/probe_decode_layout.py). One
# process per preset times each model as a process serving that one model runs it.
def _child_argv(argv: list[str], name: str, out: str) -> list[str]:
    """This script's arguments for one preset in a process of its own: ``--presets`` and
    ``--out`` replaced, the long prefill left to the parent."""
    kept, skip = [], False
    for a in argv:
        if skip:
            skip = False
        elif a in ("--presets", "--out"):
            skip = True
        elif not a.startswith(("--presets=", "--out=")):
            kept.append(a)
    return [*kept, "--presets", name, "--out", out, "--skip-long", "--in-process"]


def presets_in_children(presets: list[str], results: dict) -> None:
    """Run each preset's decode and prefill rows in a child process; collect its rows into
    ``results`` (the children's logs go to stderr, their tables are dropped)."""
    with tempfile.TemporaryDirectory() as tmp:
        for name in presets:
            out = os.path.join(tmp, f"{name}.json")
            cmd = [sys.executable, os.path.abspath(__file__), *_child_argv(sys.argv[1:], name, out)]
            done = subprocess.run(cmd, stdout=subprocess.DEVNULL)
            if done.returncode != 0:
                raise SystemExit(f"bench_e2e.py: preset {name} failed in its child process "
                                 f"(exit {done.returncode}); rerun it alone with --presets {name} --in-process")
            with open(out) as f:
                child = json.load(f)
            results["decode"] += child["decode"]
            results["prefill"] += child["prefill"]


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--quick", action="store_true", help="fewer models and tokens")
    p.add_argument("--out", default=None)
    p.add_argument("--skip-long", action="store_true")
    p.add_argument("--skip-compile", action="store_true")
    p.add_argument("--profile", action="store_true", help="kernel breakdown of prefill and decode steps")
    p.add_argument("--presets", default=None, help="comma-separated preset names")
    p.add_argument("--linear-rows", type=int, default=None,
                   help="decode projections of small weights with up to this many rows on the Triton "
                        "kernel (default: "
                        "kernels/decode_linear.MODEL_ROWS)")
    p.add_argument("--pdl", action="store_true",
                   help="also time decode with programmatic dependent launch switched the other "
                        "way (on by default on sm_90+; MAMBA_EXPORT_PDL=0 turns it off)")
    p.add_argument("--skip-prefill", action="store_true", help="decode only")
    for flag, name, what in DISPATCH_SWITCHES:
        p.add_argument(flag, action="store_true", help=f"decode: {what} (mamba_export._dispatch.{name})")
    for flag, module, name, what in KERNEL_SWITCHES:
        p.add_argument(flag, action="store_true", help=f"decode: {what} (kernels/{module}.{name})")
    p.add_argument("--prefetch-max-mb", type=float, default=None,
                   help="decode: largest Mamba-1 out_proj weight (MiB) that x_proj asks to be brought "
                        "into L2 (mamba_export._dispatch.PREFETCH_MAX_BYTES; 0: none)")
    p.add_argument("--torch-argmax", action="store_true",
                   help="decode: greedy tokens by torch's argmax (default: kernels/greedy.py, as generate())")
    p.add_argument("--ssd-update-config", default=None, metavar="BLOCK_P,WARPS",
                   help="Mamba-2 decode state update: head channels per program and warps (default: "
                        "kernels/ssd_update.launch_config)")
    p.add_argument("--state-config", default=None, metavar="BLOCK_D,WARPS,ROWS",
                   help="Mamba-1 decode state update at several rows: channels per program, warps and "
                        "rows per program (default: kernels/state_update.launch_config)")
    p.add_argument("--split-block-k", type=int, default=None,
                   help="decode: K per slice of the wide models' x_proj at several rows (default: "
                        "kernels/decode_linear.SPLIT_BLOCK_K)")
    p.add_argument("--linear-config", action="append", default=[], metavar="[ROWS:]N,K=CONFIG",
                   help="decode: the Triton projection of weight N x K at several rows (at ROWS rows, e.g. 1, "
                        "when given) takes CONFIG (BLOCK_N,BLOCK_K,WARPS,SPLIT[,STAGES[,K_GROUPS[,SWAP_AB]]], "
                        "as decode_linear.default_config); repeatable")
    p.add_argument("--large-weights-from", default=None, metavar="K,ELEMENTS",
                   help="decode: the smallest K and element count of the weights that take the Triton "
                        "projection at several rows as large ones (default: kernels/decode_linear.LARGE_MIN_K, "
                        "LARGE_MIN_ELEMENTS)")
    p.add_argument("--batches", default="1,16", help="decode batch sizes (comma-separated)")
    p.add_argument("--in-process", action="store_true",
                   help="run every preset in this process (default: one child process per preset, "
                        "since CUDA graphs replay slower once a process has captured a few)")
    args = p.parse_args()
    if args.linear_config:
        forced = {}  # (rows or None for any several, N, K) -> config
        for item in args.linear_config:
            shape, config = item.split("=")
            rows, _, shape = shape.rpartition(":")
            forced[(int(rows) if rows else None, *(int(v) for v in shape.split(",")))] = \
                tuple(int(v) for v in config.split(","))
        default_linear = decode_linear.default_config

        def forced_config(rows, features, k, *a, **kw):
            config = forced.get((rows, features, k), forced.get((None, features, k)) if rows > 1 else None)
            if config is None:
                return default_linear(rows, features, k, *a, **kw)
            return config if kw.get("k_groups", True) else config[:5]  # (K groups dropped where the call allows none)
        decode_linear.default_config = forced_config
    if args.linear_rows is not None:
        decode_linear.MODEL_ROWS = args.linear_rows
    for flag, name, _ in DISPATCH_SWITCHES:
        if getattr(args, flag[2:].replace("-", "_")):
            setattr(me._dispatch, name, False)
    for flag, module, name, _ in KERNEL_SWITCHES:
        if getattr(args, flag[2:].replace("-", "_")):
            setattr(importlib.import_module(f"mamba_export.kernels.{module}"), name, False)
    if args.prefetch_max_mb is not None:
        me._dispatch.PREFETCH_MAX_BYTES = int(args.prefetch_max_mb * (1 << 20))
    if args.state_config:
        from mamba_export.kernels import state_update

        state_config = tuple(int(v) for v in args.state_config.split(","))
        default_launch = state_update.launch_config
        state_update.launch_config = lambda batch, *a, **k: (  # noqa: E731
            state_config if batch > 1 else default_launch(batch, *a, **k))
    if args.split_block_k:
        decode_linear.SPLIT_BLOCK_K = args.split_block_k
    if args.large_weights_from:
        decode_linear.LARGE_MIN_K, decode_linear.LARGE_MIN_ELEMENTS = (
            int(v) for v in args.large_weights_from.split(","))
    if args.torch_argmax:
        global SELECT
        SELECT = lambda logits, vocab: logits[:, :vocab].argmax(-1)  # noqa: E731
    if args.ssd_update_config:
        from mamba_export.kernels import ssd_update

        block_p, warps = (int(v) for v in args.ssd_update_config.split(","))
        ssd_update.launch_config = lambda batch, heads, headdim, *_: (min(block_p, headdim), warps)
    torch.manual_seed(0)
    dev = torch.cuda.get_device_name()
    bw = copy_bandwidth()
    log(f"{dev}: device-to-device copy {bw / 1e12:.2f} TB/s")
    results = {"device": dev, "torch": torch.__version__, "copy_TBps": bw / 1e12,
               "date": time.strftime("%Y-%m-%d"), "decode": [], "prefill": [], "long": []}
    if args.linear_rows is not None:
        results["linear_rows"] = args.linear_rows
    for _, name, _ in DISPATCH_SWITCHES:
        results[name.lower()] = getattr(me._dispatch, name)
    for flag, _, _, _ in KERNEL_SWITCHES:
        key = flag[2:].replace("-", "_")
        results[key] = getattr(args, key)
    results["prefetch_max_bytes"] = me._dispatch.PREFETCH_MAX_BYTES
    results["torch_argmax"] = args.torch_argmax
    results["split_block_k"] = decode_linear.SPLIT_BLOCK_K
    results["large_weights_from"] = [decode_linear.LARGE_MIN_K, decode_linear.LARGE_MIN_ELEMENTS]
    if args.ssd_update_config:
        results["ssd_update_config"] = args.ssd_update_config
    if args.state_config:
        results["state_config"] = args.state_config
    if args.linear_config:
        results["linear_config"] = args.linear_config
    try:
        import triton
        results["triton"] = triton.__version__
    except ImportError:
        pass
    presets = ["mamba-130m", "mamba-370m"] if args.quick else \
        ["mamba-130m", "mamba-370m", "mamba-790m", "mamba-1.4b", "mamba-2.8b"]
    if args.presets:
        presets = args.presets.split(",")
    tokens = 64 if args.quick else 128
    batches = [int(b) for b in args.batches.split(",")]
    results["process_per_preset"] = len(presets) > 1 and not args.in_process
    if results["process_per_preset"]:
        presets_in_children(presets, results)
        presets = []
    for name in presets:
        log(f"building {name} (fp16, random init)")
        model = me.MambaLM(me.MambaConfig.preset(name), device="cuda", dtype=torch.float16).eval()
        floor = param_bytes(model) / bw * 1e3
        row = {"model": name, "floor_ms": floor}
        for batch in batches:
            row[f"b{batch}_ms"] = decode_ms(model, batch, 128, tokens)
            log(f"{name} decode b{batch}: {row[f'b{batch}_ms']:.3f} ms/token (floor {floor:.3f})")
        row["pdl"] = kernel_common.PDL
        if args.pdl:
            other = "pdl" if not kernel_common.PDL else "no_pdl"
            kernel_common.PDL = not kernel_common.PDL  # read at each launch: the next capture
            for batch in batches:
                row[f"b{batch}_{other}_ms"] = decode_ms(model, batch, 128, tokens)
                log(f"{name} decode b{batch} ({other}): {row[f'b{batch}_{other}_ms']:.3f} ms/token")
            kernel_common.PDL = not kernel_common.PDL
        if not args.skip_compile and name in ("mamba-130m", "mamba-2.8b"):
            # Inductor's code for the step, captured in our own CUDA graph (static state buffers).
            compiled = compile_model(model)
            row["compiled_b1_ms"] = decode_ms(model, 1, 128, tokens, runner=compiled)
            log(f"{name} compiled + CUDA graph decode b1: {row['compiled_b1_ms']:.3f} ms/token")
            row["compiled_prefill_2048_ms"] = prefill_ms(compiled, 1, 2048)
            row["compiled_prefill_2048_graph_ms"] = prefill_ms(compiled, 1, 2048, graph=True)
            log(f"{name} compiled prefill 1x2048: {row['compiled_prefill_2048_ms']:.2f} ms, "
                f"{row['compiled_prefill_2048_graph_ms']:.2f} ms in a CUDA graph")
        if args.profile:
            if not args.skip_prefill:
                profile(model, "prefill")
            for batch in batches:
                profile(model, "step", batch)
        results["decode"].append(row)
        if name in ("mamba-130m", "mamba-2.8b", "mamba2-130m", "mamba2-2.7b") and not args.skip_prefill:
            ms = prefill_ms(model, 1, 2048)
            graph_ms = prefill_ms(model, 1, 2048, graph=True)
            results["prefill"].append({"model": name, "batch": 1, "length": 2048, "ms": ms,
                                       "cuda_graph_ms": graph_ms})
            log(f"{name} prefill 1x2048: {ms:.2f} ms eager, {graph_ms:.2f} ms CUDA graph")
        del model
        torch.cuda.empty_cache()
    if not args.skip_long:
        model = me.MambaLM(me.MambaConfig.preset("mamba-130m"), device="cuda", dtype=torch.float16).eval()
        for length in (16384, 1 << 20):
            ms = prefill_ms(model, 1, length, reps=3)
            results["long"].append({"model": "mamba-130m", "length": length, "ms": ms,
                                    "us_per_token": ms * 1e3 / length})
            log(f"mamba-130m prefill 1x{length}: {ms:.1f} ms ({ms * 1e3 / length:.3f} us/token)")
    if args.out:
        with open(args.out, "w") as f:
            json.dump(results, f, indent=2)
    print(f"\n{dev} | torch {torch.__version__} | copy {bw / 1e12:.2f} TB/s | {results['date']} | "
          f"PDL {'on' if kernel_common.PDL else 'off'}")
    print(f"{'model':<12} " + "".join(f"{f'b{b} ms/tok':>12}" for b in batches) +
          f"{'compiled b1':>12} {'floor ms':>9} {'compiled prefill 2048 (graph)':>30}")
    for r in results["decode"]:
        comp = f"{r['compiled_b1_ms']:.3f}" if "compiled_b1_ms" in r else "-"
        cpre = (f"{r['compiled_prefill_2048_ms']:.2f} ({r['compiled_prefill_2048_graph_ms']:.2f})"
                if "compiled_prefill_2048_ms" in r else "-")
        print(f"{r['model']:<12} " + "".join(f"{r[f'b{b}_ms']:>12.3f}" for b in batches) +
              f"{comp:>12} {r['floor_ms']:>9.3f} {cpre:>30}")
    for r in results["decode"]:
        for other in ("pdl", "no_pdl"):
            if f"b{batches[0]}_{other}_ms" in r:
                print(f"{r['model']:<12} {other}: " + ", ".join(
                    f"b{b} {r[f'b{b}_{other}_ms']:.3f}" for b in batches) + " ms/token")
    for r in results["prefill"]:
        print(f"prefill {r['model']} {r['batch']}x{r['length']}: {r['ms']:.2f} ms eager, "
              f"{r['cuda_graph_ms']:.2f} ms CUDA graph")
    for r in results["long"]:
        print(f"long prefill {r['model']} L={r['length']}: {r['ms']:.1f} ms, {r['us_per_token']:.4f} us/token")
    return 0


if __name__ == "__main__":
    sys.exit(main())

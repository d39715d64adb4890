#!/usr/bin/env python
"""ONNX Runtime (CPU) vs transformers vs torch eager: decode step and prefill, mamba-130m shape.

One process, one machine, same random weights everywhere (this package's model saved with
``save_pretrained`` and reloaded by ``transformers.MambaForCausalLM``). Medians after warm-up.

    python scripts/bench_onnx.py                 # 24 layers (full mamba-130m)
    python scripts/bench_onnx.py --layers 4      # reduced depth (said so in the output)
    python scripts/bench_onnx.py --bodies-only   # compare the SelectiveScan ONNX bodies only
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

import mamba_export as me
from mamba_export.export import artifacts, onnx_scan
from mamba_export.export.onnx import AUTO_BODY, export_onnx
from mamba_export.runtime.ort import OrtRunner


def median_time(fn, repeats: int, warmup: int = 1) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def compare_bodies(args, bodies) -> dict[str, float]:
    """Prefill of ``--prompt`` tokens through ORT for each scan body, interleaved rounds."""
    import onnxruntime as ort

    torch.manual_seed(0)
    cfg = me.MambaConfig.preset("mamba-130m", n_layer=args.body_layers)
    model = me.MambaLM(cfg).eval()
    ids = torch.randint(0, cfg.vocab_size, (1, args.prompt))
    state = model.new_state(1)
    feeds = {"input_ids": ids.numpy(), "conv_state": state.conv.numpy(), "ssm_state": state.ssm.numpy()}
    with torch.no_grad():
        want = model.prefill(ids, state)[0].numpy()
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = args.threads
    sessions = {}
    with tempfile.TemporaryDirectory() as tmp:
        for body in bodies:
            path = Path(tmp) / f"prefill_{body}.onnx"
            export_onnx(model, "prefill", path, scan_body=body)
            sessions[body] = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
            got = sessions[body].run(None, feeds)[0]
            err = float(np.linalg.norm(got - want) / np.linalg.norm(want))
            print(f"  body {body:12s} exported; logits rel err vs eager {err:.1e}", flush=True)
    times = {b: [] for b in bodies}
    for _ in range(args.repeats):  # interleaved so that load from other processes hits all alike
        for body, sess in sessions.items():
            t = time.perf_counter()
            sess.run(None, feeds)
            times[body].append(time.perf_counter() - t)
    return {b: statistics.median(t) * 1e3 for b, t in times.items()}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--layers", type=int, default=24, help="n_layer (24 = full mamba-130m)")
    p.add_argument("--prompt", type=int, default=512, help="prefill length")
    p.add_argument("--steps", type=int, default=32, help="decode steps timed per repeat")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--bodies", default=",".join(onnx_scan.BODIES), help="scan bodies to compare")
    p.add_argument("--body-layers", type=int, default=2, help="layers of the model used to compare bodies")
    p.add_argument("--bodies-only", action="store_true")
    p.add_argument("--no-bodies", action="store_true")
    p.add_argument("--json", type=Path, help="write the figures here")
    args = p.parse_args()
    torch.set_num_threads(args.threads)

    import onnxruntime
    import transformers

    info = {"date": datetime.date.today().isoformat(), "machine": f"{platform.machine()} CPU, "
            f"{torch.get_num_threads()} threads", "torch": torch.__version__,
            "onnxruntime": onnxruntime.__version__, "transformers": transformers.__version__,
            "layers": args.layers, "prompt": args.prompt}
    print(json.dumps(info))
    result = {"info": info}
    if not args.no_bodies:
        bodies = [b for b in args.bodies.split(",") if b]
        print(f"SelectiveScan bodies: ORT CPU prefill of {args.prompt} tokens, mamba-130m shape, "
              f"{args.body_layers} layers, fp32, median of {args.repeats}")
        body_ms = compare_bodies(args, bodies)
        best = min(body_ms, key=body_ms.get)
        for b, ms in sorted(body_ms.items(), key=lambda kv: kv[1]):
            print(f"  {b:12s} {ms:9.1f} ms   x{ms / body_ms[best]:.2f}")
        print(f"  fastest: {best} (auto = {AUTO_BODY})")
        result["bodies_ms"] = body_ms
        if args.bodies_only:
            return _write(args, result)

    torch.manual_seed(0)
    cfg = me.MambaConfig.preset("mamba-130m", n_layer=args.layers)
    model = me.MambaLM(cfg).eval()
    if args.layers != 24:
        print(f"NOTE: reduced depth: {args.layers} of mamba-130m's 24 layers")
    ids = torch.randint(0, cfg.vocab_size, (1, args.prompt))
    rows = {}
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp) / "art"
        d.mkdir()
        model.save_pretrained(d / "model")
        hf = transformers.MambaForCausalLM.from_pretrained(d / "model").eval()
        man = artifacts.new_manifest(model)
        t0 = time.perf_counter()
        for g in ("prefill", "decode"):
            facts = export_onnx(model, g, d / f"{g}.onnx")
            artifacts.add_file(man, d, f"{g}.onnx", g, "onnx", **facts)
        artifacts.write_manifest(man, d)
        print(f"exported ONNX in {time.perf_counter() - t0:.0f} s", flush=True)
        runner = OrtRunner.from_artifacts(d, threads=args.threads)

        with torch.no_grad():
            # --- parity first (same weights everywhere)
            ref_logits, _ = model.prefill(ids, model.new_state(1))
            ort_logits, _ = runner.prefill(ids, runner.new_state(1))
            hf_logits = hf(ids).logits[:, -1]
            v = cfg.vocab_size
            print(f"parity: ORT vs eager {float((ort_logits[:, :v] - ref_logits[:, :v]).norm() / ref_logits[:, :v].norm()):.1e}, "
                  f"transformers vs eager {float((hf_logits[:, :v] - ref_logits[:, :v]).norm() / ref_logits[:, :v].norm()):.1e}")

            # --- prefill
            rows["prefill"] = {
                "onnxruntime": median_time(lambda: runner.prefill(ids, runner.new_state(1)), args.repeats),
                "transformers": median_time(lambda: hf(ids, use_cache=True), args.repeats),
                "torch eager": median_time(lambda: model.prefill(ids, model.new_state(1)), args.repeats),
            }
            print("prefill timed", flush=True)

            # --- decode: from the state after the prompt; time args.steps greedy-fed steps
            tok = ids[:, -1]

            def ort_decode():
                state = ort_state0
                for _ in range(args.steps):
                    _, state = runner.step(tok, state)

            _, s = runner.prefill(ids, runner.new_state(1))
            ort_state0 = me.MambaState(s.conv.clone(), s.ssm.clone())

            _, eager_state0 = model.prefill(ids, model.new_state(1))

            def eager_decode():
                state = eager_state0
                for _ in range(args.steps):
                    _, state = model.step(tok, state)

            out = hf(ids, use_cache=True)
            cache = out.cache_params

            def hf_decode():
                for i in range(args.steps):
                    hf(input_ids=tok[:, None], cache_params=cache, use_cache=True,
                       cache_position=torch.tensor([args.prompt + i]))

            rows["decode"] = {
                "onnxruntime": median_time(ort_decode, args.repeats) / args.steps,
                "transformers": median_time(hf_decode, args.repeats) / args.steps,
                "torch eager": median_time(eager_decode, args.repeats) / args.steps,
            }
    result["ms"] = {k: {r: t * 1e3 for r, t in v.items()} for k, v in rows.items()}
    print(f"\nmamba-130m shape ({args.layers} layers), fp32, batch 1, CPU {args.threads} threads; medians of {args.repeats}")
    print(f"{'runtime':14s} {'decode ms/token':>16s} {'prefill-' + str(args.prompt) + ' ms':>16s}")
    for r in ("onnxruntime", "transformers", "torch eager"):
        print(f"{r:14s} {rows['decode'][r] * 1e3:16.2f} {rows['prefill'][r] * 1e3:16.1f}")
    _write(args, result)


def _write(args, result) -> None:
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()

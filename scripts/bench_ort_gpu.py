"""ONNX Runtime's CUDA execution provider (onnxruntime-gpu) on the exported graphs: parity with
the eager model on the same GPU and decode ms/token (IO binding, state kept on the GPU).

Usage (GPU machine, onnxruntime-gpu importable): python3 scripts/bench_ort_gpu.py [--preset mamba-130m]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

import mamba_export as me
from mamba_export.export.exporter import export_artifacts
from mamba_export.runtime.ort import OrtRunner


def rel(a, b) -> float:
    a, b = a.detach().double().cpu(), b.detach().double().cpu()
    return ((a - b).norm() / b.norm()).item()


def timed_decode(runner, tok, state, n):
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(n):
        logits, state = runner.step(tok, state)
        tok = logits.argmax(-1)
    torch.cuda.synchronize()
    return (time.perf_counter() - start) / n * 1e3


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--preset", default="mamba-130m")
    p.add_argument("--tokens", type=int, default=64)
    p.add_argument("--out", default=None)
    args = p.parse_args()
    import onnxruntime as ort

    if "CUDAExecutionProvider" not in ort.get_available_providers():
        print("CUDAExecutionProvider not available: install onnxruntime-gpu", file=sys.stderr)
        return 1
    torch.manual_seed(0)
    model = me.MambaLM(me.MambaConfig.preset(args.preset)).eval()  # fp32, exported on CPU
    with tempfile.TemporaryDirectory() as d:
        start = time.perf_counter()
        export_artifacts(model, d, formats=["onnx"], log=lambda m: print(m, file=sys.stderr))
        export_s = time.perf_counter() - start
        runner = OrtRunner.from_artifacts(Path(d), provider="cuda")
        gpu_model = model.to("cuda")
        ids = torch.randint(0, model.config.vocab_size, (1, 128), device="cuda")
        with torch.no_grad():
            want, want_state = gpu_model.prefill(ids, gpu_model.new_state(1))
            want_step, _ = gpu_model.step(ids[:, -1], want_state)
            got, state = runner.prefill(ids, runner.new_state(1))
            got = got.clone()
            got_step = runner.step(ids[:, -1], state)[0].clone()
            ort_ms = timed_decode(runner, ids[:, -1], state, args.tokens)
            eager_ms = timed_decode(gpu_model, ids[:, -1], want_state, args.tokens)
            same = torch.equal(runner.generate(ids[:, :16], max_new_tokens=32, eos_token_id=None).cpu(),
                               gpu_model.generate(ids[:, :16], max_new_tokens=32, eos_token_id=None).cpu())
    result = {"device": torch.cuda.get_device_name(), "onnxruntime": ort.__version__,
              "torch": torch.__version__, "preset": args.preset, "dtype": "float32",
              "date": time.strftime("%Y-%m-%d"), "export_s": export_s,
              "prefill_rel_err": rel(got, want), "decode_rel_err": rel(got_step, want_step),
              "greedy_equal": same, "ort_cuda_decode_ms": ort_ms, "torch_eager_decode_ms": eager_ms}
    print(json.dumps(result, indent=2))
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())

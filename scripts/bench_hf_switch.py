"""The one-line switch for an existing transformers pipeline: ``MambaLM.from_transformers(hf)``.

Same in-memory weights (shared, not copied), mamba-130m shape, fp16, on the GPU: transformers'
own ``MambaForCausalLM`` (its torch path: neither mamba_ssm nor causal-conv1d is installed) vs
this package on the same module, for a forward pass and for greedy generation. CUDA events.

Usage (GPU machine): python3 scripts/bench_hf_switch.py [--preset mamba-130m]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time

import torch
import transformers

import mamba_export as me
from bench_e2e import cuda_time_ms  # scripts/ is on sys.path when this file runs


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--preset", default="mamba-130m")
    p.add_argument("--prompt", type=int, default=512)
    p.add_argument("--new-tokens", type=int, default=64)
    args = p.parse_args()
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as d:  # an HF model with mamba_ssm-initialised weights
        me.MambaLM(me.MambaConfig.preset(args.preset)).save_pretrained(d)
        hf = transformers.MambaForCausalLM.from_pretrained(d, dtype=torch.float16).cuda().eval()
    model = me.MambaLM.from_transformers(hf)  # the switch: shares hf's tensors
    ids = torch.randint(0, model.config.vocab_size, (1, args.prompt), device="cuda")
    prompt = ids[:, :16]
    n = args.new_tokens
    with torch.no_grad():
        hf_fwd = cuda_time_ms(lambda: hf(ids).logits, reps=5, warmup=1)
        me_fwd = cuda_time_ms(lambda: model(ids), reps=5, warmup=1)
        err = ((model(ids).float() - hf(ids).logits.float()).norm() / hf(ids).logits.float().norm()).item()
        hf_gen = cuda_time_ms(lambda: hf.generate(prompt, max_new_tokens=n, min_new_tokens=n, do_sample=False), reps=3, warmup=1)
        me_gen = cuda_time_ms(lambda: model.generate(prompt, max_new_tokens=n, eos_token_id=None, cuda_graph=True), reps=3, warmup=1)
        same = torch.equal(hf.generate(prompt, max_new_tokens=n, min_new_tokens=n, do_sample=False),
                           model.generate(prompt, max_new_tokens=n, eos_token_id=None))
    result = {"device": torch.cuda.get_device_name(), "torch": torch.__version__,
              "transformers": transformers.__version__, "date": time.strftime("%Y-%m-%d"),
              "preset": args.preset, "dtype": "float16",
              "forward_ms": {"transformers": hf_fwd, "mamba_export": me_fwd, "length": args.prompt},
              "generate_ms": {"transformers": hf_gen, "mamba_export_cuda_graph": me_gen, "new_tokens": n},
              "forward_rel_err": err, "greedy_equal": same}
    print(json.dumps(result, indent=2))
    print(f"\nforward 1x{args.prompt}: transformers {hf_fwd:.1f} ms, mamba_export {me_fwd:.1f} ms "
          f"({hf_fwd / me_fwd:.1f}x); generate {n} tokens: transformers {hf_gen:.0f} ms, "
          f"mamba_export {me_gen:.0f} ms ({hf_gen / me_gen:.1f}x); rel err {err:.1e}, greedy equal {same}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

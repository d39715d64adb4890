"""HBM read bandwidth ceilings on the GPU (needs CUDA): what a weight-streaming decode projection
can reach. Times (do_bench medians, ms) a 1 GiB read by torch's sum, by a plain Triton
streaming kernel (each program reads BLOCK contiguous elements per step), and a 1 GiB
device-to-device copy (read + write), and prints the bytes read per second.

    python3 scripts/bench_read_bw.py [--out results.json]
"""

from __future__ import annotations

import argparse
import datetime
import json

import torch
import triton
import triton.language as tl
from triton.testing import do_bench


@triton.jit
def _read_kernel(x_ptr, out_ptr, n, per_program, BLOCK: tl.constexpr):
    """Sum of this program's ``per_program`` contiguous elements (so the loads are kept)."""
    start = tl.program_id(0).to(tl.int64) * per_program
    acc = tl.zeros([BLOCK], tl.float32)
    for off in range(0, per_program, BLOCK):
        idx = start + off + tl.arange(0, BLOCK)
        acc += tl.load(x_ptr + idx, mask=idx < n, other=0.0).to(tl.float32)
    tl.store(out_ptr + tl.program_id(0), tl.sum(acc))


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default=None)
    args = p.parse_args()
    n = 1 << 29  # fp16 elements: 1 GiB
    x = torch.randn(n, dtype=torch.float16, device="cuda")
    rows = []

    def record(what, ms, nbytes):
        rows.append(dict(what=what, ms=ms, tb_per_s=nbytes / ms / 1e9))
        print(f"{what:<44} {ms:8.3f} ms {nbytes / ms / 1e9:6.2f} TB/s")

    record("torch sum (read)", do_bench(lambda: x.sum(), rep=200, return_mode="median"), 2 * n)
    y = torch.empty_like(x)
    record("copy (read + write, bytes of both)", do_bench(lambda: y.copy_(x), rep=200, return_mode="median"), 4 * n)
    sms = torch.cuda.get_device_properties(0).multi_processor_count
    out = torch.empty(sms * 64, dtype=torch.float32, device="cuda")
    for programs in (sms, 2 * sms, 4 * sms, 8 * sms, 32 * sms):
        for block, warps in ((2048, 4), (4096, 8)):
            per = triton.cdiv(triton.cdiv(n, programs), block) * block
            grid = (triton.cdiv(n, per),)
            ms = do_bench(lambda: _read_kernel[grid](x, out, n, per, BLOCK=block, num_warps=warps), rep=200,
                          return_mode="median")
            record(f"triton read, {grid[0]} programs, block {block}, {warps} warps", ms, 2 * n)
    if args.out:
        with open(args.out, "w") as f:
            json.dump(dict(device=torch.cuda.get_device_name(), torch=torch.__version__, triton=triton.__version__,
                           date=datetime.date.today().isoformat(), rows=rows), f, indent=1)


if __name__ == "__main__":
    main()

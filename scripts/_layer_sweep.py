"""Shared by the per-layer decode-kernel sweeps (bench_ssd_update.py, bench_state_update.py):
time one launcher under each (block, warps) configuration after checking it against float64."""

from __future__ import annotations

import argparse
import datetime
import json
import sys

import torch

from bench_decode_linear import graph_ms_per_call  # scripts/ is on sys.path when these run
from bench_kernels import copy_bandwidth


def start(config_names: str, presets: str, batches: str):
    """``--out``, ``--presets`` and ``--batches`` (comma lists, defaults given), the CUDA check and
    the copy bandwidth; prints the table's head. Returns (out path or None, bytes/s, preset
    names, batch sizes), or None without CUDA."""
    p = argparse.ArgumentParser()
    p.add_argument("--out", default=None)
    p.add_argument("--presets", default=presets, help=f"comma-separated (default {presets})")
    p.add_argument("--batches", default=batches, help=f"comma-separated (default {batches})")
    args = p.parse_args()
    if not torch.cuda.is_available():
        print("needs CUDA", file=sys.stderr)
        return None
    bw = copy_bandwidth()
    print(f"{torch.cuda.get_device_name()} | torch {torch.__version__} | copy {bw / 1e12:.2f} TB/s")
    print(f"{'shape':14s} {'B':>3s} {'floor us':>9s} {'default us':>11s} {'best us':>8s}  "
          f"best ({config_names})")
    return args.out, bw, args.presets.split(","), [int(b) for b in args.batches.split(",")]


def rel_err(out: torch.Tensor, want: torch.Tensor) -> float:
    """||out - want|| / ||want||, in float64."""
    return ((out.double() - want).norm() / want.norm()).item()


def sweep(configs, use, check, call, copies: int, label: str, bounds=(5e-3, 1e-5)) -> dict:
    """Microseconds per ``call(i)`` (a CUDA graph of ``copies`` calls over distinct states) under
    each config, ``None`` first (the launcher's default). ``use(cfg)`` installs a config (``None``
    restores the default, also on the way out); ``check()`` returns the (output, state) relative
    errors against float64, and a config over ``bounds`` is left out."""
    times = {}
    try:
        for cfg in [None, *configs]:
            use(cfg)
            e_out, e_state = check()
            if not (e_out <= bounds[0] and e_state <= bounds[1]):
                print(f"  {label} {cfg}: errors {e_out:.1e} / {e_state:.1e} (rejected)",
                      file=sys.stderr)
                continue
            times[cfg] = graph_ms_per_call(call, copies) * 1e3
    finally:
        use(None)
    return times


def summary(times: dict, model: str, batch: int, floor_us: float) -> dict:
    """One result row (the default's time, the best config, every config's time), printed."""
    best = min((k for k in times if k is not None), key=times.get)
    print(f"{model:14s} {batch:3d} {floor_us:9.2f} {times[None]:11.2f} {times[best]:8.2f}  {best}",
          flush=True)
    return dict(model=model, batch=batch, floor_us=floor_us, default_us=times[None],
                best_us=times[best], best=best,
                all={"x".join(str(v) for v in k): t for k, t in times.items() if k is not None})


def write_json(path: str | None, rows: list, copy_bw: float) -> None:
    if path:
        meta = dict(date=datetime.date.today().isoformat(), gpu=torch.cuda.get_device_name(),
                    torch=torch.__version__, copy_bw=copy_bw)
        with open(path, "w") as f:
            json.dump(dict(meta=meta, rows=rows), f, indent=1)

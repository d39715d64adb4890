"""Shared by the per-layer decode-kernel sweeps (bench_ssd_update.py, bench_state_update.py):
time one launcher under each (block, warps) configuration after checking it against float64."""

from __future__ import annotations

import datetime
import json
import sys

import torch

from bench_decode_linear import graph_ms_per_call  # scripts/ is on sys.path when these run


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


def summary(times: dict, **fields) -> dict:
    """One result row: the default's time, the best config and every config's time."""
    best = min((k for k in times if k is not None), key=times.get)
    return dict(fields, default_us=times.get(None), best_us=times[best], best=best,
                all={f"{k[0]}x{k[1]}": v for k, v in times.items() if k is not None})


def write_json(path: str | None, rows: list, copy_bw: float) -> None:
    if path:
        meta = dict(date=datetime.date.today().isoformat(), gpu=torch.cuda.get_device_name(),
                    torch=torch.__version__, copy_bw=copy_bw)
        with open(path, "w") as f:
            json.dump(dict(meta=meta, rows=rows), f, indent=1)

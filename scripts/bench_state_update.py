"""The Mamba-1 decode state update (kernels/state_update.py, dt_proj fused) per layer, as a decode
step runs it (needs CUDA).

    python3 scripts/bench_state_update.py [--out results.json] [--presets mamba-370m,...]
                                          [--batches 1,8,16]

Layer shapes of mamba-370m, mamba-1.4b and mamba-2.8b (or --presets) at batch 1, 8 and 16, fp16
activations, float32 states; one CUDA graph of calls over distinct per-layer states (>= 256 MB
in all, so states come from HBM as in a real step), replayed; us per call = median replay /
calls. Each (channels per program, warps) configuration is first checked against the float64
reference. Floor: the state read and written once at the copy bandwidth measured here (the
dt_proj weight, read once, adds D*R*2 bytes).
"""

from __future__ import annotations

import sys

import torch

from mamba_export import MambaConfig
from mamba_export import reference as ref
from mamba_export.kernels import state_update as su

from _layer_sweep import rel_err, start, summary, sweep, write_json  # scripts/ is on sys.path

# (channels per program, warps, rows per program): one row (the one-row kernel), or row blocks
# (the several-row kernel, only timed at batch > 1; a sweep of 27 tiles, 2026-11-24, found these
# the fastest alone at mamba-1.4b / 2.8b, docs/data/bench_state_update_2026-11-24_s15_row_blocks.json)
CONFIGS = [(bd, w, 1) for bd in (4, 8, 16, 32, 64) for w in (1, 2, 4)]
ROWS_CONFIGS = [(16, 2, 16), (16, 4, 16), (8, 2, 8), (16, 4, 8), (4, 1, 4), (8, 2, 4), (16, 4, 4)]


def layer_inputs(cfg, batch, copies):
    D, N, R = cfg.d_inner, cfg.d_state, cfg.resolved_dt_rank
    dev = "cuda"
    half = lambda *s: torch.randn(*s, device=dev, dtype=torch.float16)  # noqa: E731
    return dict(states=[torch.randn(batch, D, N, device=dev) for _ in range(copies)],
                x=half(batch, D), z=half(batch, D), low=half(batch, R),
                W=(torch.randn(D, R, device=dev) * R ** -0.5).half(),
                A=-torch.rand(D, N, device=dev) * 2 - 0.1, B=half(batch, N), C=half(batch, N),
                D=torch.randn(D, device=dev), bias=torch.randn(D, device=dev) * 0.1 - 2)


def run(inp, state, out_state):
    return su.selective_state_update_fwd(state, inp["x"], inp["low"], inp["A"], inp["B"], inp["C"],
                                         inp["D"], inp["z"], inp["bias"], True, out_state=out_state,
                                         dt_proj_weight=inp["W"])


def check(inp):
    """rel err of out and new state vs the float64 reference."""
    st = inp["states"][0]
    y, new = run(inp, st, None)
    d = {k: v.double() for k, v in inp.items() if k != "states"}
    want_y, want_s = ref.selective_state_update(st.double(), d["x"], d["low"] @ d["W"].T, d["A"],
                                                d["B"], d["C"], d["D"], d["z"], d["bias"], True)
    return rel_err(y, want_y), rel_err(new, want_s)


def main() -> int:
    started = start("block_d, warps, rows", "mamba-370m,mamba-1.4b,mamba-2.8b", "1,8,16")
    if started is None:
        return 1
    out, bw, presets, batches = started
    rows, default_config = [], su.launch_config
    for name in presets:
        cfg = MambaConfig.preset(name)
        for batch in batches:
            state_bytes = batch * cfg.d_inner * cfg.d_state * 4
            copies = max(8, min(256, (256 << 20) // state_bytes))
            inp = layer_inputs(cfg, batch, copies)
            floor = (2 * state_bytes + cfg.d_inner * cfg.resolved_dt_rank * 2) / bw * 1e6

            def use(c):  # (block_d, warps), or None: the launcher's own
                su.launch_config = default_config if c is None else (lambda *a: c)

            configs = CONFIGS + (ROWS_CONFIGS if batch > 1 else [])
            times = sweep(configs, use, lambda: check(inp),
                          lambda i: run(inp, inp["states"][i], inp["states"][i]), copies,
                          f"{name} B{batch}")
            rows.append(summary(times, name, batch, floor))
    write_json(out, rows, bw)
    return 0


if __name__ == "__main__":
    sys.exit(main())

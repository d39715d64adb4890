"""The Mamba-2 decode kernel (conv + SSD state update, kernels/ssd_update.py) per layer, as a
decode step runs it (needs CUDA).

    python3 scripts/bench_ssd_update.py [--out results.json]

mamba2-130m and mamba2-2.7b layer shapes at batch 1 and 16, fp16 activations, float32 states;
one CUDA graph of calls over distinct per-layer states (>= 256 MB in all, so states come from
HBM as in a real step), replayed; us per call = median replay / calls. Each (head channels per
program, warps) configuration is first checked against the float64 reference step. Floor: the
state read and written once at the copy bandwidth measured here.
"""

from __future__ import annotations

import sys

import torch

from mamba_export import MambaConfig
from mamba_export import reference as ref
from mamba_export.kernels import ssd_update as su

from _layer_sweep import rel_err, start, summary, sweep, write_json  # scripts/ is on sys.path

CONFIGS = [(bp, w) for bp in (8, 16, 32, 64) for w in (2, 4, 8)]


def layer_inputs(cfg, batch, copies):
    H, P, N, G = cfg.nheads, cfg.headdim, cfg.d_state, cfg.ngroups
    dev = "cuda"
    states = [torch.randn(batch, H, P, N, device=dev) for _ in range(copies)]
    return dict(
        states=states,
        xBC=torch.randn(batch, cfg.conv_dim, device=dev, dtype=torch.float16),
        conv_state=torch.randn(batch, cfg.conv_dim, cfg.d_conv - 1, device=dev, dtype=torch.float16),
        conv_w=(torch.randn(cfg.conv_dim, cfg.d_conv, device=dev) * 0.3).half(),
        conv_b=(torch.randn(cfg.conv_dim, device=dev) * 0.1).half(),
        dt=torch.randn(batch, H, device=dev, dtype=torch.float16) * 0.5 - 1,
        A=-torch.rand(H, device=dev) * 2 - 0.1, D=torch.randn(H, device=dev),
        dt_bias=torch.randn(H, device=dev) * 0.1, G=G)


def run(inp, state, out_state):
    return su.ssd_conv_state_update_fwd(
        state, inp["xBC"], inp["conv_state"], inp["conv_w"], inp["conv_b"], inp["dt"],
        inp["A"], inp["G"], inp["D"], None, inp["dt_bias"], True, None, out_state=out_state)


def check(cfg, inp):
    """rel err of out and new state vs the float64 reference (conv step then SSD step)."""
    batch = inp["xBC"].shape[0]
    st = inp["states"][0]
    y, new = run(inp, st, None)
    H, P, N, G = cfg.nheads, cfg.headdim, cfg.d_state, cfg.ngroups
    xbc, _ = ref.causal_conv1d_update(inp["xBC"].double(), inp["conv_state"].double(),
                                      inp["conv_w"].double(), inp["conv_b"].double(), True)
    x, B, C = torch.split(xbc, [H * P, G * N, G * N], dim=-1)
    want_y, want_s = ref.ssd_state_update(st.double(), x.reshape(batch, H, P), inp["dt"].double(),
                                          inp["A"].double(), B.reshape(batch, G, N), C.reshape(batch, G, N),
                                          inp["D"].double(), None, inp["dt_bias"].double(), True, None)
    return rel_err(y, want_y), rel_err(new, want_s)


def main() -> int:
    started = start("block_p, warps")
    if started is None:
        return 1
    out, bw = started
    rows, default_bp, default_w = [], su.block_p_for, su.NUM_WARPS
    for name in ("mamba2-130m", "mamba2-2.7b"):
        cfg = MambaConfig.preset(name)
        for batch in (1, 16):
            state_bytes = batch * cfg.nheads * cfg.headdim * cfg.d_state * 4
            copies = max(8, min(256, (256 << 20) // state_bytes))
            inp = layer_inputs(cfg, batch, copies)
            floor = 2 * state_bytes / bw * 1e6

            def use(c, headdim=cfg.headdim):  # (block_p, warps), or None: the launcher's own
                su.block_p_for = default_bp if c is None else (lambda *a: min(c[0], headdim))
                su.NUM_WARPS = default_w if c is None else c[1]

            times = sweep(CONFIGS, use, lambda: check(cfg, inp),
                          lambda i: run(inp, inp["states"][i], inp["states"][i]), copies,
                          f"{name} B{batch}")
            rows.append(summary(times, name, batch, floor))
    write_json(out, rows, bw)
    return 0


if __name__ == "__main__":
    sys.exit(main())

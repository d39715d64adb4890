"""The Mamba-2 decode kernel (kernels/ssd_update.py) per layer, as a decode step runs it (needs
CUDA), in both of the step's forms: "conv" (the conv folded into the state update: in_proj on
cuBLAS) and "folded" (x, B, C already through the conv in in_proj's epilogue; the kernel gates y
and writes the gated norm's sums: the default where in_proj takes the Triton kernel).

    python3 scripts/bench_ssd_update.py [--out results.json] [--presets mamba2-130m,...]
                                        [--batches 1,16]

mamba2-130m and mamba2-2.7b (or --presets) layer shapes at batch 1 and 16, fp16 activations,
float32 states; one CUDA graph of calls over distinct per-layer states (>= 256 MB in all, so
states come from HBM as in a real step), replayed; us per call = median replay / calls. Each
(head channels per program, warps) configuration is first checked against the float64
reference step. Floor: the state read and written once at the copy bandwidth measured here.
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
        dt_bias=torch.randn(H, device=dev) * 0.1, G=G,
        z=torch.randn(batch, H, P, device=dev, dtype=torch.float16),
        norm_w=(1 + 0.2 * torch.randn(H * P, device=dev)).half())


def split_xbc(cfg, xbc):
    batch, H, P, N, G = xbc.shape[0], cfg.nheads, cfg.headdim, cfg.d_state, cfg.ngroups
    x, B, C = torch.split(xbc, [H * P, G * N, G * N], dim=-1)
    return x.reshape(batch, H, P), B.reshape(batch, G, N), C.reshape(batch, G, N)


def run(cfg, inp, state, out_state, form):
    if form == "conv":
        return su.ssd_conv_state_update_fwd(
            state, inp["xBC"], inp["conv_state"], inp["conv_w"], inp["conv_b"], inp["dt"],
            inp["A"], inp["G"], inp["D"], None, inp["dt_bias"], True, None, out_state=out_state)
    x, B, C = split_xbc(cfg, inp["xBC"])
    return su.ssd_state_update_fwd(state, x, inp["dt"], inp["A"], B, C, inp["D"], inp["z"], inp["dt_bias"], True,
                                   None, out_state=out_state, norm_weight=inp["norm_w"])


def check(cfg, inp, form):
    """rel err of out and new state vs the float64 reference (conv step then SSD step; for
    "folded" the SSD step alone, its output gated and times the norm weight)."""
    st = inp["states"][0]
    y, new = run(cfg, inp, st, None, form)[:2]
    xbc = inp["xBC"].double()
    if form == "conv":
        xbc, _ = ref.causal_conv1d_update(xbc, inp["conv_state"].double(), inp["conv_w"].double(),
                                          inp["conv_b"].double(), True)
    x, B, C = split_xbc(cfg, xbc)
    want_y, want_s = ref.ssd_state_update(st.double(), x, inp["dt"].double(), inp["A"].double(), B, C,
                                          inp["D"].double(), None, inp["dt_bias"].double(), True, None)
    if form == "folded":
        gate = torch.nn.functional.silu(inp["z"].double())
        want_y = want_y.to(y.dtype).double() * gate * inp["norm_w"].double().view(cfg.nheads, cfg.headdim)
    return rel_err(y, want_y), rel_err(new, want_s)


def main() -> int:
    started = start("block_p, warps", "mamba2-130m,mamba2-2.7b", "1,16")
    if started is None:
        return 1
    out, bw, presets, batches = started
    rows, default_config = [], su.launch_config
    for name, form in ((name, form) for name in presets for form in ("conv", "folded")):
        cfg = MambaConfig.preset(name)
        for batch in batches:
            state_bytes = batch * cfg.nheads * cfg.headdim * cfg.d_state * 4
            copies = max(8, min(256, (256 << 20) // state_bytes))
            inp = layer_inputs(cfg, batch, copies)
            floor = 2 * state_bytes / bw * 1e6

            def use(c, headdim=cfg.headdim):  # (block_p, warps), or None: the launcher's own
                su.launch_config = default_config if c is None else (lambda *a: (min(c[0], headdim), c[1]))

            times = sweep(CONFIGS, use, lambda: check(cfg, inp, form),
                          lambda i: run(cfg, inp, inp["states"][i], inp["states"][i], form), copies,
                          f"{name} {form} B{batch}")
            rows.append(dict(summary(times, f"{name} {form}", batch, floor), form=form))
    write_json(out, rows, bw)
    return 0


if __name__ == "__main__":
    sys.exit(main())

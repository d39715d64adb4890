"""Plot decode ms/token vs model size from bench_e2e.py's JSON, with two floors: the weights read
once (batch 1), and the weights plus every row's recurrent state read and written once (batch 16:
the float32 SSM state and the conv state, at the run's copy bandwidth).

Usage: python scripts/plot_e2e.py docs/data/bench_e2e_<date>.json docs/decode_vs_size.png
"""

import json
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from mamba_export.config import MambaConfig

SIZES = {"mamba-130m": 130, "mamba-370m": 370, "mamba-790m": 790, "mamba-1.4b": 1400, "mamba-2.8b": 2800}


def state_bytes_per_row(preset: str) -> int:
    """Bytes of one sequence's decode state read and written once per step (Mamba-1 presets:
    float32 SSM state [d_inner, d_state] and a float16 conv state [d_inner, d_conv - 1] per
    layer)."""
    c = MambaConfig.preset(preset)
    return 2 * c.n_layer * c.d_inner * (c.d_state * 4 + (c.d_conv - 1) * 2)


def batch_floor_ms(row: dict, batch: int, copy_bps: float) -> float:
    """The weight floor plus ``batch`` rows' state traffic at the copy bandwidth."""
    return row["floor_ms"] + batch * state_bytes_per_row(row["model"]) / copy_bps * 1e3


def main(src: str, dst: str) -> None:
    data = json.load(open(src))
    rows = [r for r in data["decode"] if r["model"] in SIZES]
    x = [SIZES[r["model"]] for r in rows]
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    ax.plot(x, [r["b1_ms"] for r in rows], "o-", label="batch 1 (CUDA graph)")
    ax.plot(x, [r["b16_ms"] for r in rows], "s-", label="batch 16 (CUDA graph)")
    if all("b1_no_pdl_ms" in r for r in rows):  # bench_e2e.py --pdl with PDL on by default
        ax.plot(x, [r["b1_no_pdl_ms"] for r in rows], "o:", color="C0", alpha=0.6,
                label="batch 1, without PDL")
    ax.plot(x, [r["floor_ms"] for r in rows], "k--", label="floor: weights / copy bandwidth")
    copy_bps = data["copy_TBps"] * 1e12
    ax.plot(x, [batch_floor_ms(r, 16, copy_bps) for r in rows], "k:",
            label="batch-16 floor: weights + 16 states read and written")
    for r, xi in zip(rows, x):
        ax.annotate(r["model"].replace("mamba-", ""), (xi, r["b1_ms"]), textcoords="offset points",
                    xytext=(4, -12), fontsize=8)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("parameters (M)")
    ax.set_ylabel("decode ms / token")
    ax.set_title(f"Mamba decode, fp16, {data['device']}, {data['date']}", fontsize=9)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(dst, dpi=120)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])

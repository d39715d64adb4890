"""Plot decode ms/token vs model size (with the weight-reading floor) from bench_e2e.py's JSON.

Usage: python scripts/plot_e2e.py docs/data/bench_e2e_<date>.json docs/decode_vs_size.png
"""

import json
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

SIZES = {"mamba-130m": 130, "mamba-370m": 370, "mamba-790m": 790, "mamba-1.4b": 1400, "mamba-2.8b": 2800}


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

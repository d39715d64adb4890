"""Plot selective-scan forward time vs sequence length (with the exp-unit and memory floors) from
bench_kernels.py's JSON.

Usage: python scripts/plot_kernels.py docs/data/bench_kernels_<date>.json docs/scan_time_vs_L.png
"""

import json
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def main(src: str, dst: str) -> None:
    data = json.load(open(src))
    rows = sorted((r for r in data["rows"] if r["kind"] == "scan_fwd_vs_L"), key=lambda r: r["length"])
    if not rows:
        raise SystemExit(f"{src} has no scan_fwd_vs_L rows (run bench_kernels.py without --quick?)")
    L = [r["length"] for r in rows]
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    ax.plot(L, [r["ms"] for r in rows], "o-", label="scan forward (default kernel)")
    ax.plot(L, [r["exp_floor_ms"] for r in rows], "k--", label="floor: exp unit")
    ax.plot(L, [r["mem_floor_ms"] for r in rows], "k:", label="floor: memory")
    for r in rows:
        ax.annotate(f"{r['ns_per_token']:.0f} ns/tok", (r["length"], r["ms"]),
                    textcoords="offset points", xytext=(4, 6), fontsize=7)
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("sequence length L (B1 D1536 N16, bf16)")
    ax.set_ylabel("ms")
    meta = data["meta"]
    ax.set_title(f"Selective scan forward, {meta['gpu']}, Triton {meta['triton']}, {meta['date']}",
                 fontsize=9)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(dst, dpi=120)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])

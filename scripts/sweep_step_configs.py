"""Tile configs of the decode projections at several rows, timed in the decode step (needs CUDA).

A projection's best tile alone (bench_decode_linear.py) and in the step differ, and the best one in
the step moves when the kernels around it change (docs/kernel_notes.md v25 g). For each preset and
each projection the kernel takes at that batch, this runs bench_e2e.py once per candidate config
(``--linear-config N,K=CONFIG``, a fresh process each), alternating the configs over ``--runs``
rounds, and prints ms/token per config with the default first.

    python3 scripts/sweep_step_configs.py [--presets mamba-130m,mamba2-130m] [--batch 16]
        [--projections in_proj,out_proj] [--runs 2] [--dry-run] [--out results.json]

Candidates vary one thing of the default at a time: the feature block (8 to 64; 16 to 64 for K
loops); for one-tile K-group configs the warps with the groups (4 or 8); for K loops over all of K
the stages (2 to 5), the K step (64 or 256) and the warps (4 or 8). About 15 s per config and
round on the H100 (2026-11-25).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

from mamba_export import _dispatch
from mamba_export.config import MambaConfig
from mamba_export.kernels import decode_linear as dl

TRITON_STAGES = 3  # Triton's num_stages when a config gives none (its CUDA default)


def projections(preset: str) -> dict[str, tuple[int, int]]:
    """(features, K) of a block's projections at the preset's shape."""
    c = MambaConfig.preset(preset)
    shapes = {"in_proj": (c.d_in_proj, c.d_model), "out_proj": (c.d_model, c.d_inner)}
    if c.layer != "Mamba2":
        shapes["x_proj"] = (c.resolved_dt_rank + 2 * c.d_state, c.d_inner)
    return shapes


def candidates(rows: int, features: int, k: int, conv: bool, swap_ab: bool) -> list[tuple[int, ...]]:
    """The default config (first) and its variants (see the module docstring); ``swap_ab``: as the
    model asks (Mamba-1's mixer), so a weight @ x.T default keeps that form in its variants."""
    default = dl.default_config(rows, features, k, conv=conv, swap_ab=swap_ab)
    swap_tail = (1, *default[6:]) if len(default) == 7 else ()  # (k_groups 1, swap_ab)
    configs = [default]
    k_loop = default[1] < -(-k // default[3])  # (a program's K slice wider than its tile, as the launcher)
    for block_n in (16, 32, 64) if k_loop else (8, 16, 32, 64):  # (a K loop's 8-feature tile: x's
        configs.append((block_n, *default[1:]))                   # 16 rows are twice its weight)
    if len(default) == 6:
        for groups in (4, 8):
            if default[1] // groups >= 16:
                configs.append((default[0], default[1], groups, default[3], default[4], groups))
    elif k_loop and default[3] == 1:  # over all of K
        block_n, block_k, warps = default[:3]
        stages = default[4] if len(default) >= 5 else TRITON_STAGES
        configs += [(block_n, block_k, warps, 1, s, *swap_tail) for s in (2, 3, 4, 5) if s != stages]
        configs += [(block_n, bk, warps, 1, stages, *swap_tail) for bk in (64, 256) if bk != block_k]
        configs.append((block_n, block_k, 8 if warps != 8 else 4, 1, stages, *swap_tail))
    return list(dict.fromkeys(c for c in configs if c[0] <= features))


def time_config(preset: str, batch: int, shape: tuple[int, int], config: tuple[int, ...] | None) -> float:
    """bench_e2e.py's decode ms/token at ``batch`` with ``config`` forced for ``shape`` (None:
    the default)."""
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "r.json")
        cmd = [sys.executable, os.path.join(os.path.dirname(__file__), "bench_e2e.py"), "--skip-prefill",
               "--skip-long", "--skip-compile", "--batches", str(batch), "--presets", preset, "--out", out]
        if config is not None:
            cmd += ["--linear-config", f"{shape[0]},{shape[1]}=" + ",".join(map(str, config))]
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        with open(out) as f:
            return json.load(f)["decode"][0][f"b{batch}_ms"]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--presets", default="mamba-130m,mamba-370m,mamba2-130m")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--projections", default="in_proj,x_proj,out_proj")
    p.add_argument("--runs", type=int, default=2)
    p.add_argument("--dry-run", action="store_true", help="list the candidates, time nothing")
    p.add_argument("--out", default=None)
    args = p.parse_args()
    if args.batch < 2 or args.batch > dl.MODEL_ROWS:
        p.error(f"--batch must be 2..{dl.MODEL_ROWS} (one row has no tile choice here)")
    wanted = set(args.projections.split(","))
    results = []
    for preset in args.presets.split(","):
        mamba1 = MambaConfig.preset(preset).layer != "Mamba2"
        for name, (features, k) in projections(preset).items():
            # (Mamba-1's mixer asks for weight @ x.T tiles for in_proj and out_proj, as model.py)
            swap_ab = mamba1 and name != "x_proj"
            if name not in wanted or not dl.model_takes(args.batch, features, k, swap_ab=swap_ab):
                continue
            # (the model folds the conv into a one-tile in_proj, as _dispatch.in_proj_conv)
            conv = name == "in_proj" and _dispatch.FOLD_CONV and dl.one_tile(args.batch, features, k) and (
                not mamba1 or _dispatch.mamba1_folds_conv(args.batch, features * k))
            configs = candidates(args.batch, features, k, conv, swap_ab)
            print(f"{preset} {name} {features}x{k}: {len(configs)} configs {configs}", flush=True)
            if args.dry_run:
                continue
            times = {c: [] for c in configs}
            for _ in range(args.runs):
                for c in configs:
                    t0 = time.time()
                    times[c].append(time_config(preset, args.batch, (features, k), c))
                    print(f"    {','.join(map(str, c))}: {times[c][-1]:.3f} ({time.time() - t0:.0f} s)", flush=True)
            for c in configs:
                print(f"  {','.join(map(str, c)):<22} " + " ".join(f"{t:.3f}" for t in times[c]), flush=True)
                results.append(dict(preset=preset, projection=name, shape=[features, k], config=list(c),
                                    default=c == configs[0], ms=times[c]))
    if args.out:
        with open(args.out, "w") as f:
            json.dump(dict(date=time.strftime("%Y-%m-%d"), batch=args.batch, results=results), f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())

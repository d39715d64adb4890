"""The benchmark scripts' host-side logic (their timings need the GPU machine)."""

import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "scripts"))

import bench_e2e  # noqa: E402


def test_child_argv_runs_one_preset_and_keeps_the_switches():
    argv = ["--skip-prefill", "--presets", "mamba-130m,mamba-2.8b", "--batches", "16",
            "--out=all.json", "--no-swap-ab", "--linear-config", "16:768,1536=16,2048,8,1"]
    child = bench_e2e._child_argv(argv, "mamba-2.8b", "/tmp/one.json")
    assert child == ["--skip-prefill", "--batches", "16", "--no-swap-ab", "--linear-config",
                     "16:768,1536=16,2048,8,1", "--presets", "mamba-2.8b", "--out", "/tmp/one.json",
                     "--skip-long", "--in-process"]

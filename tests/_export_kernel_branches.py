"""torch.export of a model through the ops' Triton branches, simulated on CPU (run by
tests/test_compile.py in a fresh process: tracing Triton kernels changes process-wide Triton
state that the interpreter runs of the CPU test session then trip over).

A CUDA model's export runs each op's Triton branch as its fake kernel, and the launchers pick
kernels from the sizes. Here the ops take those branches and the launchers their GPU
configurations on a CPU model while it is exported; the programs then run (on the reference)
at other sizes. Prints one JSON line per model and graph: the export error (None if none) and
the relative errors of logits and SSM state against eager.
"""

import contextlib
import importlib
import json
import sys

import torch

import mamba_export as me
from mamba_export.export.programs import export_program

CONFIGS = {
    "mamba1": dict(d_model=24, n_layer=2, vocab_size=61, d_state=4, d_conv=4),
    "mamba2": dict(layer="Mamba2", d_model=32, n_layer=2, vocab_size=50, d_state=8, headdim=16,
                   ngroups=2, chunk_size=4),
}
MODULES = ("_common", "causal_conv1d", "decode_linear", "gated_rmsnorm", "selective_scan",
           "ssd_scan", "state_update")


@contextlib.contextmanager
def kernel_branches():
    """The ops' Triton branches and the launchers' GPU configurations, for this block."""
    saved = [(me.ops, "_runs_triton", me.ops._runs_triton)]
    me.ops._runs_triton = lambda t: True
    for name in MODULES:
        module = importlib.import_module(f"mamba_export.kernels.{name}")
        saved.append((module, "use_interpreter", module.use_interpreter))
        module.use_interpreter = lambda device: False
    try:
        yield
    finally:
        for module, attr, value in saved:
            setattr(module, attr, value)


def rel_err(out, want):
    return ((out.double() - want.double()).norm() / want.double().norm()).item()


def main():
    for name, cfg in CONFIGS.items():
        torch.manual_seed(2)
        model = me.MambaLM(me.MambaConfig(**cfg)).eval()
        ids = torch.randint(0, cfg["vocab_size"], (3, 13))
        state = model.new_state(3)
        state = me.MambaState(torch.randn_like(state.conv), torch.randn_like(state.ssm) * 0.1)
        for graph in ("prefill", "decode"):
            try:
                with kernel_branches():
                    program = export_program(model, graph)
            except Exception as e:  # noqa: BLE001  (reported to the test)
                print(json.dumps(dict(model=name, graph=graph, error=f"{type(e).__name__}: {e}"[:500])))
                continue
            with torch.no_grad():
                if graph == "prefill":
                    logits, _, ssm = program.module()(ids, *state)
                    want, want_state = model.prefill(ids, state)
                else:
                    logits, _, ssm = program.module()(ids[:, :1], *state)
                    want, want_state = model.step(ids[:, 0], state)
            print(json.dumps(dict(model=name, graph=graph, error=None, logits=rel_err(logits, want),
                                  ssm=rel_err(ssm, want_state.ssm))))
    return 0


if __name__ == "__main__":
    sys.exit(main())

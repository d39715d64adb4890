"""torch.compile and torch.export on CUDA: the compiled code launches the project's kernels (read
from Inductor's generated code) and matches eager; exported programs keep their sizes dynamic."""

import pytest
import torch
from _util import rel_err
from torch._inductor.utils import run_and_get_code

import mamba_export as me
from mamba_export.compiled import compile_model
from mamba_export.export.programs import export_program
from mamba_export.kernels import scan_gluon

pytestmark = pytest.mark.gpu


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(4)
    return me.MambaLM(me.MambaConfig(d_model=64, n_layer=2, vocab_size=128, d_state=16),
                      device="cuda").eval()


def test_compiled_prefill_and_step_call_project_kernels(model):
    compiled = compile_model(model)
    ids = torch.randint(0, 128, (2, 40), device="cuda")
    state = model.new_state(2)
    with torch.no_grad():
        (logits, new_state), codes = run_and_get_code(compiled.prefill, ids, state)
        code = "\n".join(codes)
        # (on Hopper the scan is the Gluon kernel, called through an opaque op: Inductor cannot
        # schedule Gluon kernels; elsewhere Inductor's code launches the Triton scan itself)
        scan = "_selective_scan_gluon" if scan_gluon.available(0) else "_scan_fwd"
        assert scan in code and "_conv_fwd_kernel" in code
        want, want_state = model.prefill(ids, state)
        assert rel_err(logits, want) < 1e-5 and rel_err(new_state.ssm, want_state.ssm) < 1e-5
        tokens = ids[:, -1].contiguous()
        (logits, _), codes = run_and_get_code(compiled.step, tokens, want_state)
        code = "\n".join(codes)
        assert "_state_update_kernel" in code and "_conv_update_kernel" in code
        assert rel_err(logits, model.step(tokens, want_state)[0]) < 1e-5


def test_training_under_compile_on_cuda_matches_eager(model):
    ids = torch.randint(0, 128, (2, 33), device="cuda")
    grads = []
    for fn in (model, torch.compile(model, fullgraph=True)):
        model.zero_grad()
        logits = fn(ids[:, :-1])
        torch.nn.functional.cross_entropy(logits.flatten(0, 1), ids[:, 1:].flatten()).backward()
        grads.append([p.grad.clone() for p in model.parameters()])
    for g_eager, g_compiled in zip(*grads):
        assert rel_err(g_compiled, g_eager) < 1e-4


MAMBA2 = dict(layer="Mamba2", d_model=32, n_layer=2, vocab_size=50, d_state=8, headdim=16,
              ngroups=2, chunk_size=4)


@pytest.mark.parametrize("cfg", [dict(d_model=64, n_layer=2, vocab_size=128, d_state=16), MAMBA2],
                         ids=["mamba1", "mamba2"])
def test_cuda_model_exports_with_dynamic_sizes(cfg):
    """torch.export of a CUDA model keeps batch and length dynamic: the launchers' size-based
    kernel choices record no guards there (before, export raised ConstraintViolationError), and
    the programs run at sizes other than the example's with eager's numbers."""
    torch.manual_seed(5)
    model = me.MambaLM(me.MambaConfig(**cfg), device="cuda").eval()
    prefill, decode = (export_program(model, g).module() for g in ("prefill", "decode"))
    with torch.no_grad():
        for batch, length in ((3, 37), (1, 5)):
            ids = torch.randint(0, cfg["vocab_size"], (batch, length), device="cuda")
            state = model.new_state(batch)
            logits, conv, ssm = prefill(ids, *state)
            want, want_state = model.prefill(ids, state)
            assert rel_err(logits, want) < 1e-5 and rel_err(ssm, want_state.ssm) < 1e-5
            assert rel_err(conv, want_state.conv) < 1e-5
            logits, conv, ssm = decode(ids[:, -1:], *want_state)
            want, want_next = model.step(ids[:, -1], want_state)
            assert rel_err(logits, want) < 1e-5 and rel_err(ssm, want_next.ssm) < 1e-5

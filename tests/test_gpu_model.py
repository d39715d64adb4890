"""The model on CUDA (Triton kernels, fused add+RMSNorm) against the float64 CPU reference."""

import pytest
import torch
from _util import record_returns, rel_err

import mamba_export as me

pytestmark = pytest.mark.gpu

CFG = dict(d_model=72, n_layer=3, vocab_size=203, d_state=16, d_conv=4)


def _pair(dtype, cfg=None, seed=3):
    """A float64 CPU model and a CUDA copy in ``dtype`` with the same weights (the reference
    then holds the weights rounded to ``dtype``); Mamba-1 at CFG unless ``cfg`` is given."""
    torch.manual_seed(seed)
    ref = me.MambaLM(cfg or me.MambaConfig(**CFG), dtype=torch.float64).eval()
    gpu = me.MambaLM(ref.config, device="cuda", dtype=dtype, initialize=False).eval()
    gpu.load_state_dict(ref.state_dict())
    if dtype != torch.float32:  # the reference sees the same rounded weights
        ref.load_state_dict({k: v.to(dtype).double() for k, v in gpu.state_dict().items()})
    return ref, gpu


@pytest.mark.parametrize("dtype,bound", [(torch.float32, 1e-5), (torch.float16, 5e-3), (torch.bfloat16, 2e-2)])
@pytest.mark.parametrize("batch,length", [(1, 1), (3, 37), (2, 300)])
def test_forward_prefill_step_match_float64(dtype, bound, batch, length):
    ref, gpu = _pair(dtype)
    ids = torch.randint(0, CFG["vocab_size"], (batch, length))
    with torch.no_grad():
        want = ref(ids)
        got = gpu(ids.cuda())
        assert rel_err(got.cpu(), want) <= bound
        split = max(1, length // 2)
        logits, state = gpu.prefill(ids[:, :split].cuda(), gpu.new_state(batch))
        assert rel_err(logits.cpu(), want[:, split - 1]) <= bound
        for t in range(split, min(length, split + 4)):
            logits, state = gpu.step(ids[:, t].cuda(), state)
            assert rel_err(logits.cpu(), want[:, t]) <= bound


@pytest.mark.parametrize("dtype,bound", [(torch.float16, 5e-3), (torch.bfloat16, 2e-2)])
@pytest.mark.parametrize("d_model", [768, 1024, 1536])
def test_decode_at_16_rows_of_real_widths_matches_float64(d_model, dtype, bound, monkeypatch):
    """The widths of mamba-130m, -370m and -790m at batch 16, where the projections take
    K-grouped tensor-core tiles (one tile; mamba-790m's x_proj in one-tile K slices), in_proj
    folds the conv at 768 and the state update runs on 4 warps at 768 and 1024: prefill and
    three steps against the float64 reference."""
    from mamba_export.kernels import decode_linear as dl

    configs = record_returns(monkeypatch, dl, "default_config")
    ref, gpu = _pair(dtype, me.MambaConfig(**{**CFG, "d_model": d_model, "n_layer": 2}))
    ids = torch.randint(0, CFG["vocab_size"], (16, 8))
    with torch.no_grad():
        want = ref(ids)
        logits, state = gpu.prefill(ids[:, :5].cuda(), gpu.new_state(16))
        assert rel_err(logits.cpu(), want[:, 4]) <= bound
        for t in range(5, 8):
            logits, state = gpu.step(ids[:, t].cuda(), state)
            assert rel_err(logits.cpu(), want[:, t]) <= bound
    assert any(len(c) == 6 for c in configs)  # K groups taken


def test_cuda_graph_generation_equals_eager_generation():
    _, gpu = _pair(torch.float32)
    ids = torch.randint(0, CFG["vocab_size"], (4, 9), device="cuda")
    eager = gpu.generate(ids, max_new_tokens=24, eos_token_id=None)
    graphed = gpu.generate(ids, max_new_tokens=24, eos_token_id=None, cuda_graph=True)
    assert torch.equal(eager, graphed)


def test_cuda_graph_prefill_chunks_and_cache_reuse():
    _, gpu = _pair(torch.float32)
    ids = torch.randint(0, CFG["vocab_size"], (2, 23), device="cuda")
    eager = gpu.generate(ids, max_new_tokens=8, eos_token_id=None)
    for _ in range(2):  # the second call replays the cached graphs
        graphed = gpu.generate(ids, max_new_tokens=8, eos_token_id=None, cuda_graph=True,
                               prefill_chunk_size=8)
        assert torch.equal(eager, graphed)
    assert set(gpu._graphs) == {("prefill", (2, 8)), ("step", 2)}


def test_fused_add_rmsnorm_matches_torch():
    from mamba_export.kernels.rmsnorm import add_rmsnorm_fwd

    x = torch.randn(5, 7, 300, device="cuda", dtype=torch.float16)
    res = torch.randn(5, 7, 300, device="cuda", dtype=torch.float32)
    w = torch.randn(300, device="cuda", dtype=torch.float16)
    out, res_out = add_rmsnorm_fwd(x, res, w, 1e-5, True)
    r = x.float() + res
    v = r.half().float()
    want = (v * torch.rsqrt(v.pow(2).mean(-1, keepdim=True) + 1e-5) * w.float()).half()
    assert torch.equal(res_out, r)
    assert rel_err(out, want) < 2e-3


@pytest.mark.parametrize("dtype,bound", [(torch.float32, 1e-5), (torch.bfloat16, 3e-2)])
def test_mamba2_on_cuda_matches_float64(dtype, bound):
    cfg = me.MambaConfig(layer="Mamba2", d_model=64, n_layer=2, vocab_size=97, d_state=16,
                         headdim=16, ngroups=2, chunk_size=8)
    ref, gpu = _pair(dtype, cfg, seed=5)
    ids = torch.randint(0, 97, (2, 21))
    with torch.no_grad():
        want = ref(ids)
        assert rel_err(gpu(ids.cuda()).cpu(), want) <= bound
        logits, state = gpu.prefill(ids[:, :13].cuda(), gpu.new_state(2))
        for t in range(13, 21):
            logits, state = gpu.step(ids[:, t].cuda(), state)
            assert rel_err(logits.cpu(), want[:, t]) <= bound
    if dtype == torch.float32:
        prompt = ids[:, :5].cuda()
        assert torch.equal(gpu.generate(prompt, max_new_tokens=12, eos_token_id=None),
                           gpu.generate(prompt, max_new_tokens=12, eos_token_id=None, cuda_graph=True))


@pytest.mark.parametrize("dtype,bound", [(torch.float32, 1e-5), (torch.bfloat16, 3e-2)])
@pytest.mark.parametrize("extra", [{}, dict(d_ssm=64, norm_before_gate=True)], ids=["default", "mlp"])
def test_mamba2_direct_launch_step_matches_op_step_and_forward(dtype, bound, extra, monkeypatch):
    """Mamba-2 decode on eager CUDA (launchers called directly, states written in place):
    step(inplace=True) == step(inplace=False) exactly, ~ the op path, ~ forward in float64."""
    from mamba_export import mamba2, model as model_mod

    cfg = me.MambaConfig(layer="Mamba2", d_model=64, n_layer=2, vocab_size=97, d_state=16,
                         headdim=16, ngroups=2, chunk_size=8, **extra)
    ref, gpu = _pair(dtype, cfg, seed=6)
    ids = torch.randint(0, 97, (2, 16))
    with torch.no_grad():
        want = ref(ids)
        _, state = gpu.prefill(ids[:, :8].cuda(), gpu.new_state(2))
        s_inplace = me.MambaState(state.conv.clone(), state.ssm.clone())
        s_fun = s_ops = state
        for t in range(8, 16):
            tok = ids[:, t].cuda()
            a, returned = gpu.step(tok, s_inplace, inplace=True)
            b, s_fun = gpu.step(tok, s_fun)
            with monkeypatch.context() as m:  # the op path (what compile/export trace)
                for mod in (mamba2, model_mod):
                    m.setattr(mod, "_eager_cuda", lambda _: False)
                c, s_ops = gpu.step(tok, s_ops)
            assert returned.conv is s_inplace.conv and returned.ssm is s_inplace.ssm
            assert torch.equal(a, b)
            assert torch.equal(s_inplace.conv, s_fun.conv) and torch.equal(s_inplace.ssm, s_fun.ssm)
            assert rel_err(a, c) <= bound
            assert rel_err(a.cpu(), want[:, t]) <= bound


@pytest.mark.parametrize("layer,batch", [("Mamba1", 1), ("Mamba1", 4), ("Mamba2", 1), ("Mamba2", 4),
                                         ("Mamba1-wide", 16), ("Mamba1-130m", 16)])
def test_pdl_decode_equals_plain_launches(layer, batch, monkeypatch):
    """``_common.PDL`` (programmatic dependent launch of the decode kernels on sm_90+; on by
    default, MAMBA_EXPORT_PDL=0 turns it off): the same kernels on the same inputs, so eager
    steps and CUDA-graph generation give the same numbers bit for bit as plain launches (a
    missing wait, or a read before the wait of what the kernel before writes, would show as a
    difference). Mamba1-wide: mamba-2.8b's layer width at 16 rows, where the several-row state
    update reads its state early and x_proj its K slices; Mamba1-130m: mamba-130m's width at 16
    rows, where the projections read their weight early in one tile of K groups, in_proj with
    the conv folded in."""
    if torch.cuda.get_device_capability()[0] < 9:
        pytest.skip("PDL needs sm_90 or newer")
    extra = {"Mamba2": dict(layer="Mamba2", headdim=16, ngroups=2, d_model=64),
             "Mamba1-wide": dict(d_model=2560, n_layer=2), "Mamba1-130m": dict(d_model=768, n_layer=2)
             }.get(layer, {})
    torch.manual_seed(5)
    model = me.MambaLM(me.MambaConfig(**{**CFG, **extra}), device="cuda", dtype=torch.float16).eval()
    ids = torch.randint(0, CFG["vocab_size"], (batch, 11), device="cuda")

    def run():
        with torch.no_grad():
            logits, state = model.prefill(ids, model.new_state(batch))
            steps = [logits]
            for _ in range(3):
                logits, state = model.step(logits.argmax(-1), state)
                steps.append(logits)
        graphed = model.generate(ids, max_new_tokens=16, eos_token_id=None, cuda_graph=True)
        model._graphs.clear()
        return torch.stack(steps), graphed

    from mamba_export.kernels import _common

    monkeypatch.setattr(_common, "PDL", False)
    plain = run()
    monkeypatch.setattr(_common, "PDL", True)
    pdl = run()
    assert torch.equal(plain[0], pdl[0]) and torch.equal(plain[1], pdl[1])

"""The decode GEMV/GEMM kernel (kernels/decode_linear.py) against float64 ``x @ W.T + b``; in
Triton's interpreter on CPU, natively on CUDA. Outputs are poisoned (NaN) before the kernel runs;
errors are ||out - ref|| / ||ref|| on the same rounded inputs: fp32 <= 1e-5, fp16/bf16 <= 5e-3
(1e-2 for bf16 in the interpreter, which rounds float32 -> bfloat16 by truncation)."""

import pytest
import torch
from _util import record_returns, rel_err

from mamba_export.kernels import _common
import mamba_export as me
from mamba_export.kernels.decode_linear import MAX_ROWS, decode_linear_fwd

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
TOL = {torch.float32: 1e-5, torch.float16: 5e-3, torch.bfloat16: 5e-3 if DEVICE == "cuda" else 1e-2}


@pytest.fixture(autouse=True)
def _poison(monkeypatch):
    monkeypatch.setattr(_common, "POISON", True)


def operands(rows, features, k, dtype, bias=True, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(rows, k, generator=g).to(dtype)
    w = (torch.randn(features, k, generator=g) * k ** -0.5).to(dtype)
    b = torch.randn(features, generator=g).to(dtype) if bias else None
    return x, w, b


def reference(x, w, b):
    out = x.double() @ w.double().T
    return out if b is None else out + b.double()


# rows: 1 (the GEMV the model uses), a few, the maximum; features / K not multiples of any block
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("rows,features,k", [(1, 37, 100), (1, 300, 48), (3, 21, 130), (MAX_ROWS, 67, 257)])
@pytest.mark.parametrize("bias", [True, False])
def test_matches_float64(dtype, rows, features, k, bias):
    x, w, b = (t if t is None else t.to(DEVICE) for t in operands(rows, features, k, dtype, bias))
    out = decode_linear_fwd(x, w, b)
    assert out.shape == (rows, features) and out.dtype == dtype
    assert rel_err(out.cpu(), reference(x.cpu(), w.cpu(), None if b is None else b.cpu())) <= TOL[dtype]


# (BLOCK_N, BLOCK_K, num_warps, SPLIT): K split in 3 (the last slice short) and 5 (capped: K has
# only 3 blocks of 128; one tile per slice), in 3 slices of one tile each on tensor cores (the
# wide models' x_proj at several rows), one slice, wide blocks, a K loop pipelined 4 deep, one tile
# for all of K
# several rows: BLOCK_N < 8 takes the elementwise [M, N, K] path, >= 8 the tensor-core tiles
@pytest.mark.parametrize("config", [(4, 64, 4, 3), (4, 128, 8, 5), (16, 128, 4, 3), (8, 64, 4, 1), (32, 256, 2, 1),
                                    (16, 64, 4, 1, 4),
                                    (16, 64, 4, 2), (16, 512, 4, 1), (4, 512, 8, 1), (128, 128, 8, 1)])
@pytest.mark.parametrize("rows", [1, 5, 16])
@pytest.mark.parametrize("early_weight", [False, True])
def test_every_block_config(config, rows, early_weight):
    """(early_weight: configs whose tile covers the K slice read the weight before the PDL wait.)"""
    x, w, b = (t.to(DEVICE) for t in operands(rows, 45, 301, torch.float16))
    assert rel_err(decode_linear_fwd(x, w, b, config=config, early_weight=early_weight).cpu(),
                   reference(x.cpu(), w.cpu(), b.cpu())) <= TOL[torch.float16]


# K groups (tensor-core tiles at several rows): one tile, read before the PDL wait or not (in the
# K loop then), one-tile K slices (split), a K loop of several tiles; K 301 ends mid-group
@pytest.mark.parametrize("config", [(16, 512, 4, 1, 1, 4), (16, 512, 8, 1, 1, 8), (8, 512, 8, 1, 1, 8),
                                    (32, 256, 4, 2, 1, 4),
                                    (16, 64, 4, 1, 2, 4), (32, 128, 4, 2, 3, 2)])
@pytest.mark.parametrize("rows", [2, 16])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("early_weight", [False, True])
def test_k_groups_configs(config, rows, dtype, early_weight):
    x, w, b = (t.to(DEVICE) for t in operands(rows, 45, 301, dtype, seed=rows))
    out = decode_linear_fwd(x, w, b, config=config, early_weight=early_weight)
    assert rel_err(out.cpu(), reference(x.cpu(), w.cpu(), b.cpu())) <= TOL[dtype]


# swap_ab (weight @ x.T, the features on the product's M side): a K loop pipelined 3 deep with
# its first tile read before the PDL wait (several rows), one tile covering K, K split in 2, and
# 64 / 128 features (the warpgroup MMA's tile on Hopper); one row and a few take 8-row tiles
@pytest.mark.parametrize("config", [(64, 64, 4, 1, 3, 1, 1), (16, 512, 4, 1, 1, 1, 1), (32, 128, 4, 2, 2, 1, 1),
                                    (128, 128, 8, 1, 2, 1, 1)])
@pytest.mark.parametrize("rows", [1, 5, 16])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("early_weight", [False, True])
def test_swap_ab_configs(config, rows, dtype, early_weight):
    x, w, b = (t.to(DEVICE) for t in operands(rows, 150, 301, dtype, seed=rows))
    out = decode_linear_fwd(x, w, b, config=config, early_weight=early_weight)
    assert out.shape == (rows, 150)
    assert rel_err(out.cpu(), reference(x.cpu(), w.cpu(), b.cpu())) <= TOL[dtype]


def test_split_k_is_repeatable():
    """Split K: the per-block counters return to 0, so calls in a row (and other weights of the
    shape, sharing the workspace) give the same numbers."""
    x, w, b = (t.to(DEVICE) for t in operands(3, 20, 700, torch.float32))
    first = decode_linear_fwd(x, w, b, config=(4, 64, 4, 4))
    for seed in (1, 2):
        w2 = operands(3, 20, 700, torch.float32, seed=seed)[1].to(DEVICE)
        assert rel_err(decode_linear_fwd(x, w2, b, config=(4, 64, 4, 4)).cpu(),
                       reference(x.cpu(), w2.cpu(), b.cpu())) <= 1e-5
    assert torch.equal(decode_linear_fwd(x, w, b, config=(4, 64, 4, 4)), first)
    assert rel_err(first.cpu(), reference(x.cpu(), w.cpu(), b.cpu())) <= 1e-5


def test_strided_inputs_and_output_view():
    """x a column slice of a wider buffer, the weight transposed storage, out a column view."""
    x, w, b = operands(2, 30, 40, torch.float32)
    wide = torch.randn(2, 90)
    wide[:, 10:50] = x
    wt = w.T.contiguous().T  # same values, column-major
    full = torch.full((2, 50), 7.0)
    got = decode_linear_fwd(wide[:, 10:50].to(DEVICE), wt.to(DEVICE), b.to(DEVICE),
                            out=full.to(DEVICE)[:, 5:35])
    assert rel_err(got.cpu(), reference(x, w, b)) <= 1e-5


def test_bad_inputs_raise_value_errors():
    x, w, b = operands(2, 8, 12, torch.float32)
    with pytest.raises(ValueError, match="same K"):
        decode_linear_fwd(x, w[:, :5])
    with pytest.raises(ValueError, match="1..16 rows"):
        decode_linear_fwd(torch.randn(17, 12), w)
    with pytest.raises(ValueError, match="dtype"):
        decode_linear_fwd(x, w.half())
    with pytest.raises(ValueError, match="bias must have shape"):
        decode_linear_fwd(x, w, b[:3])
    with pytest.raises(ValueError, match="out must have shape"):
        decode_linear_fwd(x, w, out=torch.empty(2, 9))
    with pytest.raises(ValueError, match="float64"):
        decode_linear_fwd(x.double(), w.double())
    with pytest.raises(ValueError, match="must be float32"):
        decode_linear_fwd(x.int(), w)
    with pytest.raises(ValueError, match="config must be positive"):
        decode_linear_fwd(x[:1], w, config=(4, 128, 8, 0))
    with pytest.raises(ValueError, match="config must be positive"):
        decode_linear_fwd(x[:1], w, config=(4, 128, 8, 1, 0))
    with pytest.raises(ValueError, match=r"config must be positive \(BLOCK_N"):
        decode_linear_fwd(x[:1], w, config=(4, 128, 8))
    with pytest.raises(ValueError, match="k_groups 2 needs tensor-core tiles"):  # (one row: no tensor cores)
        decode_linear_fwd(x[:1], w, config=(16, 64, 4, 1, 1, 2))
    with pytest.raises(ValueError, match="k_groups 3 needs"):  # (not a power of two)
        decode_linear_fwd(x, w, config=(16, 64, 4, 1, 1, 3))
    with pytest.raises(ValueError, match="k_groups 8 needs"):  # (groups narrower than 16)
        decode_linear_fwd(x, w, config=(16, 64, 4, 1, 1, 8))
    with pytest.raises(ValueError, match="swap_ab needs k_groups 1"):
        decode_linear_fwd(x, w, config=(16, 64, 4, 1, 1, 2, 1))
    with pytest.raises(ValueError, match="swap_ab needs k_groups 1 and BLOCK_N >= 16"):
        decode_linear_fwd(x, w, config=(8, 64, 4, 1, 1, 1, 1))
    with pytest.raises(ValueError, match="config must be positive"):
        decode_linear_fwd(x, w, config=(16, 64, 4, 1, 1, 1, 2))


def test_pdl_request_applies_only_to_compiled_gpu_launches(monkeypatch):
    """``_common.PDL`` (on unless MAMBA_EXPORT_PDL=0 at import) asks for programmatic dependent
    launch; interpreted (CPU) and traced launches ignore it, and the kernels give the same numbers (the GPU
    test compares PDL and plain launches bit for bit: tests/test_gpu_model.py)."""
    from mamba_export.kernels._common import pdl_enabled

    monkeypatch.setattr(_common, "PDL", True)
    assert not pdl_enabled(torch.device("cpu"))
    x, w, b = (t.to(DEVICE) for t in operands(1, 20, 70, torch.float32))
    assert rel_err(decode_linear_fwd(x, w, b), reference(x, w, b)) <= 1e-5
    monkeypatch.setattr(_common, "PDL", False)
    assert not pdl_enabled(torch.device("cuda", 0))


def mamba2_mixer_inputs(cfg, batch, seed):
    """A Mamba-2 mixer with random weights (the mixer alone leaves initialisation to MambaLM)
    on DEVICE, and a random decode input, conv state and SSM state."""
    from mamba_export.mamba2 import Mamba2Mixer

    torch.manual_seed(seed)
    mixer = Mamba2Mixer(cfg).to(DEVICE)
    with torch.no_grad():
        for p in mixer.parameters():
            p.copy_(torch.randn_like(p) * 0.3)
        mixer.reset_ssm_parameters()
    h = torch.randn(batch, cfg.d_model, device=DEVICE)
    conv = torch.randn(batch, cfg.conv_dim, cfg.d_conv - 1, device=DEVICE)
    ssm = torch.randn(batch, cfg.nheads, cfg.headdim, cfg.d_state, device=DEVICE)
    return mixer, h, conv, ssm


@pytest.mark.parametrize("model_rows,calls", [(1, 0), (16, 2)])
def test_model_routes_up_to_model_rows(monkeypatch, model_rows, calls):
    """The Mamba-2 decode step (kernel path) sends its projections here for up to MODEL_ROWS rows
    (in_proj and out_proj at batch 3 at the default 16, none when lowered to 1) and gives the op
    path's numbers either way."""
    from mamba_export import MambaConfig
    from mamba_export.kernels import decode_linear as dl

    monkeypatch.setattr(dl, "MODEL_ROWS", model_rows)
    seen = []
    real = dl.decode_linear_fwd
    monkeypatch.setattr(dl, "decode_linear_fwd", lambda *a, **k: seen.append(a[0].shape) or real(*a, **k))
    mixer, h, conv, ssm = mamba2_mixer_inputs(MambaConfig(layer="Mamba2", d_model=32, d_state=6, headdim=8,
                                                          ngroups=2), batch=3, seed=1)
    want = mixer.step(h, conv.clone(), ssm.clone())[0].detach()  # grad on: the op path, also on CUDA
    with torch.no_grad():
        got = mixer._step_kernels(h, conv.clone(), ssm.clone(), False)[0]
    assert len(seen) == calls
    assert rel_err(got.cpu(), want.cpu()) <= 1e-5


@pytest.mark.parametrize("variant", [dict(rmsnorm=False), dict(norm_before_gate=True), dict(d_ssm=16)])
def test_mamba2_conv_fold_without_norm_fold(variant):
    """Mamba-2 mixers whose norm out_proj cannot fold (no norm, the norm before the gate, a
    gated-MLP branch) still take the conv in in_proj's epilogue and give the op path's step."""
    from mamba_export import MambaConfig

    mixer, h, conv, ssm = mamba2_mixer_inputs(MambaConfig(layer="Mamba2", d_model=16, d_state=6, headdim=8,
                                                          ngroups=2, **variant), batch=2, seed=2)
    want = [t.detach() for t in mixer.step(h, conv.clone(), ssm.clone())]  # grad on: the op path
    with torch.no_grad():
        assert mixer.in_proj_conv(h, conv, False) is not None
        got = mixer._step_kernels(h, conv.clone(), ssm.clone(), False)
    for g, w in zip(got, want):
        assert rel_err(g.cpu(), w.cpu()) <= 1e-5


@pytest.mark.parametrize("rows", [1, 5, MAX_ROWS])
@pytest.mark.parametrize("residual_dtype", [None, torch.float32, torch.float16])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_add_norm_folded_into_the_projection(rows, residual_dtype, dtype):
    """``add_norm``: in_proj(rmsnorm(x + residual) * nw) and x + residual, as the model's
    add_norm followed by in_proj (the norm sees the sum rounded to the model dtype)."""
    x, w, b = operands(rows, 45, 301, dtype, seed=rows)
    res = None if residual_dtype is None else torch.randn(rows, 301).to(residual_dtype)
    nw = (1 + 0.2 * torch.randn(301)).to(dtype)
    rout = torch.empty(rows, 301, dtype=residual_dtype or dtype)
    on = lambda t: None if t is None else t.to(DEVICE)  # noqa: E731
    rout_dev = on(rout)
    got = decode_linear_fwd(on(x), on(w), on(b), early_weight=True,
                            add_norm=(on(res), on(nw), 1e-5, rout_dev))
    summed = x.double() + (0 if res is None else res.double())
    v = summed.to(dtype).double()
    normed = (v / (v.pow(2).mean(-1, keepdim=True) + 1e-5).sqrt() * nw.double()).to(dtype)
    assert rel_err(got.cpu(), reference(normed, w, b)) <= TOL[dtype]
    assert rel_err(rout_dev.cpu(), summed) <= (1e-6 if rout.dtype == torch.float32 else 1e-3)


def test_add_norm_needs_one_tile_without_split():
    x, w, b = (t.to(DEVICE) for t in operands(2, 45, 301, torch.float16))
    args = (None, torch.ones(301, dtype=torch.float16, device=DEVICE), 1e-5,
            torch.empty(2, 301, dtype=torch.float16, device=DEVICE))
    with pytest.raises(ValueError, match="one BLOCK_K tile"):
        decode_linear_fwd(x, w, b, config=(16, 128, 4, 1), add_norm=args)
    with pytest.raises(ValueError, match="norm_weight must have shape"):
        decode_linear_fwd(x, w, b, early_weight=True, add_norm=(None, args[1][:7], 1e-5, args[3]))


def test_model_takes_small_weights_at_several_rows_and_every_weight_at_one():
    """The routing measured on the H100: one row always; up to 16 rows for weights read in one
    tile (mamba-130m's in_proj), the large in_proj / out_proj of models from d_model 2048 (not
    mamba-790m's) and the lm_head (vocabulary-wide) as such."""
    from mamba_export.kernels.decode_linear import default_config, model_takes

    assert model_takes(1, 10240, 2560) and model_takes(1, 50280, 768)
    assert model_takes(16, 3072, 768) and model_takes(4, 768, 1536)
    assert model_takes(16, 10240, 2560) and model_takes(16, 2560, 5120)  # mamba-2.8b
    assert model_takes(16, 8192, 2048) and model_takes(16, 2048, 4096)  # mamba-1.4b
    assert not model_takes(16, 6144, 1536) and not model_takes(16, 1536, 3072)  # mamba-790m
    # (its in_proj where the caller takes weight @ x.T tiles, as Mamba-1's mixer)
    assert model_takes(16, 6144, 1536, swap_ab=True) and not model_takes(16, 1536, 3072, swap_ab=True)
    assert default_config(16, 6144, 1536, swap_ab=True) == (64, 128, 4, 1, 5, 1, 1)
    assert not model_takes(16, 50280, 768) and not model_takes(16, 50280, 2560)
    assert model_takes(16, 50280, 768, lm_head=True) and model_takes(16, 50280, 2560, lm_head=True)
    assert not model_takes(17, 3072, 768)
    assert default_config(16, 50280, 768) == (128, 128, 8, 1)
    # one tile of all K, multiplied in K groups (not where the call allows none)
    assert default_config(16, 3072, 768) == (32, 1024, 4, 1, 1, 4)
    assert default_config(16, 3072, 768, conv=True) == (16, 1024, 4, 1, 1, 4)  # mamba-130m's in_proj
    assert default_config(1, 3072, 768, conv=True) == default_config(1, 3072, 768)
    assert default_config(16, 3072, 768, k_groups=False) == (32, 1024, 4, 1)
    assert default_config(16, 128, 3072) == (8, 1024, 4, 4, 1, 8)  # mamba-790m's x_proj: K slices
    assert default_config(16, 80, 1536) == (8, 2048, 8, 1, 1, 8)  # mamba-130m's x_proj: 8 features
    assert default_config(1, 10240, 2560) == (4, 128, 8, 1)  # large: a loop over K
    # mamba-2.8b's x_proj: K in slices of one tile read before the PDL wait; without early
    # reads, split 16 with a loop over each slice
    assert default_config(16, 192, 5120) == (16, 512, 4, 10)
    assert default_config(16, 192, 5120, early_weight=False) == (16, 128, 4, 16)
    assert default_config(16, 3072, 768, early_weight=False)[1] == 128  # read after the wait: loop
    # mamba-2.8b's out_proj: K unsplit, pipelined 5 deep (not in float32: shared memory)
    assert default_config(16, 2560, 5120) == (32, 256, 4, 1, 5)
    assert default_config(16, 2560, 5120, itemsize=4) == (32, 128, 4, 4)
    assert default_config(16, 2048, 4096) == (32, 128, 4, 4)  # mamba-1.4b's: split (faster there)
    # weight @ x.T tiles where the caller asks (Mamba-1's mixer): mamba-1.4b's out_proj and in_proj
    assert default_config(16, 2048, 4096, swap_ab=True) == (64, 128, 4, 4, 4, 1, 1)
    assert default_config(16, 8192, 2048, swap_ab=True) == (64, 128, 4, 1, 5, 1, 1)
    assert default_config(1, 8192, 2048, swap_ab=True) == default_config(1, 8192, 2048)
    assert default_config(16, 8192, 2048, itemsize=4, swap_ab=True) == (32, 128, 4, 1)
    assert default_config(16, 10240, 2560, swap_ab=True) == (32, 128, 4, 1)  # mamba-2.8b's in_proj
    # float32 operands of a one-tile several-row program would not fit in shared memory past
    # K = 512 (256 KB at K = 2048): a K loop instead; half precision keeps the tile
    assert default_config(16, 768, 1536) == (16, 2048, 8, 1, 1, 8)
    assert default_config(16, 768, 1536, itemsize=4)[1] == 128
    assert default_config(16, 64, 512, itemsize=4)[1] == 512


def steps_equal_op_steps(lm, ids, state, monkeypatch, tol=1e-5):
    """Decode ``ids [B, T]`` from ``state`` twice, step by step: on the path eager CUDA takes
    (launchers called directly, in place) and on the op path (on CUDA too); outputs and states
    equal within ``tol`` after every step."""
    from mamba_export import mamba2, model as model_mod

    kern = me.MambaState(state.conv.clone(), state.ssm.clone())
    for t in range(ids.shape[1]):
        for kernel_path in (False, True):
            with monkeypatch.context() as m:
                for mod in (model_mod, mamba2):
                    m.setattr(mod, "_eager_cuda", lambda _, k=kernel_path: k)
                if kernel_path:
                    got, kern = lm.step(ids[:, t], kern, inplace=True)
                else:
                    want, state = lm.step(ids[:, t], state)
        assert rel_err(got, want) <= tol
        assert rel_err(kern.ssm, state.ssm) <= tol and rel_err(kern.conv, state.conv) <= tol


@pytest.mark.parametrize("layer", ["Mamba1", "Mamba2"])
@pytest.mark.parametrize("folds", ["all", "no_add_norm", "none"])
@pytest.mark.parametrize("residual_in_fp32,batch", [(True, 1), (False, 1), (True, 3)])
def test_kernel_decode_step_equals_op_step(layer, folds, residual_in_fp32, batch, monkeypatch):
    """MambaLM.step on the path eager CUDA takes (launchers called directly; on CPU in Triton's
    interpreter) against the op path, over a few in-place steps. Folds: "all" (the default):
    each block's add + RMSNorm in in_proj's kernel at batch 1, split over the block before's
    out_proj and in_proj at batch 3; the conv in in_proj's epilogue, Mamba-2's gated norm in
    out_proj; "no_add_norm": no add + RMSNorm in in_proj alone (split
    over out_proj / in_proj from the second block on at batch 1 too); "none": the conv and
    the norms by their own kernels (Mamba-2: the conv in the state update)."""
    from mamba_export import _dispatch
    from mamba_export.kernels import decode_linear as dl

    folded, handed = [], []
    real = dl.decode_linear_fwd
    monkeypatch.setattr(dl, "decode_linear_fwd", lambda *a, **k: folded.append(k.get("add_norm") is not None)
                        or handed.append(k.get("next_norm") is not None) or real(*a, **k))
    extra = dict(layer="Mamba2", headdim=8, ngroups=2, d_state=8) if layer == "Mamba2" else {}
    cfg = me.MambaConfig(d_model=32, n_layer=2, vocab_size=61, residual_in_fp32=residual_in_fp32,
                         **extra)
    torch.manual_seed(4)
    lm = me.MambaLM(cfg).to(DEVICE).eval()
    ids = torch.randint(0, 61, (batch, 9), device=DEVICE)
    with torch.no_grad():
        _, state = lm.prefill(ids[:, :6], lm.new_state(batch))
        monkeypatch.setattr(_dispatch, "FOLD_NORM", folds == "all")
        monkeypatch.setattr(_dispatch, "FOLD_CONV", folds != "none")
        monkeypatch.setattr(_dispatch, "FOLD_NEXT_NORM", folds != "none")
        steps_equal_op_steps(lm, ids[:, 6:], state, monkeypatch)
    assert sum(folded) == (3 * cfg.n_layer if folds == "all" and batch == 1 else 0)  # every in_proj, or none
    hand_off = folds == "no_add_norm" or (folds == "all" and batch > 1)
    assert sum(handed) == (3 * (cfg.n_layer - 1) if hand_off else 0)  # every out_proj but the last


def test_block_prepares_the_conv_fold_only_for_a_fold_that_runs(monkeypatch):
    """With the add + RMSNorm fold off, a Mamba-1 block's step (not in place) leaves the conv
    fold to its mixer: one in_proj_conv per layer and step (one conv out_state allocated), and
    the step still equals the op path's."""
    from mamba_export import _dispatch, model as model_mod

    calls = []
    real = model_mod.in_proj_conv
    monkeypatch.setattr(model_mod, "in_proj_conv", lambda *a: calls.append(1) or real(*a))
    monkeypatch.setattr(_dispatch, "FOLD_NORM", False)
    cfg = me.MambaConfig(d_model=32, n_layer=2, vocab_size=61)
    torch.manual_seed(6)
    lm = me.MambaLM(cfg).to(DEVICE).eval()
    ids = torch.randint(0, 61, (1, 5), device=DEVICE)
    with torch.no_grad():
        _, state = lm.prefill(ids[:, :4], lm.new_state(1))
        with monkeypatch.context() as m:  # the op path (on CUDA too)
            m.setattr(model_mod, "_eager_cuda", lambda _: False)
            want, want_state = lm.step(ids[:, 4], state)
        calls.clear()
        with monkeypatch.context() as m:
            m.setattr(model_mod, "_eager_cuda", lambda _: True)
            got, got_state = lm.step(ids[:, 4], state, inplace=False)
    assert len(calls) == cfg.n_layer
    assert rel_err(got, want) <= 1e-5 and rel_err(got_state.ssm, want_state.ssm) <= 1e-5
    assert rel_err(got_state.conv, want_state.conv) <= 1e-5


def test_kernel_decode_step_with_k_groups_equals_op_step(monkeypatch):
    """A Mamba-1 model wide enough for K groups (d_inner 1024: x_proj and out_proj read in one
    tile of K 1024, out_proj beginning the next block's norm; in_proj folding the conv) at 3
    rows equals the op path. In the interpreter float32 takes those one-tile configs with a
    larger shared-memory budget; on the GPU it loops over K."""
    from mamba_export.kernels import decode_linear as dl, state_update as su

    if DEVICE == "cpu":
        monkeypatch.setattr(dl, "_ONE_TILE_SMEM", 1 << 20)
        monkeypatch.setattr(su, "launch_config", lambda *a, **k: (64, 1, 1))  # (fewer interpreted programs)
    configs = record_returns(monkeypatch, dl, "default_config")
    cfg = me.MambaConfig(d_model=512, n_layer=2, vocab_size=61)
    torch.manual_seed(8)
    lm = me.MambaLM(cfg).to(DEVICE).eval()
    ids = torch.randint(0, 61, (3, 2), device=DEVICE)
    state = lm.new_state(3)
    state.conv.normal_()
    state.ssm.normal_()
    with torch.no_grad():
        steps_equal_op_steps(lm, ids, state, monkeypatch)
    if DEVICE == "cpu":
        assert (32, 1024, 4, 1, 1, 4) in configs  # x_proj and out_proj


@pytest.mark.parametrize("groups", [1, 2])
def test_default_config_groups_k_only_for_one_norm_group(groups, monkeypatch):
    """At 16 rows of K 1024 the default config multiplies in K groups, except for a row_norm of
    several groups (Mamba-2's gated norm with ngroups > 1), which K groups do not take."""
    from mamba_export.kernels import decode_linear as dl

    configs = record_returns(monkeypatch, dl, "default_config")
    k = 1024
    v, w, b = operands(MAX_ROWS, 45, k, torch.float16, seed=groups)
    vd = v.double().view(MAX_ROWS, groups, -1)
    normed = (vd / (vd.pow(2).mean(-1, keepdim=True) + 1e-5).sqrt()).view(MAX_ROWS, k)
    got = decode_linear_fwd(v.to(DEVICE), w.to(DEVICE), b.to(DEVICE), early_weight=True,
                            row_norm=(norm_sums(v, groups, 4).to(DEVICE), 1e-5))
    assert rel_err(got.cpu(), reference(normed, w, b)) <= TOL[torch.float16]
    assert len(configs[-1]) == (6 if groups == 1 else 4)


@pytest.mark.gpu
@pytest.mark.parametrize("layer", ["Mamba1", "Mamba2"])
def test_wide_model_decode_step_at_16_rows_equals_op_step(layer, monkeypatch):
    """A model as wide as mamba-1.4b (d_model 2048) at batch 16: its in_proj and out_proj take
    the K-loop kernel (model_takes' large-weight rule); the kernel path's step equals the op
    path's (float32, two layers, two steps; the small lm_head's float32 one-tile config would
    need 256 KB of shared memory: it loops over K)."""
    from mamba_export.kernels import decode_linear as dl

    shapes = []
    real = dl.decode_linear_fwd
    monkeypatch.setattr(dl, "decode_linear_fwd",
                        lambda x, w, *a, **k: shapes.append((x.shape[0], *w.shape)) or real(x, w, *a, **k))
    extra = dict(layer="Mamba2", headdim=64) if layer == "Mamba2" else {}
    cfg = me.MambaConfig(d_model=2048, n_layer=2, vocab_size=64, **extra)
    torch.manual_seed(5)
    lm = me.MambaLM(cfg).to(DEVICE).eval()
    ids = torch.randint(0, 64, (16, 6), device=DEVICE)
    with torch.no_grad():
        _, state = lm.prefill(ids[:, :4], lm.new_state(16))
        steps_equal_op_steps(lm, ids[:, 4:], state, monkeypatch)
    mixer = lm.backbone.layers[0].mixer
    in_proj, out_proj = mixer.in_proj.weight, mixer.out_proj.weight
    assert (16, *in_proj.shape) in shapes and (16, *out_proj.shape) in shapes


@pytest.mark.gpu
@pytest.mark.parametrize("d_model,swapped", [(2048, [(64, 128, 4, 4, 4, 1, 1), (64, 128, 4, 1, 5, 1, 1)]),
                                             (1536, [(64, 128, 4, 1, 5, 1, 1)])])
def test_mamba1_step_takes_weight_times_x_tiles_at_16_rows(d_model, swapped, monkeypatch):
    """Float16 Mamba-1 models as wide as mamba-1.4b and mamba-790m at batch 16: the mixer asks
    for swap_ab, so in_proj and out_proj (mamba-790m: in_proj; its out_proj stays on cuBLAS)
    run as weight @ x.T (default_config's 7-element configs); the kernel path's steps equal the
    op path's (cuBLAS) within float16's bound."""
    from mamba_export.kernels import decode_linear as dl

    configs = record_returns(monkeypatch, dl, "default_config")
    cfg = me.MambaConfig(d_model=d_model, n_layer=2, vocab_size=64)
    torch.manual_seed(6)
    lm = me.MambaLM(cfg).to(DEVICE, torch.float16).eval()
    ids = torch.randint(0, 64, (16, 6), device=DEVICE)
    with torch.no_grad():
        _, state = lm.prefill(ids[:, :4], lm.new_state(16))
        steps_equal_op_steps(lm, ids[:, 4:], state, monkeypatch, tol=5e-3)
    assert {c for c in configs if len(c) == 7} == set(swapped)


def conv_reference(projected, first, conv_state, cw, cb):
    """The projection's output with columns first.. replaced by silu(conv) at this step (the conv
    of the output rounded to its dtype, as the reference conv sees it), and the new conv state."""
    channels = cw.shape[0]
    raw = projected.to(conv_state.dtype)[:, first:first + channels]
    conv, new_state = me.reference.causal_conv1d_update(
        raw.double(), conv_state.double(), cw.double(), None if cb is None else cb.double(), True)
    out = projected.clone()
    out[:, first:first + channels] = conv
    return out, new_state


# one row and several, elementwise and tensor-core paths, one tile (early conv-state reads) and
# a K loop; the 30 conv columns start mid-block and end mid-block
@pytest.mark.parametrize("rows,config", [(1, None), (1, (4, 128, 8, 1)), (5, (4, 64, 4, 1)),
                                         (MAX_ROWS, None), (MAX_ROWS, (16, 128, 4, 1)),
                                         (MAX_ROWS, (16, 256, 4, 1, 1, 4))])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("conv_bias,inplace", [(True, True), (False, False)])
def test_conv_epilogue(rows, config, dtype, conv_bias, inplace):
    """``conv``: in_proj's conv columns leave as silu(causal conv) of the step, and the conv
    state is shifted by it (Mamba-2's in_proj with its conv folded in)."""
    x, w, b = operands(rows, 45, 130, dtype, seed=rows)
    g = torch.Generator().manual_seed(7)
    state = torch.randn(rows, 30, 3, generator=g).to(dtype)
    cw = (torch.randn(30, 4, generator=g) * 0.5).to(dtype)
    cb = (torch.randn(30, generator=g) * 0.1).to(dtype) if conv_bias else None
    want, want_state = conv_reference(reference(x, w, b), 7, state, cw, cb)
    on = lambda t: None if t is None else t.to(DEVICE)  # noqa: E731
    state_dev = on(state).clone()  # (on CPU .to() would alias state)
    new_state = state_dev if inplace else torch.full_like(state_dev, float("nan"))
    got = decode_linear_fwd(on(x), on(w), on(b), config=config, early_weight=config is None or len(config) == 6,
                            conv=(state_dev, on(cw), on(cb), 7, new_state))
    assert rel_err(got.cpu(), want) <= TOL[dtype]
    assert rel_err(new_state.cpu(), want_state) <= (1e-7 if dtype == torch.float32 else 1e-3)
    assert torch.equal(new_state.cpu()[..., :2], state[..., 1:])  # the shift itself is exact


def test_conv_epilogue_default_at_model_shape():
    """mamba-130m's in_proj at 16 rows with the conv folded (the conv columns: the first half),
    in the launcher's default config for it (16 features in K groups)."""
    rows, k, features, channels = MAX_ROWS, 768, 3072, 1536
    x, w, b = operands(rows, features, k, torch.float16, bias=False, seed=5)
    g = torch.Generator().manual_seed(8)
    state = torch.randn(rows, channels, 3, generator=g).half()
    cw = (torch.randn(channels, 4, generator=g) * 0.5).half()
    cb = (torch.randn(channels, generator=g) * 0.1).half()
    want, want_state = conv_reference(reference(x, w, None), 0, state, cw, cb)
    state_dev = state.to(DEVICE).clone()
    got = decode_linear_fwd(x.to(DEVICE), w.to(DEVICE), None, early_weight=True,
                            conv=(state_dev, cw.to(DEVICE), cb.to(DEVICE), 0, state_dev))
    assert rel_err(got.cpu(), want) <= TOL[torch.float16]
    assert rel_err(state_dev.cpu(), want_state) <= 1e-3


def norm_sums(gated, groups, parts):
    """Sums of squares of each row's groups of columns in ``parts`` pieces [rows, groups, parts],
    float32 (what the state update writes for out_proj)."""
    rows, k = gated.shape
    sq = gated.float().pow(2).view(rows, groups, parts, k // groups // parts)
    return sq.sum(-1).contiguous()


# early: the weight read before the PDL wait (with a K loop at several rows, its first tile)
@pytest.mark.parametrize("rows,config,early", [(1, None, True), (1, (4, 32, 4, 1), False), (1, (4, 32, 4, 1), True),
                                               (5, (4, 64, 4, 1), False), (MAX_ROWS, None, True),
                                               (MAX_ROWS, (16, 64, 4, 1), False), (MAX_ROWS, (16, 64, 4, 1), True),
                                               (MAX_ROWS, (16, 256, 4, 1, 1, 4), True)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("groups,parts", [(1, 6), (3, 2)])
def test_row_norm_prologue(rows, config, early, dtype, groups, parts):
    """``row_norm``: out_proj of the RMSNorm of v, given v times the norm weight and partial
    sums of the squares of v (Mamba-2's out_proj with the gated norm folded in). K groups take
    one norm group only."""
    k = 144
    v, w, b = operands(rows, 45, k, dtype, seed=rows)
    nw = (1 + 0.2 * torch.randn(k)).to(dtype)
    vd = v.double().view(rows, groups, -1)
    normed = (vd / (vd.pow(2).mean(-1, keepdim=True) + 1e-5).sqrt()).view(rows, k) * nw.double()
    on = lambda t: None if t is None else t.to(DEVICE)  # noqa: E731
    weighted = (v.double() * nw.double()).to(dtype)
    row_norm = (on(norm_sums(v, groups, parts)), 1e-5)
    grouped_k = config is not None and len(config) == 6
    if grouped_k and groups > 1:
        with pytest.raises(ValueError, match="at most one row_norm group"):
            decode_linear_fwd(on(weighted), on(w), on(b), config=config, row_norm=row_norm)
        return
    got = decode_linear_fwd(on(weighted), on(w), on(b), config=config, early_weight=early, row_norm=row_norm)
    assert rel_err(got.cpu(), reference(normed, w, b)) <= TOL[dtype]


def test_conv_and_row_norm_reject_bad_shapes():
    x, w, b = operands(2, 45, 144, torch.float32)
    state, cw = torch.zeros(2, 30, 3), torch.zeros(30, 4)
    with pytest.raises(ValueError, match="conv columns"):
        decode_linear_fwd(x, w, b, conv=(state, cw, None, 20, state))
    with pytest.raises(ValueError, match="conv_state must have shape"):
        decode_linear_fwd(x, w, b, conv=(state[..., :2], cw, None, 0, state))
    with pytest.raises(ValueError, match="width >= 2"):
        decode_linear_fwd(x, w, b, conv=(state, cw[:, :1], None, 0, state))
    with pytest.raises(ValueError, match="norm sums"):
        decode_linear_fwd(x, w, b, row_norm=(torch.zeros(2, 5, 3), 1e-5))
    with pytest.raises(ValueError, match="cannot be combined"):
        decode_linear_fwd(x, w, b, early_weight=True, add_norm=(None, torch.ones(144), 1e-5, torch.empty(2, 144)),
                          row_norm=(torch.zeros(2, 1, 3), 1e-5))


# early: the weight read before the PDL wait (with a K loop at several rows, its first tile)
@pytest.mark.parametrize("rows,config,early", [(1, None, True), (1, (4, 128, 8, 1), False), (1, (4, 128, 8, 1), True),
                                               (5, (4, 64, 4, 1), True), (MAX_ROWS, None, True),
                                               (MAX_ROWS, (16, 128, 4, 2), False), (MAX_ROWS, (16, 128, 4, 2), True),
                                               (MAX_ROWS, (16, 64, 4, 1, 2), True),
                                               (MAX_ROWS, (16, 256, 4, 1, 1, 4), True)])
@pytest.mark.parametrize("dtype,residual_dtype", [(torch.float32, torch.float32), (torch.float16, torch.float32),
                                                  (torch.float16, torch.float16)])
def test_next_norm_epilogue_then_row_norm(rows, config, early, dtype, residual_dtype):
    """``next_norm`` on out_proj and ``row_norm`` on the next in_proj: the model's residual add +
    RMSNorm between two blocks, split over the two kernels, against out_proj, add, norm and
    in_proj in float64 (the norm sees the sum rounded to the model dtype)."""
    x, w, b = operands(rows, 45, 130, dtype, seed=rows)
    g = torch.Generator().manual_seed(3)
    res = torch.randn(rows, 45, generator=g).to(residual_dtype)
    nw = (1 + 0.2 * torch.randn(45, generator=g)).to(dtype)
    w2 = (torch.randn(37, 45, generator=g) * 45 ** -0.5).to(dtype)
    on = lambda t: t.to(DEVICE)  # noqa: E731
    rout = torch.full((rows, 45), float("nan"), dtype=residual_dtype, device=DEVICE)
    weighted, sums = decode_linear_fwd(on(x), on(w), on(b), config=config, early_weight=early,
                                       next_norm=(on(res), on(nw), rout))
    got = decode_linear_fwd(weighted, on(w2), None, early_weight=True, row_norm=(sums, 1e-5))
    summed = reference(x, w, b).to(dtype).double() + res.double()
    v = summed.to(dtype).double()
    normed = v / (v.pow(2).mean(-1, keepdim=True) + 1e-5).sqrt() * nw.double()
    assert rel_err(rout.cpu(), summed) <= (1e-6 if residual_dtype == torch.float32 else 1e-3)
    assert rel_err(got.cpu(), reference(normed, w2, None)) <= TOL[dtype]


def test_op_path_refuses_out_proj_folds():
    """The mixers' op paths (traced, training) have no kernel to fold the next block's norm
    into: asking for it there is an error, not a silently different result."""
    from mamba_export import MambaConfig, MambaLM

    for layer in ("Mamba1", "Mamba2"):
        lm = MambaLM(MambaConfig(layer=layer, d_model=16, n_layer=1, vocab_size=11, d_state=4, headdim=8))
        mixer, cfg = lm.backbone.layers[0].mixer, lm.config
        h = torch.randn(2, 16)
        conv = torch.zeros(2, cfg.conv_dim if layer == "Mamba2" else cfg.d_inner, cfg.d_conv - 1)
        ssm = lm.new_state(2).ssm[0]
        fold = dict(next_norm=(h, torch.ones(16), torch.empty(2, 16)))
        with pytest.raises(ValueError, match="eager CUDA kernel path"):
            mixer.step(h, conv, ssm, out_fold=fold)


def test_l2_prefetch_is_a_hint_and_checked():
    """``l2_prefetch`` changes no number (the interpreter ignores it; on CUDA the kernel asks for
    the bytes and goes on), and a tensor it cannot take is an error that says so."""
    x, w, b = (t.to(DEVICE) for t in operands(5, 37, 96, torch.float16))
    later = torch.randn(64, 40, dtype=torch.float16, device=DEVICE)
    for config in (None, (8, 128, 4, 1, 1, 2)):
        plain = decode_linear_fwd(x, w, b, config=config, early_weight=True)
        hinted = decode_linear_fwd(x, w, b, config=config, early_weight=True, l2_prefetch=later)
        assert torch.equal(plain, hinted)
    with pytest.raises(ValueError, match="contiguous"):
        decode_linear_fwd(x, w, b, l2_prefetch=later.t())

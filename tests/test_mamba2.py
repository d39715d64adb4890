"""Mamba-2 (SSD): the reference (chunked == per-timestep loop, float64-exact), the ops, the mixer
and LM against transformers' own ``Mamba2ForCausalLM`` (torch path) built from random configs,
state semantics (chunked prefill, prefill + decode = forward), mamba_ssm-format checkpoints,
save_pretrained, config errors and torch.export of the prefill/decode graphs."""

from __future__ import annotations

import json

import pytest
import torch
from _util import rel_err

import mamba_export as me
from mamba_export import CheckpointError, ConfigError, MambaConfig, MambaLM
from mamba_export import reference as ref
from mamba_export.ops import mamba_chunk_scan_combined, mamba2_state_update

transformers = pytest.importorskip("transformers")
from safetensors.torch import load_file, save_file  # noqa: E402

TOL = 1e-5
F64 = torch.float64


# ----------------------------------------------------------------------------- reference and ops
def ssd_inputs(batch=2, length=19, heads=6, hdim=4, groups=3, dstate=5, dtype=F64, seed=0,
               d_hdim=False):
    g = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=g, dtype=F64)  # noqa: E731
    args = dict(
        x=r(batch, length, heads, hdim), dt=r(batch, length, heads) * 0.5 - 1.0,
        A=-torch.rand(heads, generator=g, dtype=F64) * 4 - 0.05,
        B=r(batch, length, groups, dstate), C=r(batch, length, groups, dstate),
        D=r(heads, hdim) if d_hdim else r(heads), z=r(batch, length, heads, hdim),
        dt_bias=r(heads) * 0.3, initial_state=r(batch, heads, hdim, dstate))
    params = ("A", "D", "dt_bias", "initial_state")
    pdt = F64 if dtype == F64 else torch.float32
    return {k: v.to(pdt if k in params else dtype) for k, v in args.items()}


@pytest.mark.parametrize("chunk", [1, 3, 8, 19, 64])
@pytest.mark.parametrize("d_hdim", [False, True], ids=["D_h", "D_hp"])
@pytest.mark.parametrize("limit", [None, (0.05, 0.8)], ids=["nolimit", "limit"])
def test_reference_chunked_equals_loop_float64(chunk, d_hdim, limit):
    a = ssd_inputs(d_hdim=d_hdim, seed=chunk)
    out, state = ref.ssd_scan(**a, chunk_size=chunk, dt_softplus=True, dt_limit=limit)
    out_l, state_l = ref.ssd_scan_loop(**a, dt_softplus=True, dt_limit=limit)
    assert out.dtype == F64 and state.dtype == F64
    assert rel_err(out, out_l) < 1e-12 and rel_err(state, state_l) < 1e-12


def test_reference_options_absent_and_groups_equal_heads():
    a = ssd_inputs(groups=6, seed=3)
    for drop in ({}, {"D": None, "z": None, "dt_bias": None, "initial_state": None}):
        kw = {**a, **drop}
        out, state = ref.ssd_scan(**kw, chunk_size=4)
        out_l, state_l = ref.ssd_scan_loop(**kw)
        assert rel_err(out, out_l) < 1e-12 and rel_err(state, state_l) < 1e-12


def test_reference_splits_compose_and_state_update_is_one_step():
    a = ssd_inputs(seed=5)
    full, final = ref.ssd_scan(**a, chunk_size=4, dt_softplus=True)
    cut = 7
    first = {k: (v[:, :cut] if k in ("x", "dt", "B", "C", "z") else v) for k, v in a.items()}
    rest = {k: (v[:, cut:] if k in ("x", "dt", "B", "C", "z") else v) for k, v in a.items()}
    o1, s1 = ref.ssd_scan(**first, chunk_size=4, dt_softplus=True)
    o2, s2 = ref.ssd_scan(**{**rest, "initial_state": s1}, chunk_size=4, dt_softplus=True)
    assert rel_err(torch.cat([o1, o2], 1), full) < 1e-12 and rel_err(s2, final) < 1e-12
    step = {k: (v[:, 0] if k in ("x", "dt", "B", "C", "z") else v) for k, v in a.items()}
    init = step.pop("initial_state")
    y, s = ref.ssd_state_update(init, **step, dt_softplus=True)
    yl, sl = ref.ssd_scan_loop(**{k: (v[:, :1] if k in ("x", "dt", "B", "C", "z") else v)
                                  for k, v in a.items()}, dt_softplus=True)
    assert rel_err(y, yl[:, 0]) < 1e-14 and rel_err(s, sl) < 1e-14


@pytest.mark.parametrize("dtype, tol", [(torch.float32, 1e-5), (torch.bfloat16, 2e-2)])
def test_ops_match_float64_reference(dtype, tol):
    a64 = ssd_inputs(length=40, seed=7)
    a = ssd_inputs(length=40, seed=7, dtype=dtype)
    want, want_state = ref.ssd_scan_loop(**a64, dt_softplus=True)
    kw = {k: a[k] for k in ("D", "z", "dt_bias")}
    out, state = torch.ops.mamba_export.ssd_scan(a["x"], a["dt"], a["A"], a["B"], a["C"], 16,
                                                 initial_state=a["initial_state"], dt_softplus=True, **kw)
    assert out.dtype == dtype and state.dtype == torch.float32
    assert rel_err(out, want) < tol and rel_err(state, want_state) < tol
    # mamba_ssm-compatible wrappers
    out2, state2 = mamba_chunk_scan_combined(a["x"], a["dt"], a["A"], a["B"], a["C"], 16,
                                             initial_states=a["initial_state"], dt_softplus=True,
                                             return_final_states=True, **kw)
    assert torch.equal(out2, out) and torch.equal(state2, state)
    st = a["initial_state"].clone()
    y = mamba2_state_update(st, a["x"][:, 0], a["dt"][:, 0], a["A"], a["B"][:, 0], a["C"][:, 0],
                            dt_softplus=True, **{k: (v[:, 0] if k == "z" else v) for k, v in kw.items()})
    yl, sl = ref.ssd_scan_loop(**{k: (v[:, :1] if k in ("x", "dt", "B", "C", "z") else v)
                                  for k, v in a64.items()}, dt_softplus=True)
    assert rel_err(y, yl[:, 0]) < tol and rel_err(st, sl) < tol


def test_op_gradients_float64():
    a = ssd_inputs(batch=1, length=5, heads=2, hdim=2, groups=1, dstate=2, seed=9, d_hdim=True)
    names = ("x", "dt", "A", "B", "C", "D", "z", "dt_bias", "initial_state")
    leaves = tuple(a[n].clone().requires_grad_(True) for n in names)

    def f(x, dt, A, B, C, D, z, dt_bias, h0):
        return torch.ops.mamba_export.ssd_scan(x, dt, A, B, C, 4, D, z, dt_bias, h0, True, [0.01, 5.0])

    assert torch.autograd.gradcheck(f, leaves)


@pytest.mark.parametrize("edit, match", [
    (dict(x=torch.zeros(2, 19, 6)), r"x must be \[batch, L, nheads, headdim\]"),
    (dict(dt=torch.zeros(2, 19, 5)), r"dt must be \[2, 19, 6\]"),
    (dict(A=torch.zeros(6, 4)), r"A must be \[nheads=6\]"),
    (dict(B=torch.zeros(2, 19, 4, 5), C=torch.zeros(2, 19, 4, 5)), "4 groups, which must divide the 6 heads"),
    (dict(C=torch.zeros(2, 19, 3, 4)), "C must match B"),
    (dict(D=torch.zeros(5)), r"D must be \[6\] or \[6, 4\]"),
    (dict(initial_state=torch.zeros(2, 6, 4, 4)), r"initial_state must be \[2, 6, 4, 5\]"),
    (dict(chunk_size=0), "chunk_size must be a positive int"),
    (dict(dt_limit=[1.0, 0.5]), "dt_limit must be"),
])
def test_op_input_errors(edit, match):
    a = {**ssd_inputs(dtype=torch.float32), "chunk_size": 8, "dt_limit": None, **edit}
    with pytest.raises(ValueError, match=match):
        torch.ops.mamba_export.ssd_scan(a["x"], a["dt"], a["A"], a["B"], a["C"], a["chunk_size"], a["D"],
                                        a["z"], a["dt_bias"], a["initial_state"], True, a["dt_limit"])


# ----------------------------------------------------------------------------- transformers parity
def make_hf(seed=0, **kw):
    defaults = dict(vocab_size=101, hidden_size=32, num_heads=8, head_dim=8, n_groups=2, state_size=16,
                    num_hidden_layers=2, conv_kernel=4, expand=2, chunk_size=256,
                    eos_token_id=None, pad_token_id=None, bos_token_id=None)
    cfg = transformers.Mamba2Config(**{**defaults, **kw})
    torch.manual_seed(seed)
    model = transformers.Mamba2ForCausalLM(cfg).eval()
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():  # every parameter random, so a misplaced weight changes the logits
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=g)
            if name.endswith(("A_log", "dt_bias")):
                p.add_(0.3 * noise)
            elif name.endswith((".D", "conv1d.bias")):
                p.copy_(0.5 * noise)
            elif "norm" in name:
                p.copy_(1.0 + 0.3 * noise)
            elif name.endswith(".bias"):
                p.copy_(0.1 * noise)
            elif "embeddings" in name or "lm_head" in name:
                p.copy_(0.5 * noise)
    return model


# (hidden, heads, head_dim, groups, state, layers, conv, chunk, tied, conv_bias, bias, limit)
HF_CONFIGS = [
    dict(hidden_size=32, num_heads=8, head_dim=8, n_groups=2, state_size=16),
    dict(hidden_size=20, num_heads=5, head_dim=8, n_groups=5, state_size=7, num_hidden_layers=3,
         conv_kernel=2, chunk_size=4, tie_word_embeddings=True, vocab_size=93),
    dict(hidden_size=24, num_heads=3, head_dim=16, n_groups=1, state_size=32, conv_kernel=3,
         chunk_size=5, use_conv_bias=False, use_bias=True, layer_norm_epsilon=1e-6, vocab_size=77),
]


def _hid(c):
    return f"h{c['hidden_size']}-H{c['num_heads']}-G{c['n_groups']}-N{c['state_size']}-T{c.get('chunk_size', 256)}"


@pytest.mark.parametrize("hcfg", HF_CONFIGS, ids=_hid)
def test_transformers_mamba2_logits_and_greedy(hcfg, tmp_path):
    hf = make_hf(seed=len(_hid(hcfg)), **hcfg)
    hf.save_pretrained(tmp_path)
    model = MambaLM.from_pretrained(tmp_path)
    cfg = model.config
    assert cfg.layer == "Mamba2" and cfg.nheads == hcfg["num_heads"] and cfg.ngroups == hcfg["n_groups"]
    assert (model.lm_head.weight is model.backbone.embedding.weight) == hcfg.get("tie_word_embeddings", False)
    vocab = hf.config.vocab_size
    ids = torch.randint(0, vocab, (2, 13), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        want = hf(ids).logits
        got = model(ids)
    assert got.shape == want.shape and rel_err(got, want) <= TOL
    expected = hf.generate(ids, max_new_tokens=8, do_sample=False, eos_token_id=None, pad_token_id=0)
    assert torch.equal(model.generate(ids, max_new_tokens=8, eos_token_id=None), expected)


def test_transformers_time_step_limit_and_from_transformers():
    hf = make_hf(seed=4, time_step_limit=(0.05, 0.3), chunk_size=4)
    model = MambaLM.from_transformers(hf)
    assert model.config.dt_limit == (0.05, 0.3)
    assert model.backbone.layers[0].mixer.A_log.data_ptr() == hf.backbone.layers[0].mixer.A_log.data_ptr()
    ids = torch.randint(0, 101, (2, 11), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        assert rel_err(model(ids), hf(ids).logits) <= TOL
    # (transformers' decode step skips the clamp, as mamba_ssm's does; ours clamps on both paths
    # so that prefill + decode equals forward: greedy generation is not compared here.)


# ----------------------------------------------------------------------------- state semantics
LM_CONFIGS = [
    dict(d_model=32, n_layer=2, vocab_size=61, d_state=8, headdim=8, ngroups=2, chunk_size=4),
    dict(d_model=24, n_layer=2, vocab_size=50, d_state=5, headdim=12, d_conv=3, chunk_size=3,
         D_has_hdim=True, d_ssm=24, norm_before_gate=True, dt_limit=(0.01, 0.5), tie_embeddings=False),
    dict(d_model=16, n_layer=2, vocab_size=40, d_state=4, headdim=4, ngroups=4, d_conv=2, chunk_size=256,
         rmsnorm=False, bias=True, conv_bias=False, residual_in_fp32=False),
]


def _lm(kw, dtype=torch.float32):
    torch.manual_seed(0)
    model = MambaLM(MambaConfig(layer="Mamba2", **kw), dtype=dtype).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return model


@pytest.mark.parametrize("kw", LM_CONFIGS, ids=["groups", "mlp-Dhp-gate-limit", "no-rmsnorm"])
def test_prefill_chunks_and_decode_equal_forward(kw):
    model = _lm(kw)
    ids = torch.randint(0, kw["vocab_size"], (3, 14))
    with torch.no_grad():
        full = model(ids)
        logits, state = model.prefill(ids, model.new_state(3))
        assert rel_err(logits, full[:, -1]) < TOL
        chunked = model.new_state(3)
        for a, b in ((0, 1), (1, 6), (6, 14)):
            part, chunked = model.prefill(ids[:, a:b], chunked)
        assert rel_err(part, logits) < TOL
        assert rel_err(chunked.ssm, state.ssm) < TOL and rel_err(chunked.conv, state.conv) < TOL
        logits, state = model.prefill(ids[:, :5], model.new_state(3))
        for t in range(5, 14):
            logits, state = model.step(ids[:, t], state)
            assert rel_err(logits, full[:, t]) < TOL, t
        before = state.conv.clone()
        want, want_state = model.step(ids[:, 0], state)
        got, same = model.step(ids[:, 0], state, inplace=True)
        assert same.ssm is state.ssm and not torch.equal(state.conv, before)
        assert torch.equal(got, want) and torch.equal(state.ssm, want_state.ssm)


def test_state_layout_float64_exactness_and_training():
    kw = LM_CONFIGS[0]
    model = _lm(kw)
    cfg = model.config
    state = model.new_state(4)
    assert state.conv.shape == (2, 4, cfg.resolved_d_ssm + 2 * cfg.ngroups * cfg.d_state, cfg.d_conv - 1)
    assert state.ssm.shape == (2, 4, cfg.nheads, cfg.headdim, cfg.d_state)
    assert state.ssm.dtype == torch.float32
    with pytest.raises(ValueError, match="ssm state must be"):
        model.step(torch.zeros(4, dtype=torch.long), me.MambaState(state.conv, state.ssm[..., :-1]))
    with pytest.raises(ValueError, match="conv state must be"):
        model.step(torch.zeros(4, dtype=torch.long), me.MambaState(state.conv[:, :, 1:], state.ssm))
    m64 = MambaLM(cfg, dtype=F64, initialize=False)
    m64.load_state_dict({k: v.double() for k, v in model.state_dict().items()})
    assert m64.new_state(1).ssm.dtype == F64
    ids = torch.randint(0, kw["vocab_size"], (2, 9))
    with torch.no_grad():
        assert rel_err(model(ids), m64(ids)) < 1e-5
    bf16 = MambaLM(cfg, dtype=torch.bfloat16, initialize=False)
    bf16.load_state_dict(model.state_dict())
    with torch.no_grad():
        assert rel_err(bf16(ids), model(ids)) < 5e-2
    model.train()
    loss = model(ids).float().logsumexp(-1).mean()
    loss.backward()
    mixer = model.backbone.layers[0].mixer
    for p in (mixer.A_log, mixer.dt_bias, mixer.D, mixer.in_proj.weight, mixer.norm.weight):
        assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0


def test_mamba_ssm_initialisation():
    cfg = MambaConfig(layer="Mamba2", d_model=64, n_layer=4, vocab_size=100, d_state=16, headdim=16,
                      dt_min=0.002, dt_max=0.05, A_init_range=(2.0, 8.0))
    mixer = MambaLM(cfg).backbone.layers[0].mixer
    A = torch.exp(mixer.A_log)
    assert A.shape == (8,) and A.min() >= 2.0 and A.max() <= 8.0
    dt = torch.nn.functional.softplus(mixer.dt_bias)
    assert dt.min() >= 0.002 * 0.999 and dt.max() <= 0.05 * 1.001
    assert torch.equal(mixer.D, torch.ones(8)) and torch.equal(mixer.norm.weight, torch.ones(128))
    assert mixer.in_proj.weight.shape == (2 * 128 + 2 * 16 + 8, 64)


# ----------------------------------------------------------------------------- checkpoints
def write_mamba_ssm_dir(hf, directory, pad_multiple=16, fmt="safetensors"):
    c = hf.config
    padded = -(-c.vocab_size // pad_multiple) * pad_multiple
    sd = {k.replace("backbone.embeddings.", "backbone.embedding."): v.detach().clone()
          for k, v in hf.state_dict().items()}
    for k in ("backbone.embedding.weight", "lm_head.weight"):
        sd[k] = torch.cat([sd[k], torch.zeros(padded - c.vocab_size, c.hidden_size)]).contiguous()
    if c.tie_word_embeddings:
        sd["lm_head.weight"] = sd["backbone.embedding.weight"].clone()
    cfg = {
        "d_model": c.hidden_size, "d_intermediate": 0, "n_layer": c.num_hidden_layers,
        "vocab_size": c.vocab_size,
        "ssm_cfg": {"layer": "Mamba2", "d_state": c.state_size, "d_conv": c.conv_kernel,
                    "expand": c.expand, "headdim": c.head_dim, "ngroups": c.n_groups,
                    "chunk_size": c.chunk_size, "conv_bias": c.use_conv_bias, "bias": c.use_bias},
        "attn_layer_idx": [], "attn_cfg": {}, "rms_norm": True, "residual_in_fp32": True,
        "fused_add_norm": True, "pad_vocab_size_multiple": pad_multiple,
        "tie_embeddings": bool(c.tie_word_embeddings),
    }
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "config.json").write_text(json.dumps(cfg))
    if fmt == "safetensors":
        save_file(sd, str(directory / "model.safetensors"))
    else:
        torch.save(sd, directory / "pytorch_model.bin")


@pytest.mark.parametrize("fmt", ["safetensors", "bin"])
@pytest.mark.parametrize("tied", [True, False], ids=["tied", "untied"])
def test_mamba_ssm_mamba2_checkpoint(tmp_path, tied, fmt):
    hf = make_hf(seed=6, vocab_size=90, chunk_size=8, tie_word_embeddings=tied)
    write_mamba_ssm_dir(hf, tmp_path, fmt=fmt)
    model = MambaLM.from_pretrained(tmp_path)
    assert model.config.padded_vocab_size == 96 and model.config.vocab_size == 90
    assert (model.lm_head.weight is model.backbone.embedding.weight) == tied
    ids = torch.randint(0, 90, (2, 10))
    with torch.no_grad():
        assert rel_err(model(ids)[..., :90], hf(ids).logits) <= TOL


def test_mamba_ssm_default_ssm_cfg_is_mamba2_defaults():
    cfg = MambaConfig.from_mamba_ssm({"d_model": 768, "d_intermediate": 0, "n_layer": 24, "vocab_size": 50277,
                                      "ssm_cfg": {"layer": "Mamba2"}, "attn_layer_idx": [], "attn_cfg": {},
                                      "rms_norm": True, "residual_in_fp32": True, "fused_add_norm": True,
                                      "pad_vocab_size_multiple": 16, "tie_embeddings": True})
    assert cfg == MambaConfig.preset("mamba2-130m")  # state-spaces/mamba2-130m's config.json
    back = MambaConfig.from_mamba_ssm(json.loads(json.dumps(cfg.to_mamba_ssm())))
    assert back == cfg


# state-spaces/mamba2-*: (d_model, n_layer); vocab 50277 padded to 50288 (multiple 16).
PUBLISHED = {"mamba2-130m": (768, 24), "mamba2-370m": (1024, 48), "mamba2-780m": (1536, 48),
             "mamba2-1.3b": (2048, 48), "mamba2-2.7b": (2560, 64)}


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_mamba2_presets_have_published_shapes(name):
    d_model, n_layer = PUBLISHED[name]
    cfg = MambaConfig.preset(name)
    assert (cfg.d_model, cfg.n_layer, cfg.d_state, cfg.headdim, cfg.ngroups) == (d_model, n_layer, 128, 64, 1)
    assert cfg.padded_vocab_size == 50288 and cfg.nheads == 2 * d_model // 64
    with torch.device("meta"):
        mixer = MambaLM(MambaConfig.preset(name, n_layer=1), initialize=False).backbone.layers[0].mixer
    # mamba_ssm's Mamba2 shapes: in_proj 2*d_inner + 2*N + H, conv over d_inner + 2*N channels.
    assert mixer.in_proj.weight.shape == (4 * d_model + 256 + cfg.nheads, d_model)
    assert mixer.conv1d.weight.shape == (2 * d_model + 256, 1, 4)
    assert mixer.A_log.shape == mixer.D.shape == mixer.dt_bias.shape == (cfg.nheads,)


@pytest.mark.parametrize("tied", [True, False], ids=["tied", "untied"])
def test_save_pretrained_loads_in_transformers_and_back(tmp_path, tied):
    model = _lm(dict(LM_CONFIGS[0], tie_embeddings=tied, vocab_size=61, eos_token_id=3))
    model.save_pretrained(tmp_path)
    hf_cfg = json.loads((tmp_path / "config.json").read_text())
    assert hf_cfg["model_type"] == "mamba2" and hf_cfg["vocab_size"] == 64
    assert ("lm_head.weight" in load_file(str(tmp_path / "model.safetensors"))) == (not tied)
    hf = transformers.Mamba2ForCausalLM.from_pretrained(tmp_path).eval()
    ids = torch.randint(0, 61, (2, 9))
    with torch.no_grad():
        ours = model(ids)
        assert rel_err(hf(ids).logits, ours) <= TOL
        again = MambaLM.from_pretrained(tmp_path)
        assert again.config == model.config
        assert torch.equal(again(ids), ours)


def test_save_pretrained_mamba_ssm_format_for_knobs_transformers_lacks(tmp_path):
    model = _lm(LM_CONFIGS[1])
    with pytest.raises(ConfigError, match="transformers' Mamba2 cannot express d_ssm < d_inner.*D_has_hdim"):
        model.save_pretrained(tmp_path / "hf")
    assert not (tmp_path / "hf").exists()
    model.save_pretrained(tmp_path / "ssm", format="mamba_ssm")
    assert json.loads((tmp_path / "ssm" / "config.json").read_text())["ssm_cfg"]["layer"] == "Mamba2"
    again = MambaLM.from_pretrained(tmp_path / "ssm")
    assert again.config == model.config
    ids = torch.randint(0, 50, (2, 7))
    with torch.no_grad():
        assert torch.equal(again(ids), model(ids))


# ----------------------------------------------------------------------------- config errors
@pytest.mark.parametrize("kw, match", [
    (dict(d_model=24, headdim=7), r"d_inner \(48\) must be a multiple of headdim \(7\)"),
    (dict(d_model=24, d_ssm=20, headdim=8), r"d_ssm \(20\) must be a multiple of headdim \(8\)"),
    (dict(d_model=24, d_ssm=64), r"d_ssm must be None or an integer in \[1, d_inner=48\]"),
    (dict(d_model=24, headdim=8, ngroups=4), r"heads \(6 = d_inner / headdim\) must be a multiple of ngroups \(4\)"),
    (dict(d_model=16, headdim=8, learnable_init_states=True), "learnable_init_states=True is not supported"),
    (dict(d_model=16, headdim=8, dt_limit=(0.5, 0.1)), "dt_limit must be"),
    (dict(d_model=16, headdim=8, A_init_range=(0, 4)), "A_init_range must be"),
    (dict(d_model=16, headdim=8, chunk_size=0), "chunk_size must be a positive integer"),
])
def test_bad_mamba2_configs(kw, match):
    with pytest.raises(ConfigError, match=match):
        MambaConfig(layer="Mamba2", n_layer=1, vocab_size=10, **kw)


def test_bad_mamba2_checkpoint_configs(tmp_path):
    hf = make_hf(seed=8)
    hf.save_pretrained(tmp_path)
    cfg = json.loads((tmp_path / "config.json").read_text())
    for patch, match in (({"num_heads": 6}, r"model_type='mamba2' \(Mamba-2\): num_heads\*head_dim \(6\*8=48\) "
                                            r"must equal expand\*hidden_size \(2\*32=64\)"),
                         ({"hidden_act": "gelu"}, "hidden_act='gelu' is not supported"),
                         ({"rms_norm": False}, "rms_norm=False is not supported"),
                         ({"time_step_limit": [0.0]}, "time_step_limit must be a pair")):
        (tmp_path / "config.json").write_text(json.dumps({**cfg, **patch}))
        with pytest.raises(ConfigError, match=match):
            MambaLM.from_pretrained(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({**cfg, "state_size": 8}))
    with pytest.raises(CheckpointError, match=r"shape mismatches: backbone.layers.0.mixer.conv1d.bias: checkpoint \[128\] vs model \[96\]"):
        MambaLM.from_pretrained(tmp_path)
    with pytest.raises(ConfigError, match="unknown ssm_cfg keys for Mamba2: dt_rank"):
        MambaConfig.from_mamba_ssm({"d_model": 16, "n_layer": 1, "vocab_size": 10,
                                    "ssm_cfg": {"layer": "Mamba2", "dt_rank": 4}})


# ----------------------------------------------------------------------------- torch.export
def test_torch_export_prefill_and_decode_match_eager(tmp_path):
    from mamba_export.export.programs import export_program, load_program, save_program

    model = _lm(LM_CONFIGS[0])
    for graph in ("prefill", "decode"):
        program = export_program(model, graph)
        targets = {str(n.target) for n in program.graph.nodes if n.op == "call_function"}
        op = "mamba_export.ssd_scan" if graph == "prefill" else "mamba_export.ssd_state_update"
        assert any(op in t for t in targets), targets
        loaded = load_program(save_program(program, tmp_path / f"{graph}.pt2")).module()
        for batch, length in ((1, 1), (3, 11)):
            length = 1 if graph == "decode" else length
            ids = torch.randint(0, 61, (batch, length))
            state = model.new_state(batch)
            state = me.MambaState(torch.randn_like(state.conv), torch.randn_like(state.ssm) * 0.3)
            with torch.no_grad():
                if graph == "prefill":
                    want, want_state = model.prefill(ids, state)
                else:
                    want, want_state = model.step(ids[:, 0], state)
                got = loaded(ids, state.conv, state.ssm)
            assert rel_err(got[0], want) < TOL
            assert rel_err(got[1], want_state.conv) < TOL and rel_err(got[2], want_state.ssm) < TOL

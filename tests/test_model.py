"""The Mamba-1 LM: state semantics (chunked prefill, prefill + decode = forward), init, and
clear errors for bad ids and states."""

import math

import pytest
import torch
from _util import rel_err

import mamba_export as me

CONFIGS = [
    dict(d_model=33, n_layer=3, vocab_size=101, d_state=5, d_conv=4, expand=2),
    dict(d_model=16, n_layer=2, vocab_size=67, d_state=1, d_conv=2, expand=1, dt_rank=3,
         tie_embeddings=False, conv_bias=False, bias=True, residual_in_fp32=False),
    dict(d_model=24, n_layer=2, vocab_size=50, d_state=16, d_conv=3),
]


def _model(kw, dtype=torch.float32):
    return me.MambaLM(me.MambaConfig(**kw), dtype=dtype).eval()


@pytest.mark.parametrize("kw", CONFIGS)
def test_prefill_in_chunks_equals_one_prefill(kw):
    model = _model(kw)
    ids = torch.randint(0, kw["vocab_size"], (3, 17))
    with torch.no_grad():
        logits, state = model.prefill(ids, model.new_state(3))
        chunked = model.new_state(3)
        for start, stop in ((0, 1), (1, 3), (3, 10), (10, 17)):
            part, chunked = model.prefill(ids[:, start:stop], chunked)
    assert rel_err(part, logits) < 1e-5
    assert rel_err(chunked.ssm, state.ssm) < 1e-5
    assert rel_err(chunked.conv, state.conv) < 1e-5  # later layers see rounding of earlier ones


@pytest.mark.parametrize("kw", CONFIGS)
def test_prefill_then_steps_equal_forward_at_every_position(kw):
    model = _model(kw)
    ids = torch.randint(0, kw["vocab_size"], (2, 12))
    prompt = 5
    with torch.no_grad():
        full = model(ids)
        logits, state = model.prefill(ids[:, :prompt], model.new_state(2))
        assert rel_err(logits, full[:, prompt - 1]) < 1e-5
        for t in range(prompt, ids.shape[1]):
            logits, state = model.step(ids[:, t], state)
            assert rel_err(logits, full[:, t]) < 1e-5, t


def test_inplace_step_updates_state_and_matches_functional_step():
    model = _model(CONFIGS[0])
    ids = torch.randint(0, CONFIGS[0]["vocab_size"], (2, 5))
    with torch.no_grad():
        _, state = model.prefill(ids, model.new_state(2))
        want_logits, want_state = model.step(ids[:, 0], state)
        conv_before = state.conv.clone()
        logits, same = model.step(ids[:, 0], state, inplace=True)
    assert same.conv is state.conv and same.ssm is state.ssm
    assert not torch.equal(state.conv, conv_before)
    assert torch.equal(logits, want_logits)
    assert torch.equal(state.conv, want_state.conv) and torch.equal(state.ssm, want_state.ssm)


def test_state_layout_and_dtypes():
    cfg = me.MambaConfig(**CONFIGS[0])
    model = me.MambaLM(cfg, dtype=torch.bfloat16)
    state = model.new_state(4)
    assert state.conv.shape == (cfg.n_layer, 4, cfg.d_inner, cfg.d_conv - 1)
    assert state.ssm.shape == (cfg.n_layer, 4, cfg.d_inner, cfg.d_state)
    assert state.conv.dtype == torch.bfloat16 and state.ssm.dtype == torch.float32
    logits, new = model.prefill(torch.randint(0, 101, (4, 3)), state)
    assert logits.shape == (4, cfg.padded_vocab_size)
    assert new.conv.dtype == torch.bfloat16 and new.ssm.dtype == torch.float32


def test_bf16_model_tracks_fp32_model():
    kw = CONFIGS[0]
    fp32 = _model(kw)
    bf16 = me.MambaLM(fp32.config, dtype=torch.bfloat16, initialize=False)
    bf16.load_state_dict(fp32.state_dict())
    ids = torch.randint(0, kw["vocab_size"], (2, 9))
    with torch.no_grad():
        assert rel_err(bf16(ids), fp32(ids)) < 5e-2


def test_mamba_ssm_initialisation():
    cfg = me.MambaConfig(d_model=64, n_layer=4, vocab_size=100, d_state=8, dt_min=0.002, dt_max=0.05)
    model = me.MambaLM(cfg)
    mixer = model.backbone.layers[0].mixer
    assert torch.equal(mixer.A_log, torch.log(torch.arange(1, 9.0)).repeat(cfg.d_inner, 1))
    assert torch.equal(mixer.D, torch.ones(cfg.d_inner))
    dt = torch.nn.functional.softplus(mixer.dt_proj.bias)
    assert dt.min() >= 0.002 * 0.999 and dt.max() <= 0.05 * 1.001
    std = cfg.resolved_dt_rank ** -0.5
    assert mixer.dt_proj.weight.abs().max() <= std
    assert model.lm_head.weight is model.backbone.embedding.weight
    assert abs(model.backbone.embedding.weight.std().item() - 0.02) < 0.002
    # out_proj: Kaiming-uniform bound 1/sqrt(fan_in), rescaled by 1/sqrt(n_layer)
    bound = 1 / math.sqrt(cfg.d_inner) / math.sqrt(cfg.n_layer)
    assert mixer.out_proj.weight.abs().max() <= bound


def test_padded_vocab_is_masked_in_generation():
    model = _model(dict(d_model=16, n_layer=1, vocab_size=13, d_state=2))
    assert model.config.padded_vocab_size == 16
    with torch.no_grad():
        model.lm_head.weight[13:] = 100.0  # padding rows would win every argmax
    out = model.generate(torch.randint(0, 13, (2, 3)), max_new_tokens=5)
    assert out[:, 3:].max() < 13


def test_bad_ids_and_states_are_rejected():
    model = _model(CONFIGS[0])
    state = model.new_state(2)
    with pytest.raises(TypeError, match="int64 or int32"):
        model.prefill(torch.zeros(2, 3), state)
    with pytest.raises(ValueError, match=r"\[batch, length\]"):
        model.prefill(torch.zeros(2, 3, 1, dtype=torch.long), state)
    with pytest.raises(ValueError, match=r"\[batch\]"):
        model.step(torch.zeros(2, 1, dtype=torch.long), state)
    with pytest.raises(ValueError, match="conv state must be"):
        model.prefill(torch.zeros(3, 4, dtype=torch.long), state)
    with pytest.raises(TypeError, match="ssm state must be torch.float32"):
        model.step(torch.zeros(2, dtype=torch.long), me.MambaState(state.conv, state.ssm.double()))
    with pytest.raises(TypeError, match="conv state must be in the model dtype"):
        model.step(torch.zeros(2, dtype=torch.long), me.MambaState(state.conv.half(), state.ssm))
    with pytest.raises(ValueError, match="state must be on"):
        model.step(torch.zeros(2, dtype=torch.long), me.MambaState(state.conv, state.ssm.to("meta")))
    with pytest.raises(ValueError, match="is on meta"):
        model.step(torch.zeros(2, dtype=torch.long, device="meta"), state)
    with pytest.raises(ValueError, match="at least one token"):
        model.prefill(torch.zeros(2, 0, dtype=torch.long), state)
    with pytest.raises(TypeError, match="MambaState"):
        model.step(torch.zeros(2, dtype=torch.long), state.conv)

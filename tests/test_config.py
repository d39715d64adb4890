"""MambaConfig: presets, derived sizes, validation and the config.json dialects
(transformers' MambaConfig, mamba_ssm's MambaConfig), checked against transformers itself."""

import dataclasses
import json
import math

import pytest

from mamba_export import ConfigError, MambaConfig
from mamba_export.config import PRESETS

transformers = pytest.importorskip("transformers")

# Published shapes of state-spaces/mamba-* (config.json of each checkpoint).
PUBLISHED = {
    "mamba-130m": (768, 24),
    "mamba-370m": (1024, 48),
    "mamba-790m": (1536, 48),
    "mamba-1.4b": (2048, 48),
    "mamba-2.8b": (2560, 64),
}


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_presets_have_published_shapes(name):
    d_model, n_layer = PUBLISHED[name]
    cfg = MambaConfig.preset(name)
    assert (cfg.d_model, cfg.n_layer) == (d_model, n_layer)
    assert cfg.vocab_size == 50277 and cfg.pad_vocab_size_multiple == 8
    assert cfg.padded_vocab_size == 50280
    assert (cfg.d_state, cfg.d_conv, cfg.expand, cfg.layer) == (16, 4, 2, "Mamba1")
    assert cfg.d_inner == 2 * d_model
    assert cfg.resolved_dt_rank == math.ceil(d_model / 16)
    assert cfg.tie_embeddings and cfg.rms_norm and cfg.residual_in_fp32


def test_preset_130m_matches_transformers_mamba_130m_hf_shapes():
    # state-spaces/mamba-130m-hf: hidden 768, intermediate 1536, dt rank 48, vocab 50280.
    hf = MambaConfig.preset("mamba-130m").to_hf()
    assert hf["hidden_size"] == 768 and hf["intermediate_size"] == 1536
    assert hf["time_step_rank"] == 48 and hf["vocab_size"] == 50280
    assert hf["num_hidden_layers"] == 24 and hf["state_size"] == 16 and hf["conv_kernel"] == 4


def test_preset_overrides_and_unknown_preset():
    cfg = MambaConfig.preset("mamba-130m", n_layer=2, d_state=4)
    assert (cfg.d_model, cfg.n_layer, cfg.d_state) == (768, 2, 4)
    with pytest.raises(ConfigError, match="unknown preset 'mamba-9b'.*mamba-130m"):
        MambaConfig.preset("mamba-9b")
    assert "mamba2-130m" in PRESETS and PRESETS["mamba2-130m"]["layer"] == "Mamba2"


@pytest.mark.parametrize("d_model, expected", [(1, 1), (15, 1), (16, 1), (17, 2), (33, 3), (768, 48), (2560, 160)])
def test_dt_rank_auto_is_ceil_d_model_over_16(d_model, expected):
    cfg = MambaConfig(d_model=d_model, n_layer=1, vocab_size=10)
    assert cfg.dt_rank == "auto"
    assert cfg.resolved_dt_rank == expected
    assert MambaConfig(d_model=d_model, n_layer=1, vocab_size=10, dt_rank=7).resolved_dt_rank == 7


@pytest.mark.parametrize("d_model, expand", [(33, 1), (33, 2), (768, 2), (17, 3)])
def test_d_inner_is_expand_times_d_model(d_model, expand):
    assert MambaConfig(d_model=d_model, n_layer=1, vocab_size=10, expand=expand).d_inner == expand * d_model


@pytest.mark.parametrize("vocab, mult, padded", [(50277, 8, 50280), (50280, 8, 50280), (251, 8, 256),
                                                 (251, 1, 251), (1, 8, 8), (100, 16, 112)])
def test_padded_vocab_size(vocab, mult, padded):
    cfg = MambaConfig(d_model=8, n_layer=1, vocab_size=vocab, pad_vocab_size_multiple=mult)
    assert cfg.padded_vocab_size == padded


# ----------------------------------------------------------------------------- validation
@pytest.mark.parametrize("kwargs, match", [
    (dict(layer="Mamba3"), "unknown layer 'Mamba3'"),
    (dict(d_model=0), "d_model must be a positive integer"),
    (dict(n_layer=-1), "n_layer must be a positive integer"),
    (dict(vocab_size=2.5), "vocab_size must be a positive integer"),
    (dict(d_state=True), "d_state must be a positive integer"),
    (dict(d_conv=5), "d_conv must be 2, 3 or 4"),
    (dict(d_conv=1), "d_conv must be 2, 3 or 4"),
    (dict(dt_rank="big"), "dt_rank must be 'auto' or a positive integer"),
    (dict(dt_rank=0), "dt_rank must be 'auto' or a positive integer"),
    (dict(dt_init="normal"), "dt_init must be 'random' or 'constant'"),
    (dict(dt_min=0.2, dt_max=0.1), "need 0 < dt_min <= dt_max"),
    (dict(dt_min=0.0), "need 0 < dt_min <= dt_max"),
    (dict(rms_norm=False), "rms_norm=False"),
    (dict(layer="Mamba2", d_model=48, headdim=64), r"d_inner \(96\) must be a multiple of headdim \(64\)"),
])
def test_invalid_configs_raise(kwargs, match):
    base = dict(d_model=16, n_layer=2, vocab_size=100)
    with pytest.raises(ConfigError, match=match):
        MambaConfig(**{**base, **kwargs})


def test_config_error_is_a_value_error():
    assert issubclass(ConfigError, ValueError)


# ----------------------------------------------------------------------------- own dict
def test_to_dict_from_dict_round_trip_and_unknown_keys():
    cfg = MambaConfig(d_model=33, n_layer=3, vocab_size=251, d_state=5, d_conv=3, conv_bias=False,
                      tie_embeddings=False, norm_epsilon=1e-6, eos_token_id=7, dt_rank=4)
    data = cfg.to_dict()
    assert json.loads(json.dumps(data)) == data  # JSON-serialisable
    assert MambaConfig.from_dict(data) == cfg
    assert MambaConfig.from_any_dict(data) == cfg
    with pytest.raises(ConfigError, match="unknown MambaConfig keys: bogus, zzz"):
        MambaConfig.from_dict({**data, "zzz": 1, "bogus": 2})


# ----------------------------------------------------------------------------- transformers
def _hf_config(**kw):
    return transformers.MambaConfig(**kw).to_dict()


def test_from_hf_reads_transformers_config():
    hf = _hf_config(vocab_size=251, hidden_size=33, state_size=5, num_hidden_layers=3, conv_kernel=3,
                    expand=2, use_conv_bias=False, use_bias=True, tie_word_embeddings=False,
                    layer_norm_epsilon=1e-6, time_step_rank=6, time_step_min=0.002, time_step_max=0.05,
                    residual_in_fp32=False, eos_token_id=11)
    cfg = MambaConfig.from_hf(hf)
    assert (cfg.d_model, cfg.n_layer, cfg.vocab_size, cfg.padded_vocab_size) == (33, 3, 251, 251)
    assert (cfg.d_state, cfg.d_conv, cfg.expand, cfg.d_inner) == (5, 3, 2, 66)
    assert cfg.d_inner == hf["intermediate_size"]
    assert cfg.resolved_dt_rank == 6
    assert (cfg.conv_bias, cfg.bias, cfg.tie_embeddings, cfg.residual_in_fp32) == (False, True, False, False)
    assert cfg.norm_epsilon == 1e-6 and (cfg.dt_min, cfg.dt_max) == (0.002, 0.05)
    assert cfg.eos_token_id == 11


def test_from_hf_auto_dt_rank_matches_transformers():
    hf = _hf_config(vocab_size=100, hidden_size=47, num_hidden_layers=2)  # time_step_rank="auto"
    assert MambaConfig.from_hf(hf).resolved_dt_rank == hf["time_step_rank"] == math.ceil(47 / 16)


@pytest.mark.parametrize("cfg", [
    MambaConfig(d_model=33, n_layer=3, vocab_size=251, d_state=5, d_conv=3, conv_bias=False,
                tie_embeddings=False, norm_epsilon=1e-6, eos_token_id=7),
    MambaConfig(d_model=17, n_layer=2, vocab_size=96, d_state=1, d_conv=2, expand=1, bias=True,
                dt_rank=3, dt_init="constant", residual_in_fp32=False),
    MambaConfig.preset("mamba-130m"),
], ids=["odd", "small", "130m"])
def test_hf_round_trip(cfg):
    hf = cfg.to_hf()
    # transformers accepts the dict and derives the same sizes.
    tcfg = transformers.MambaConfig(**{k: v for k, v in hf.items() if k != "model_type"})
    assert tcfg.intermediate_size == cfg.d_inner
    assert tcfg.time_step_rank == cfg.resolved_dt_rank
    assert tcfg.vocab_size == cfg.padded_vocab_size
    assert tcfg.tie_word_embeddings == cfg.tie_embeddings
    back = MambaConfig.from_hf(hf)
    # HF stores the vocabulary padded (the unpadded size rides along under "mamba_export")
    # and the dt rank resolved; everything else is kept.
    assert back.vocab_size == cfg.vocab_size and back.padded_vocab_size == cfg.padded_vocab_size
    assert back.resolved_dt_rank == cfg.resolved_dt_rank
    plain = dict(hf)
    plain.pop("mamba_export")
    assert MambaConfig.from_hf(plain).vocab_size == cfg.padded_vocab_size
    skip = {"dt_rank"}
    for f in dataclasses.fields(MambaConfig):
        if f.name not in skip:
            assert getattr(back, f.name) == getattr(cfg, f.name), f.name
    assert back.to_hf() == hf  # a fixed point after one trip
    # And through transformers' own serialisation.
    again = MambaConfig.from_hf(tcfg.to_dict())
    assert again.to_hf() == hf


def test_from_hf_contradictory_intermediate_size_raises():
    hf = _hf_config(vocab_size=100, hidden_size=32, num_hidden_layers=2, expand=2)
    hf["intermediate_size"] = 96
    with pytest.raises(ConfigError, match=r"intermediate_size=96 contradicts expand\*hidden_size=64"):
        MambaConfig.from_hf(hf)


@pytest.mark.parametrize("patch, match", [
    ({"model_type": "mamba2"}, "model_type='mamba2'.*Mamba-2"),
    ({"model_type": "llama"}, "model_type='llama'"),
    ({"hidden_act": "gelu"}, "hidden_act='gelu' is not supported"),
    ({"time_step_init_scheme": "weird"}, "unknown time_step_init_scheme 'weird'"),
])
def test_from_hf_rejects_unsupported(patch, match):
    hf = {**_hf_config(vocab_size=100, hidden_size=32, num_hidden_layers=2), **patch}
    with pytest.raises(ConfigError, match=match):
        MambaConfig.from_hf(hf)


# ----------------------------------------------------------------------------- mamba_ssm
def _ssm_dict(**over):
    d = {"d_model": 768, "n_layer": 24, "vocab_size": 50277, "ssm_cfg": {}, "rms_norm": True,
         "residual_in_fp32": True, "fused_add_norm": True, "pad_vocab_size_multiple": 8,
         "tie_embeddings": True}
    d.update(over)
    return d


def test_from_mamba_ssm_reads_state_spaces_130m_config():
    cfg = MambaConfig.from_mamba_ssm(_ssm_dict())  # the config.json of state-spaces/mamba-130m
    assert cfg == MambaConfig.preset("mamba-130m")
    assert cfg.padded_vocab_size == 50280


def test_from_mamba_ssm_reads_ssm_cfg():
    cfg = MambaConfig.from_mamba_ssm(_ssm_dict(
        d_model=33, n_layer=3, vocab_size=251, tie_embeddings=False,
        ssm_cfg={"layer": "Mamba1", "d_state": 5, "d_conv": 3, "expand": 1, "dt_rank": 4,
                 "conv_bias": False, "bias": True, "use_fast_path": True}))
    assert (cfg.d_state, cfg.d_conv, cfg.expand, cfg.resolved_dt_rank) == (5, 3, 1, 4)
    assert (cfg.conv_bias, cfg.bias, cfg.tie_embeddings, cfg.padded_vocab_size) == (False, True, False, 256)


@pytest.mark.parametrize("cfg", [
    MambaConfig.preset("mamba-2.8b"),
    MambaConfig(d_model=33, n_layer=3, vocab_size=251, d_state=5, d_conv=3, conv_bias=False,
                bias=True, tie_embeddings=False, dt_rank=5, dt_init="constant", dt_scale=2.0,
                dt_min=0.01, dt_max=0.2, dt_init_floor=1e-3, residual_in_fp32=False,
                pad_vocab_size_multiple=16, expand=3),
], ids=["2.8b", "odd"])
def test_mamba_ssm_round_trip(cfg):
    d = cfg.to_mamba_ssm()
    assert json.loads(json.dumps(d)) == d
    assert d["ssm_cfg"]["layer"] == "Mamba1" and d["fused_add_norm"] is True
    assert MambaConfig.from_mamba_ssm(d) == cfg
    assert MambaConfig.from_any_dict(d) == cfg
    assert MambaConfig.from_mamba_ssm(d).to_mamba_ssm() == d


@pytest.mark.parametrize("over, match", [
    ({"ssm_cfg": {"layer": "Mamba3"}}, r"ssm_cfg.layer='Mamba3' is unknown: expected one of Mamba1, Mamba2"),
    ({"ssm_cfg": {"layer": "Mamba2", "dt_rank": 4}}, "unknown ssm_cfg keys for Mamba2: dt_rank"),
    ({"ssm_cfg": {"d_state": 16, "foo": 1}}, "unknown ssm_cfg keys for Mamba1: foo"),
    ({"bogus_key": 3}, "unknown mamba_ssm config keys: bogus_key"),
    ({"d_intermediate": 128}, "d_intermediate > 0"),
    ({"attn_layer_idx": [1]}, "attn_layer_idx"),
    ({"rms_norm": False}, "rms_norm=False"),
    ({"ssm_cfg": {"d_conv": 7}}, "d_conv must be 2, 3 or 4"),
])
def test_from_mamba_ssm_rejects_bad_configs(over, match):
    with pytest.raises(ConfigError, match=match):
        MambaConfig.from_mamba_ssm(_ssm_dict(**over))


def test_from_mamba_ssm_ignores_zero_extras():
    cfg = MambaConfig.from_mamba_ssm(_ssm_dict(d_intermediate=0, attn_layer_idx=[], attn_cfg={}))
    assert cfg == MambaConfig.preset("mamba-130m")


# ----------------------------------------------------------------------------- files
def test_from_json_file_dispatches_on_dialect(tmp_path):
    ours = MambaConfig(d_model=17, n_layer=2, vocab_size=50, eos_token_id=3)
    cases = {
        "hf.json": (ours.to_hf(), MambaConfig.from_hf(ours.to_hf())),
        "ssm.json": (ours.to_mamba_ssm(), MambaConfig.from_mamba_ssm(ours.to_mamba_ssm())),
        "own.json": (ours.to_dict(), ours),
    }
    for name, (data, expected) in cases.items():
        (tmp_path / name).write_text(json.dumps(data))
        assert MambaConfig.from_json_file(tmp_path / name) == expected, name
    # Distinguish the dialects: the HF one keeps the eos id, mamba_ssm's has none.
    assert MambaConfig.from_json_file(tmp_path / "hf.json").eos_token_id == 3
    assert MambaConfig.from_json_file(tmp_path / "ssm.json").eos_token_id is None


def test_from_json_file_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="no config.json at"):
        MambaConfig.from_json_file(tmp_path / "config.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(ConfigError, match="is not valid JSON"):
        MambaConfig.from_json_file(bad)
    other = tmp_path / "other.json"
    other.write_text(json.dumps({"hidden": 3}))
    with pytest.raises(ConfigError, match="not a Mamba config"):
        MambaConfig.from_json_file(other)

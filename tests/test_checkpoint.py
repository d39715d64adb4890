"""Checkpoint loading and saving, checked against transformers' own MambaForCausalLM as the
independent reference: transformers directories, mamba_ssm directories built from the same
weights (safetensors and .bin, single and sharded, padded vocabulary), save_pretrained, and the
errors a broken directory gives."""

import json
import random
import zlib

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from _util import rel_err
from mamba_export import CheckpointError, ConfigError, MambaConfig, MambaLM
from mamba_export.checkpoint import load_state_dict

transformers = pytest.importorskip("transformers")
from safetensors.torch import load_file, save_file  # noqa: E402

TOL = 1e-5


# ----------------------------------------------------------------------------- helpers
def make_hf(seed=0, **kw):
    """A transformers MambaForCausalLM from a config, every parameter randomised (so a weight
    loaded into the wrong place, or not at all, changes the logits)."""
    defaults = dict(vocab_size=251, hidden_size=33, state_size=5, num_hidden_layers=2, conv_kernel=3,
                    expand=2, eos_token_id=None, pad_token_id=None, bos_token_id=None)
    cfg = transformers.MambaConfig(**{**defaults, **kw})
    torch.manual_seed(seed)
    model = transformers.MambaForCausalLM(cfg).eval()
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=g)
            if name.endswith("A_log"):
                p.add_(0.3 * noise)
            elif name.endswith(".D") or name.endswith("conv1d.bias"):
                p.copy_(0.5 * noise)
            elif "norm" in name:
                p.copy_(1.0 + 0.3 * noise)
            elif name.endswith("dt_proj.bias"):
                p.add_(0.2 * noise)
            elif name.endswith(".bias"):
                p.copy_(0.1 * noise)
            elif "embeddings" in name or "lm_head" in name:
                p.copy_(0.5 * noise)
    return model


def hf_logits(hf, ids):
    with torch.no_grad():
        return hf(ids).logits


def our_logits(model, ids):
    with torch.no_grad():
        return model(ids)


def random_ids(vocab, batch=2, length=9, seed=0):
    return torch.randint(0, vocab, (batch, length), generator=torch.Generator().manual_seed(seed))


def hf_state_dict(hf):
    """transformers' parameter names and tensors (the tied head included once, as embeddings)."""
    sd = {k: v.detach().clone().contiguous() for k, v in hf.state_dict().items()}
    if hf.config.tie_word_embeddings:
        sd.pop("lm_head.weight", None)
    return sd


def write_mamba_ssm_dir(hf, directory, fmt="safetensors", pad_multiple=8, shards=1, pad_fill=None):
    """A mamba_ssm-format directory (MambaLMHeadModel names, mamba_ssm config.json) holding the
    weights of the transformers model ``hf``, vocabulary padded to ``pad_multiple`` rows."""
    c = hf.config
    vocab = c.vocab_size
    padded = -(-vocab // pad_multiple) * pad_multiple
    tied = bool(c.tie_word_embeddings)
    sd = {}
    for k, v in hf.state_dict().items():
        sd[k.replace("backbone.embeddings.", "backbone.embedding.")] = v.detach().clone()
    for k in ("backbone.embedding.weight", "lm_head.weight"):
        extra = torch.zeros(padded - vocab, c.hidden_size) if pad_fill is None else pad_fill(padded - vocab)
        sd[k] = torch.cat([sd[k], extra]).contiguous()
    if tied:  # mamba_ssm's state_dict holds both names for the tied head
        sd["lm_head.weight"] = sd["backbone.embedding.weight"].clone()
    cfg = {
        "d_model": c.hidden_size, "n_layer": c.num_hidden_layers, "vocab_size": vocab,
        "ssm_cfg": {"layer": "Mamba1", "d_state": c.state_size, "d_conv": c.conv_kernel,
                    "expand": c.expand, "conv_bias": c.use_conv_bias, "bias": c.use_bias},
        "rms_norm": True, "residual_in_fp32": True, "fused_add_norm": True,
        "pad_vocab_size_multiple": pad_multiple, "tie_embeddings": tied,
    }
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "config.json").write_text(json.dumps(cfg))
    write_weights(sd, directory, fmt=fmt, shards=shards)
    return sd


def write_weights(sd, directory, fmt="safetensors", shards=1):
    names = sorted(sd)
    if shards == 1:
        if fmt == "safetensors":
            save_file(sd, str(directory / "model.safetensors"), metadata={"format": "pt"})
        else:
            torch.save(sd, directory / "pytorch_model.bin")
        return
    ext = "safetensors" if fmt == "safetensors" else "bin"
    stem = "model" if fmt == "safetensors" else "pytorch_model"
    weight_map = {}
    for i in range(shards):
        part = {k: sd[k] for k in names[i::shards]}
        fname = f"{stem}-{i + 1:05d}-of-{shards:05d}.{ext}"
        if fmt == "safetensors":
            save_file(part, str(directory / fname), metadata={"format": "pt"})
        else:
            torch.save(part, directory / fname)
        weight_map.update({k: fname for k in part})
    index = {"metadata": {"total_size": 0}, "weight_map": weight_map}
    (directory / f"{stem}.{ext}.index.json").write_text(json.dumps(index))


# Random configs covering: odd d_model, d_state 1..16, d_conv 2..4, 2-3 layers, vocab not a
# multiple of 8, tied and untied heads, conv bias on and off, Linear biases, explicit dt rank.
def _random_configs(n=6, seed=1234):
    rng = random.Random(seed)
    forced = [  # (d_state, d_conv, tied, conv_bias) so that every edge is hit at least once
        (1, 2, True, True), (16, 4, False, False), (7, 3, False, True),
        (3, 4, True, False), (16, 2, True, True), (11, 3, False, False),
    ]
    out = []
    for i in range(n):
        d_state, d_conv, tied, conv_bias = forced[i % len(forced)]
        vocab = rng.choice([v for v in range(97, 299) if v % 8])
        out.append(dict(
            hidden_size=rng.randrange(17, 63, 2), state_size=d_state, conv_kernel=d_conv,
            num_hidden_layers=rng.choice([2, 3]), vocab_size=vocab, expand=rng.choice([1, 2]),
            tie_word_embeddings=tied, use_conv_bias=conv_bias, use_bias=rng.random() < 0.4,
            time_step_rank=rng.choice(["auto", rng.randrange(1, 9)]),
            layer_norm_epsilon=rng.choice([1e-5, 1e-6]),
        ))
    return out


CONFIGS = _random_configs()


def _cfg_id(c):
    return (f"d{c['hidden_size']}-n{c['state_size']}-k{c['conv_kernel']}-L{c['num_hidden_layers']}"
            f"-V{c['vocab_size']}-{'tied' if c['tie_word_embeddings'] else 'untied'}"
            f"-cb{int(c['use_conv_bias'])}")


def test_random_configs_cover_the_edges():
    assert all(c["hidden_size"] % 2 == 1 and c["vocab_size"] % 8 for c in CONFIGS)
    assert {c["state_size"] for c in CONFIGS} >= {1, 16}
    assert {c["conv_kernel"] for c in CONFIGS} == {2, 3, 4}
    assert {c["tie_word_embeddings"] for c in CONFIGS} == {True, False}
    assert {c["use_conv_bias"] for c in CONFIGS} == {True, False}
    assert {c["num_hidden_layers"] for c in CONFIGS} == {2, 3}


# ----------------------------------------------------------------------------- transformers dirs
@pytest.mark.parametrize("hcfg", CONFIGS, ids=_cfg_id)
def test_transformers_checkpoint_logits_and_greedy(hcfg, tmp_path):
    hf = make_hf(seed=zlib.crc32(_cfg_id(hcfg).encode()) % 1000, **hcfg)
    hf.save_pretrained(tmp_path)
    model = MambaLM.from_pretrained(tmp_path)

    cfg = model.config
    assert (cfg.d_model, cfg.n_layer, cfg.d_state, cfg.d_conv) == (
        hcfg["hidden_size"], hcfg["num_hidden_layers"], hcfg["state_size"], hcfg["conv_kernel"])
    assert cfg.tie_embeddings == hcfg["tie_word_embeddings"]
    assert (model.lm_head.weight is model.backbone.embedding.weight) == hcfg["tie_word_embeddings"]
    assert model.dtype == torch.float32 and not model.training

    ids = random_ids(hcfg["vocab_size"], batch=2, length=11)
    ref = hf_logits(hf, ids)
    out = our_logits(model, ids)
    assert out.shape == ref.shape
    assert rel_err(out, ref) <= TOL

    # Greedy generation: no eos on either side.
    n = 8
    expected = hf.generate(ids, max_new_tokens=n, do_sample=False, eos_token_id=None, pad_token_id=0)
    got = model.generate(ids, max_new_tokens=n, eos_token_id=None)
    assert got.shape == (2, ids.shape[1] + n)
    assert torch.equal(got, expected)


@settings(max_examples=5, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    d_model=st.integers(8, 31).map(lambda v: 2 * v + 1),
    d_state=st.integers(1, 16),
    d_conv=st.integers(2, 4),
    n_layer=st.integers(2, 3),
    vocab=st.integers(12, 37).map(lambda v: 8 * v + 3),
    tied=st.booleans(),
    conv_bias=st.booleans(),
    seed=st.integers(0, 10_000),
)
def test_transformers_checkpoint_hypothesis(tmp_path_factory, d_model, d_state, d_conv, n_layer,
                                            vocab, tied, conv_bias, seed):
    d = tmp_path_factory.mktemp("hyp")
    hf = make_hf(seed=seed, hidden_size=d_model, state_size=d_state, conv_kernel=d_conv,
                 num_hidden_layers=n_layer, vocab_size=vocab, tie_word_embeddings=tied,
                 use_conv_bias=conv_bias)
    hf.save_pretrained(d)
    model = MambaLM.from_pretrained(d)
    ids = random_ids(vocab, batch=2, length=6, seed=seed)
    assert rel_err(our_logits(model, ids), hf_logits(hf, ids)) <= TOL
    expected = hf.generate(ids, max_new_tokens=4, do_sample=False, eos_token_id=None, pad_token_id=0)
    assert torch.equal(model.generate(ids, max_new_tokens=4, eos_token_id=None), expected)


def test_transformers_greedy_with_eos_agrees(tmp_path):
    hf = make_hf(seed=5, hidden_size=31, state_size=4, conv_kernel=4, vocab_size=203)
    hf.save_pretrained(tmp_path)
    model = MambaLM.from_pretrained(tmp_path)
    ids = random_ids(203, batch=2, length=6, seed=3)
    free = model.generate(ids, max_new_tokens=10, eos_token_id=None)
    eos = int(free[0, ids.shape[1] + 2])  # the 3rd token sequence 0 emits
    # transformers fills finished sequences with pad_token_id: make it the eos id, as ours does.
    expected = hf.generate(ids, max_new_tokens=10, do_sample=False, eos_token_id=eos, pad_token_id=eos)
    got = model.generate(ids, max_new_tokens=10, eos_token_id=eos)
    assert torch.equal(got, expected)
    tail = got[0, ids.shape[1] + 2:]
    assert bool((tail == eos).all())  # everything after eos is eos
    # The config's eos id is the default, as in transformers.
    model.config.eos_token_id = eos
    assert torch.equal(model.generate(ids, max_new_tokens=10), got)


def test_transformers_sharded_checkpoint(tmp_path):
    hf = make_hf(seed=3, hidden_size=35, num_hidden_layers=3, tie_word_embeddings=False)
    hf.save_pretrained(tmp_path, max_shard_size="20KB")
    assert (tmp_path / "model.safetensors.index.json").is_file()
    assert not (tmp_path / "model.safetensors").exists()
    assert len(list(tmp_path.glob("model-*.safetensors"))) > 1
    ids = random_ids(251, length=7)
    assert rel_err(our_logits(MambaLM.from_pretrained(tmp_path), ids), hf_logits(hf, ids)) <= TOL


@pytest.mark.parametrize("fmt, shards", [("safetensors", 3), ("bin", 1), ("bin", 3)])
def test_transformers_names_in_other_layouts(fmt, shards, tmp_path):
    """transformers key names, weights as .bin or hand-written shards."""
    hf = make_hf(seed=4, hidden_size=25, state_size=16, tie_word_embeddings=False)
    hf.config.save_pretrained(tmp_path)
    write_weights(hf_state_dict(hf), tmp_path, fmt=fmt, shards=shards)
    ids = random_ids(251, length=7)
    assert rel_err(our_logits(MambaLM.from_pretrained(tmp_path), ids), hf_logits(hf, ids)) <= TOL


# ----------------------------------------------------------------------------- mamba_ssm dirs
@pytest.mark.parametrize("fmt, shards", [("safetensors", 1), ("bin", 1), ("safetensors", 4), ("bin", 2)])
@pytest.mark.parametrize("tied", [True, False], ids=["tied", "untied"])
def test_mamba_ssm_checkpoint(fmt, shards, tied, tmp_path):
    hf = make_hf(seed=7, hidden_size=29, state_size=6, conv_kernel=4, vocab_size=250,
                 num_hidden_layers=2, tie_word_embeddings=tied)
    write_mamba_ssm_dir(hf, tmp_path, fmt=fmt, shards=shards)
    model = MambaLM.from_pretrained(tmp_path)
    cfg = model.config
    assert (cfg.vocab_size, cfg.padded_vocab_size, cfg.pad_vocab_size_multiple) == (250, 256, 8)
    assert model.backbone.embedding.weight.shape == (256, 29)
    assert (model.lm_head.weight is model.backbone.embedding.weight) == tied
    ids = random_ids(250, length=10)
    out = our_logits(model, ids)
    assert out.shape == (2, 10, 256)
    assert rel_err(out[..., :250], hf_logits(hf, ids)) <= TOL


def test_mamba_ssm_padded_vocab_never_generated(tmp_path):
    """Padding rows that would win the argmax are masked: generation equals transformers'."""
    hf = make_hf(seed=8, hidden_size=27, vocab_size=245, tie_word_embeddings=False)
    big = lambda n: torch.randn(n, 27, generator=torch.Generator().manual_seed(0)) * 50.0  # noqa: E731
    write_mamba_ssm_dir(hf, tmp_path, pad_fill=big)
    model = MambaLM.from_pretrained(tmp_path)
    ids = random_ids(245, length=5)
    logits = our_logits(model, ids)
    assert rel_err(logits[..., :245], hf_logits(hf, ids)) <= TOL
    assert bool((logits[:, -1].argmax(-1) >= 245).any())  # the padding really would win
    expected = hf.generate(ids, max_new_tokens=6, do_sample=False, eos_token_id=None, pad_token_id=0)
    got = model.generate(ids, max_new_tokens=6, eos_token_id=None)
    assert torch.equal(got, expected)
    assert int(got.max()) < 245


def test_mamba_ssm_keys_renamed_and_safetensors_preferred(tmp_path):
    hf = make_hf(seed=9, vocab_size=250)
    sd = write_mamba_ssm_dir(hf, tmp_path)
    (tmp_path / "pytorch_model.bin").write_bytes(b"not a pickle at all")  # ignored: safetensors first
    state = load_state_dict(tmp_path)
    assert set(state) == set(sd)
    assert "backbone.embedding.weight" in state and "backbone.embeddings.weight" not in state
    ids = random_ids(250, length=4)
    assert rel_err(our_logits(MambaLM.from_pretrained(tmp_path), ids)[..., :250], hf_logits(hf, ids)) <= TOL


# ----------------------------------------------------------------------------- save_pretrained
@pytest.mark.parametrize("tied", [True, False], ids=["tied", "untied"])
def test_save_pretrained_loads_in_both(tied, tmp_path):
    cfg = MambaConfig(d_model=37, n_layer=3, vocab_size=200, d_state=9, d_conv=3, conv_bias=not tied,
                      tie_embeddings=tied, eos_token_id=5)
    torch.manual_seed(11)
    model = MambaLM(cfg).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
    model.save_pretrained(tmp_path)
    assert json.loads((tmp_path / "config.json").read_text())["model_type"] == "mamba"
    saved = load_file(str(tmp_path / "model.safetensors"))
    assert "backbone.embeddings.weight" in saved and ("lm_head.weight" in saved) == (not tied)

    ids = random_ids(200, length=8)
    ref = our_logits(model, ids)
    hf = transformers.MambaForCausalLM.from_pretrained(tmp_path).eval()
    assert hf.config.tie_word_embeddings == tied
    assert rel_err(hf_logits(hf, ids), ref) <= TOL
    again = MambaLM.from_pretrained(tmp_path)
    assert rel_err(our_logits(again, ids), ref) <= TOL
    assert again.config.eos_token_id == 5
    for (k, a), (k2, b) in zip(model.state_dict().items(), again.state_dict().items()):
        assert k == k2 and torch.equal(a, b), k


def test_save_pretrained_padded_vocab(tmp_path):
    cfg = MambaConfig(d_model=19, n_layer=2, vocab_size=101, d_state=4)  # padded to 104
    model = MambaLM(cfg).eval()
    model.save_pretrained(tmp_path)
    hf = transformers.MambaForCausalLM.from_pretrained(tmp_path).eval()
    assert hf.config.vocab_size == 104
    ids = random_ids(101, length=5)
    assert rel_err(hf_logits(hf, ids), our_logits(model, ids)) <= TOL


@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16, torch.float16])
def test_from_pretrained_dtype_cast(dtype, tmp_path):
    hf = make_hf(seed=12, hidden_size=23, tie_word_embeddings=True)
    hf.save_pretrained(tmp_path)
    model = MambaLM.from_pretrained(tmp_path, dtype=dtype, device="cpu")
    assert model.dtype == dtype and model.device == torch.device("cpu")
    assert all(p.dtype == dtype for p in model.parameters())
    assert model.lm_head.weight is model.backbone.embedding.weight
    ids = random_ids(251, length=6)
    out = our_logits(model, ids)
    assert out.dtype == dtype
    ref = hf_logits(hf, ids)
    tol = TOL if dtype == torch.float64 else 5e-2
    assert rel_err(out, ref) <= tol
    if dtype != torch.float64:  # the cast is real: low-precision logits differ from float32's
        assert rel_err(out, ref) > 1e-4


def test_from_pretrained_keeps_stored_dtype(tmp_path):
    hf = make_hf(seed=13).to(torch.bfloat16)
    hf.save_pretrained(tmp_path)
    model = MambaLM.from_pretrained(tmp_path)
    assert model.dtype == torch.bfloat16
    sd = load_file(str(tmp_path / "model.safetensors"))
    assert torch.equal(model.backbone.embedding.weight, sd["backbone.embeddings.weight"])
    assert MambaLM.from_pretrained(tmp_path, dtype=torch.float32).dtype == torch.float32


# ----------------------------------------------------------------------------- errors
@pytest.fixture
def good_dir(tmp_path):
    hf = make_hf(seed=14, hidden_size=17, tie_word_embeddings=False)
    d = tmp_path / "ckpt"
    hf.save_pretrained(d)
    return d


def test_error_directory_without_weights(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps(MambaConfig(d_model=16, n_layer=2, vocab_size=64).to_hf()))
    with pytest.raises(FileNotFoundError, match="no weights in .*model.safetensors.*pytorch_model.bin"):
        MambaLM.from_pretrained(tmp_path)


def test_error_directory_without_config(good_dir):
    (good_dir / "config.json").unlink()
    with pytest.raises(FileNotFoundError, match="no config.json at"):
        MambaLM.from_pretrained(good_dir)


def test_error_not_a_directory(good_dir, tmp_path):
    with pytest.raises(FileNotFoundError, match="is not a directory"):
        MambaLM.from_pretrained(good_dir / "model.safetensors")
    with pytest.raises(FileNotFoundError, match="is not a directory"):
        MambaLM.from_pretrained(tmp_path / "does-not-exist")


def test_error_corrupt_safetensors(good_dir):
    f = good_dir / "model.safetensors"
    f.write_bytes(bytes(random.Random(0).getrandbits(8) for _ in range(4096)))
    with pytest.raises(CheckpointError, match="model.safetensors could not be read as safetensors.*corrupt or truncated"):
        MambaLM.from_pretrained(good_dir)


def test_error_truncated_safetensors(good_dir):
    f = good_dir / "model.safetensors"
    data = f.read_bytes()
    f.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="model.safetensors could not be read as safetensors.*corrupt or truncated"):
        MambaLM.from_pretrained(good_dir)


def test_error_truncated_bin(good_dir):
    sd = load_file(str(good_dir / "model.safetensors"))
    (good_dir / "model.safetensors").unlink()
    torch.save(sd, good_dir / "pytorch_model.bin")
    data = (good_dir / "pytorch_model.bin").read_bytes()
    (good_dir / "pytorch_model.bin").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="pytorch_model.bin could not be loaded with weights_only=True"):
        MambaLM.from_pretrained(good_dir)


def test_error_unknown_ssm_cfg_layer(good_dir):
    hf = make_hf(seed=15, vocab_size=250)
    write_mamba_ssm_dir(hf, good_dir)
    cfg = json.loads((good_dir / "config.json").read_text())
    cfg["ssm_cfg"]["layer"] = "Mamba7"
    (good_dir / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ConfigError, match="ssm_cfg.layer='Mamba7' is unknown"):
        MambaLM.from_pretrained(good_dir)


@pytest.mark.parametrize("where", ["top", "ssm_cfg"])
def test_error_unknown_config_keys(where, tmp_path):
    hf = make_hf(seed=16, vocab_size=250)
    write_mamba_ssm_dir(hf, tmp_path)
    cfg = json.loads((tmp_path / "config.json").read_text())
    (cfg if where == "top" else cfg["ssm_cfg"])["mystery_knob"] = 1
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ConfigError, match="unknown .*keys.*mystery_knob"):
        MambaLM.from_pretrained(tmp_path)


def test_error_invalid_config_json(good_dir):
    (good_dir / "config.json").write_text("{ broken")
    with pytest.raises(ConfigError, match="not valid JSON"):
        MambaLM.from_pretrained(good_dir)


def _rewrite(directory, edit):
    sd = load_file(str(directory / "model.safetensors"))
    edit(sd)
    save_file(sd, str(directory / "model.safetensors"))


def test_error_missing_key(good_dir):
    _rewrite(good_dir, lambda sd: sd.pop("backbone.layers.1.mixer.D"))
    with pytest.raises(CheckpointError, match=r"does not match its config: missing keys: backbone.layers.1.mixer.D"):
        MambaLM.from_pretrained(good_dir)


def test_error_missing_untied_head(good_dir):
    _rewrite(good_dir, lambda sd: sd.pop("lm_head.weight"))
    with pytest.raises(CheckpointError, match="missing keys: lm_head.weight"):
        MambaLM.from_pretrained(good_dir)


def test_error_unexpected_key(good_dir):
    _rewrite(good_dir, lambda sd: sd.__setitem__("backbone.layers.2.mixer.D", torch.ones(34)))
    with pytest.raises(CheckpointError, match=r"unexpected keys: backbone.layers.2.mixer.D"):
        MambaLM.from_pretrained(good_dir)


def test_error_shape_mismatch(good_dir):
    _rewrite(good_dir, lambda sd: sd.__setitem__("backbone.layers.0.mixer.A_log", torch.zeros(34, 6)))
    with pytest.raises(CheckpointError, match=r"shape mismatches: backbone.layers.0.mixer.A_log: "
                                              r"checkpoint \[34, 6\] vs model \[34, 5\]"):
        MambaLM.from_pretrained(good_dir)


def test_error_shard_index_problems(good_dir):
    sd = load_file(str(good_dir / "model.safetensors"))
    (good_dir / "model.safetensors").unlink()
    write_weights(sd, good_dir, shards=2)
    next(good_dir.glob("model-00002-of-00002.safetensors")).unlink()
    with pytest.raises(CheckpointError, match="lists shards that are missing: model-00002-of-00002.safetensors"):
        MambaLM.from_pretrained(good_dir)
    (good_dir / "model.safetensors.index.json").write_text(json.dumps({"no_map": {}}))
    with pytest.raises(CheckpointError, match="not a valid shard index"):
        MambaLM.from_pretrained(good_dir)
    for bad in ("{broken", json.dumps({"weight_map": ["a", "b"]}), json.dumps([1, 2]),
                json.dumps({"weight_map": {"backbone.norm_f.weight": 3}})):
        (good_dir / "model.safetensors.index.json").write_text(bad)
        with pytest.raises(CheckpointError, match="not a valid shard index"):
            MambaLM.from_pretrained(good_dir)


class _Payload:
    """Unpickling this would run ``open(marker, 'w')``, creating the marker file."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def test_error_bin_with_code_pickle_is_never_executed(good_dir, tmp_path):
    (good_dir / "model.safetensors").unlink()
    marker = tmp_path / "pwned"
    torch.save({"backbone.norm_f.weight": _Payload(marker)}, good_dir / "pytorch_model.bin")
    assert not marker.exists()
    with pytest.raises(CheckpointError, match=r"(?s)could not be loaded with weights_only=True.*Unsupported global.*convert it to safetensors"):
        MambaLM.from_pretrained(good_dir)
    assert not marker.exists()


def test_error_bin_holding_not_a_dict(good_dir):
    (good_dir / "model.safetensors").unlink()
    torch.save([torch.zeros(3)], good_dir / "pytorch_model.bin")
    with pytest.raises(CheckpointError, match="holds a list, not a state dict"):
        MambaLM.from_pretrained(good_dir)


def test_from_transformers_shares_weights_and_matches_logits():
    hc = transformers.MambaConfig(vocab_size=97, hidden_size=29, state_size=6, num_hidden_layers=2,
                                  conv_kernel=4, expand=2, tie_word_embeddings=False)
    hf = transformers.MambaForCausalLM(hc).eval()
    model = MambaLM.from_transformers(hf)
    assert model.backbone.embedding.weight.data_ptr() == hf.backbone.embeddings.weight.data_ptr()
    assert model.backbone.layers[1].mixer.A_log.data_ptr() == hf.backbone.layers[1].mixer.A_log.data_ptr()
    ids = torch.randint(0, 97, (2, 9))
    with torch.no_grad():
        assert rel_err(model(ids), hf(ids).logits) <= 1e-5
    with pytest.raises(TypeError, match="MambaForCausalLM"):
        MambaLM.from_transformers(torch.nn.Linear(2, 2))

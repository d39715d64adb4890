"""ONNX export and the ONNX Runtime runner (CPU provider; the CUDA provider test is marked gpu)."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")

import mamba_export as me  # noqa: E402
from mamba_export.generate import generate as generate_tokens  # noqa: E402
from mamba_export.export import artifacts, onnx_scan  # noqa: E402
from mamba_export.export.artifacts import ArtifactsError  # noqa: E402
from mamba_export.export.onnx import export_onnx  # noqa: E402
from mamba_export.runtime.ort import OrtRunner  # noqa: E402

CONFIGS = [  # odd d_model, d_state 1..16, d_conv 2..4
    dict(d_model=21, d_state=1, d_conv=2, vocab_size=37),
    dict(d_model=33, d_state=16, d_conv=4, vocab_size=50),
    dict(d_model=47, d_state=7, d_conv=3, vocab_size=29),
]


def rel(a, b) -> float:
    a, b = torch.as_tensor(a).double(), torch.as_tensor(b).double()
    return float((a - b).norm() / b.norm().clamp_min(1e-30))


def build(d, cfg_kw, scan_body="auto"):
    torch.manual_seed(1)
    cfg = me.MambaConfig(n_layer=2, **cfg_kw)
    model = me.MambaLM(cfg).eval()
    d.mkdir()
    model.save_pretrained(d / "model")
    m = artifacts.new_manifest(model)
    for g in ("prefill", "decode"):
        info = export_onnx(model, g, d / f"{g}.onnx", scan_body=scan_body)
        artifacts.add_file(m, d, f"{g}.onnx", g, "onnx", **info)
    artifacts.write_manifest(m, d)
    return model


@pytest.fixture(scope="module", params=range(len(CONFIGS)), ids=lambda i: f"cfg{i}")
def art(request, tmp_path_factory):
    d = tmp_path_factory.mktemp("onnx") / "art"
    model = build(d, CONFIGS[request.param])
    return d, model, OrtRunner.from_artifacts(d, threads=1)


def random_state(model, batch):
    s = model.new_state(batch)
    return me.MambaState(torch.randn_like(s.conv), torch.randn_like(s.ssm) * 0.5)


@pytest.mark.parametrize("batch,length", [(1, 1), (3, 17), (1, 17), (3, 1)])
def test_prefill_matches_eager(art, batch, length):
    _, model, runner = art
    ids = torch.randint(0, model.config.vocab_size, (batch, length))
    state = random_state(model, batch)
    with torch.no_grad():
        ref_logits, ref_state = model.prefill(ids, state)
    logits, out = runner.prefill(ids, state)
    assert rel(logits, ref_logits) <= 1e-5
    assert rel(out.conv, ref_state.conv) <= 1e-6
    assert rel(out.ssm, ref_state.ssm) <= 1e-5


@pytest.mark.parametrize("batch", [1, 3])
def test_decode_matches_eager(art, batch):
    _, model, runner = art
    state = random_state(model, batch)
    ids = torch.randint(0, model.config.vocab_size, (batch,))
    with torch.no_grad():
        ref_logits, ref_state = model.step(ids, state)
    logits, out = runner.step(ids, state)
    assert rel(logits, ref_logits) <= 1e-5
    assert rel(out.conv, ref_state.conv) <= 1e-6
    assert rel(out.ssm, ref_state.ssm) <= 1e-5


def test_graph_structure(art):
    d, model, _ = art
    prefill = onnx.load(str(d / "prefill.onnx"))
    scans = [n for n in prefill.graph.node if n.op_type == onnx_scan.NAME]
    assert len(scans) == model.config.n_layer
    assert all(n.domain == onnx_scan.DOMAIN for n in scans)
    assert [a.name for a in scans[0].attribute] == ["delta_softplus"]
    assert list(scans[0].input) and len(scans[0].input) == len(onnx_scan.INPUTS)
    funcs = {(f.domain, f.name): f for f in prefill.functions}
    body = funcs[(onnx_scan.DOMAIN, onnx_scan.NAME)]
    assert list(body.input) == list(onnx_scan.INPUTS) and list(body.output) == list(onnx_scan.OUTPUTS)
    assert all(n.domain in ("", "ai.onnx") for n in body.node)
    assert all(n.domain in ("", "ai.onnx", onnx_scan.DOMAIN) for n in prefill.graph.node)
    decode = onnx.load(str(d / "decode.onnx"))
    assert all(n.domain in ("", "ai.onnx") for n in decode.graph.node)
    assert not decode.functions
    for g in ("prefill", "decode"):
        onnx.checker.check_model(str(d / f"{g}.onnx"), full_check=True)
        model_proto = onnx.load(str(d / f"{g}.onnx"))
        assert [i.name for i in model_proto.graph.input] == ["input_ids", "conv_state", "ssm_state"]
        assert [o.name for o in model_proto.graph.output] == ["logits", "conv_state_out", "ssm_state_out"]
    info = json.loads((d / "manifest.json").read_text())["files"]["prefill.onnx"]
    assert info["opset"] >= 18 and info["scan_body"] in onnx_scan.BODIES


def test_greedy_generation_matches_eager(art):
    _, model, runner = art
    ids = torch.randint(0, model.config.vocab_size, (2, 5))
    ref = generate_tokens(model.prefill, model.step, model.new_state, ids, max_new_tokens=64,
                       vocab_size=model.config.vocab_size)
    assert torch.equal(runner.generate(ids, max_new_tokens=64), ref)


def test_chunked_prefill_equals_one_prefill(art):
    d, model, runner = art
    ids = torch.randint(0, model.config.vocab_size, (3, 23))
    logits, state = runner.prefill(ids, runner.new_state(3))
    logits, state = logits.clone(), me.MambaState(state.conv.clone(), state.ssm.clone())
    chunked = OrtRunner.from_artifacts(d, threads=1, prefill_chunk_size=5)
    logits2, state2 = chunked.prefill(ids, chunked.new_state(3))
    assert rel(logits2, logits) <= 1e-5 and rel(state2.ssm, state.ssm) <= 1e-5
    assert rel(state2.conv, state.conv) <= 1e-6


def test_prefill_then_decode_equals_forward(art):
    _, model, runner = art
    ids = torch.randint(0, model.config.vocab_size, (2, 12))
    with torch.no_grad():
        full = model(ids)
    logits, state = runner.prefill(ids[:, :9], runner.new_state(2))
    assert rel(logits, full[:, 8]) <= 1e-5
    for t in range(9, 12):
        logits, state = runner.step(ids[:, t], state)
        assert rel(logits, full[:, t]) <= 1e-5


@pytest.mark.parametrize("body", ["sequential", "fused", "chunked4", "logdepth4"])
def test_scan_bodies_match_reference(body):
    """Every scan-body candidate against the float64 reference (odd L, padding, initial state)."""
    import onnxruntime as ort
    from onnx import TensorProto, helper

    from mamba_export import reference as ref

    fn = onnx_scan.build_function(body)
    ranks = [3, 3, 2, 3, 3, 1, 3, 1, 3]
    ins = [helper.make_tensor_value_info(n, TensorProto.FLOAT, [None] * r) for n, r in zip(onnx_scan.INPUTS, ranks)]
    outs = [helper.make_tensor_value_info(n, TensorProto.FLOAT, [None] * 3) for n in onnx_scan.OUTPUTS]
    node = helper.make_node(onnx_scan.NAME, list(onnx_scan.INPUTS), list(onnx_scan.OUTPUTS),
                            domain=onnx_scan.DOMAIN, delta_softplus=1)
    m = helper.make_model(helper.make_graph([node], "g", ins, outs), functions=[fn],
                          opset_imports=[helper.make_opsetid("", 18), helper.make_opsetid(onnx_scan.DOMAIN, 1)])
    sess = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])
    for b, dim, length, n in ((2, 5, 37, 3), (1, 3, 1, 1), (3, 4, 16, 16)):
        u, delta, z = (torch.randn(b, dim, length) for _ in range(3))
        A = -torch.rand(dim, n) * 8 - 0.1
        B, C = torch.randn(b, n, length), torch.randn(b, n, length)
        D, db, h0 = torch.randn(dim), torch.randn(dim), torch.randn(b, dim, n)
        args = [u, delta * 2, A, B, C, D, z, db, h0]
        want_out, want_h = ref.selective_scan(*[x.double() for x in args[:8]], True, h0.double())
        out, h = sess.run(None, {k: v.numpy() for k, v in zip(onnx_scan.INPUTS, args)})
        assert rel(out, want_out) <= 1e-5 and rel(h, want_h) <= 1e-5, body


def test_clear_errors(art, tmp_path):
    d, model, runner = art
    v = model.config.vocab_size
    with pytest.raises(TypeError, match="input_ids must be int64"):
        runner.prefill(torch.zeros(1, 3), runner.new_state(1))
    with pytest.raises(ValueError, match=r"token_ids must be \[batch\]"):
        runner.step(torch.zeros(1, 3, dtype=torch.long), runner.new_state(1))
    with pytest.raises(ValueError, match=r"conv_state must have shape \[2, 2,"):
        runner.prefill(torch.zeros(2, 3, dtype=torch.long), runner.new_state(1))
    s = runner.new_state(1)
    with pytest.raises(TypeError, match="ssm_state must be torch.float32"):
        runner.step(torch.zeros(1, dtype=torch.long) % v, me.MambaState(s.conv, s.ssm.double()))
    # missing file
    broken = tmp_path / "broken"
    shutil.copytree(d, broken)
    (broken / "decode.onnx").unlink()
    with pytest.raises(ArtifactsError, match="missing files.*decode.onnx"):
        OrtRunner.from_artifacts(broken)
    # manifest that disagrees with the graphs
    mism = tmp_path / "mismatch"
    shutil.copytree(d, mism)
    man = json.loads((mism / "manifest.json").read_text())
    man["graphs"]["decode"]["outputs"][0]["shape"][1] += 1
    (mism / "manifest.json").write_text(json.dumps(man))
    with pytest.raises(ArtifactsError, match="decode.onnx: output 'logits'.*manifest"):
        OrtRunner.from_artifacts(mism)
    man["graphs"]["decode"]["outputs"][0]["shape"][1] -= 1
    man["graphs"]["prefill"]["inputs"][1]["name"] = "conv"
    (mism / "manifest.json").write_text(json.dumps(man))
    with pytest.raises(ArtifactsError, match="prefill.onnx: inputs.*do not match"):
        OrtRunner.from_artifacts(mism)
    # a manifest without ONNX files
    man = json.loads((d / "manifest.json").read_text())
    man["files"] = {}
    noonnx = tmp_path / "noonnx"
    shutil.copytree(d, noonnx)
    (noonnx / "manifest.json").write_text(json.dumps(man))
    with pytest.raises(ArtifactsError, match="no ONNX file"):
        OrtRunner.from_artifacts(noonnx)


def test_export_options(tmp_path):
    torch.manual_seed(2)
    model = me.MambaLM(me.MambaConfig(d_model=17, n_layer=1, vocab_size=23, d_state=3, d_conv=2)).eval()
    info = export_onnx(model, "prefill", tmp_path / "p.onnx", scan_body="chunked4", external_data=True)
    assert info["external_data"] and (tmp_path / "p.onnx.data").is_file()
    assert info["scan_body"] == "chunked4" and info["custom_nodes"] == {"mamba_export::SelectiveScan": 1}
    with pytest.raises(ValueError, match="unknown scan body"):
        export_onnx(model, "prefill", tmp_path / "q.onnx", scan_body="bogus")
    with pytest.raises(ValueError, match="opset must be >= 18"):
        export_onnx(model, "decode", tmp_path / "q.onnx", opset=17)
    import onnxruntime as ort

    sess = ort.InferenceSession(str(tmp_path / "p.onnx"), providers=["CPUExecutionProvider"])
    ids = torch.randint(0, 23, (2, 6))
    s = model.new_state(2)
    logits, _, ssm = sess.run(None, {"input_ids": ids.numpy(), "conv_state": s.conv.numpy(),
                                     "ssm_state": s.ssm.numpy()})
    with torch.no_grad():
        want, want_s = model.prefill(ids, s)
    assert rel(logits, want) <= 1e-5 and rel(ssm, want_s.ssm) <= 1e-5


@pytest.mark.gpu
def test_cuda_provider(tmp_path):
    import onnxruntime as ort

    if "CUDAExecutionProvider" not in ort.get_available_providers():
        pytest.skip("onnxruntime-gpu (CUDAExecutionProvider) not installed")
    model = build(tmp_path / "art", CONFIGS[1])
    runner = OrtRunner.from_artifacts(tmp_path / "art", provider="cuda")
    ids = torch.randint(0, model.config.vocab_size, (3, 17))
    state = random_state(model, 3)
    with torch.no_grad():
        ref_logits, ref_state = model.prefill(ids, state)
    logits, out = runner.prefill(ids.cuda(), me.MambaState(state.conv.cuda(), state.ssm.cuda()))
    assert out.ssm.is_cuda and rel(logits.cpu(), ref_logits) <= 1e-4
    assert rel(out.ssm.cpu(), ref_state.ssm) <= 1e-4
    tokens = runner.generate(ids[:, :5].cuda(), max_new_tokens=32)
    ref = generate_tokens(model.prefill, model.step, model.new_state, ids[:, :5], max_new_tokens=32,
                       vocab_size=model.config.vocab_size)
    assert torch.equal(tokens.cpu(), ref)

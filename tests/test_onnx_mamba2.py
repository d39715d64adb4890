"""ONNX export of Mamba-2 (SSD) models and the ONNX Runtime runner (CPU provider): one
``mamba_export::SSDScan`` node per layer in prefill (with its function body), no custom node in
decode, parity with eager, greedy generation, and every SSDScan body against the float64 loop
reference."""

from __future__ import annotations

import numpy as np
import pytest
import torch

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")

import mamba_export as me  # noqa: E402
from mamba_export import reference as ref  # noqa: E402
from mamba_export.export import artifacts, onnx_ssd  # noqa: E402
from mamba_export.export.exporter import export_artifacts  # noqa: E402
from mamba_export.export.onnx import export_onnx  # noqa: E402
from mamba_export.generate import generate as generate_tokens  # noqa: E402
from mamba_export.runtime.ort import OrtRunner  # noqa: E402

CONFIGS = {
    # grouped B/C (2 groups, 4 heads), dt clamp, gated RMSNorm (z outside the scan);
    # transformers can express it: artifacts through export_artifacts
    "g2": dict(d_model=32, d_state=8, d_conv=4, ngroups=2, chunk_size=4, vocab_size=61,
               dt_limit=(0.01, 0.5)),
    # one group (6 heads), d_state 16, D per channel, z gate inside the scan (rmsnorm=False),
    # chunk 8 > some L; only mamba_ssm's checkpoint format can express it: artifacts by hand
    "g1": dict(d_model=48, d_state=16, d_conv=3, ngroups=1, chunk_size=8, vocab_size=50,
               rmsnorm=False, D_has_hdim=True),
}
TOL = 1e-5


def rel(a, b) -> float:
    a, b = torch.as_tensor(a).double(), torch.as_tensor(b).double()
    return float((a - b).norm() / b.norm().clamp_min(1e-30))


@pytest.fixture(scope="module", params=sorted(CONFIGS))
def art(request, tmp_path_factory):
    torch.manual_seed(3)
    cfg = me.MambaConfig(layer="Mamba2", n_layer=2, headdim=16, **CONFIGS[request.param])
    model = me.MambaLM(cfg).eval()
    d = tmp_path_factory.mktemp("onnx2") / "art"
    if request.param == "g2":
        manifest = export_artifacts(model, d, formats=["onnx"], log=lambda _: None)
    else:
        d.mkdir()
        model.save_pretrained(d / artifacts.MODEL_DIR, format="mamba_ssm")
        manifest = artifacts.new_manifest(model)
        for g in ("prefill", "decode"):
            info = export_onnx(model, g, d / f"{g}.onnx")
            artifacts.add_file(manifest, d, f"{g}.onnx", g, "onnx", **info)
        artifacts.write_manifest(manifest, d)
    return d, model, manifest, OrtRunner.from_artifacts(d, threads=1)


def random_state(model, batch):
    s = model.new_state(batch)
    return me.MambaState(torch.randn_like(s.conv), torch.randn_like(s.ssm) * 0.5)


def test_graph_structure(art):
    d, model, manifest, _ = art
    for g in ("prefill", "decode"):
        onnx.checker.check_model(str(d / f"{g}.onnx"), full_check=True)
    prefill = onnx.load(str(d / "prefill.onnx"))
    custom = [n for n in prefill.graph.node if n.domain not in ("", "ai.onnx")]
    assert [(n.domain, n.op_type) for n in custom] == [(onnx_ssd.DOMAIN, onnx_ssd.NAME)] * model.config.n_layer
    assert all(list(n.input) and len(n.input) == len(onnx_ssd.INPUTS) for n in custom)
    funcs = {(f.domain, f.name): f for f in prefill.functions}
    assert set(funcs) == {(onnx_ssd.DOMAIN, onnx_ssd.NAME)}
    body = funcs[(onnx_ssd.DOMAIN, onnx_ssd.NAME)]
    assert list(body.input) == list(onnx_ssd.INPUTS) and list(body.output) == list(onnx_ssd.OUTPUTS)
    assert body.node and all(n.domain in ("", "ai.onnx") for n in body.node)
    decode = onnx.load(str(d / "decode.onnx"))
    assert all(n.domain in ("", "ai.onnx") for n in decode.graph.node)
    assert not decode.functions
    info = manifest["files"]
    assert info["prefill.onnx"]["custom_nodes"] == {"mamba_export::SSDScan": model.config.n_layer}
    assert info["decode.onnx"]["custom_nodes"] == {}
    onnx_ssd.parse_body(info["prefill.onnx"]["scan_body"])


@pytest.mark.parametrize("batch,length", [(1, 1), (3, 13), (1, 13), (3, 1)])
def test_prefill_matches_eager(art, batch, length):
    _, model, _, runner = art
    ids = torch.randint(0, model.config.vocab_size, (batch, length))
    state = random_state(model, batch)
    with torch.no_grad():
        ref_logits, ref_state = model.prefill(ids, state)
    logits, out = runner.prefill(ids, state)
    assert rel(logits, ref_logits) <= TOL
    assert rel(out.conv, ref_state.conv) <= TOL
    assert rel(out.ssm, ref_state.ssm) <= TOL


@pytest.mark.parametrize("batch", [1, 3])
def test_decode_matches_eager(art, batch):
    _, model, _, runner = art
    state = random_state(model, batch)
    ids = torch.randint(0, model.config.vocab_size, (batch,))
    with torch.no_grad():
        ref_logits, ref_state = model.step(ids, state)
    logits, out = runner.step(ids, state)
    assert rel(logits, ref_logits) <= TOL
    assert rel(out.conv, ref_state.conv) <= TOL
    assert rel(out.ssm, ref_state.ssm) <= TOL


def test_greedy_generation_matches_eager(art):
    _, model, _, runner = art
    ids = torch.randint(0, model.config.vocab_size, (2, 5))
    want = generate_tokens(model.prefill, model.step, model.new_state, ids, max_new_tokens=16,
                           vocab_size=model.config.vocab_size)
    assert torch.equal(runner.generate(ids, max_new_tokens=16), want)


def test_prefill_then_decode_equals_forward(art):
    _, model, _, runner = art
    ids = torch.randint(0, model.config.vocab_size, (2, 12))
    with torch.no_grad():
        full = model(ids)
    logits, state = runner.prefill(ids[:, :9], runner.new_state(2))
    assert rel(logits, full[:, 8]) <= TOL
    for t in range(9, 12):
        logits, state = runner.step(ids[:, t], state)
        assert rel(logits, full[:, t]) <= TOL


def _ssd_session(body: str):
    from onnx import TensorProto, helper

    ranks = dict(x=4, dt=3, A=1, B=4, C=4, initial_state=4)
    ins = [helper.make_tensor_value_info(n, TensorProto.FLOAT, [None] * ranks[n]) for n in onnx_ssd.INPUTS]
    outs = [helper.make_tensor_value_info(n, TensorProto.FLOAT, [None] * 4) for n in onnx_ssd.OUTPUTS]
    node = helper.make_node(onnx_ssd.NAME, list(onnx_ssd.INPUTS), list(onnx_ssd.OUTPUTS),
                            domain=onnx_ssd.DOMAIN)
    m = helper.make_model(helper.make_graph([node], "g", ins, outs), functions=[onnx_ssd.build_function(body)],
                          opset_imports=[helper.make_opsetid("", 18), helper.make_opsetid(onnx_ssd.DOMAIN, 1)])
    onnx.checker.check_model(m, full_check=True)
    return ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])


@pytest.mark.parametrize("body", ["sequential", "chunked1", "chunked4", "chunked5", "chunked64"])
def test_ssd_bodies_match_reference(body):
    """Every SSDScan body against the float64 per-timestep loop (odd L, padding, T > L, T = 1)."""
    sess = _ssd_session(body)
    g = torch.Generator().manual_seed(7)
    for b, length, h, p, n in ((2, 37, 3, 4, 5), (1, 1, 2, 3, 1), (3, 16, 4, 2, 16)):
        r = lambda *s: torch.randn(*s, generator=g)  # noqa: E731
        x, B, C, h0 = r(b, length, h, p), r(b, length, h, n), r(b, length, h, n), r(b, h, p, n)
        dt = torch.nn.functional.softplus(r(b, length, h) - 1.0)
        A = -torch.rand(h, generator=g) * 8 - 0.1
        want_y, want_h = ref.ssd_scan_loop(x.double(), dt.double(), A.double(), B.double(), C.double(),
                                           initial_state=h0.double())
        y, hl = sess.run(None, dict(zip(onnx_ssd.INPUTS, (t.numpy() for t in (x, dt, A, B, C, h0)))))
        assert rel(y, want_y) <= TOL and rel(hl, want_h) <= TOL, (body, b, length)


def test_scan_body_option(tmp_path):
    torch.manual_seed(4)
    model = me.MambaLM(me.MambaConfig(layer="Mamba2", n_layer=1, d_model=32, headdim=16, d_state=4,
                                      ngroups=2, chunk_size=4, vocab_size=23)).eval()
    info = export_onnx(model, "prefill", tmp_path / "p.onnx", scan_body="sequential")
    assert info["scan_body"] == "sequential" and info["custom_nodes"] == {"mamba_export::SSDScan": 1}
    sess = ort.InferenceSession(str(tmp_path / "p.onnx"), providers=["CPUExecutionProvider"])
    ids = torch.randint(0, 23, (2, 7))
    s = random_state(model, 2)
    logits, conv, ssm = sess.run(None, {"input_ids": ids.numpy(), "conv_state": s.conv.numpy(),
                                        "ssm_state": s.ssm.numpy()})
    with torch.no_grad():
        want, want_s = model.prefill(ids, s)
    assert rel(logits, want) <= TOL and rel(ssm, want_s.ssm) <= TOL
    with pytest.raises(ValueError, match="unknown SSD scan body"):
        export_onnx(model, "prefill", tmp_path / "q.onnx", scan_body="fused")
    assert np.isfinite(logits).all()

"""torch.compile and torch.export of the model: one graph, no recompiles across sizes, exported
programs reloaded from disk give eager's numbers, training under compile matches eager."""

import json
import subprocess
import zipfile

import pytest
import torch
import torch._dynamo.testing
from _util import rel_err, run_compiler_script, scan_inputs
from torch._dynamo.utils import counters

import mamba_export as me
from mamba_export import reference as ref
from mamba_export.compiled import compile_model
from mamba_export.export.programs import aot_compile, export_program, load_aot, load_program, save_program
from mamba_export.kernels import selective_scan as scan_kernels

CFG = dict(d_model=24, n_layer=2, vocab_size=61, d_state=4, d_conv=4)


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(1)
    return me.MambaLM(me.MambaConfig(**CFG)).eval()


def _random_state(model, batch):
    state = model.new_state(batch)
    return me.MambaState(torch.randn_like(state.conv), torch.randn_like(state.ssm) * 0.1)


def test_compile_fullgraph_no_graph_break(model):
    torch._dynamo.reset()
    counters.clear()
    fwd = torch.compile(model, fullgraph=True, dynamic=True)
    prefill = torch.compile(model.prefill, fullgraph=True, dynamic=True)
    step = torch.compile(model.step, fullgraph=True, dynamic=True)
    ids = torch.randint(0, CFG["vocab_size"], (3, 7))
    state = _random_state(model, 3)
    with torch.no_grad():
        assert rel_err(fwd(ids), model(ids)) < 1e-5
        got, got_state = prefill(ids, state)
        want, want_state = model.prefill(ids, state)
        assert rel_err(got, want) < 1e-5 and rel_err(got_state.ssm, want_state.ssm) < 1e-5
        tokens = ids[:, 0].contiguous()
        assert rel_err(step(tokens, state)[0], model.step(tokens, state)[0]) < 1e-5
    assert sum(counters["graph_break"].values()) == 0, dict(counters["graph_break"])


def test_compile_model_no_recompile_across_batch_and_length(model):
    torch._dynamo.reset()
    counters.clear()
    backend = torch._dynamo.testing.CompileCounterWithBackend("inductor")
    compiled = compile_model(model, backend=backend)
    with torch.no_grad():
        for batch in (2, 3, 5):
            for length in (2, 3, 7):
                ids = torch.randint(0, CFG["vocab_size"], (batch, length))
                state = _random_state(model, batch)
                assert rel_err(compiled(ids), model(ids)) < 1e-5
                got, got_state = compiled.prefill(ids, state)
                want, want_state = model.prefill(ids, state)
                assert rel_err(got, want) < 1e-5 and rel_err(got_state.ssm, want_state.ssm) < 1e-5
                tokens = ids[:, 0].contiguous()
                assert rel_err(compiled.step(tokens, state)[0], model.step(tokens, state)[0]) < 1e-5
    assert sum(counters["graph_break"].values()) == 0, dict(counters["graph_break"])
    assert backend.frame_count == 3, f"{backend.frame_count} compilations for 3 entry points"


def test_training_under_compile_matches_eager_gradients():
    torch.manual_seed(2)
    eager = me.MambaLM(me.MambaConfig(**CFG))
    compiled_model = me.MambaLM(eager.config, initialize=False)
    compiled_model.load_state_dict(eager.state_dict())
    compiled = torch.compile(compiled_model, fullgraph=True)
    ids = torch.randint(0, CFG["vocab_size"], (2, 9))
    for m, f in ((eager, eager), (compiled_model, compiled)):
        logits = f(ids[:, :-1])
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1))
        loss.backward()
    for (name, p), q in zip(eager.named_parameters(), compiled_model.parameters()):
        assert rel_err(q.grad, p.grad) < 1e-4, name


@pytest.mark.parametrize("graph", ["prefill", "decode"])
def test_exported_program_round_trip(model, graph, tmp_path):
    program = export_program(model, graph)
    targets = [str(n.target) for n in program.graph.nodes if n.op == "call_function"]
    scan = "selective_scan" if graph == "prefill" else "selective_state_update"
    assert targets.count(f"mamba_export.{scan}.default") == CFG["n_layer"]
    path = save_program(program, tmp_path / f"{graph}.pt2")
    loaded = load_program(path).module()
    with torch.no_grad():
        for batch, length in ((1, 1), (3, 5), (4, 11)):
            length = 1 if graph == "decode" else length
            ids = torch.randint(0, CFG["vocab_size"], (batch, length))
            state = _random_state(model, batch)
            logits, conv, ssm = loaded(ids, *state)
            if graph == "prefill":
                want, want_state = model.prefill(ids, state)
            else:
                want, want_state = model.step(ids[:, 0], state)
            assert rel_err(logits, want) <= 1e-5
            assert rel_err(ssm, want_state.ssm) <= 1e-5 and rel_err(conv, want_state.conv) <= 1e-5


def test_greedy_generation_through_exported_programs_equals_eager(model, tmp_path):
    prefill = load_program(save_program(export_program(model, "prefill"), tmp_path / "p.pt2")).module()
    decode = load_program(save_program(export_program(model, "decode"), tmp_path / "d.pt2")).module()

    def prefill_fn(ids, state):
        logits, conv, ssm = prefill(ids, *state)
        return logits, me.MambaState(conv, ssm)

    def step_fn(tokens, state):
        logits, conv, ssm = decode(tokens[:, None], *state)
        return logits, me.MambaState(conv, ssm)

    ids = torch.randint(0, CFG["vocab_size"], (2, 6))
    want = model.generate(ids, max_new_tokens=12)
    got = me.generate(prefill_fn, step_fn, model.new_state, ids, max_new_tokens=12,
                      vocab_size=model.config.vocab_size)
    assert torch.equal(got, want)


@pytest.mark.slow
def test_aot_inductor_package_runs(model, tmp_path):
    package = aot_compile(export_program(model, "decode"), tmp_path / "decode_aoti.pt2")
    runner = load_aot(package)
    ids = torch.randint(0, CFG["vocab_size"], (3, 1))
    state = _random_state(model, 3)
    logits, conv, ssm = runner(ids, *state)
    want, want_state = model.step(ids[:, 0], state)
    assert rel_err(logits, want) <= 1e-5 and rel_err(ssm, want_state.ssm) <= 1e-5
    # a CPU package loads without the child-process probe of CUDA packages; the probe itself
    # (a real child process) loads it too
    from mamba_export.export import programs

    assert not programs._is_cuda_package(package)
    programs._probe_load(package)


def test_cuda_aoti_package_whose_probe_dies_gives_an_error(tmp_path, monkeypatch):
    """A CUDA package (it holds .cubin files) is first loaded in a child process: a child killed
    by a signal (the H100 machine's torch 2.11.0+cu130 segfaulted loading any CUDA package) is an
    error naming the package and what to use instead, not a crash of this process."""
    from mamba_export.export import programs

    package = tmp_path / "decode_aoti.pt2"
    with zipfile.ZipFile(package, "w") as archive:
        archive.writestr("decode_aoti/data/aotinductor/model/kernel.cubin", b"")
    calls = []

    def child(cmd, **kwargs):
        calls.append(cmd)
        return subprocess.CompletedProcess(cmd, -11, "", "Fatal Python error: Segmentation fault\n")

    monkeypatch.setattr(programs.subprocess, "run", child)
    with pytest.raises(RuntimeError, match=r"could not load the CUDA AOTInductor package .*killed by signal 11 "
                                           r"\(Fatal Python error: Segmentation fault\).*ONNX"):
        load_aot(package)
    assert len(calls) == 1 and calls[0][-1] == str(package)
    not_a_package = tmp_path / "prefill_aoti.pt2"
    not_a_package.write_bytes(b"not a zip archive")
    with pytest.raises(ValueError, match="not an AOTInductor package"):
        load_aot(not_a_package)


def test_mamba2_compiles_without_breaks_or_recompiles_and_trains():
    torch._dynamo.reset()
    counters.clear()
    cfg = me.MambaConfig(layer="Mamba2", d_model=32, n_layer=2, vocab_size=50, d_state=8,
                         headdim=16, ngroups=2, chunk_size=4)
    model = me.MambaLM(cfg).eval()
    backend = torch._dynamo.testing.CompileCounterWithBackend("inductor")
    compiled = compile_model(model, backend=backend)
    with torch.no_grad():
        for batch, length in ((2, 3), (3, 7), (4, 9)):
            ids = torch.randint(0, 50, (batch, length))
            state = _random_state(model, batch)
            assert rel_err(compiled(ids), model(ids)) < 1e-5
            assert rel_err(compiled.prefill(ids, state)[0], model.prefill(ids, state)[0]) < 1e-5
            tokens = ids[:, 0].contiguous()
            assert rel_err(compiled.step(tokens, state)[0], model.step(tokens, state)[0]) < 1e-5
    assert sum(counters["graph_break"].values()) == 0 and backend.frame_count == 3
    trained = me.MambaLM(cfg, initialize=False)
    trained.load_state_dict(model.state_dict())
    ids = torch.randint(0, 50, (2, 9))
    for m, f in ((model, model), (trained, torch.compile(trained, fullgraph=True))):
        m.train()
        f(ids).logsumexp(-1).mean().backward()
    for (name, p), q in zip(model.named_parameters(), trained.parameters()):
        assert rel_err(q.grad, p.grad) < 1e-4, name


def test_compiled_scan_takes_the_gluon_op_where_that_kernel_serves(monkeypatch):
    """Where the Gluon scan serves a call (Hopper), compiled code calls it through the opaque op
    mamba_export::_selective_scan_gluon (Inductor cannot schedule Gluon kernels itself). Here
    the routing is forced on CPU, where the op runs the Triton kernels in the interpreter: the
    compiled graph holds that op and gives the float64 reference's numbers."""
    args = scan_inputs(2, 5, 9, 4, dtype=torch.float32, seed=3)
    assert not scan_kernels.gluon_for_inductor(args["u"], args["delta"], args["A"], args["B"],
                                               args["C"])  # (not on a CPU tensor)
    monkeypatch.setattr(me.ops, "_runs_triton", lambda t: True)
    monkeypatch.setattr(scan_kernels, "gluon_for_inductor", lambda *a: True)
    torch._dynamo.reset()
    backend = torch._dynamo.testing.AotEagerAndRecordGraphs()
    scan = torch.compile(lambda kw: torch.ops.mamba_export.selective_scan(**kw), backend=backend,
                         fullgraph=True)
    out, last = scan(args)
    assert "mamba_export._selective_scan_gluon" in "\n".join(g.code for g in backend.fw_graphs)
    want_out, want_last = ref.selective_scan(**{k: v.double() if isinstance(v, torch.Tensor) else v
                                               for k, v in args.items()})
    assert rel_err(out, want_out) < 1e-5 and rel_err(last, want_last) < 1e-5


def test_export_through_the_kernel_branches_keeps_sizes_dynamic():
    """A CUDA model's export traces the ops' Triton branches, whose launchers pick kernels from
    the sizes; those comparisons must record no guards there (they narrowed the dynamic batch
    and length: ConstraintViolationError on the H100). Simulated on CPU in a fresh process
    (tests/_export_kernel_branches.py): both graphs of a Mamba-1 and a Mamba-2 model export and
    then run at other sizes with eager's numbers."""
    rows = [json.loads(line) for line in run_compiler_script("_export_kernel_branches.py").splitlines()
            if line.startswith("{")]
    assert {(r["model"], r["graph"]) for r in rows} == {
        (m, g) for m in ("mamba1", "mamba2") for g in ("prefill", "decode")}
    for r in rows:
        assert r["error"] is None, r
        assert r["logits"] < 1e-5 and r["ssm"] < 1e-5, r

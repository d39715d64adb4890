"""The Mamba-2 SSDScan TensorRT plugin (plugins/ssd_scan.py), without TensorRT.

- CPU: ``compile_ssd_scan_ptx`` gives PTX for sm_90 and sm_80 (fp32/bf16/fp16) without a GPU;
  the tactics are the launcher's default configs; the plugin's SIGNATURE equals the exported
  ``mamba_export::SSDScan`` node's; the TensorRT-order wrapper, run under Triton's interpreter
  with the plugin's argument order and grid, matches the float64 reference; the registration and
  AOT functions run against a stand-in ``tensorrt.plugin`` (a fake: the real API is not here);
  without TensorRT everything raises the "TensorRT >= 10.10" error.
- GPU (``-m gpu``): the PTX, loaded and launched through the CUDA driver exactly as TensorRT
  launches an AOT plugin, matches the float64 reference on odd shapes.
- Engines: none here; ``test_engines_match_eager_mamba2`` skips unless ``tensorrt`` imports.
"""

from __future__ import annotations

import sys
import types

import pytest
import torch
import torch.nn.functional as F

from mamba_export.plugins import _ptx
from mamba_export.plugins import ssd_scan as plug
from mamba_export.plugins.ssd_scan import (
    KERNEL_ARGS,
    SIGNATURE,
    TensorRTUnavailableError,
    compile_ssd_scan_ptx,
    launch_grid,
)

from _util import DriverKernel, check_engines_match_eager, rel_err

pytest.importorskip("triton")

# (dtype, arch, dstate, headdim, tactic, ptx_version) compiled by the CPU tests
CPU_VARIANTS = [(dt, arch, 16, 24, 1, None) for dt in plug.TYPES for arch in (90, 80)]
CPU_VARIANTS += [("float32", 90, 5, None, 2, 80), ("float32", 90, 5, 24, 2, 80)]


@pytest.fixture(scope="module", autouse=True)
def _precompiled():
    # with TRITON_INTERPRET=1 (CPU runs) the variants compile in one clean subprocess
    plug.precompile([dict(dtype=d, arch=a, dstate=n, headdim=p, tactic=t, ptx_version=v)
                     for d, a, n, p, t, v in CPU_VARIANTS])


# ------------------------------------------------------------------------------ CPU: AOT PTX
@pytest.mark.parametrize("dtype", plug.TYPES)
@pytest.mark.parametrize("arch", [90, 80])
def test_compile_ptx_without_gpu(dtype, arch):
    import re

    ptx, name, launch = compile_ssd_scan_ptx(dtype, arch, dstate=16, headdim=24)
    assert re.search(r"^\.version \d+\.\d+$", ptx, re.M), "no .version line"
    assert re.search(rf"^\.target sm_{arch}a?$", ptx, re.M), re.findall(r"^\.target.*", ptx, re.M)
    entry = re.search(r"\.visible \.entry (\w+)\((.*?)\)", ptx, re.S)
    assert entry and entry.group(1) == name
    assert name.startswith("mamba_export_ssd_scan_") and name.endswith(f"_sm{arch}")
    params = [p for p in entry.group(2).split(",") if p.strip()]
    # TensorRT's AOT order: 6 input pointers, 3 int32 scalars, 2 output pointers; nothing more
    assert len(params) == len(KERNEL_ARGS) == 11
    assert ["u32" if ".u32" in p else "u64" for p in params] == ["u64"] * 6 + ["u32"] * 3 + ["u64"] * 2
    assert launch["args"] == KERNEL_ARGS == ("x", "dt", "A", "B", "C", "initial_state",
                                             "length", "heads", "headdim", "y", "final_state")
    assert launch["block"] == (32 * launch["num_warps"], 1, 1)
    # the launcher's sizing: tactic 1 = 64-wide P blocks, narrowed to next_pow2(24) = 32
    assert (launch["block_t"], launch["block_p"], launch["block_n"]) == (64, 32, 16)
    assert launch["shared_mem"] > 0 and launch["arch"] == arch and launch["dtype"] == dtype
    assert launch_grid(launch, batch=3, heads=5, headdim=24) == (1, 5, 3)
    assert launch_grid(launch, batch=1, heads=2, headdim=33) == (2, 2, 1)


def test_compile_ptx_tactic_cap_and_validation():
    ptx, name, launch = compile_ssd_scan_ptx("float32", 90, dstate=5, headdim=None, tactic=2,
                                             ptx_version=80)
    assert launch["ptx_version"] == "8.0" and "\n.version 8.0\n" in ptx
    assert (launch["block_p"], launch["block_n"], launch["tactic"]) == (32, 16, 2)
    for bad, match in [(dict(dtype="float64"), "dtype"), (dict(dstate=0), "dstate"),
                       (dict(headdim=0), "headdim"), (dict(tactic=3), "tactic")]:
        kw = dict(dtype="float32", arch=90, dstate=4) | bad
        with pytest.raises(ValueError, match=match):
            compile_ssd_scan_ptx(**kw)


def test_tactics_are_the_launchers_default_configs():
    from mamba_export.kernels.ssd_scan import default_config

    assert plug.tactic_config(1) == default_config(batch=8, heads=24)   # batch * heads >= 64
    assert plug.tactic_config(2) == default_config(batch=1, heads=24)
    assert plug.tactic_config(1) != plug.tactic_config(2)
    for tactic in plug.TACTICS:
        block_t, block_p, _, num_stages = plug.tactic_config(tactic)
        assert num_stages >= 2 or block_t <= block_p  # never the Triton 3.6 miscompile
    cfg = plug.tactic_config(1)
    assert plug.block_sizes(cfg, dstate=128, headdim=64) == (64, 128)
    assert plug.block_sizes(cfg, dstate=5, headdim=8) == (16, 16)      # tl.dot needs >= 16
    assert plug.block_sizes(cfg, dstate=16, headdim=None) == (cfg[1], 16)


# ------------------------------------------------------------------------------ CPU: signature
def test_plugin_signature_matches_onnx_node(tmp_path):
    onnx = pytest.importorskip("onnx")
    pytest.importorskip("onnxscript")
    import mamba_export as me
    from mamba_export.export.onnx import export_onnx

    torch.manual_seed(0)
    cfg = me.MambaConfig(layer="Mamba2", d_model=32, n_layer=1, vocab_size=32, d_state=8,
                         d_conv=3, headdim=16, ngroups=2)
    model = me.MambaLM(cfg).eval()
    path = tmp_path / "prefill.onnx"
    export_onnx(model, "prefill", path)
    m = onnx.shape_inference.infer_shapes(onnx.load(str(path)))
    namespace, name = SIGNATURE["plugin_id"].split("::")
    (node,) = [n for n in m.graph.node if (n.domain, n.op_type) == (namespace, name)]
    (fn,) = [f for f in m.functions if (f.domain, f.name) == (namespace, name)]
    assert tuple(fn.input) == plug.INPUT_NAMES and tuple(fn.output) == plug.OUTPUT_NAMES
    assert not list(fn.attribute) and not list(fn.attribute_proto) and not list(node.attribute)
    assert SIGNATURE["attributes"] == () and plug.ATTRIBUTE_NAMES == ()
    assert len(node.input) == len(plug.INPUT_NAMES) and len(node.output) == len(plug.OUTPUT_NAMES)
    # dt reaches the node discretised (softplus / clip before it): no bias, softplus or clamp
    # in the kernel; B/C reach it per head (static dim == heads, checked below)
    producers = {o: n for n in m.graph.node for o in n.output}
    assert producers[node.input[1]].op_type in ("Softplus", "Clip")
    # the node's tensors as ONNX Runtime computes them (the exporter records no shape for y):
    # dtypes, and shapes against the declared symbols bound once
    ort = pytest.importorskip("onnxruntime")
    inits = {t.name: t for t in m.graph.initializer}
    elem = {v.name: v.type.tensor_type.elem_type for v in m.graph.value_info}
    tensors = list(node.input) + list(node.output)
    m.graph.output.extend(onnx.helper.make_tensor_value_info(t, elem[t], None)
                          for t in tensors if t not in inits)
    batch, length = 2, 7
    state = model.new_state(batch)
    feeds = {"input_ids": torch.randint(0, cfg.vocab_size, (batch, length)).numpy(),
             "conv_state": state.conv.numpy(), "ssm_state": state.ssm.numpy()}
    sess = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])
    got = dict(zip([o.name for o in sess.get_outputs()], sess.run(None, feeds)))
    onnx_names = {onnx.TensorProto.FLOAT: "float32", onnx.TensorProto.FLOAT16: "float16",
                  onnx.TensorProto.BFLOAT16: "bfloat16"}
    sizes = {"batch": batch, "length": length, "heads": cfg.nheads, "headdim": cfg.headdim,
             "dstate": cfg.d_state}
    assert cfg.ngroups < cfg.nheads  # B/C arrive expanded to heads: the expansion is exercised
    t_seen = set()
    for tensor, (decl_name, decl_dtype, decl_shape) in zip(
            tensors, SIGNATURE["inputs"] + SIGNATURE["outputs"]):
        if tensor in inits:
            dtype, shape = onnx_names[inits[tensor].data_type], tuple(inits[tensor].dims)
        else:
            dtype, shape = str(got[tensor].dtype), got[tensor].shape
        if decl_dtype == "T":
            t_seen.add(dtype)
            assert dtype in SIGNATURE["types"]
        else:
            assert dtype == decl_dtype, (decl_name, dtype)
        assert shape == tuple(sizes[d] for d in decl_shape), (decl_name, shape, decl_shape)
    assert len(t_seen) == 1
    # the registration functions take exactly the declared inputs (no attributes), in order
    assert _ptx.python_signature_of(plug.ssd_scan_desc) == plug.INPUT_NAMES
    assert _ptx.python_signature_of(plug.ssd_scan_autotune) == plug.INPUT_NAMES + ("outputs",)
    assert _ptx.python_signature_of(plug.ssd_scan_aot_impl) == plug.INPUT_NAMES + ("outputs", "tactic")


def test_plugin_module_has_no_postponed_annotations():
    import inspect

    src = inspect.getsource(plug)
    assert "from __future__ import annotations" not in src.split('"""', 2)[2]


# ------------------------------------------------------------------------------ shapes, inputs
# (batch, length, heads, headdim, dstate, groups): L not a multiple of BLOCK_T (64), headdim not
# a multiple of BLOCK_P, G > 1, batch 1; the last has Mamba-2's P = 64, N = 128
SHAPES = [
    (1, 77, 4, 24, 16, 2),
    (2, 150, 6, 40, 32, 3),
    (3, 5, 2, 16, 8, 2),
    (1, 300, 8, 64, 128, 2),
]


def ssd_node_inputs(batch, length, heads, headdim, dstate, groups, dtype, device="cpu", seed=0):
    """Fresh random inputs of the SSDScan node (dt discretised, B/C per head, all contiguous)
    and the grouped B/C the reference takes; model-like magnitudes."""
    g = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=g, dtype=torch.float64)  # noqa: E731
    B, C = r(batch, length, groups, dstate).to(dtype), r(batch, length, groups, dstate).to(dtype)
    node = dict(
        x=r(batch, length, heads, headdim).to(dtype),
        dt=F.softplus(r(batch, length, heads) * 0.5 - 1.0 + r(heads) * 0.1).float(),
        A=(-torch.rand(heads, generator=g, dtype=torch.float64) * 2 - 0.1).float(),
        B=B.repeat_interleave(heads // groups, dim=2),  # head h reads group h // (H/G)
        C=C.repeat_interleave(heads // groups, dim=2),
        initial_state=r(batch, heads, headdim, dstate).float())
    node = {k: v.to(device).contiguous() for k, v in node.items()}
    return node, B, C


def reference(node, B, C):
    """float64 ``reference.ssd_scan_loop`` on the same (rounded) inputs, grouped B/C, no D/z."""
    from mamba_export.reference import ssd_scan_loop

    d = {k: v.cpu().double() for k, v in node.items()}
    return ssd_scan_loop(d["x"], d["dt"], d["A"], B.double(), C.double(),
                         initial_state=d["initial_state"])


def poisoned_outputs(node):
    x, h0 = node["x"], node["initial_state"]
    return {"y": torch.full_like(x, float("nan")), "final_state": torch.full_like(h0, float("nan"))}


# ------------------------------------------------------------------------------ CPU: interpreter
INTERP_TOL = {"float32": 1e-5, "float16": 5e-3, "bfloat16": 1e-2}  # interpreter truncates bf16


@pytest.mark.interpret  # keeps TRITON_INTERPRET=1 where conftest set it (Triton imported so)
@pytest.mark.skipif(torch.cuda.is_available(), reason="CPU stand-in for test_ptx_launch_matches_reference, "
                    "which launches the real PTX on a GPU (Triton 3.6's interpreter fails on this wrapper)")
@pytest.mark.parametrize("dtype", plug.TYPES)
def test_wrapper_in_interpreter_matches_reference(dtype):
    """The TensorRT-order wrapper (the PTX's source) under Triton's interpreter, called with the
    plugin's argument order, scalars, grid and constexprs: checks the stride derivation and the
    kernel options the node implies. Not the PTX (see the GPU test)."""
    tdt = getattr(torch, dtype)
    for i, (batch, length, heads, headdim, dstate, groups) in enumerate(SHAPES[:3]):
        for tactic in plug.TACTICS:
            node, B, C = ssd_node_inputs(batch, length, heads, headdim, dstate, groups, tdt, seed=i)
            outs = poisoned_outputs(node)
            config = plug.tactic_config(tactic)
            block_p, block_n = plug.block_sizes(config, dstate, headdim)
            scalars = {"length": length, "heads": heads, "headdim": headdim}
            args = [{**node, **outs, **scalars}[n] for n in KERNEL_ARGS]
            grid = launch_grid({"block_p": block_p}, batch, heads, headdim)
            plug.interpreted_wrapper()[grid](
                *args, DSTATE=dstate, **plug.dot_constexprs(dtype, interpreted=True),
                BLOCK_T=config[0], BLOCK_P=block_p, BLOCK_N=block_n)
            want_y, want_h = reference(node, B, C)
            e_y, e_h = rel_err(outs["y"], want_y), rel_err(outs["final_state"], want_h)
            assert e_y <= INTERP_TOL[dtype] and e_h <= INTERP_TOL[dtype], (dtype, i, tactic, e_y, e_h)


# ------------------------------------------------------------------------------ CPU: stand-in TRT
class _Dim:
    """A shape expression: an int (build-time constant) or a symbolic name."""

    def __init__(self, value):
        self.value = value

    @property
    def is_constant(self):
        return isinstance(self.value, int)

    def constant_value(self):
        return self.value


class _Desc:
    def __init__(self, dtype, *shape):
        self.dtype, self.shape_expr = dtype, [_Dim(d) for d in shape]


@pytest.fixture
def fake_tensorrt(monkeypatch):
    """Stand-in ``tensorrt`` / ``tensorrt.plugin``: records registrations; launch parameters and
    extra scalars come back as plain values (``("cdiv", dim, k)``, ``("i32", dim)``)."""
    trt = types.ModuleType("tensorrt")
    trt.__version__ = "10.13.0"
    trt.float32, trt.float16, trt.bfloat16 = "fp32", "fp16", "bf16"
    trtp = types.ModuleType("tensorrt.plugin")
    registry = {}

    def decorator(kind):
        def by_id(plugin_id):
            def record(fn):
                registry.setdefault(plugin_id, {})[kind] = fn
                return fn
            return record
        return by_id

    trtp.register, trtp.autotune, trtp.aot_impl = map(decorator, ("register", "autotune", "aot_impl"))
    trtp.TensorDesc = type("TensorDesc", (), {})
    trtp.AutoTuneCombination = lambda io, fmt, tactics: (io, fmt, tactics)
    trtp.KernelLaunchParams = types.SimpleNamespace
    trtp.SymExprs = list
    trtp.SymIntExprs = lambda n: [None] * n
    trtp.SymInt32 = lambda e: ("i32", e.value)
    trtp.cdiv = lambda e, k: ("cdiv", e.value, k)
    trtp._lib = types.SimpleNamespace(QDP_REGISTRY=registry)
    trt.plugin = trtp
    monkeypatch.setitem(sys.modules, "tensorrt", trt)
    monkeypatch.setitem(sys.modules, "tensorrt.plugin", trtp)
    return trt, registry


def test_registration_and_aot_impl_against_stand_in(fake_tensorrt, monkeypatch):
    """Runs the code TensorRT would call (against a fake, so only our side of the contract):
    both plugins register, annotations cover the signature, and the AOT implementation returns
    the compiled PTX with the grid and extra scalars as shape expressions."""
    from mamba_export.plugins import register_plugins

    trt, registry = fake_tensorrt
    assert register_plugins() == ("mamba_export::SelectiveScan", "mamba_export::SSDScan")
    assert register_plugins() == ("mamba_export::SelectiveScan", "mamba_export::SSDScan")
    funcs = registry["mamba_export::SSDScan"]
    assert funcs == {"register": plug.ssd_scan_desc, "autotune": plug.ssd_scan_autotune,
                     "aot_impl": plug.ssd_scan_aot_impl}
    assert set(plug.ssd_scan_aot_impl.__annotations__) == set(plug.INPUT_NAMES) | {
        "outputs", "tactic", "return"}
    (combo,) = plug.ssd_scan_autotune(*[None] * 7)
    assert combo == ("FP32|FP16|BF16, FP32, FP32, FP32|FP16|BF16, FP32|FP16|BF16, FP32, "
                     "FP32|FP16|BF16, FP32", "LINEAR", [1, 2])
    monkeypatch.setitem(_ptx._TARGET, "arch", 90)
    monkeypatch.setitem(_ptx._TARGET, "ptx_version", 80)
    x = _Desc(trt.float32, "batch", "length", 4, 24)
    ins = dict(x=x, dt=_Desc(trt.float32, "batch", "length", 4), A=_Desc(trt.float32, 4),
               B=_Desc(trt.float32, "batch", "length", 4, 5), C=_Desc(trt.float32, "batch", "length", 4, 5),
               initial_state=_Desc(trt.float32, "batch", 4, 24, 5))
    name, ptx, params, extra = plug.ssd_scan_aot_impl(**ins, outputs=None, tactic=2)
    want = compile_ssd_scan_ptx("float32", 90, dstate=5, headdim=24, tactic=2, ptx_version=80)
    assert (name, ptx) == (want[1], want[0])  # TensorRT wants (kernel_name, ptx, ...)
    # grid (ceil(headdim / BLOCK_P), heads, batch): x's shape expressions
    assert (params.grid_x, params.grid_y.value, params.grid_z.value) == (
        ("cdiv", 24, want[2]["block_p"]), 4, "batch")
    assert (params.block_x, params.block_y, params.block_z) == (want[2]["block"][0], 1, 1)
    assert params.shared_mem == want[2]["shared_mem"]
    assert extra == [("i32", "length"), ("i32", 4), ("i32", 24)]  # SCALAR_ARGS, in order
    with pytest.raises(ValueError, match="d_state"):
        plug.ssd_scan_aot_impl(**(ins | {"B": _Desc(trt.float32, "batch", "length", 4, "n")}),
                               outputs=None, tactic=1)


# ------------------------------------------------------------------------------ CPU: errors
def test_clear_errors_without_tensorrt(monkeypatch, tmp_path):
    for mod in [m for m in sys.modules if m == "tensorrt" or m.startswith("tensorrt.")]:
        monkeypatch.delitem(sys.modules, mod)
    monkeypatch.setitem(sys.modules, "tensorrt", None)  # import tensorrt -> ImportError
    from mamba_export.export import tensorrt as trt_export
    from mamba_export.plugins import register_plugins

    with pytest.raises(TensorRTUnavailableError, match=r"TensorRT >= 10\.10"):
        plug.register_plugin()
    with pytest.raises(TensorRTUnavailableError, match=r"TensorRT >= 10\.10"):
        register_plugins()
    (tmp_path / "prefill.onnx").write_bytes(b"")
    with pytest.raises(TensorRTUnavailableError, match=r"TensorRT >= 10\.10"):
        trt_export.build_engine(tmp_path / "prefill.onnx", tmp_path / "prefill.engine",
                                graph="prefill")


# ------------------------------------------------------------------------------ GPU: the PTX
GPU_TOL = {"float32": 1e-5, "bfloat16": 5e-3, "float16": 5e-3}


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", plug.TYPES)
def test_ptx_launch_matches_reference(dtype, tmp_path):
    """The plugin's PTX for this GPU, loaded with cuModuleLoadData (driver JIT, as TensorRT) and
    launched with cuLaunchKernel in KERNEL_ARGS order with the plugin's grid, block and shared
    memory (no Triton launcher), outputs NaN-poisoned, against float64 ssd_scan_loop; both
    tactics, every shape, and BLOCK_P unknown at build time (headdim=None) on the first."""
    major, minor = torch.cuda.get_device_capability()
    arch = major * 10 + minor
    ptx_cap = _ptx.max_ptx_version(_ptx.cuda_driver_version())
    tdt = getattr(torch, dtype)
    cases = [(s, t, s[3]) for s in SHAPES for t in plug.TACTICS]
    cases += [(SHAPES[0], t, None) for t in plug.TACTICS]
    worst = {}
    for i, (shape, tactic, known_headdim) in enumerate(cases):
        batch, length, heads, headdim, dstate, groups = shape
        ptx, name, launch = compile_ssd_scan_ptx(dtype, arch, dstate=dstate, headdim=known_headdim,
                                                 tactic=tactic, ptx_version=ptx_cap)
        kernel = DriverKernel(ptx, name, tmp_path, launch["shared_mem"])
        node, B, C = ssd_node_inputs(*shape, tdt, device="cuda", seed=100 + i)
        outs = poisoned_outputs(node)
        kernel.launch_plugin(launch, launch_grid(launch, batch, heads, headdim), {**node, **outs},
                             {"length": length, "heads": heads, "headdim": headdim})
        want_y, want_h = reference(node, B, C)
        e_y, e_h = rel_err(outs["y"].cpu(), want_y), rel_err(outs["final_state"].cpu(), want_h)
        key = f"t{tactic} {shape} P{'?' if known_headdim is None else ''} smem {launch['shared_mem']}"
        worst[key] = (f"{e_y:.2e}", f"{e_h:.2e}")
        assert e_y <= GPU_TOL[dtype] and e_h <= GPU_TOL[dtype], (dtype, key, e_y, e_h)
    print(f"\n{dtype} sm{arch} PTX {launch['ptx_version']} rel err (y, final_state): {worst}")


# ------------------------------------------------------------------------------ GPU: engines
@pytest.mark.gpu
def test_engines_match_eager_mamba2(tmp_path):
    pytest.importorskip("tensorrt", reason="TensorRT >= 10.10 (pip install tensorrt) is not installed")
    pytest.importorskip("onnxscript")
    import mamba_export as me

    torch.manual_seed(0)
    cfg = me.MambaConfig(layer="Mamba2", d_model=64, n_layer=2, vocab_size=64, d_state=16,
                         d_conv=4, headdim=16, ngroups=2)
    check_engines_match_eager(me.MambaLM(cfg).eval(), tmp_path, format="mamba_ssm")

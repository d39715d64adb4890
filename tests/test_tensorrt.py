"""TensorRT: the scan plugin's AOT kernel, its signature against the ONNX node, the clear errors
without TensorRT, and (where TensorRT >= 10.10 is installed, on a GPU) engines end to end.

- CPU: ``compile_selective_scan_ptx`` gives PTX for sm_90 and sm_80 without a GPU; the plugin's
  declared signature equals the exported ``mamba_export::SelectiveScan`` node's; everything
  TensorRT-dependent raises :class:`TensorRTUnavailableError` naming TensorRT >= 10.10.
- GPU (``-m gpu``): the PTX, loaded and launched through the CUDA driver exactly as TensorRT
  launches an AOT plugin (declared argument order, grid, block, shared memory; no Triton
  launcher), matches the float64 reference on odd shapes.
- Engines (``-m gpu``, skipped unless ``import tensorrt`` works): prefill/decode engines from a
  tiny model's ONNX graphs match the eager model.
"""

from __future__ import annotations

import importlib
import inspect
import re
import sys

import pytest
import torch

from mamba_export.plugins import _ptx
from mamba_export.plugins import selective_scan as plug
from mamba_export.plugins.selective_scan import (
    KERNEL_ARGS,
    SIGNATURE,
    TensorRTUnavailableError,
    compile_selective_scan_ptx,
    launch_grid,
)

from _util import DriverKernel, check_engines_match_eager, rel_err, scan_inputs

pytest.importorskip("triton")


# ------------------------------------------------------------------------------ CPU: AOT PTX
@pytest.fixture(scope="module", autouse=True)
def _precompiled():
    # with TRITON_INTERPRET=1 (CPU runs) the kernels compile in one clean subprocess
    plug.precompile([dict(dtype="float32", arch=90, dstate=16),
                     dict(dtype="bfloat16", arch=80, dstate=16),
                     dict(dtype="float16", arch=90, dstate=16),
                     dict(dtype="float32", arch=90, dstate=5, ptx_version=80)])


@pytest.mark.parametrize("dtype,arch", [("float32", 90), ("bfloat16", 80), ("float16", 90)])
def test_compile_ptx_without_gpu(dtype, arch):
    ptx, name, launch = compile_selective_scan_ptx(dtype, arch, dstate=16)
    assert re.search(r"^\.version \d+\.\d+$", ptx, re.M), "no .version line"
    assert re.search(rf"^\.target sm_{arch}a?$", ptx, re.M), re.findall(r"^\.target.*", ptx, re.M)
    entry = re.search(r"\.visible \.entry (\w+)\((.*?)\)", ptx, re.S)
    assert entry and entry.group(1) == name
    assert name.startswith("mamba_export_selective_scan_") and f"sm{arch}" in name
    params = [p for p in entry.group(2).split(",") if p.strip()]
    # TensorRT's AOT order: 9 input pointers, 2 int32 scalars, 2 output pointers; nothing more
    assert len(params) == len(KERNEL_ARGS) == 13
    kinds = ["u32" if ".u32" in p else "u64" for p in params]
    assert kinds == ["u64"] * 9 + ["u32"] * 2 + ["u64"] * 2
    assert launch["args"] == KERNEL_ARGS
    assert launch["scalar_args"] == ("dim", "length")
    assert launch["block"] == (32 * launch["num_warps"], 1, 1) and launch["num_warps"] == 1
    assert launch["shared_mem"] >= 0 and launch["arch"] == arch
    assert launch_grid(launch, batch=3, dim=37) == (5, 3, 1)


def test_compile_ptx_caps_version_and_validates():
    ptx, _, launch = compile_selective_scan_ptx("float32", 90, dstate=5, ptx_version=80)
    assert launch["ptx_version"] == "8.0" and "\n.version 8.0\n" in ptx
    with pytest.raises(ValueError, match="dtype"):
        compile_selective_scan_ptx("float64", 90, dstate=4)
    with pytest.raises(ValueError, match="dstate"):
        compile_selective_scan_ptx("float32", 90, dstate=0)
    assert plug.max_ptx_version(13000) == 90 and plug.max_ptx_version(12040) == 84
    assert plug.max_ptx_version(None) is None


def test_strip_hidden_params_refuses_used_scratch():
    ptx = (".visible .entry k(\n\t.param .u64 k_param_0,\n\t.param .u64 k_param_1\n)\n{\n"
           "\tld.param.b64 %rd1, [k_param_1];\n}\n")
    with pytest.raises(RuntimeError, match="hidden parameter"):
        _ptx.strip_hidden_params(ptx, "k", 1)
    unused = ptx.replace("[k_param_1]", "[k_param_0]")
    out = _ptx.strip_hidden_params(unused, "k", 1)
    assert "k_param_1" not in out and "k_param_0" in out


# ------------------------------------------------------------------------------ CPU: signature
def test_plugin_signature_matches_onnx_node(tmp_path):
    onnx = pytest.importorskip("onnx")
    pytest.importorskip("onnxscript")
    import mamba_export as me
    from mamba_export.export.onnx import export_onnx

    torch.manual_seed(0)
    model = me.MambaLM(me.MambaConfig(d_model=16, n_layer=1, vocab_size=32, d_state=4,
                                      d_conv=2)).eval()
    path = tmp_path / "prefill.onnx"
    export_onnx(model, "prefill", path)
    m = onnx.shape_inference.infer_shapes(onnx.load(str(path)))
    namespace, name = SIGNATURE["plugin_id"].split("::")
    nodes = [n for n in m.graph.node if (n.domain, n.op_type) == (namespace, name)]
    assert len(nodes) == 1
    node = nodes[0]
    (fn,) = [f for f in m.functions if (f.domain, f.name) == (namespace, name)]
    assert tuple(fn.input) == plug.INPUT_NAMES
    assert tuple(fn.output) == plug.OUTPUT_NAMES
    assert tuple(fn.attribute) + tuple(a.name for a in fn.attribute_proto) == plug.ATTRIBUTE_NAMES
    assert len(node.input) == len(plug.INPUT_NAMES) and len(node.output) == len(plug.OUTPUT_NAMES)
    attr_types = {int: onnx.AttributeProto.INT, float: onnx.AttributeProto.FLOAT,
                  str: onnx.AttributeProto.STRING}
    assert {a.name: a.type for a in node.attribute} == {
        n: attr_types[t] for n, t in SIGNATURE["attributes"]}
    # dtypes and ranks of the node's actual tensors against the declared ones
    infos = {v.name: v.type.tensor_type for v in
             list(m.graph.value_info) + list(m.graph.input) + list(m.graph.output)}
    inits = {t.name: t for t in m.graph.initializer}
    onnx_names = {onnx.TensorProto.FLOAT: "float32", onnx.TensorProto.FLOAT16: "float16",
                  onnx.TensorProto.BFLOAT16: "bfloat16"}
    t_seen = set()
    sizes = {"dim": model.config.d_inner, "dstate": model.config.d_state}
    for tensor, (decl_name, decl_dtype, decl_shape) in zip(
            list(node.input) + list(node.output), SIGNATURE["inputs"] + SIGNATURE["outputs"]):
        if tensor in inits:
            elem, dims = inits[tensor].data_type, list(inits[tensor].dims)
        else:
            tt = infos[tensor]
            elem = tt.elem_type
            dims = [d.dim_value if d.HasField("dim_value") else d.dim_param for d in tt.shape.dim]
        dtype = onnx_names[elem]
        if decl_dtype == "T":
            t_seen.add(dtype)
            assert dtype in SIGNATURE["types"]
        else:
            assert dtype == decl_dtype, (decl_name, dtype)
        assert len(dims) == len(decl_shape), (decl_name, dims, decl_shape)
        for d, sym in zip(dims, decl_shape):
            if sym in sizes:  # static in the model
                assert d == sizes[sym], (decl_name, dims)
    assert len(t_seen) == 1  # one T for all "T" tensors
    # the registration functions take exactly the declared inputs and attributes, in order
    ins_attrs = plug.INPUT_NAMES + plug.ATTRIBUTE_NAMES
    assert plug.python_signature_of(plug.selective_scan_desc) == ins_attrs
    assert plug.python_signature_of(plug.selective_scan_autotune) == ins_attrs + ("outputs",)
    assert plug.python_signature_of(plug.selective_scan_aot_impl) == ins_attrs + ("outputs", "tactic")


def test_plugin_module_has_no_postponed_annotations():
    # tensorrt.plugin reads real annotation objects from the decorated functions
    src = inspect.getsource(plug)
    assert "from __future__ import annotations" not in src.split('"""', 2)[2]


# ------------------------------------------------------------------------------ CPU: errors
@pytest.fixture
def no_tensorrt(monkeypatch):
    for mod in [m for m in sys.modules if m == "tensorrt" or m.startswith("tensorrt.")]:
        monkeypatch.delitem(sys.modules, mod)
    monkeypatch.setitem(sys.modules, "tensorrt", None)  # import tensorrt -> ImportError


def test_clear_errors_without_tensorrt(no_tensorrt, tmp_path):
    importlib.import_module("mamba_export.plugins")
    with pytest.raises(TensorRTUnavailableError, match=r"TensorRT >= 10\.10"):
        plug.register_plugin()
    from mamba_export.export import tensorrt as trt_export
    from mamba_export.runtime.tensorrt import TensorRTRunner

    (tmp_path / "prefill.onnx").write_bytes(b"")
    with pytest.raises(TensorRTUnavailableError, match=r"TensorRT >= 10\.10"):
        trt_export.build_engine(tmp_path / "prefill.onnx", tmp_path / "prefill.engine",
                                graph="prefill")
    with pytest.raises(TensorRTUnavailableError, match=r"TensorRT >= 10\.10"):
        TensorRTRunner.from_artifacts(tmp_path)
    assert issubclass(TensorRTUnavailableError, RuntimeError)


# ------------------------------------------------------------------------------ GPU: the PTX
GPU_SHAPES = [  # (batch, dim, length, dstate): L not a multiple of BLOCK_T, D not of BLOCK_D
    (1, 37, 45, 16),
    (3, 13, 300, 5),
    (2, 24, 17, 1),
]
TOL = {"float32": 1e-5, "bfloat16": 5e-3, "float16": 5e-3}


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", ["float32", "bfloat16", "float16"])
def test_ptx_launch_matches_reference(dtype, tmp_path):
    from mamba_export.reference import selective_scan as ref_scan

    major, minor = torch.cuda.get_device_capability()
    arch = major * 10 + minor
    ptx_cap = plug.max_ptx_version(plug.cuda_driver_version())
    tdt = getattr(torch, dtype)
    worst = {}
    for tactic, cfg in plug.TACTICS.items():
        for batch, dim, length, dstate in GPU_SHAPES:
            ptx, name, launch = compile_selective_scan_ptx(
                dtype, arch, dstate=dstate, block_t=cfg["block_t"], ptx_version=ptx_cap)
            kernel = DriverKernel(ptx, name, tmp_path, launch["shared_mem"])
            args = scan_inputs(batch, dim, length, dstate, dtype=tdt, device="cuda", seed=dim)
            args["initial_state"] = args["initial_state"].float()
            ins = {k: args[k].contiguous() for k in plug.INPUT_NAMES}
            out = torch.full((batch, dim, length), float("nan"), dtype=tdt, device="cuda")
            last = torch.full((batch, dim, dstate), float("nan"), dtype=torch.float32, device="cuda")
            outs = {"out": out, "last_state": last}
            kernel.launch_plugin(launch, launch_grid(launch, batch, dim), {**ins, **outs},
                                 {"dim": dim, "length": length})
            ref = ref_scan(**{k: (v.double() if isinstance(v, torch.Tensor) else v)
                              for k, v in args.items()})
            e_out, e_last = rel_err(out, ref[0]), rel_err(last, ref[1])
            key = f"t{tactic} {batch}x{dim}x{length} N{dstate}"
            worst[key] = (e_out, e_last)
            assert e_out <= TOL[dtype] and e_last <= TOL[dtype], (dtype, key, e_out, e_last)
    print(f"\n{dtype} sm{arch} PTX {launch['ptx_version']} rel err (out, last_state): {worst}")


# ------------------------------------------------------------------------------ GPU: engines
@pytest.mark.gpu
def test_engines_match_eager(tmp_path):
    pytest.importorskip("tensorrt", reason="TensorRT >= 10.10 (pip install tensorrt) is not installed")
    pytest.importorskip("onnxscript")
    import mamba_export as me

    torch.manual_seed(0)
    cfg = me.MambaConfig(d_model=40, n_layer=2, vocab_size=64, d_state=16, d_conv=4)
    check_engines_match_eager(me.MambaLM(cfg).eval(), tmp_path)

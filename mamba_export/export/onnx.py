"""ONNX export of the prefill and decode graphs (``torch.onnx.export(..., dynamo=True)``).

- ``torch.ops.mamba_export.selective_scan`` becomes ONE node ``mamba_export::SelectiveScan``
  (inputs ``u, delta, A, B, C, D, z, delta_bias, initial_state``; outputs ``out, last_state``;
  attribute ``delta_softplus``) that carries a model-local ONNX function of the same name and
  domain, written in standard ops (:mod:`.onnx_scan`): ONNX Runtime runs it by inlining, TensorRT
  can map the node to its plugin. All nine inputs are always present: absent ``D`` /
  ``delta_bias`` / ``initial_state`` are filled with zeros at export (the model passes all of
  them); ``z=None`` and grouped B/C are not exported (the Mamba-1 model uses neither).
- ``causal_conv1d``, ``causal_conv1d_update`` and ``selective_state_update`` become standard ops
  inline: the decode graph has no custom node.

The scan body is chosen by ``scan_body`` (see ``onnx_scan.BODIES``); ``"auto"`` is the one that
measured fastest on the ONNX Runtime CPU provider (docs/BENCHMARKS.md).
"""

from __future__ import annotations

import collections
import os
from pathlib import Path
from typing import Any

import torch

from ..model import MambaLM
from . import onnx_scan
from .graphs import INPUT_NAMES, OUTPUT_NAMES, example_inputs, graph_module
from .programs import dynamic_shapes

AUTO_BODY = "sequential"
EXTERNAL_DATA_THRESHOLD = int(1.5 * (1 << 30))  # bytes of parameters above which weights go external
MIN_OPSET = 18


class OnnxExportError(RuntimeError):
    """The ONNX export failed or produced an invalid model."""


def resolve_scan_body(scan_body: str) -> str:
    body = AUTO_BODY if scan_body == "auto" else scan_body
    onnx_scan.parse_body(body)  # validates
    return body


# --------------------------------------------------------------------------- translations
def _translations(opset: int) -> dict:
    """aten/custom op -> onnxscript function; built lazily (onnxscript is an optional dependency)."""
    import onnxscript
    from onnxscript import ir

    op = onnxscript.opset18
    onnx_scan.register_schema()
    mamba_opset = onnxscript.values.Opset(onnx_scan.DOMAIN, 1)

    FLOAT = ir.DataType.FLOAT

    def _f(x):
        return x if x.dtype == FLOAT else op.Cast(x, to=FLOAT.value)

    def _back(x, like):
        return x if like.dtype == FLOAT else op.CastLike(x, like)

    def _axes(*a):
        return op.Constant(value_ints=list(a))

    def selective_scan(u, delta, A, B, C, D=None, z=None, delta_bias=None,
                       delta_softplus: bool = False, initial_state=None):
        if z is None:
            raise NotImplementedError("ONNX export of selective_scan needs z (the Mamba-1 gate)")
        if len(B.shape) != 3 or len(C.shape) != 3:
            raise NotImplementedError("ONNX export of selective_scan supports ungrouped B/C [B, N, L]")
        zeros_d = op.ConstantOfShape(op.Shape(A, start=0, end=1), value=ir.tensor([0.0], dtype=FLOAT))
        if D is None:
            D = zeros_d
        if delta_bias is None:
            delta_bias = zeros_d
        if initial_state is None:
            shape = op.Concat(op.Shape(u, start=0, end=2), op.Shape(A, start=1, end=2), axis=0)
            initial_state = op.ConstantOfShape(shape, value=ir.tensor([0.0], dtype=FLOAT))
        return mamba_opset.SelectiveScan(u, delta, A, B, C, D, z, delta_bias, initial_state,
                                         delta_softplus=int(bool(delta_softplus)))

    def causal_conv1d(x, weight, bias=None, initial_state=None, silu: bool = False):
        dim, width = weight.shape[0], weight.shape[1]
        if not isinstance(dim, int) or not isinstance(width, int):
            raise NotImplementedError("causal_conv1d export needs a static weight shape")
        if initial_state is None:
            shape = op.Concat(op.Shape(x, start=0, end=2), op.Constant(value_ints=[width - 1]), axis=0)
            initial_state = op.ConstantOfShape(shape, value=ir.tensor([0.0], dtype=FLOAT))
        padded = op.Concat(op.CastLike(initial_state, x), x, axis=2)
        w = op.Unsqueeze(_f(weight), _axes(1))
        inputs = [_f(padded), w] + ([] if bias is None else [_f(bias)])
        out = op.Conv(*inputs, group=dim, kernel_shape=[width])
        if silu:
            out = op.Mul(out, op.Sigmoid(out))
        final = op.Slice(padded, _axes(-(width - 1)), _axes(2**62), _axes(2))
        return _back(out, x), final

    def causal_conv1d_update(x, conv_state, weight, bias=None, silu: bool = False):
        width = weight.shape[1]
        window = op.Concat(op.CastLike(conv_state, x), op.Unsqueeze(x, _axes(2)), axis=2)
        taps = op.Slice(window, _axes(-width), _axes(2**62), _axes(2))
        out = op.ReduceSum(op.Mul(_f(taps), _f(weight)), _axes(2), keepdims=0)
        if bias is not None:
            out = op.Add(out, _f(bias))
        if silu:
            out = op.Mul(out, op.Sigmoid(out))
        new_state = op.Slice(window, _axes(1), _axes(2**62), _axes(2))
        return _back(out, x), new_state

    def selective_state_update(state, x, dt, A, B, C, D=None, z=None, dt_bias=None,
                               dt_softplus: bool = False):
        if len(B.shape) != 2 or len(C.shape) != 2:
            raise NotImplementedError("ONNX export of selective_state_update supports ungrouped B/C [B, N]")
        dtf = _f(dt)
        if dt_bias is not None:
            dtf = op.Add(dtf, _f(dt_bias))
        if dt_softplus:
            dtf = op.Softplus(dtf)
        xf = _f(x)
        decay = op.Exp(op.Mul(op.Unsqueeze(dtf, _axes(2)), _f(A)))            # [B, D, N]
        drive = op.Mul(op.Unsqueeze(op.Mul(dtf, xf), _axes(2)), op.Unsqueeze(_f(B), _axes(1)))
        new_state = op.Add(op.Mul(_f(state), decay), drive)
        y = op.ReduceSum(op.Mul(new_state, op.Unsqueeze(_f(C), _axes(1))), _axes(2), keepdims=0)
        if D is not None:
            y = op.Add(y, op.Mul(xf, _f(D)))
        if z is not None:
            zf = _f(z)
            y = op.Mul(y, op.Mul(zf, op.Sigmoid(zf)))
        return _back(y, x), (new_state if state.dtype == FLOAT else op.CastLike(new_state, state))

    ops = torch.ops.mamba_export
    return {
        ops.selective_scan.default: selective_scan,
        ops.causal_conv1d.default: causal_conv1d,
        ops.causal_conv1d_update.default: causal_conv1d_update,
        ops.selective_state_update.default: selective_state_update,
    }


# --------------------------------------------------------------------------- post-processing
_SCAN_KEY = (onnx_scan.DOMAIN, onnx_scan.NAME, "")


def _install_scan_function(model, body: str, opset: int) -> int:
    """Replace the placeholder function by the real body; returns the body's node count."""
    from onnxscript import ir

    key = _SCAN_KEY
    if not any(n.domain == onnx_scan.DOMAIN for n in model.graph):
        return 0
    proto = onnx_scan.build_function(body, opset)
    model.functions[key] = ir.serde.deserialize_function(proto)
    model.opset_imports.setdefault(onnx_scan.DOMAIN, 1)
    return sum(1 for _ in _iter_nodes(proto.node))


def _iter_nodes(nodes):
    import onnx

    for n in nodes:
        yield n
        for a in n.attribute:
            if a.type == onnx.AttributeProto.GRAPH:
                yield from _iter_nodes(a.g.node)


def _param_bytes(model: MambaLM) -> int:
    seen, total = set(), 0
    for p in model.parameters():
        if p.data_ptr() not in seen:
            seen.add(p.data_ptr())
            total += p.numel() * p.element_size()
    return total


def graph_facts(path: str | os.PathLike) -> dict[str, Any]:
    """Node counts of a saved ONNX model (main graph by op, functions)."""
    import onnx

    m = onnx.load(str(path), load_external_data=False)
    counts = collections.Counter(
        (n.domain or "ai.onnx") + "::" + n.op_type for n in m.graph.node)
    custom = {k: v for k, v in counts.items() if not k.startswith("ai.onnx::")}
    return {
        "nodes": len(m.graph.node),
        "custom_nodes": custom,
        "functions": {f"{f.domain}::{f.name}": sum(1 for _ in _iter_nodes(f.node)) for f in m.functions},
    }


# --------------------------------------------------------------------------- export
def export_onnx(model: MambaLM, graph: str, path: os.PathLike, *, opset: int = 18,
                scan_body: str = "auto", external_data: bool | None = None,
                optimize: bool = True) -> dict[str, Any]:
    """Export ``graph`` ("prefill" | "decode") of ``model`` to ONNX at ``path``; returns facts
    for the manifest (opset, scan_body, node counts, external_data). Validated with
    ``onnx.checker.check_model(path, full_check=True)``."""
    import onnx

    if opset < MIN_OPSET:
        raise ValueError(f"opset must be >= {MIN_OPSET}, got {opset}")
    body = resolve_scan_body(scan_body)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if external_data is None:
        external_data = _param_bytes(model) > EXTERNAL_DATA_THRESHOLD
    module = graph_module(model, graph).eval()
    args = example_inputs(model, graph)
    with torch.no_grad():
        try:
            program = torch.onnx.export(
                module, args, dynamo=True, opset_version=opset,
                input_names=list(INPUT_NAMES), output_names=list(OUTPUT_NAMES),
                dynamic_shapes=dynamic_shapes(graph),
                custom_translation_table=_translations(opset),
                optimize=False, verbose=False, report=False)
        except Exception as e:
            raise OnnxExportError(f"torch.onnx.export of the {graph} graph failed: {e}") from e
    body_nodes = _install_scan_function(program.model, body, opset)
    if optimize:
        import onnxscript.optimizer

        onnxscript.optimizer.optimize(program.model, inline=False)
    for stale in (path, path.with_name(path.name + ".data")):
        if stale.exists():
            stale.unlink()
    program.save(str(path), external_data=bool(external_data))
    try:
        onnx.checker.check_model(str(path), full_check=True)
    except Exception as e:
        raise OnnxExportError(f"{path} fails onnx.checker (full check): {e}") from e
    facts = graph_facts(path)
    return {
        "opset": opset,
        "scan_body": body if graph == "prefill" else None,
        "scan_body_nodes": body_nodes if graph == "prefill" else None,
        "nodes": facts["nodes"],
        "custom_nodes": facts["custom_nodes"],
        "external_data": bool(external_data),
        "external_data_file": path.name + ".data" if external_data else None,
    }

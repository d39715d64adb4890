"""ONNX export of the prefill and decode graphs (``torch.onnx.export(..., dynamo=True)``).

Mamba-1:

- ``torch.ops.mamba_export.selective_scan`` becomes ONE node ``mamba_export::SelectiveScan``
  (inputs ``u, delta, A, B, C, D, z, delta_bias, initial_state``; outputs ``out, last_state``;
  attribute ``delta_softplus``) that carries a model-local ONNX function of the same name and
  domain, written in standard ops (:mod:`.onnx_scan`): ONNX Runtime runs it by inlining, TensorRT
  can map the node to its plugin. All nine inputs are always present: absent ``D`` /
  ``delta_bias`` / ``initial_state`` are filled with zeros at export (the model passes all of
  them); ``z=None`` and grouped B/C are not exported (the Mamba-1 model uses neither).
- ``causal_conv1d``, ``causal_conv1d_update`` and ``selective_state_update`` become standard ops
  inline: the decode graph has no custom node.

Mamba-2:

- ``torch.ops.mamba_export.ssd_scan`` becomes standard ops for the discretisation (dt_bias,
  softplus, dt_limit clamp), the group -> head expansion of B/C, D and the z gate, around ONE
  node ``mamba_export::SSDScan(x, dt, A, B, C, initial_state) -> (y, final_state)`` (float32, no
  attributes) carrying a model-local function (:mod:`.onnx_ssd`).
- ``ssd_state_update`` becomes standard ops inline: the decode graph has no custom node.

The scan body is chosen by ``scan_body`` (Mamba-1: ``onnx_scan.BODIES``; Mamba-2:
``onnx_ssd.BODIES``); ``"auto"`` is the one that measured fastest on the ONNX Runtime CPU
provider for the model's layer kind (docs/BENCHMARKS.md).
"""

from __future__ import annotations

import collections
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..model import MambaLM
from . import onnx_scan, onnx_ssd
from .graphs import INPUT_NAMES, OUTPUT_NAMES, example_inputs, graph_module
from .programs import dynamic_shapes

AUTO_BODY = "sequential"        # Mamba-1 SelectiveScan
AUTO_SSD_BODY = "chunked64"     # Mamba-2 SSDScan
EXTERNAL_DATA_THRESHOLD = int(1.5 * (1 << 30))  # bytes of parameters above which weights go external
MIN_OPSET = 18


class OnnxExportError(RuntimeError):
    """The ONNX export failed or produced an invalid model."""


def resolve_scan_body(scan_body: str, layer: str = "Mamba1") -> str:
    """``scan_body`` ("auto" or a body name) for a model of ``layer`` kind; validated."""
    if layer == "Mamba2":
        body = AUTO_SSD_BODY if scan_body == "auto" else scan_body
        onnx_ssd.parse_body(body)
    else:
        body = AUTO_BODY if scan_body == "auto" else scan_body
        onnx_scan.parse_body(body)
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

    # ---- Mamba-2 (SSD)
    onnx_ssd.register_schema()
    DOUBLE = ir.DataType.DOUBLE

    def _ssd_dt(dt, dt_bias, dt_softplus, dt_limit):
        """reference.ssd_discretize_dt: + bias, softplus, clamp (unless the limit is (0, inf))."""
        dtf = _f(dt)
        if dt_bias is not None:
            dtf = op.Add(dtf, _f(dt_bias))
        if dt_softplus:
            dtf = op.Softplus(dtf)
        if dt_limit is not None and tuple(float(v) for v in dt_limit) != (0.0, float("inf")):
            lo, hi = float(dt_limit[0]), float(dt_limit[1])
            dtf = op.Clip(dtf, op.Constant(value_float=lo),
                          op.Constant(value_float=min(hi, float(np.finfo(np.float32).max))))
        return dtf

    def _ssd_heads(bc, heads: int, axis: int):
        """B/C with groups on ``axis`` (the second-to-last) -> heads (head h reads group
        h // (H/G)), float32."""
        groups, dstate = bc.shape[axis], bc.shape[axis + 1]
        if not isinstance(groups, int) or not isinstance(dstate, int):
            raise NotImplementedError("Mamba-2 export needs static ngroups and d_state")
        bc = _f(bc)
        if groups == heads:
            return bc
        rep = heads // groups
        e = op.Unsqueeze(bc, _axes(axis + 1))                                  # [.., G, 1, N]
        e = op.Expand(e, op.Constant(value_ints=[1] * axis + [groups, rep, dstate]))
        return op.Reshape(e, op.Constant(value_ints=[0] * axis + [heads, dstate]))

    def _ssd_finish(y, xf, D, z, like):
        """y + D x, then the optional z gate (reference._ssd_finish); back to x's dtype."""
        if D is not None:
            Df = _f(D)
            if len(D.shape) == 1:
                Df = op.Unsqueeze(Df, _axes(1))                                # [H, 1]
            y = op.Add(y, op.Mul(xf, Df))
        if z is not None:
            zf = _f(z)
            y = op.Mul(y, op.Mul(zf, op.Sigmoid(zf)))
        return _back(y, like)

    def _ssd_state_out(h, x, initial_state):
        if initial_state is not None:
            return _back(h, initial_state)
        return op.CastLike(h, x) if x.dtype == DOUBLE else h

    def ssd_scan(x, dt, A, B, C, chunk_size: int = 256, D=None, z=None, dt_bias=None,
                 initial_state=None, dt_softplus: bool = False, dt_limit=None):
        heads = x.shape[2]
        if not isinstance(heads, int):
            raise NotImplementedError("Mamba-2 export needs a static number of heads")
        dtf = _ssd_dt(dt, dt_bias, dt_softplus, dt_limit)                    # [b, L, H]
        xf = _f(x)                                                            # [b, L, H, P]
        if initial_state is None:
            shape = op.Concat(op.Shape(x, start=0, end=1), op.Shape(x, start=2, end=4),
                              op.Shape(B, start=3, end=4), axis=0)
            h0 = op.ConstantOfShape(shape, value=ir.tensor([0.0], dtype=FLOAT))
        else:
            h0 = _f(initial_state)
        y, h_last = mamba_opset.SSDScan(xf, dtf, _f(A), _ssd_heads(B, heads, 2),
                                        _ssd_heads(C, heads, 2), h0)
        return _ssd_finish(y, xf, D, z, x), _ssd_state_out(h_last, x, initial_state)

    def ssd_state_update(state, x, dt, A, B, C, D=None, z=None, dt_bias=None,
                         dt_softplus: bool = False, dt_limit=None):
        heads = x.shape[1]
        if not isinstance(heads, int):
            raise NotImplementedError("Mamba-2 export needs a static number of heads")
        dtf = _ssd_dt(dt, dt_bias, dt_softplus, dt_limit)                    # [b, H]
        xf = _f(x)                                                            # [b, H, P]
        Bh, Ch = _ssd_heads(B, heads, 1), _ssd_heads(C, heads, 1)             # [b, H, N]
        decay = op.Unsqueeze(op.Exp(op.Mul(dtf, _f(A))), _axes(2, 3))       # [b, H, 1, 1]
        xdt = op.Mul(xf, op.Unsqueeze(dtf, _axes(2)))                        # [b, H, P]
        drive = op.Mul(op.Unsqueeze(xdt, _axes(3)), op.Unsqueeze(Bh, _axes(2)))
        new_state = op.Add(op.Mul(_f(state), decay), drive)                   # [b, H, P, N]
        y = op.ReduceSum(op.Mul(new_state, op.Unsqueeze(Ch, _axes(2))), _axes(3), keepdims=0)
        return _ssd_finish(y, xf, D, z, x), _back(new_state, state)

    ops = torch.ops.mamba_export
    return {
        ops.selective_scan.default: selective_scan,
        ops.causal_conv1d.default: causal_conv1d,
        ops.causal_conv1d_update.default: causal_conv1d_update,
        ops.selective_state_update.default: selective_state_update,
        ops.ssd_scan.default: ssd_scan,
        ops.ssd_state_update.default: ssd_state_update,
    }


# --------------------------------------------------------------------------- post-processing
_BUILDERS = {  # (domain, op_type) -> function builder(body, opset)
    (onnx_scan.DOMAIN, onnx_scan.NAME): onnx_scan.build_function,
    (onnx_ssd.DOMAIN, onnx_ssd.NAME): onnx_ssd.build_function,
}


def _install_scan_function(model, body: str, opset: int) -> int:
    """Attach the real function body to every custom scan node kind in the graph (replacing any
    placeholder); returns the body's node count (0 when the graph has no custom node)."""
    from onnxscript import ir

    present = {(n.domain, n.op_type) for n in model.graph if n.domain == onnx_scan.DOMAIN}
    total = 0
    for key in sorted(present):
        if key not in _BUILDERS:
            raise OnnxExportError(f"no ONNX function body for the custom node {key[0]}::{key[1]}")
        proto = _BUILDERS[key](body, opset)
        model.functions[(*key, "")] = ir.serde.deserialize_function(proto)
        total += sum(1 for _ in _iter_nodes(proto.node))
    if present:
        model.opset_imports.setdefault(onnx_scan.DOMAIN, 1)
    return total


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
    body = resolve_scan_body(scan_body, model.config.layer)
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

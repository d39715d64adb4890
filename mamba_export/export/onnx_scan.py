"""ONNX function bodies for ``mamba_export::SelectiveScan`` (standard ops only).

The node ``SelectiveScan(u, delta, A, B, C, D, z, delta_bias, initial_state) -> (out, last_state)``
with attribute ``delta_softplus`` (int) carries one of these bodies as a model-local function, so
ONNX Runtime runs it by inlining and TensorRT can map the node to its plugin instead.

Layouts are the op's (mamba_ssm's): u, delta, z ``[B, D, L]``; A ``[D, N]``; B, C ``[B, N, L]``
(ungrouped); D, delta_bias ``[D]``; initial_state / last_state ``[B, D, N]`` float32. All nine
inputs are required (the exporter fills absent D / delta_bias / initial_state with zeros).

Every body computes, in float32 and time-major ``[L, B, D, N]``, the decays ``a_t = exp(dt_t A)``
(in (0, 1]) and drives ``b_t = dt_t u_t B_t``, then solves ``h_t = a_t h_{t-1} + b_t`` and reads
``y_t = <h_t, C_t>``. Only products of decays are ever formed (never ``exp(-cumsum)``), so every
formulation is overflow-free. The formulations (``BODIES``):

- ``sequential``: an ONNX ``Scan`` over timesteps (body: one Mul and one Add on ``[B, D, N]``).
- ``chunked<T>``: time padded to a multiple of T and cut into chunks; a Hillis-Steele doubling
  scan inside every chunk (log2 T rounds, all chunks at once); then a ``Scan`` over the chunks
  carries the state (L/T sequential iterations).
- ``logdepth<T>``: as chunked, but the chunk-to-chunk carry is itself a doubling scan (a ``Loop``
  of ceil(log2(L/T)) rounds): no sequential dependence on L at all.
"""

from __future__ import annotations

import itertools

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

DOMAIN = "mamba_export"
NAME = "SelectiveScan"
INPUTS = ("u", "delta", "A", "B", "C", "D", "z", "delta_bias", "initial_state")
OUTPUTS = ("out", "last_state")
ATTRIBUTES = ("delta_softplus",)
OPSET = 18
INT_MAX = np.iinfo(np.int64).max
F = TensorProto.FLOAT


class _Builder:
    """Collects nodes with fresh names; ``b.Op(inputs..., attr=...)`` returns the output name(s)."""

    _ids = itertools.count()

    def __init__(self, prefix: str):
        self.nodes: list[onnx.NodeProto] = []
        self.prefix = prefix

    def fresh(self, hint: str = "t") -> str:
        return f"{self.prefix}{hint}_{next(self._ids)}"

    def const(self, value, dtype=np.int64) -> str:
        arr = np.asarray(value, dtype=dtype)
        out = self.fresh("c")
        self.nodes.append(helper.make_node("Constant", [], [out], value=numpy_helper.from_array(arr)))
        return out

    def ints(self, *values) -> str:
        return self.const(list(values), np.int64)

    def __getattr__(self, op_type: str):
        if op_type.startswith("_"):
            raise AttributeError(op_type)

        def make(*inputs, _n: int = 1, _out: list[str] | None = None, **attrs):
            outs = _out or [self.fresh(op_type.lower()) for _ in range(_n)]
            self.nodes.append(helper.make_node(op_type, list(inputs), outs, **attrs))
            return outs[0] if _n == 1 else outs

        return make


def _vi(name: str, rank: int) -> onnx.ValueInfoProto:
    """A float tensor of known rank and unknown dims (subgraph inputs/outputs)."""
    return helper.make_tensor_value_info(name, F, [None] * rank)


def _slice(b: _Builder, x: str, start, end, axis: int) -> str:
    """x[start:end] on ``axis``; start/end are python ints or int64 [1] tensor names."""
    s = b.ints(start) if isinstance(start, int) else start
    e = b.ints(end) if isinstance(end, int) else end
    return b.Slice(x, s, e, b.ints(axis))


def _doubling_static(b: _Builder, a: str, h: str, length: int, axis: int) -> tuple[str, str]:
    """Inclusive scan of h_t = a_t h_{t-1} + h_t along a static ``axis`` of size ``length``:
    returns (prod of a up to t, h_t) by Hillis-Steele doubling, log2(length) rounds."""
    k = 1
    while k < length:
        a_lo, a_hi = _slice(b, a, 0, length - k, axis), _slice(b, a, k, length, axis)
        h_lo, h_hi = _slice(b, h, 0, length - k, axis), _slice(b, h, k, length, axis)
        h = b.Concat(_slice(b, h, 0, k, axis), b.Add(b.Mul(a_hi, h_lo), h_hi), axis=axis)
        a = b.Concat(_slice(b, a, 0, k, axis), b.Mul(a_hi, a_lo), axis=axis)
        k *= 2
    return a, h


def _doubling_dynamic(b: _Builder, a: str, h: str) -> tuple[str, str]:
    """The same doubling scan along axis 0 of dynamic size n, as a ``Loop`` of ceil(log2 n) rounds."""
    n = b.Shape(a, start=0, end=1)
    one = b.ints(1)
    cond0 = b.Squeeze(b.Less(one, n), b.ints(0))
    g = _Builder(b.prefix + "dbl_")
    it, cin, a_in, h_in, k_in = "dbl_it", "dbl_cond", "dbl_a", "dbl_h", "dbl_k"
    nn = g.Shape(a_in, start=0, end=1)
    nk = g.Sub(nn, k_in)
    zero = g.ints(0)
    axes = g.ints(0)
    a_lo, a_hi = g.Slice(a_in, zero, nk, axes), g.Slice(a_in, k_in, nn, axes)
    h_lo, h_hi = g.Slice(h_in, zero, nk, axes), g.Slice(h_in, k_in, nn, axes)
    h_out = g.Concat(g.Slice(h_in, zero, k_in, axes), g.Add(g.Mul(a_hi, h_lo), h_hi), axis=0)
    a_out = g.Concat(g.Slice(a_in, zero, k_in, axes), g.Mul(a_hi, a_lo), axis=0)
    k_out = g.Mul(k_in, g.ints(2))
    c_out = g.Squeeze(g.Less(k_out, nn), g.ints(0))
    body = helper.make_graph(
        g.nodes, "doubling_body",
        [helper.make_tensor_value_info(it, TensorProto.INT64, []),
         helper.make_tensor_value_info(cin, TensorProto.BOOL, []),
         _vi(a_in, 4), _vi(h_in, 4),
         helper.make_tensor_value_info(k_in, TensorProto.INT64, [1])],
        [helper.make_tensor_value_info(c_out, TensorProto.BOOL, []),
         _vi(a_out, 4), _vi(h_out, 4),
         helper.make_tensor_value_info(k_out, TensorProto.INT64, [1])])
    a_fin, h_fin, _ = b.Loop("", cond0, a, h, one, body=body, _n=3)
    return a_fin, h_fin


def _scan_sequential(b: _Builder, a: str, drive: str, h0: str) -> tuple[str, str]:
    g = _Builder(b.prefix + "seq_")
    h_in, a_t, b_t = "seq_h", "seq_a", "seq_b"
    h_out = g.Add(g.Mul(a_t, h_in), b_t)
    h_seq = g.Identity(h_out)
    body = helper.make_graph(
        g.nodes, "sequential_body",
        [_vi(n, 3) for n in (h_in, a_t, b_t)], [_vi(h_out, 3), _vi(h_seq, 3)])
    h_last, H = b.Scan(h0, a, drive, body=body, num_scan_inputs=2, _n=2)
    return H, h_last


def _scan_fused(b: _Builder, dtT: str, dtuT: str, BT: str, CT: str, A: str, h0: str) -> tuple[str, str]:
    """Per-timestep ``Scan`` that also forms a_t, b_t and y_t inside the step, so nothing of size
    [L, B, D, N] is materialised: every step works on cache-resident [B, D, N] tensors."""
    g = _Builder(b.prefix + "fus_")
    h_in, dt_t, dtu_t, b_t, c_t = "fus_h", "fus_dt", "fus_dtu", "fus_B", "fus_C"
    two = g.ints(2)
    one = g.ints(1)
    decay = g.Exp(g.Mul(g.Unsqueeze(dt_t, two), A))                      # [B, D, N]
    h_out = g.Add(g.Mul(decay, h_in), g.Mul(g.Unsqueeze(dtu_t, two), g.Unsqueeze(b_t, one)))
    y_t = g.ReduceSum(g.Mul(h_out, g.Unsqueeze(c_t, one)), two, keepdims=0)  # [B, D]
    body = helper.make_graph(
        g.nodes, "fused_body",
        [_vi(h_in, 3), _vi(dt_t, 2), _vi(dtu_t, 2), _vi(b_t, 2), _vi(c_t, 2)],
        [_vi(h_out, 3), _vi(y_t, 2)])
    h_last, y = b.Scan(h0, dtT, dtuT, BT, CT, body=body, num_scan_inputs=4, _n=2)
    return y, h_last


def _scan_chunked(b: _Builder, a: str, drive: str, h0: str, chunk: int, carry: str) -> tuple[str, str]:
    """``carry`` = "scan" (sequential over chunks) or "doubling" (log-depth over chunks)."""
    length = b.Shape(a, start=0, end=1)
    T = b.ints(chunk)
    pad = b.Mod(b.Sub(T, b.Mod(length, T)), T)
    zeros3 = b.ints(0, 0, 0)
    pads = b.Concat(b.ints(0, 0, 0, 0), pad, zeros3, axis=0)
    a = b.Pad(a, pads, b.const(1.0, np.float32))
    drive = b.Pad(drive, pads, b.const(0.0, np.float32))
    shape5 = b.Concat(b.ints(-1, chunk), b.Shape(a, start=1), axis=0)
    a = b.Reshape(a, shape5)          # [nc, T, B, D, N]
    drive = b.Reshape(drive, shape5)
    acum, hcum = _doubling_static(b, a, drive, chunk, axis=1)
    if carry == "scan":
        g = _Builder(b.prefix + "chk_")
        h_in, a_c, b_c = "chk_h", "chk_a", "chk_b"
        H_c = g.Add(g.Mul(a_c, g.Unsqueeze(h_in, g.ints(0))), b_c)   # [T, B, D, N]
        h_out = g.Squeeze(g.Slice(H_c, g.ints(-1), g.ints(INT_MAX), g.ints(0)), g.ints(0))
        body = helper.make_graph(
            g.nodes, "chunk_body",
            [_vi(h_in, 3), _vi(a_c, 4), _vi(b_c, 4)], [_vi(h_out, 3), _vi(H_c, 4)])
        h_last, H = b.Scan(h0, acum, hcum, body=body, num_scan_inputs=2, _n=2)
    else:
        a_end = b.Squeeze(_slice(b, acum, chunk - 1, chunk, 1), b.ints(1))  # [nc, B, D, N]
        h_end = b.Squeeze(_slice(b, hcum, chunk - 1, chunk, 1), b.ints(1))
        # fold the initial state into the first chunk's end value
        first = b.Add(b.Mul(_slice(b, a_end, 0, 1, 0), b.Unsqueeze(h0, b.ints(0))), _slice(b, h_end, 0, 1, 0))
        h_end = b.Concat(first, _slice(b, h_end, 1, INT_MAX, 0), axis=0)
        _, states = _doubling_dynamic(b, a_end, h_end)             # state after each chunk
        h_last = b.Squeeze(_slice(b, states, -1, INT_MAX, 0), b.ints(0))
        h_in = b.Concat(b.Unsqueeze(h0, b.ints(0)), _slice(b, states, 0, -1, 0), axis=0)
        H = b.Add(b.Mul(acum, b.Unsqueeze(h_in, b.ints(1))), hcum)      # [nc, T, B, D, N]
    H = b.Reshape(H, b.Concat(b.ints(-1), b.Shape(H, start=2), axis=0))
    H = b.Slice(H, b.ints(0), length, b.ints(0))
    return H, h_last


def parse_body(name: str) -> tuple[str, int]:
    """'sequential' | 'chunked<T>' | 'logdepth<T>' (T a power of two, default 16)."""
    for kind in ("chunked", "logdepth"):
        if name.startswith(kind):
            rest = name[len(kind):] or "16"
            if not rest.isdigit() or int(rest) < 2 or int(rest) & (int(rest) - 1):
                raise ValueError(f"scan body {name!r}: chunk size must be a power of two >= 2")
            return kind, int(rest)
    if name in ("sequential", "fused"):
        return name, 0
    raise ValueError(f"unknown scan body {name!r}; choose one of {', '.join(BODIES)} (or chunked<T>, logdepth<T>)")


BODIES = ("fused", "sequential", "chunked8", "chunked16", "chunked32", "logdepth8", "logdepth16", "logdepth32")


def register_schema() -> None:
    """Register the node's OpSchema with onnx (idempotent) so that onnxscript can emit it and
    onnx's checker knows its signature; the semantics travel with the model as its function."""
    from onnx import defs

    if defs.has(NAME, DOMAIN):
        return
    act = ["tensor(float)", "tensor(float16)", "tensor(bfloat16)", "tensor(double)"]
    st = ["tensor(float)", "tensor(double)"]
    kinds = {"u": "T", "delta": "T", "A": "S", "B": "T", "C": "T", "D": "S", "z": "T",
             "delta_bias": "S", "initial_state": "S", "out": "T", "last_state": "S"}
    P = defs.OpSchema.FormalParameter
    schema = defs.OpSchema(
        NAME, DOMAIN, 1,
        doc="Mamba-1 selective scan (see mamba_export.reference.selective_scan); inputs in the op's order",
        inputs=[P(n, kinds[n]) for n in INPUTS], outputs=[P(n, kinds[n]) for n in OUTPUTS],
        type_constraints=[("T", act, "activations"), ("S", st, "SSM parameters and state")],
        attributes=[defs.OpSchema.Attribute("delta_softplus", defs.OpSchema.AttrType.INT,
                                            "1: softplus(delta + delta_bias)", required=True)])
    defs.register_schema(schema)


def build_function(body: str = "sequential", opset: int = OPSET) -> onnx.FunctionProto:
    """The model-local function ``mamba_export::SelectiveScan`` with the given body."""
    kind, chunk = parse_body(body)
    b = _Builder("ss_")
    u, delta, A, B, C, D, z, dbias, h0 = INPUTS
    fl = lambda x: b.Cast(x, to=F)  # noqa: E731
    uf = fl(u)
    raw = b.Add(fl(delta), b.Unsqueeze(fl(dbias), b.ints(1)))
    sp = b.Cast(b.Constant(), to=TensorProto.BOOL)
    # attribute reference: Constant value_int = @delta_softplus
    b.nodes[-2].attribute.append(helper.make_attribute_ref("value_int", onnx.AttributeProto.INT))
    b.nodes[-2].attribute[-1].ref_attr_name = "delta_softplus"
    dt = b.Where(sp, b.Softplus(raw), raw)                          # [B, D, L]
    dtT = b.Transpose(dt, perm=[2, 0, 1])                           # [L, B, D]
    uT = b.Transpose(uf, perm=[2, 0, 1])
    BT = b.Transpose(fl(B), perm=[2, 0, 1])                         # [L, B, N]
    CT = b.Transpose(fl(C), perm=[2, 0, 1])
    hinit = fl(h0)
    if kind == "fused":
        y, h_last = _scan_fused(b, dtT, b.Mul(dtT, uT), BT, CT, fl(A), hinit)
    else:
        a = b.Exp(b.Mul(b.Unsqueeze(dtT, b.ints(3)), fl(A)))            # [L, B, D, N]
        drive = b.Mul(b.Unsqueeze(b.Mul(dtT, uT), b.ints(3)), b.Unsqueeze(BT, b.ints(2)))
        if kind == "sequential":
            H, h_last = _scan_sequential(b, a, drive, hinit)
        else:
            H, h_last = _scan_chunked(b, a, drive, hinit, chunk, "scan" if kind == "chunked" else "doubling")
        y = b.ReduceSum(b.Mul(H, b.Unsqueeze(CT, b.ints(2))), b.ints(3), keepdims=0)  # [L, B, D]
    y = b.Transpose(y, perm=[1, 2, 0])                              # [B, D, L]
    y = b.Add(y, b.Mul(uf, b.Unsqueeze(fl(D), b.ints(1))))
    zf = fl(z)
    y = b.Mul(y, b.Mul(zf, b.Sigmoid(zf)))
    b.CastLike(y, u, _out=["out"])
    b.Identity(h_last, _out=["last_state"])
    return helper.make_function(
        DOMAIN, NAME, list(INPUTS), list(OUTPUTS), b.nodes,
        opset_imports=[helper.make_opsetid("", opset)], attributes=list(ATTRIBUTES),
        doc_string=f"Selective scan (Mamba-1 S6), body: {body}")

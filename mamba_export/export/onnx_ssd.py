"""ONNX function bodies for ``mamba_export::SSDScan``, the Mamba-2 (SSD) recurrence core.

The node ``SSDScan(x, dt, A, B, C, initial_state) -> (y, final_state)`` (no attributes, all
float32) computes, per batch row and head h::

    h_t = exp(dt_t[h] A[h]) h_{t-1} + dt_t[h] x_t[h] (outer) B_t[h]      state [P, N]
    y_t[h] = h_t C_t[h]                                                    [P]

with x ``[b, L, H, P]``, dt ``[b, L, H]`` (already discretised: dt_bias, softplus and the
dt_limit clamp applied), A ``[H]``, B, C ``[b, L, H, N]`` (already expanded from groups to
heads), initial_state / final_state ``[b, H, P, N]``, y ``[b, L, H, P]`` (before D and the z
gate). The exporter (:mod:`.onnx`) does the discretisation, the group expansion, D and z in
standard ops around the node, so the node is exactly the part a fused kernel (or a TensorRT
plugin) would replace. It carries one of these bodies as a model-local function, which ONNX
Runtime inlines.

Bodies (``BODIES``; ``parse_body``):

- ``sequential``: an ONNX ``Scan`` over timesteps; each step is elementwise on ``[b, H, P, N]``.
- ``chunked<T>``: the state-space-dual chunked form of :func:`mamba_export.reference.ssd_scan`:
  time zero-padded to a multiple of T (dt = 0 there: decay 1, no input), then per chunk the
  quadratic "attention-like" part and the state each chunk leaves (batched MatMuls), and a
  ``Scan`` over chunks that carries the state (L/T sequential steps on ``[b, H, P, N]``).
  Within-chunk decays are exp of masked cumulative sums (never differences over the whole
  sequence), so nothing overflows.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper

from .onnx_scan import DOMAIN, INT_MAX, OPSET, _Builder, _vi

NAME = "SSDScan"
INPUTS = ("x", "dt", "A", "B", "C", "initial_state")
OUTPUTS = ("y", "final_state")
F = TensorProto.FLOAT
BODIES = ("sequential", "chunked16", "chunked32", "chunked64", "chunked128")


def parse_body(name: str) -> tuple[str, int]:
    """'sequential' | 'chunked<T>' (T >= 1; default 64)."""
    if name == "sequential":
        return name, 0
    if name.startswith("chunked"):
        rest = name[len("chunked"):] or "64"
        if not rest.isdigit() or int(rest) < 1:
            raise ValueError(f"SSD scan body {name!r}: chunk size must be a positive int")
        return "chunked", int(rest)
    raise ValueError(f"unknown SSD scan body {name!r}; choose one of sequential, chunked<T> "
                     f"(e.g. {', '.join(BODIES[1:])})")


def register_schema() -> None:
    """Register the node's OpSchema with onnx (idempotent), so onnxscript can emit it and
    onnx's checker knows its signature; the semantics travel with the model as its function."""
    from onnx import defs

    if defs.has(NAME, DOMAIN):
        return
    P = defs.OpSchema.FormalParameter
    schema = defs.OpSchema(
        NAME, DOMAIN, 1,
        doc="Mamba-2 SSD recurrence (see mamba_export.export.onnx_ssd): discretised dt, "
            "heads-expanded B/C, no D / z",
        inputs=[P(n, "T") for n in INPUTS], outputs=[P(n, "T") for n in OUTPUTS],
        type_constraints=[("T", ["tensor(float)"], "float32 only (the exporter casts)")])
    defs.register_schema(schema)


def _sequential(b: _Builder) -> tuple[str, str]:
    x, dt, A, B, C, h0 = INPUTS
    decay = b.Exp(b.Mul(dt, A))                                           # [b, L, H]
    xdt = b.Mul(x, b.Unsqueeze(dt, b.ints(3)))                            # [b, L, H, P]
    g = _Builder(b.prefix + "seq_")
    h_in, a_t, u_t, b_t, c_t = "seq_h", "seq_a", "seq_u", "seq_B", "seq_C"
    drive = g.Mul(g.Unsqueeze(u_t, g.ints(3)), g.Unsqueeze(b_t, g.ints(2)))   # [b, H, P, N]
    h_out = g.Add(g.Mul(g.Unsqueeze(a_t, g.ints(2, 3)), h_in), drive)
    y_t = g.Squeeze(g.MatMul(h_out, g.Unsqueeze(c_t, g.ints(3))), g.ints(3))  # [b, H, P]
    body = helper.make_graph(
        g.nodes, "ssd_sequential_body",
        [_vi(h_in, 4), _vi(a_t, 2), _vi(u_t, 3), _vi(b_t, 3), _vi(c_t, 3)],
        [_vi(h_out, 4), _vi(y_t, 3)])
    h_last, y = b.Scan(h0, decay, xdt, B, C, body=body, num_scan_inputs=4,
                       scan_input_axes=[1, 1, 1, 1], scan_output_axes=[1], _n=2)
    return y, h_last


def _chunked(b: _Builder, T: int) -> tuple[str, str]:
    x, dt, A, B, C, h0 = INPUTS
    length = b.Shape(x, start=1, end=2)
    Tc = b.ints(T)
    pad = b.Mod(b.Sub(Tc, b.Mod(length, Tc)), Tc)
    zero = b.const(0.0, np.float32)

    def chunks(t: str, rank: int) -> str:
        """[b, L, H, ...] -> zero-padded [b, nc, H, T, ...]."""
        pads = b.Concat(b.ints(*[0] * (rank + 1)), pad, b.ints(*[0] * (rank - 2)), axis=0)
        t = b.Pad(t, pads, zero)
        t = b.Reshape(t, b.Concat(b.Shape(t, start=0, end=1), b.ints(-1, T), b.Shape(t, start=2), axis=0))
        perm = [0, 1, 3, 2] + list(range(4, rank + 1))
        return b.Transpose(t, perm=perm)

    dA = chunks(b.Mul(dt, A), 3)                                            # [b, nc, H, T]
    xdt = chunks(b.Mul(x, b.Unsqueeze(dt, b.ints(3))), 4)                   # [b, nc, H, T, P]
    Bc, Cc = chunks(B, 4), chunks(C, 4)                                     # [b, nc, H, T, N]
    cs = b.CumSum(dA, b.const(3, np.int64))                                 # inclusive, in chunk
    # 1. within each chunk: L[l, s] = exp(sum_{s < k <= l} dA_k) for l >= s, else 0
    strict = np.tril(np.ones((T, T), dtype=bool), -1)                       # [k, s]: k > s
    lower = np.tril(np.ones((T, T), dtype=bool), 0)
    terms = b.Where(b.const(strict, np.bool_), b.Unsqueeze(dA, b.ints(4)), zero)  # [.., k, s]
    seg = b.CumSum(terms, b.const(3, np.int64))                             # over k -> [.., l, s]
    decay_in = b.Where(b.const(lower, np.bool_), b.Exp(seg), zero)          # [b, nc, H, T, T]
    scores = b.Mul(b.MatMul(Cc, b.Transpose(Bc, perm=[0, 1, 2, 4, 3])), decay_in)
    y_diag = b.MatMul(scores, xdt)                                          # [b, nc, H, T, P]
    # 2. the state each chunk leaves behind from a zero start
    cs_end = _last(b, cs, 3)                                                # [b, nc, H, 1]
    to_end = b.Exp(b.Sub(cs_end, cs))                                       # [b, nc, H, T]
    weighted = b.Mul(xdt, b.Unsqueeze(to_end, b.ints(4)))
    chunk_states = b.MatMul(b.Transpose(weighted, perm=[0, 1, 2, 4, 3]), Bc)  # [b, nc, H, P, N]
    chunk_decay = b.Exp(b.Squeeze(cs_end, b.ints(3)))                       # [b, nc, H]
    # 3. carry across chunks: the state entering every chunk
    g = _Builder(b.prefix + "chk_")
    h_in, a_c, s_c = "chk_h", "chk_a", "chk_s"
    h_out = g.Add(g.Mul(g.Unsqueeze(a_c, g.ints(2, 3)), h_in), s_c)
    entering_c = g.Identity(h_in)
    body = helper.make_graph(
        g.nodes, "ssd_chunk_carry",
        [_vi(h_in, 4), _vi(a_c, 2), _vi(s_c, 4)], [_vi(h_out, 4), _vi(entering_c, 4)])
    h_last, entering = b.Scan(h0, chunk_decay, chunk_states, body=body, num_scan_inputs=2,
                              scan_input_axes=[1, 1], scan_output_axes=[1], _n=2)
    # 4. contribution of the entering state to every position of its chunk
    y_off = b.Mul(b.MatMul(Cc, b.Transpose(entering, perm=[0, 1, 2, 4, 3])),
                  b.Unsqueeze(b.Exp(cs), b.ints(4)))                        # [b, nc, H, T, P]
    y = b.Transpose(b.Add(y_diag, y_off), perm=[0, 1, 3, 2, 4])             # [b, nc, T, H, P]
    y = b.Reshape(y, b.Concat(b.Shape(x, start=0, end=1), b.ints(-1), b.Shape(x, start=2), axis=0))
    y = b.Slice(y, b.ints(0), length, b.ints(1))
    return y, h_last


def _last(b: _Builder, t: str, axis: int) -> str:
    return b.Slice(t, b.ints(-1), b.ints(INT_MAX), b.ints(axis))


def build_function(body: str = "sequential", opset: int = OPSET) -> onnx.FunctionProto:
    """The model-local function ``mamba_export::SSDScan`` with the given body."""
    kind, chunk = parse_body(body)
    b = _Builder("ssd_")
    y, h_last = _sequential(b) if kind == "sequential" else _chunked(b, chunk)
    b.Identity(y, _out=["y"])
    b.Identity(h_last, _out=["final_state"])
    return helper.make_function(
        DOMAIN, NAME, list(INPUTS), list(OUTPUTS), b.nodes,
        opset_imports=[helper.make_opsetid("", opset)],
        doc_string=f"Mamba-2 SSD scan core, body: {body}")

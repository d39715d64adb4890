"""The float math that defines every op of the package.

These functions are the specification: the Triton kernels, the ONNX bodies and the TensorRT
plugin are all checked against them. They follow mamba_ssm's semantics and layouts
(u, delta, z ``[B, D, L]``; A ``[D, N]``; B, C ``[B, N, L]`` or grouped ``[B, G, N, L]``;
state ``[B, D, N]``) and add ``initial_state`` / final state, which mamba_ssm's scan lacks.

Arithmetic runs in float64 when the inputs are float64 (the exact reference) and in float32
otherwise; outputs take the dtype of ``u`` / ``x``, SSM states are float32 (float64 for float64).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

# Timesteps processed per materialised block in the scan: bounds memory to B*D*CHUNK*N.
_SCAN_BLOCK = 128


def compute_dtype(t: torch.Tensor) -> torch.dtype:
    """float64 stays float64 (exact reference); every other dtype computes in float32."""
    return torch.float64 if t.dtype == torch.float64 else torch.float32


def expand_groups(bc: torch.Tensor, dim: int) -> torch.Tensor:
    """B or C ``[B, N, L]`` / ``[B, G, N, L]`` -> ``[B, D, N, L]`` view-expanded per channel.

    Channel ``d`` reads group ``d // (D // G)``, as in mamba_ssm.
    """
    if bc.dim() == 3:
        return bc.unsqueeze(1).expand(bc.shape[0], dim, bc.shape[1], bc.shape[2])
    groups = bc.shape[1]
    if dim % groups:
        raise ValueError(f"channels ({dim}) must be a multiple of groups ({groups})")
    return bc.repeat_interleave(dim // groups, dim=1)


def discretize_dt(
    delta: torch.Tensor, delta_bias: torch.Tensor | None, softplus: bool
) -> torch.Tensor:
    """delta (+ bias, per channel on dim 1) then optional softplus, in compute precision."""
    delta = delta.to(compute_dtype(delta))
    if delta_bias is not None:
        shape = [1] * delta.dim()
        shape[1] = -1
        delta = delta + delta_bias.to(delta.dtype).view(shape)
    return F.softplus(delta) if softplus else delta


def selective_scan(
    u: torch.Tensor,
    delta: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor | None = None,
    z: torch.Tensor | None = None,
    delta_bias: torch.Tensor | None = None,
    delta_softplus: bool = False,
    initial_state: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Selective scan (Mamba-1 S6). Returns ``(out [B, D, L], last_state [B, D, N])``.

    h_t = exp(delta_t * A) * h_{t-1} + delta_t * B_t * u_t;  y_t = <h_t, C_t> + D * u_t;
    out = y * silu(z) when z is given.
    """
    cdt = compute_dtype(u)
    batch, dim, length = u.shape
    dstate = A.shape[1]
    uf = u.to(cdt)
    dt = discretize_dt(delta, delta_bias, delta_softplus).to(cdt)
    Af = A.to(cdt)
    Bf = expand_groups(B.to(cdt), dim)
    Cf = expand_groups(C.to(cdt), dim)
    if initial_state is None:
        h = uf.new_zeros(batch, dim, dstate)
    else:
        h = initial_state.to(cdt)
    ys = []
    for start in range(0, length, _SCAN_BLOCK):
        sl = slice(start, min(start + _SCAN_BLOCK, length))
        dt_blk = dt[:, :, sl]  # [B, D, T]
        decay = torch.exp(dt_blk.unsqueeze(-1) * Af[:, None, :])  # [B, D, T, N]
        drive = (dt_blk * uf[:, :, sl]).unsqueeze(-1) * Bf[:, :, :, sl].transpose(-1, -2)
        c_blk = Cf[:, :, :, sl].transpose(-1, -2)  # [B, D, T, N]
        for t in range(dt_blk.shape[-1]):
            h = decay[:, :, t] * h + drive[:, :, t]
            ys.append((h * c_blk[:, :, t]).sum(-1))
    y = torch.stack(ys, dim=-1) if ys else uf.new_zeros(batch, dim, 0)
    if D is not None:
        y = y + uf * D.to(cdt)[:, None]
    if z is not None:
        y = y * F.silu(z.to(cdt))
    state_dtype = torch.float64 if cdt == torch.float64 else torch.float32
    return y.to(u.dtype), h.to(state_dtype)


def _reduce_groups(grad: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Per-channel gradient ``[B, D, N, L]`` -> the shape of B/C (sum over each group's channels)."""
    if like.dim() == 3:
        return grad.sum(1)
    batch, dim = grad.shape[:2]
    groups = like.shape[1]
    return grad.reshape(batch, groups, dim // groups, *grad.shape[2:]).sum(2)


def selective_scan_backward(
    u, delta, A, B, C, D, z, delta_bias, delta_softplus, initial_state, dout, dlast_state
) -> list[torch.Tensor | None]:
    """Gradients of :func:`selective_scan` by an explicit reverse scan (no autograd).

    Returns ``[du, ddelta, dA, dB, dC, dD, dz, ddelta_bias, dinitial_state]`` in the inputs'
    dtypes, None where the input was None. With a_t = exp(dt_t A) and g_t = dLoss/dh_t:
    g_t = dy_t C_t + a_{t+1} g_{t+1} (seeded by dlast_state), then every input's gradient is
    local in t given h_{t-1}, h_t and g_t.
    """
    cdt = compute_dtype(u)
    batch, dim, length = u.shape
    uf, Af = u.to(cdt), A.to(cdt)
    raw = delta.to(cdt)
    if delta_bias is not None:
        raw = raw + delta_bias.to(cdt)[:, None]
    dt = F.softplus(raw) if delta_softplus else raw
    Bf = expand_groups(B.to(cdt), dim).transpose(-1, -2)  # [B, D, L, N]
    Cf = expand_groups(C.to(cdt), dim).transpose(-1, -2)
    h0 = uf.new_zeros(batch, dim, A.shape[1]) if initial_state is None else initial_state.to(cdt)
    decay = torch.exp(dt.unsqueeze(-1) * Af[:, None, :])  # [B, D, L, N]
    drive = (dt * uf).unsqueeze(-1) * Bf
    states = []  # h_t for every t: the reference trades memory for clarity
    h = h0
    for t in range(length):
        h = decay[:, :, t] * h + drive[:, :, t]
        states.append(h)
    hs = torch.stack(states, dim=2) if states else uf.new_zeros(batch, dim, 0, A.shape[1])
    y = (hs * Cf).sum(-1)
    if D is not None:
        y = y + uf * D.to(cdt)[:, None]
    g_out = dout.to(cdt)
    dz = None
    if z is not None:
        zf = z.to(cdt)
        sig = torch.sigmoid(zf)
        dz = g_out * y * sig * (1 + zf * (1 - sig))
        g_out = g_out * zf * sig
    # Reverse scan for g_t.
    g = uf.new_zeros(batch, dim, A.shape[1]) if dlast_state is None else dlast_state.to(cdt)
    gs = [None] * length
    for t in range(length - 1, -1, -1):
        g = g + g_out[:, :, t, None] * Cf[:, :, t]
        gs[t] = g
        g = g * decay[:, :, t]
    dh0 = g
    gst = torch.stack(gs, dim=2) if gs else hs
    h_prev = torch.cat([h0.unsqueeze(2), hs[:, :, :-1]], dim=2)
    d_decay = gst * h_prev * decay  # dLoss/d(dt*A) per element
    d_dt = (d_decay * Af[:, None, :]).sum(-1) + (gst * Bf).sum(-1) * uf
    du = (gst * Bf).sum(-1) * dt
    dA = (d_decay * dt.unsqueeze(-1)).sum((0, 2))
    dB = _reduce_groups((gst * (dt * uf).unsqueeze(-1)).transpose(-1, -2), B)
    dC = _reduce_groups((hs * g_out.unsqueeze(-1)).transpose(-1, -2), C)
    dD = None
    if D is not None:
        du = du + g_out * D.to(cdt)[:, None]
        dD = (g_out * uf).sum((0, 2))
    d_raw = d_dt * torch.sigmoid(raw) if delta_softplus else d_dt
    ddelta_bias = None if delta_bias is None else d_raw.sum((0, 2))
    grads = [du, d_raw, dA, dB, dC, dD, dz, ddelta_bias, None if initial_state is None else dh0]
    inputs = [u, delta, A, B, C, D, z, delta_bias, initial_state]
    return [None if g is None else g.to(x.dtype) for g, x in zip(grads, inputs)]


def selective_state_update(
    state: torch.Tensor,
    x: torch.Tensor,
    dt: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor | None = None,
    z: torch.Tensor | None = None,
    dt_bias: torch.Tensor | None = None,
    dt_softplus: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One timestep of the scan. Returns ``(out [B, D], new_state [B, D, N])``; no mutation.

    Layouts as mamba_ssm: state ``[B, D, N]``, x/dt/z ``[B, D]``, A ``[D, N]``,
    B/C ``[B, N]`` or grouped ``[B, G, N]``.
    """
    cdt = compute_dtype(x)
    dim = x.shape[1]
    dtf = discretize_dt(dt, dt_bias, dt_softplus).to(cdt)
    xf = x.to(cdt)
    Bf = expand_groups(B.to(cdt).unsqueeze(-1), dim)[..., 0]  # [B, D, N]
    Cf = expand_groups(C.to(cdt).unsqueeze(-1), dim)[..., 0]
    decay = torch.exp(dtf.unsqueeze(-1) * A.to(cdt))
    new_state = state.to(cdt) * decay + (dtf * xf).unsqueeze(-1) * Bf
    y = (new_state * Cf).sum(-1)
    if D is not None:
        y = y + xf * D.to(cdt)
    if z is not None:
        y = y * F.silu(z.to(cdt))
    return y.to(x.dtype), new_state.to(state.dtype)


def causal_conv1d(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    initial_state: torch.Tensor | None = None,
    silu: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Depthwise causal conv over L. Returns ``(out [B, D, L], final_state [B, D, W-1])``.

    x ``[B, D, L]``, weight ``[D, W]``; ``initial_state`` holds the W-1 inputs before x
    (zeros when absent). The final state is the last W-1 inputs, in x's dtype, ready to
    carry into the next call.
    """
    cdt = compute_dtype(x)
    batch, dim, _ = x.shape
    width = weight.shape[1]
    if initial_state is None:
        initial_state = x.new_zeros(batch, dim, width - 1)
    padded = torch.cat([initial_state.to(x.dtype), x], dim=-1)
    out = F.conv1d(
        padded.to(cdt),
        weight.to(cdt).unsqueeze(1),
        None if bias is None else bias.to(cdt),
        groups=dim,
    )
    if silu:
        out = F.silu(out)
    final_state = padded[..., padded.shape[-1] - (width - 1) :]
    return out.to(x.dtype), final_state.contiguous()


def causal_conv1d_backward(x, weight, bias, initial_state, silu, dout, dfinal_state):
    """Gradients of :func:`causal_conv1d` for ``(x, weight, bias, initial_state)`` (None where the
    input was None). Pure tensor ops without loops, so it also serves as the op's backward on
    every device and traces into compiled graphs."""
    cdt = compute_dtype(x)
    batch, dim, length = x.shape
    width = weight.shape[1]
    init = x.new_zeros(batch, dim, width - 1) if initial_state is None else initial_state.to(x.dtype)
    padded = torch.cat([init, x], dim=-1).to(cdt)
    w = weight.to(cdt)
    grad = dout.to(cdt)
    if silu:
        pre = F.conv1d(padded, w.unsqueeze(1), None if bias is None else bias.to(cdt), groups=dim)
        sig = torch.sigmoid(pre)
        grad = grad * sig * (1 + pre * (1 - sig))
    # d padded[s] = sum_k grad[s - k] * w[k]: a full correlation with the flipped taps.
    dpadded = F.conv1d(F.pad(grad, (width - 1, width - 1)), w.flip(-1).unsqueeze(1), groups=dim)
    if dfinal_state is not None:
        dpadded = dpadded + F.pad(dfinal_state.to(cdt), (length, 0))
    # d w[k] = sum_{b, t} grad[t] * padded[t + k]
    dweight = torch.stack([(grad * padded[..., k : k + length]).sum((0, 2)) for k in range(width)], -1)
    dbias = None if bias is None else grad.sum((0, 2)).to(bias.dtype)
    dinit = None if initial_state is None else dpadded[..., : width - 1].to(initial_state.dtype)
    return dpadded[..., width - 1 :].to(x.dtype), dweight.to(weight.dtype), dbias, dinit


def causal_conv1d_update(
    x: torch.Tensor,
    conv_state: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    silu: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One timestep of the causal conv. Returns ``(out [B, D], new_state [B, D, S])``.

    ``conv_state [B, D, S]`` holds the last S >= W-1 inputs, oldest first; the window is its
    last W-1 columns plus x. The new state is the old one shifted left by one with x appended.
    """
    cdt = compute_dtype(x)
    width = weight.shape[1]
    window = torch.cat([conv_state.to(x.dtype), x.unsqueeze(-1)], dim=-1)
    taps = window[..., window.shape[-1] - width :].to(cdt)
    out = (taps * weight.to(cdt)).sum(-1)
    if bias is not None:
        out = out + bias.to(cdt)
    if silu:
        out = F.silu(out)
    return out.to(x.dtype), window[..., 1:].contiguous()


# --------------------------------------------------------------------------- Mamba-2 (SSD)
# Layouts are mamba_ssm's ``mamba_chunk_scan_combined``: x ``[B, L, H, P]``, dt ``[B, L, H]``,
# A ``[H]`` (one scalar decay per head), B/C ``[B, L, G, N]`` (head h reads group h // (H/G)),
# D ``[H]`` or ``[H, P]``, z ``[B, L, H, P]``, dt_bias ``[H]``; state ``[B, H, P, N]``.
# h_t = exp(dt_t A) h_{t-1} + dt_t x_t B_t^T;  y_t = h_t C_t + D x_t;  out = y * silu(z) if z.
INF = float("inf")


def ssd_discretize_dt(dt: torch.Tensor, dt_bias: torch.Tensor | None, softplus: bool,
                      dt_limit: tuple[float, float] | list[float] | None) -> torch.Tensor:
    """dt (+ bias on the head dim, the last one) -> softplus -> clamp to ``dt_limit``.

    As mamba_ssm, the clamp applies only when the limit is not ``(0, inf)``."""
    dt = dt.to(compute_dtype(dt))
    if dt_bias is not None:
        dt = dt + dt_bias.to(dt.dtype)
    if softplus:
        dt = F.softplus(dt)
    if dt_limit is not None and tuple(float(v) for v in dt_limit) != (0.0, INF):
        dt = dt.clamp(min=float(dt_limit[0]), max=float(dt_limit[1]))
    return dt


def _heads(bc: torch.Tensor, heads: int, dim: int) -> torch.Tensor:
    """B/C with groups on ``dim`` -> one entry per head (head h reads group h // (H/G))."""
    groups = bc.shape[dim]
    if heads % groups:
        raise ValueError(f"heads ({heads}) must be a multiple of groups ({groups})")
    return bc.repeat_interleave(heads // groups, dim=dim) if groups != heads else bc


def _ssd_finish(y, x, D, z, cdt):
    """y + D x, then the optional z gate; y, x ``[..., H, P]``."""
    xf = x.to(cdt)
    if D is not None:
        Df = D.to(cdt)
        y = y + xf * (Df[:, None] if Df.dim() == 1 else Df)
    if z is not None:
        y = y * F.silu(z.to(cdt))
    return y.to(x.dtype)


def _state_dtype(cdt):
    return torch.float64 if cdt == torch.float64 else torch.float32


def _segsum(a: torch.Tensor) -> torch.Tensor:
    """``a [..., T]`` -> ``S [..., T, T]`` with S[i, j] = sum_{j < k <= i} a_k (i >= j), -inf above
    the diagonal. Partial sums are formed directly (masked cumsum), never as differences of a
    long cumsum, so exp(S) keeps full relative precision."""
    T = a.shape[-1]
    a = a[..., None].expand(*a.shape, T)  # [..., k, j] = a_k
    strict = torch.tril(torch.ones(T, T, dtype=torch.bool, device=a.device), diagonal=-1)
    s = torch.cumsum(a.masked_fill(~strict, 0), dim=-2)
    lower = torch.tril(torch.ones(T, T, dtype=torch.bool, device=a.device), diagonal=0)
    return s.masked_fill(~lower, -INF)


def ssd_scan(
    x: torch.Tensor,
    dt: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    chunk_size: int = 256,
    D: torch.Tensor | None = None,
    z: torch.Tensor | None = None,
    dt_bias: torch.Tensor | None = None,
    initial_state: torch.Tensor | None = None,
    dt_softplus: bool = False,
    dt_limit: tuple[float, float] | list[float] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Mamba-2 SSD scan, chunked (the state-space-dual "quadratic inside a chunk, linear across
    chunks" form, all chunks at once: no Python loop, shape-generic in L).

    Returns ``(out [B, L, H, P] in x's dtype, final_state [B, H, P, N] float32/float64)``.
    The time axis is zero-padded to a multiple of ``chunk_size`` after discretisation (dt = 0
    there: decay 1, no input), so padding never changes the output or the final state.
    """
    cdt = compute_dtype(x)
    batch, length, heads, hdim = x.shape
    dstate = B.shape[-1]
    T = int(chunk_size)
    dtf = ssd_discretize_dt(dt, dt_bias, dt_softplus, dt_limit).to(cdt)  # [b, l, h]
    xf = x.to(cdt)
    Bh = _heads(B.to(cdt), heads, 2)  # [b, l, h, n]
    Ch = _heads(C.to(cdt), heads, 2)
    pad = (-length) % T
    if pad:
        dtf = F.pad(dtf, (0, 0, 0, pad))
        xf_p = F.pad(xf, (0, 0, 0, 0, 0, pad))
        Bh = F.pad(Bh, (0, 0, 0, 0, 0, pad))
        Ch = F.pad(Ch, (0, 0, 0, 0, 0, pad))
    else:
        xf_p = xf
    nc = (length + pad) // T
    dA = (dtf * A.to(cdt)).reshape(batch, nc, T, heads).permute(0, 3, 1, 2)  # [b, h, c, T]
    xdt = (xf_p * dtf[..., None]).reshape(batch, nc, T, heads, hdim)          # [b, c, T, h, p]
    Bc = Bh.reshape(batch, nc, T, heads, dstate)
    Cc = Ch.reshape(batch, nc, T, heads, dstate)
    dA_cs = torch.cumsum(dA, dim=-1)                                           # [b, h, c, T]
    # 1. Within each chunk (the "attention-like" diagonal blocks).
    decay_in = torch.exp(_segsum(dA))                                          # [b, h, c, l, s]
    scores = torch.einsum("bclhn,bcshn->bhcls", Cc, Bc) * decay_in
    y_diag = torch.einsum("bhcls,bcshp->bclhp", scores, xdt)
    # 2. State each chunk leaves behind, from a zero start.
    decay_to_end = torch.exp(dA_cs[..., -1:] - dA_cs)                          # [b, h, c, T]
    chunk_states = torch.einsum("bclhn,bhcl,bclhp->bchpn", Bc, decay_to_end, xdt)
    # 3. Carry across chunks: state entering chunk c (initial state folded in as chunk -1).
    h0 = (xf.new_zeros(batch, heads, hdim, dstate) if initial_state is None
          else initial_state.to(cdt))
    states = torch.cat([h0[:, None], chunk_states], dim=1)                     # [b, c+1, h, p, n]
    decay_chunks = torch.exp(_segsum(F.pad(dA_cs[..., -1], (1, 0))))           # [b, h, c+1, c+1]
    carried = torch.einsum("bhzc,bchpn->bzhpn", decay_chunks, states)
    entering, final_state = carried[:, :-1], carried[:, -1]
    # 4. Contribution of the entering state to every position of its chunk.
    y_off = torch.einsum("bclhn,bchpn,bhcl->bclhp", Cc, entering, torch.exp(dA_cs))
    y = (y_diag + y_off).reshape(batch, nc * T, heads, hdim)[:, :length]
    return _ssd_finish(y, x, D, z, cdt), final_state.to(_state_dtype(cdt))


def ssd_scan_loop(
    x, dt, A, B, C, D=None, z=None, dt_bias=None, initial_state=None, dt_softplus=False,
    dt_limit=None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The same scan as :func:`ssd_scan`, one timestep at a time (the definition the chunked
    form is tested against)."""
    cdt = compute_dtype(x)
    batch, length, heads, hdim = x.shape
    dtf = ssd_discretize_dt(dt, dt_bias, dt_softplus, dt_limit).to(cdt)
    xf, Af = x.to(cdt), A.to(cdt)
    Bh = _heads(B.to(cdt), heads, 2)
    Ch = _heads(C.to(cdt), heads, 2)
    h = xf.new_zeros(batch, heads, hdim, B.shape[-1]) if initial_state is None else initial_state.to(cdt)
    ys = []
    for t in range(length):
        decay = torch.exp(dtf[:, t] * Af)[..., None, None]                      # [b, h, 1, 1]
        h = decay * h + (dtf[:, t, :, None] * xf[:, t])[..., None] * Bh[:, t, :, None, :]
        ys.append((h * Ch[:, t, :, None, :]).sum(-1))
    y = torch.stack(ys, dim=1) if ys else xf.new_zeros(batch, 0, heads, hdim)
    return _ssd_finish(y, x, D, z, cdt), h.to(_state_dtype(cdt))


def ssd_scan_backward(x, dt, A, B, C, chunk_size, D, z, dt_bias, initial_state, dt_softplus,
                      dt_limit, dout, dfinal_state) -> list[torch.Tensor | None]:
    """Gradients of :func:`ssd_scan` for ``(x, dt, A, B, C, D, z, dt_bias, initial_state)``
    (None where the input was None), by autograd through the chunked form (plain torch ops)."""
    inputs = [x, dt, A, B, C, D, z, dt_bias, initial_state]
    leaves = [None if t is None else t.detach().requires_grad_(True) for t in inputs]
    with torch.enable_grad():
        lx, ldt, lA, lB, lC, lD, lz, lbias, linit = leaves
        out, final = ssd_scan(lx, ldt, lA, lB, lC, chunk_size, lD, lz, lbias, linit, dt_softplus, dt_limit)
        outs, grads_out = [out], [dout]
        if dfinal_state is not None:
            outs.append(final)
            grads_out.append(dfinal_state.to(final.dtype))
        wrt = [t for t in leaves if t is not None]
        got = iter(torch.autograd.grad(outs, wrt, grads_out, allow_unused=True))
    grads = [None if t is None else next(got) for t in leaves]
    return [None if t is None else (torch.zeros_like(t) if g is None else g.to(t.dtype))
            for g, t in zip(grads, inputs)]


def ssd_state_update(
    state: torch.Tensor,
    x: torch.Tensor,
    dt: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor | None = None,
    z: torch.Tensor | None = None,
    dt_bias: torch.Tensor | None = None,
    dt_softplus: bool = False,
    dt_limit: tuple[float, float] | list[float] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One SSD timestep. state ``[B, H, P, N]``, x/z ``[B, H, P]``, dt ``[B, H]``, A ``[H]``,
    B/C ``[B, G, N]``, D ``[H]`` or ``[H, P]``, dt_bias ``[H]``. Returns
    ``(out [B, H, P], new_state [B, H, P, N])``; nothing is mutated."""
    cdt = compute_dtype(x)
    heads = x.shape[1]
    dtf = ssd_discretize_dt(dt, dt_bias, dt_softplus, dt_limit).to(cdt)        # [b, h]
    xf = x.to(cdt)
    Bh = _heads(B.to(cdt), heads, 1)                                             # [b, h, n]
    Ch = _heads(C.to(cdt), heads, 1)
    decay = torch.exp(dtf * A.to(cdt))[..., None, None]
    new_state = decay * state.to(cdt) + (dtf[..., None] * xf)[..., None] * Bh[:, :, None, :]
    y = (new_state * Ch[:, :, None, :]).sum(-1)
    return _ssd_finish(y, x, D, z, cdt), new_state.to(state.dtype)

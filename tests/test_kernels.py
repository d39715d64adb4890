"""Triton kernels against the float64 reference (mamba_export.reference).

Without CUDA every kernel runs in Triton's interpreter at small odd shapes (the launchers route
CPU tensors to the interpreter whatever ``TRITON_INTERPRET`` says; the variable is also set here,
before triton is imported, for code that decides at decoration time). With CUDA the same small
odd-shape tests run the compiled kernels (tensors default to the GPU): the interpreter is CI's
job, and Triton 3.6's interpreter cannot run the scan loops under NumPy >= 2.4 (``range`` over an
int argument, which it holds as a 1-element array). Tests marked ``gpu`` run the compiled kernels
on fresh random inputs at larger sizes and are skipped without CUDA.

Every launcher output is poisoned (NaN) before the kernels run, so an unwritten element fails.
Errors are ||out - ref|| / ||ref|| against the reference evaluated in float64 on float64 copies of
the same (rounded) inputs: fp32 <= 1e-5, fp16/bf16 <= 5e-3.
"""

import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402
import triton  # noqa: E402
import triton.language as tl  # noqa: E402

from mamba_export import reference as ref  # noqa: E402
from mamba_export.kernels import _common  # noqa: E402
from mamba_export.kernels.causal_conv1d import (  # noqa: E402
    causal_conv1d_fwd,
    causal_conv1d_update_fwd,
)
from mamba_export.kernels.selective_scan import (  # noqa: E402
    selective_scan_bwd,
    selective_scan_fwd,
)
from mamba_export.kernels import scan_gluon  # noqa: E402
from mamba_export.kernels import selective_scan as ss_mod  # noqa: E402
from mamba_export.kernels.state_update import selective_state_update_fwd  # noqa: E402

TOL = {torch.float32: 1e-5, torch.float16: 5e-3, torch.bfloat16: 5e-3}
HAS_CUDA = torch.cuda.is_available()
DEVICE = "cuda" if HAS_CUDA else "cpu"


@pytest.fixture(autouse=True)
def _poison(monkeypatch):
    monkeypatch.setattr(_common, "POISON", True)
    with torch.device(DEVICE):  # tensors made without a device go where the kernels compile
        yield


def rel(out, expected):
    out = out.detach().double().cpu()
    expected = expected.detach().double().cpu()
    assert out.shape == expected.shape, (out.shape, expected.shape)
    assert torch.isfinite(out).all(), "non-finite (unwritten?) elements"
    den = expected.norm().item()
    return (out - expected).norm().item() / (den if den > 0 else 1.0)


def f64(t):
    return None if t is None else t.detach().double()


def make_scan_inputs(batch, dim, length, dstate, groups=None, dtype=torch.float32, device=DEVICE,
                     options=True, layout="contiguous"):
    """Random scan inputs. layout='model': u, delta, z are views of an [B, L, *] buffer (time
    stride != 1, channel stride 1) and B/C are transposed slices, as in the Mamba block."""
    g = torch.Generator(device="cpu").manual_seed(torch.randint(0, 2**31, ()).item())

    def rnd(*shape, scale=1.0):
        return (torch.randn(*shape, generator=g, device="cpu") * scale).to(device)

    bc_shape = (batch, dstate, length) if groups is None else (batch, groups, dstate, length)
    if layout == "model":
        xz = rnd(batch, length, 3 * dim).to(dtype)
        u, delta, z = (t.transpose(1, 2) for t in xz.chunk(3, dim=2))
        nb = bc_shape[1] * (bc_shape[2] if groups is not None else 1)
        x_dbl = rnd(batch, length, 7 + 2 * nb).to(dtype)
        Bm = x_dbl[..., 7:7 + nb].transpose(1, 2).reshape(bc_shape) if groups is not None else \
            x_dbl[..., 7:7 + nb].transpose(1, 2)
        Cm = x_dbl[..., 7 + nb:].transpose(1, 2).reshape(bc_shape) if groups is not None else \
            x_dbl[..., 7 + nb:].transpose(1, 2)
    else:
        u = rnd(batch, dim, length).to(dtype)
        delta = rnd(batch, dim, length, scale=0.5).to(dtype)
        z = rnd(batch, dim, length).to(dtype)
        Bm = rnd(*bc_shape).to(dtype)
        Cm = rnd(*bc_shape).to(dtype)
    A = -torch.exp(rnd(dim, dstate, scale=0.5))
    if not options:
        return dict(u=u, delta=delta.abs() * 0.3, A=A, B=Bm, C=Cm)
    return dict(u=u, delta=delta, A=A, B=Bm, C=Cm, D=rnd(dim), z=z,
                delta_bias=rnd(dim, scale=0.3) - 1.0, delta_softplus=True,
                initial_state=rnd(batch, dim, dstate))


def scan_ref(kw):
    args = {k: (f64(v) if isinstance(v, torch.Tensor) else v) for k, v in kw.items()}
    return ref.selective_scan(**args)


def check_scan_fwd(kw, tol):
    out, last = selective_scan_fwd(**kw)
    r_out, r_last = scan_ref(kw)
    assert out.dtype == kw["u"].dtype and last.dtype == torch.float32
    assert out.is_contiguous()
    e_out, e_last = rel(out, r_out), rel(last, r_last)
    assert e_out <= tol and e_last <= tol, (e_out, e_last)
    return e_out, e_last


NAMES = ["u", "delta", "A", "B", "C", "D", "z", "delta_bias", "initial_state"]


def check_scan_bwd(kw, tol, with_dlast=True):
    ins = {k: (f64(v).requires_grad_() if isinstance(v, torch.Tensor) else v)
           for k, v in kw.items()}
    out, last = ref.selective_scan(**ins)
    g = torch.Generator().manual_seed(1)
    dout = torch.randn(out.shape, generator=g, device="cpu").to(kw["u"].device).to(kw["u"].dtype)
    dlast = (torch.randn(last.shape, generator=g, device="cpu").to(kw["u"].device)
             if with_dlast else None)
    loss = (out * dout.double()).sum()
    if with_dlast:
        loss = loss + (last * dlast.double()).sum()
    loss.backward()
    full = {n: kw.get(n) for n in NAMES}
    grads = selective_scan_bwd(
        full["u"], full["delta"], full["A"], full["B"], full["C"], full["D"], full["z"],
        full["delta_bias"], kw.get("delta_softplus", False), full["initial_state"],
        dout, dlast)
    errs = {}
    for name, gk in zip(NAMES, grads):
        x = ins.get(name)
        if x is None:
            assert gk is None, name
            continue
        assert gk.shape == x.shape and gk.dtype == kw[name].dtype, name
        errs[name] = rel(gk, x.grad)
    bad = {k: v for k, v in errs.items() if not v <= tol}
    assert not bad, errs
    return errs


# ---------------------------------------------------------------------------------------------
# selective scan (CPU: interpreter)
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("batch,dim,length,dstate,groups", [
    (2, 6, 37, 5, None),   # D, L not multiples of the blocks; N not a power of two
    (1, 8, 19, 4, 2),      # grouped B/C, channels per group a multiple of the block
    (1, 6, 9, 3, 3),       # grouped, channels per group not a multiple of the block
    (1, 3, 1, 4, None),    # L = 1
])
def test_scan_fwd_fp32(batch, dim, length, dstate, groups):
    check_scan_fwd(make_scan_inputs(batch, dim, length, dstate, groups), TOL[torch.float32])


def test_scan_fwd_no_options():
    check_scan_fwd(make_scan_inputs(2, 5, 23, 4, options=False), TOL[torch.float32])


@pytest.mark.parametrize("groups", [None, 2])
def test_scan_fwd_model_layout(groups):
    kw = make_scan_inputs(2, 6, 21, 4, groups, layout="model")
    assert kw["u"].stride(1) == 1 and kw["u"].stride(2) == 18
    check_scan_fwd(kw, TOL[torch.float32])


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_scan_fwd_half(dtype):
    check_scan_fwd(make_scan_inputs(2, 6, 29, 4, dtype=dtype), TOL[dtype])


def force_scan_kind(monkeypatch, kind):
    """Make selective_scan_fwd use the given forward kernel ("seq" or "chunk")."""
    orig = ss_mod.scan_config

    def cfg(*args, kind_=kind, **kwargs):
        if kwargs.get("kind") is None and not kwargs.get("backward"):
            kwargs["kind"] = kind_
        return orig(*args, **kwargs)

    monkeypatch.setattr(ss_mod, "scan_config", cfg)


def force_scan_segments(monkeypatch, segments):
    """Make selective_scan_fwd use the split kernel with the given number of segments."""
    orig = ss_mod.scan_config

    def cfg(*args, **kwargs):
        if kwargs.get("kind") is None and not kwargs.get("backward"):
            kwargs["kind"] = "split"
            return dict(orig(*args, **kwargs), SEGMENTS=segments)
        return orig(*args, **kwargs)

    monkeypatch.setattr(ss_mod, "scan_config", cfg)


@pytest.mark.parametrize("segments", [2, 3, 5, 64])
@pytest.mark.parametrize("batch,dim,length,dstate,groups,layout,options", [
    (2, 6, 37, 5, None, "contiguous", True),   # last segment partial, odd D and N
    (1, 8, 40, 4, 2, "model", True),           # grouped B/C (block-aligned), model layout
    (1, 6, 33, 3, 3, "contiguous", True),      # grouped, not block-aligned
    (2, 5, 23, 4, None, "contiguous", False),  # no D, z, bias, softplus, initial state
])
def test_scan_fwd_split(segments, batch, dim, length, dstate, groups, layout, options,
                        monkeypatch):
    """L split into segments (end states from zero, chained, rescanned); 64 segments is more
    than the chunks: the launcher uses fewer (or falls back to one, the seq kernel)."""
    force_scan_segments(monkeypatch, segments)
    check_scan_fwd(make_scan_inputs(batch, dim, length, dstate, groups, layout=layout,
                                    options=options), TOL[torch.float32])


def test_split_segments_rule():
    seg = ss_mod.split_segments
    assert seg(1, 5120, 2048, 8, 16) >= 2 and seg(8, 5120, 2048, 8, 16) == 1
    assert seg(1, 8, 70001, 8, 16) == 16 and seg(1, 5120, 16, 8, 16) == 1


@pytest.mark.parametrize("kind", ["seq", "chunk", "split", "gluon"])  # (gluon: seq in the interpreter)
def test_scan_fwd_kinds(kind, monkeypatch):
    force_scan_kind(monkeypatch, kind)
    check_scan_fwd(make_scan_inputs(2, 7, 37, 4), TOL[torch.float32])
    check_scan_fwd(make_scan_inputs(1, 6, 19, 4, 2, layout="model"), TOL[torch.float32])


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_scan_fwd_seq_half_bc_as_stored(dtype, monkeypatch):
    """The seq kernel reading half-precision B/C as stored (BC_F32=False, the GPU default below
    32768 rows and for the model layout) instead of converting them to fp32 up front."""
    cfg = {"KIND": "seq", "BLOCK_D": 4, "BLOCK_T": 8, "num_warps": 1, "BC_F32": False}
    monkeypatch.setattr(ss_mod, "scan_config", lambda *a, **k: cfg)
    check_scan_fwd(make_scan_inputs(2, 7, 19, 16, None, dtype), TOL[dtype])
    check_scan_fwd(make_scan_inputs(1, 6, 11, 16, 2, dtype, layout="model"), TOL[dtype])


def test_scan_config_rules(monkeypatch):
    """Seq tiles by rows and layout (H100 sweeps, docs/kernel_notes.md v12 and v16), as a GPU
    picks them: the widest channel block that still gives 1280 programs."""
    monkeypatch.setattr(ss_mod, "use_interpreter", lambda device: False)
    monkeypatch.setattr(scan_gluon, "available", lambda index: False)
    cuda = torch.device("cuda")
    cfg = lambda *a, **k: ss_mod.scan_config(*a, torch.bfloat16, cuda, **k)  # noqa: E731
    tiles = lambda c: (c["BLOCK_D"], c["BLOCK_T"], c["BC_F32"])  # noqa: E731
    assert cfg(1, 5120, 2048) == {"KIND": "seq", "BLOCK_D": 4, "BLOCK_T": 16, "num_warps": 1,
                                  "BC_F32": False}
    assert tiles(cfg(2, 5120, 2048)) == (8, 16, True)
    assert tiles(cfg(8, 1536, 8192)) == (8, 16, True)
    assert tiles(cfg(4, 5120, 2048)) == (16, 8, True)
    assert tiles(cfg(8, 5120, 2048)) == (16, 8, True)
    assert cfg(4, 1536, 65536)["PREFETCH"] == 2 and tiles(cfg(4, 1536, 65536)) == (8, 16, True)
    assert "PREFETCH" not in cfg(4, 1536, 2048) and "PREFETCH" not in cfg(1, 5120, 65536)
    assert tiles(cfg(1, 5120, 2048, channel_contiguous=True)) == (8, 16, False)
    assert tiles(cfg(8, 5120, 2048, channel_contiguous=True)) == (16, 8, True)
    assert cfg(1, 1536, 4096)["KIND"] == "chunk" and cfg(1, 1536, 8192)["KIND"] == "split"


def test_jit_helpers_bound_under_their_own_names():
    """Inductor regenerates a traced kernel's source with each JIT helper it calls defined under
    the helper's own name, so a kernel must refer to helpers by that name (an import alias
    compiled to a NameError under torch.compile on the GPU). Gluon's module is exempt: its
    kernel is never traced."""
    import importlib
    import pkgutil

    import mamba_export.kernels as pkg
    from triton.runtime.jit import JITFunction

    for info in pkgutil.iter_modules(pkg.__path__):
        if info.name == "scan_gluon":
            continue
        mod = importlib.import_module(f"{pkg.__name__}.{info.name}")
        for name, obj in vars(mod).items():
            if isinstance(obj, JITFunction):
                assert name == obj.fn.__name__, (info.name, name, obj.fn.__name__)


@pytest.mark.parametrize("options", [True, False])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
def test_gluon_launch_arguments_bind(options, dtype, monkeypatch):
    """The Gluon kernel cannot run on CPU; its launch from _run_fwd is checked here instead:
    every argument the launcher passes binds to a parameter of the kernel and none is missing,
    with B/C handed over as float32 [L, N], or when 16-bit packed into one int32 word per
    (step, state)."""
    import inspect

    kernel = scan_gluon._scan_fwd_gluon_kernel
    bound = []

    class Recorder:
        def __getitem__(self, grid):
            return lambda *a, **k: bound.append(inspect.signature(kernel.fn).bind(
                *a, **{n: v for n, v in k.items() if n not in ("num_warps", "maxnreg")}))

    monkeypatch.setattr(scan_gluon, "_scan_fwd_gluon_kernel", Recorder())
    monkeypatch.setattr(ss_mod, "_gluon_runs", lambda *a: True)
    kw = make_scan_inputs(2, 6, 21, 4, options=options, dtype=dtype)
    cfg = {"KIND": "gluon", "BLOCK_D": 4, "BLOCK_T": 16, "num_warps": 1, "BC_AHEAD": False}
    ss_mod._run_fwd(kw["u"], kw["delta"], kw["A"], kw["B"], kw["C"], kw.get("D"), kw.get("z"),
                    kw.get("delta_bias"), kw.get("delta_softplus", False), kw.get("initial_state"), cfg)
    (args,) = bound
    args = args.arguments
    packed = {torch.bfloat16: 1, torch.float16: 2}.get(dtype, 0)
    assert args["B_ptr"].dtype == (torch.int32 if packed else torch.float32) and args["B_ptr"].stride(-2) == 1
    assert args["BC_PACKED"] == packed and (args["C_ptr"] is args["B_ptr"]) == bool(packed)
    assert args["HAS_D"] == options and args["HAS_H0"] == options and not args["BC_AHEAD"]
    assert (args["BLOCK_D"], args["BLOCK_T"], args["DSTATE"]) == (4, 16, 4)


def test_gluon_launch_cache(monkeypatch):
    """launch_fwd compiles through the JIT once per specialisation key and then launches the
    compiled kernel with every parameter in order (constexprs and their defaults included);
    a different integer, dtype or alignment goes through the JIT again."""
    import inspect

    params = list(inspect.signature(scan_gluon._scan_fwd_gluon_kernel.fn).parameters)
    jit_calls, direct = [], []

    class Compiled:
        def __getitem__(self, grid):
            return lambda *a: direct.append((grid, a))

    class Jit:
        def __getitem__(self, grid):
            return lambda *a, **k: jit_calls.append(k) or Compiled()

    monkeypatch.setattr(scan_gluon, "_scan_fwd_gluon_kernel", Jit())
    monkeypatch.setattr(scan_gluon, "_COMPILED", {})
    t = torch.zeros(64)
    cx = dict(HAS_D=True, HAS_Z=True, HAS_BIAS=True, SOFTPLUS=True, HAS_H0=False, DSTATE=16, BLOCK_N=16,
              BLOCK_D=4, BLOCK_T=16, DPT=1, BC_AHEAD=True)  # (BC_PACKED left to its default)
    n_ints = len(params) - 11 - (len(cx) + 1)  # (11 tensors, then the integers, then the constexprs)
    args = (t,) * 11 + tuple(range(2, 2 + n_ints))
    scan_gluon.launch_fwd((3, 2), *args, **cx)
    scan_gluon.launch_fwd((3, 2), *args, **cx)
    assert len(jit_calls) == 1 and len(direct) == 1
    grid, full = direct[0]
    assert grid == (3, 2, 1) and len(full) == len(params)
    assert dict(zip(params[len(args):], full[len(args):])) == dict(cx, BC_PACKED=0)
    scan_gluon.launch_fwd((3, 2), *args[:-1], args[-1] + 1, **cx)  # another stride
    scan_gluon.launch_fwd((3, 2), t[1:], *args[1:], **cx)  # u not 16-byte aligned
    scan_gluon.launch_fwd((3, 2), t.double(), *args[1:], **cx)  # another dtype
    assert len(jit_calls) == 4 and len(direct) == 1


@pytest.mark.parametrize("shape", [(2, 5, 7), (1, 3, 4, 1), (2, 2, 16, 9), (1, 16, 1)])
@pytest.mark.parametrize("b_layout", ["contiguous", "strided", "model"])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_bc_packed(shape, b_layout, dtype):
    """The Gluon kernel's packed B/C: word (b, [g,] n, l) holds B's bits in its low half and
    C's in its high half, each recovered exactly as the kernel does (bfloat16: shift and mask;
    float16: the half's bits converted); strides as states_contiguous_f32's (1 along N, N along
    L), whatever B's strides (contiguous ones made torch.stack's own output channels-last,
    caught on the GPU)."""
    B = torch.randn(*shape[:-1], shape[-1] + 3).to(dtype)
    B = {"contiguous": B[..., 3:].contiguous(), "strided": B[..., 3:],
         "model": B[..., 3:].transpose(-1, -2).contiguous().transpose(-1, -2)}[b_layout]
    C = torch.randn(shape).to(dtype)
    w = scan_gluon.bc_packed(B, C)
    assert scan_gluon.packed_code(B, C) == (1 if dtype == torch.bfloat16 else 2)
    assert w.dtype == torch.int32 and w.shape == B.shape and w.stride(-2) == 1
    assert shape[-1] == 1 or w.stride(-1) == shape[-2]
    bits = w.to(torch.int64)
    if dtype == torch.bfloat16:
        B2 = ((bits << 16) & 0xFFFFFFFF).to(torch.int32).view(torch.float32)
        C2 = (bits & 0xFFFF0000).to(torch.int32).view(torch.float32)
    else:
        B2 = (bits & 0xFFFF).to(torch.int16).view(torch.float16).float()
        C2 = ((bits >> 16) & 0xFFFF).to(torch.int16).view(torch.float16).float()
    assert torch.equal(B2, B.float()) and torch.equal(C2, C.float())
    assert scan_gluon.packed_code(B.float(), C.float()) == 0 and scan_gluon.packed_code(B, C.float()) == 0


def test_scan_config_gluon_rules(monkeypatch):
    """Where a GPU with Gluon takes the Gluon kernel (H100 graph replays, docs/kernel_notes.md
    v17-v18): below 10240 rows in either layout (32768 for 16-bit inputs in the time-contiguous
    layout), not where the split kernel runs; elsewhere, and
    with allow_gluon=False (the fallback while tracing), the Triton kernels' rules."""
    monkeypatch.setattr(ss_mod, "use_interpreter", lambda device: False)
    monkeypatch.setattr(scan_gluon, "available", lambda index: True)
    cfg = lambda *a, **k: ss_mod.scan_config(*a, torch.bfloat16, torch.device("cuda"), **k)  # noqa: E731
    gluon = {"KIND": "gluon", "BLOCK_D": 4, "BLOCK_T": 16, "num_warps": 1, "BC_AHEAD": True}
    for shape in [(1, 5120, 2048), (4, 1536, 65536), (2, 3072, 16384), (1, 1536, 2048), (2, 1536, 4096)]:
        assert cfg(*shape) == gluon, shape
    assert cfg(2, 5120, 2048) == gluon and cfg(4, 5120, 2048) == gluon  # (packed bfloat16 B/C)
    assert cfg(8, 5120, 2048)["KIND"] == "seq"
    assert ss_mod.scan_config(2, 5120, 2048, torch.float32, torch.device("cuda"))["KIND"] == "seq"
    assert cfg(1, 1536, 8192)["KIND"] == "split"
    assert cfg(1, 5120, 2048, channel_contiguous=True) == dict(gluon, BC_AHEAD=False)
    assert cfg(2, 5120, 2048, channel_contiguous=True)["KIND"] == "seq"
    assert ss_mod.scan_config(1, 5120, 2048, torch.float16, torch.device("cuda")) == gluon  # (packed too)
    # float32: two float32 B/C tiles, which fit a chunk ahead only at 4 x 8
    f32 = ss_mod.scan_config(1, 5120, 2048, torch.float32, torch.device("cuda"))
    assert f32 == dict(gluon, BC_AHEAD=False)
    assert ss_mod.scan_config(1, 5120, 2048, torch.float32, torch.device("cuda"),
                              channel_contiguous=True) == dict(gluon, BLOCK_T=8)
    assert cfg(1, 5120, 2048, allow_gluon=False)["KIND"] == "seq"
    assert cfg(1, 1536, 2048, allow_gluon=False)["KIND"] == "chunk"
    assert ss_mod.scan_config(1, 5120, 2048, torch.bfloat16, torch.device("cpu"))["KIND"] == "seq"


@pytest.mark.parametrize("dtype,prefetch", [(torch.float32, 1), (torch.bfloat16, 1),
                                            (torch.float32, 2), (torch.bfloat16, 2)])
def test_scan_fwd_seq_wide_tiles(dtype, prefetch, monkeypatch):
    """The seq kernel with 16 channels x 8 steps per warp (8 states per thread; the GPU default
    from 20480 rows), a partial channel block and a partial last chunk; tiles loaded one or two
    chunks ahead (L = 9: two chunks, both prefetched before the loop). (Shapes with enough
    outputs: Triton's interpreter stores fp32 -> bf16 by truncation where the GPU rounds to
    nearest, which alone costs ~3.5e-3 of the 5e-3 bf16 bound.)"""
    cfg = {"KIND": "seq", "BLOCK_D": 16, "BLOCK_T": 8, "num_warps": 1, "BC_F32": True,
           "PREFETCH": prefetch}
    monkeypatch.setattr(ss_mod, "scan_config", lambda *a, **k: cfg)
    check_scan_fwd(make_scan_inputs(2, 37, 27, 16, None, dtype), TOL[dtype])
    check_scan_fwd(make_scan_inputs(1, 34, 23, 16, 2, dtype, layout="model"), TOL[dtype])
    check_scan_fwd(make_scan_inputs(1, 40, 9, 16, None, dtype), TOL[dtype])
    check_scan_fwd(make_scan_inputs(2, 5, 1, 3, None, dtype), TOL[dtype])


def test_softplus_f32():
    """The kernels' softplus against float64 log1p(exp(x)) (x above 20 as torch: x itself):
    |rel| <= 4e-6 from x = -80 up (below about -87 the result is a float32 subnormal, which the
    GPU flushes to zero)."""
    x = torch.cat([torch.linspace(-40.0, 40.0, 4001), -torch.logspace(-7, 1.5, 301),
                   torch.logspace(-7, 1.5, 301), torch.tensor([0.0, 20.0, 20.5, 88.0, -80.0])])
    y = torch.full_like(x, float("nan"))
    _common.launch(_softplus_kernel, (triton.cdiv(x.numel(), 1024),), x.device, x, y, x.numel(),
                   BLOCK=1024, num_warps=4)
    xd = x.double().cpu()
    expected = torch.where(xd > 20, xd, torch.log1p(torch.exp(xd)))
    err = ((y.double().cpu() - expected).abs() / expected.abs()).max().item()
    assert err <= 4e-6, err


@_common.kernel
def _softplus_kernel(x_ptr, y_ptr, n, BLOCK: tl.constexpr):
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n
    x = tl.load(x_ptr + offs, mask=mask, other=0.0)
    tl.store(y_ptr + offs, _common.softplus_f32(x), mask=mask)


def test_scan_chunked_equals_whole():
    kw = make_scan_inputs(1, 5, 30, 4)
    out, last = selective_scan_fwd(**kw)
    kw1 = dict(kw, u=kw["u"][..., :13], delta=kw["delta"][..., :13], B=kw["B"][..., :13],
               C=kw["C"][..., :13], z=kw["z"][..., :13])
    o1, s1 = selective_scan_fwd(**kw1)
    kw2 = dict(kw, u=kw["u"][..., 13:], delta=kw["delta"][..., 13:], B=kw["B"][..., 13:],
               C=kw["C"][..., 13:], z=kw["z"][..., 13:], initial_state=s1)
    o2, s2 = selective_scan_fwd(**kw2)
    assert rel(torch.cat([o1, o2], -1), out) < 1e-6 and rel(s2, last) < 1e-6


def test_scan_length_zero():
    kw = make_scan_inputs(1, 3, 0, 4)
    out, last = selective_scan_fwd(**kw)
    assert out.shape == (1, 3, 0)
    assert rel(last, kw["initial_state"]) == 0.0


@pytest.mark.parametrize("batch,dim,length,dstate,groups", [
    (2, 6, 37, 5, None),
    (1, 8, 19, 4, 2),
    (1, 6, 9, 3, 3),
    (1, 3, 1, 4, None),
])
def test_scan_bwd_fp32(batch, dim, length, dstate, groups):
    check_scan_bwd(make_scan_inputs(batch, dim, length, dstate, groups), TOL[torch.float32])


def test_scan_bwd_no_options_no_dlast():
    check_scan_bwd(make_scan_inputs(2, 5, 23, 4, options=False), TOL[torch.float32],
                   with_dlast=False)


def test_scan_bwd_model_layout():
    check_scan_bwd(make_scan_inputs(1, 6, 17, 4, 2, layout="model"), TOL[torch.float32])


def test_scan_bwd_bf16():
    check_scan_bwd(make_scan_inputs(1, 6, 21, 4, dtype=torch.bfloat16), TOL[torch.bfloat16])


def test_scan_validation():
    kw = make_scan_inputs(1, 4, 8, 3)
    with pytest.raises(ValueError, match="delta"):
        selective_scan_fwd(**dict(kw, delta=kw["delta"][..., :7]))
    with pytest.raises(ValueError, match="A must"):
        selective_scan_fwd(**dict(kw, A=kw["A"][:3]))
    with pytest.raises(ValueError, match="B must"):
        selective_scan_fwd(**dict(kw, B=kw["B"][..., :7]))
    with pytest.raises(ValueError, match="multiple of groups"):
        selective_scan_fwd(**dict(kw, B=torch.randn(1, 3, 3, 8), C=torch.randn(1, 3, 3, 8)))
    with pytest.raises(ValueError, match="initial_state"):
        selective_scan_fwd(**dict(kw, initial_state=torch.randn(1, 4, 2)))
    with pytest.raises(ValueError, match="u must"):
        selective_scan_fwd(**dict(kw, u=kw["u"][0]))
    with pytest.raises(ValueError, match="float"):
        selective_scan_fwd(**dict(kw, u=kw["u"].to(torch.int32)))
    if torch.device("meta") != kw["u"].device:
        with pytest.raises(ValueError, match="device"):
            selective_scan_fwd(**dict(kw, D=kw["D"].to("meta")))


# ---------------------------------------------------------------------------------------------
# state update
# ---------------------------------------------------------------------------------------------


def make_update_inputs(batch, dim, dstate, groups=None, dtype=torch.float32, device=DEVICE):
    r = lambda *s: torch.randn(*s, device=device)  # noqa: E731
    bc = (batch, dstate) if groups is None else (batch, groups, dstate)
    return dict(state=r(batch, dim, dstate), x=r(batch, dim).to(dtype),
                dt=(r(batch, dim) * 0.5).to(dtype), A=-torch.exp(r(dim, dstate) * 0.5),
                B=r(*bc).to(dtype), C=r(*bc).to(dtype), D=r(dim), z=r(batch, dim).to(dtype),
                dt_bias=r(dim) * 0.3 - 1.0, dt_softplus=True)


def update_ref(kw):
    args = {k: (f64(v) if isinstance(v, torch.Tensor) else v) for k, v in kw.items()}
    return ref.selective_state_update(**args)


@pytest.mark.parametrize("batch,dim,dstate,groups,dtype", [
    (3, 7, 5, None, torch.float32),
    (2, 8, 4, 2, torch.float32),
    (1, 6, 16, 3, torch.bfloat16),
    (2, 5, 3, None, torch.float16),
    (6, 7, 5, None, torch.float32),
    (9, 6, 16, 3, torch.bfloat16),
])
@pytest.mark.parametrize("rows", [False, True])
def test_state_update(batch, dim, dstate, groups, dtype, rows, monkeypatch):
    """rows: the several-row kernel (every batch row of a channel block in one program)."""
    from mamba_export.kernels import state_update as su

    if rows:
        monkeypatch.setattr(su, "launch_config", lambda *a: (16, 4, 16))
    kw = make_update_inputs(batch, dim, dstate, groups, dtype)
    out, new = selective_state_update_fwd(**kw)
    r_out, r_new = update_ref(kw)
    assert out.dtype == dtype and new.dtype == torch.float32
    assert rel(out, r_out) <= TOL[dtype] and rel(new, r_new) <= TOL[torch.float32]


def test_state_update_in_place_and_no_options():
    kw = make_update_inputs(2, 6, 4)
    for k in ("D", "z", "dt_bias"):
        kw.pop(k)
    kw["dt_softplus"] = False
    kw["dt"] = kw["dt"].abs()
    r_out, r_new = update_ref(kw)
    state = kw["state"]
    out, new = selective_state_update_fwd(**kw, out_state=state)
    assert new.data_ptr() == state.data_ptr()
    assert rel(out, r_out) <= 1e-5 and rel(state, r_new) <= 1e-5


def test_state_update_strided_state():
    kw = make_update_inputs(2, 6, 4)
    big = torch.randn(3, 2, 6, 4)
    kw["state"] = big[1]
    kw["x"] = torch.randn(6, 2).t()
    r_out, r_new = update_ref(kw)
    out, new = selective_state_update_fwd(**kw, out_state=big[1])
    assert rel(out, r_out) <= 1e-5 and rel(big[1], r_new) <= 1e-5


def test_state_update_validation():
    kw = make_update_inputs(2, 6, 4)
    with pytest.raises(ValueError, match="state"):
        selective_state_update_fwd(**dict(kw, state=kw["state"][:, :5]))
    with pytest.raises(ValueError, match="B must"):
        selective_state_update_fwd(**dict(kw, B=kw["B"][:, :3]))


# ---------------------------------------------------------------------------------------------
# causal conv1d
# ---------------------------------------------------------------------------------------------


def conv_inputs(batch, dim, length, width, dtype=torch.float32, layout="contiguous", device=DEVICE):
    if layout == "model":
        x = torch.randn(batch, length, 2 * dim, device=device).to(dtype)[..., :dim].transpose(1, 2)
    else:
        x = torch.randn(batch, dim, length, device=device).to(dtype)
    return x, torch.randn(dim, width, device=device), torch.randn(dim, device=device)


@pytest.mark.parametrize("width", [2, 3, 4])
@pytest.mark.parametrize("with_init,silu,with_bias", [(False, False, False), (True, True, True)])
def test_conv_fwd(width, with_init, silu, with_bias):
    x, w, b = conv_inputs(2, 6, 11, width)
    init = torch.randn(2, 6, width - 1) if with_init else None
    b = b if with_bias else None
    out, final = causal_conv1d_fwd(x, w, b, init, silu)
    r_out, r_final = ref.causal_conv1d(f64(x), f64(w), f64(b), f64(init), silu)
    assert rel(out, r_out) <= 1e-5 and rel(final, r_final) == 0.0
    assert final.dtype == x.dtype


@pytest.mark.parametrize("length", [1, 2])
def test_conv_fwd_short_with_state(length):
    x, w, b = conv_inputs(1, 5, length, 4)
    init = torch.randn(1, 5, 3)
    out, final = causal_conv1d_fwd(x, w, b, init, True)
    r_out, r_final = ref.causal_conv1d(f64(x), f64(w), f64(b), f64(init), True)
    assert rel(out, r_out) <= 1e-5 and rel(final, r_final) == 0.0


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_conv_fwd_model_layout_half(dtype):
    x, w, b = conv_inputs(2, 6, 13, 4, dtype, layout="model")
    assert x.stride(1) == 1
    init = torch.randn(2, 6, 3).to(dtype)
    out, final = causal_conv1d_fwd(x, w, b, init, True)
    r_out, r_final = ref.causal_conv1d(f64(x), f64(w), f64(b), f64(init), True)
    assert rel(out, r_out) <= TOL[dtype] and rel(final, r_final) == 0.0
    assert out.dtype == dtype and final.dtype == dtype


@pytest.mark.parametrize("width,state_len", [(4, 3), (4, 5), (2, 1)])
@pytest.mark.parametrize("early_state", [False, True])
def test_conv_update(width, state_len, early_state):
    """(early_state: the state, weights and bias read before the PDL wait.)"""
    x = torch.randn(3, 6)
    state = torch.randn(3, 6, state_len)
    w, b = torch.randn(6, width), torch.randn(6)
    r_out, r_state = ref.causal_conv1d_update(f64(x), f64(state), f64(w), f64(b), True)
    out, new = causal_conv1d_update_fwd(x, state, w, b, True, early_state=early_state)
    assert rel(out, r_out) <= 1e-5 and rel(new, r_state) == 0.0
    # in place
    out2, new2 = causal_conv1d_update_fwd(x, state, w, b, True, out_state=state, early_state=early_state)
    assert new2.data_ptr() == state.data_ptr()
    assert rel(out2, r_out) <= 1e-5 and rel(state, r_state) == 0.0


def test_conv_prefill_then_updates_equals_full():
    x, w, b = conv_inputs(2, 5, 12, 4)
    full, _ = causal_conv1d_fwd(x, w, b, None, True)
    out, state = causal_conv1d_fwd(x[..., :9], w, b, None, True)
    steps = [out]
    for t in range(9, 12):
        o, state = causal_conv1d_update_fwd(x[..., t], state, w, b, True, out_state=state)
        steps.append(o.unsqueeze(-1))
    assert rel(torch.cat(steps, -1), full) <= 1e-6


def test_conv_validation():
    x, w, b = conv_inputs(1, 4, 5, 4)
    with pytest.raises(ValueError, match="weight"):
        causal_conv1d_fwd(x, w[:3], b)
    with pytest.raises(ValueError, match="initial_state"):
        causal_conv1d_fwd(x, w, b, torch.randn(1, 4, 2))
    with pytest.raises(ValueError, match="width - 1"):
        causal_conv1d_update_fwd(x[..., 0], torch.randn(1, 4, 2), w, b)


# ---------------------------------------------------------------------------------------------
# GPU: compiled kernels, larger sizes, every dtype
# ---------------------------------------------------------------------------------------------

gpu = pytest.mark.gpu


@gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("batch,dim,length,groups,layout", [
    (2, 70, 300, None, "contiguous"),
    (1, 37, 1000, 2, "contiguous"),   # 37 channels: not a multiple of any block; odd L
    (2, 48, 257, None, "model"),
    (3, 16, 1, None, "contiguous"),
])
@pytest.mark.parametrize("kind", ["seq", "chunk", "split"])
def test_gpu_scan_fwd(dtype, batch, dim, length, groups, layout, kind, monkeypatch):
    force_scan_kind(monkeypatch, kind)
    if groups is not None and dim % groups:
        dim = dim - dim % groups
    kw = make_scan_inputs(batch, dim, length, 16, groups, dtype, "cuda", layout=layout)
    check_scan_fwd(kw, TOL[dtype])


@gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("segments", [3, 16])
@pytest.mark.parametrize("batch,dim,length,groups,layout", [
    (2, 70, 3000, None, "contiguous"),
    (1, 64, 1001, 4, "model"),
    (1, 37, 517, None, "contiguous"),
])
def test_gpu_scan_fwd_split(dtype, segments, batch, dim, length, groups, layout, monkeypatch):
    force_scan_segments(monkeypatch, segments)
    kw = make_scan_inputs(batch, dim, length, 16, groups, dtype, "cuda", layout=layout)
    check_scan_fwd(kw, TOL[dtype])


@gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("block_d,block_t,bc_f32", [(4, 16, False), (8, 16, True), (8, 8, True),
                                                     (4, 16, True), (8, 16, False)])
def test_gpu_scan_fwd_seq_configs(dtype, block_d, block_t, bc_f32, monkeypatch):
    """The seq tiles the defaults use and their nearest sweep neighbours, at odd D and L,
    grouped B/C."""
    cfg = {"KIND": "seq", "BLOCK_D": block_d, "BLOCK_T": block_t, "num_warps": 1,
           "BC_F32": bc_f32}
    monkeypatch.setattr(ss_mod, "scan_config", lambda *a, **k: cfg)
    for batch, dim, length, groups in [(2, 70, 301, None), (1, 36, 37, 2)]:
        kw = make_scan_inputs(batch, dim, length, 16, groups, dtype, "cuda", layout="model")
        check_scan_fwd(kw, TOL[dtype])


@gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("block_d,block_t,dpt,bc_ahead", [
    (4, 16, 1, False), (4, 8, 1, False), (4, 8, 1, True), (4, 16, 1, True), (8, 8, 1, True), (2, 16, 1, True),
    (8, 8, 2, True), (16, 8, 2, True)])
def test_gpu_scan_fwd_gluon(dtype, block_d, block_t, dpt, bc_ahead, monkeypatch):
    """The Gluon kernel (kernels/scan_gluon.py) at its tiles (dpt: channels per lane; bc_ahead:
    B/C loaded a chunk ahead or when used): odd D and L, L = 1, L shorter than a chunk, exactly
    one to three chunks (the unmasked main loop's edges), grouped B/C, a state size that is not
    a power of two, no options, the model's layout; each case checked to have run on it (not
    the seq fallback)."""
    check_gluon_scan(dtype, {"KIND": "gluon", "BLOCK_D": block_d, "BLOCK_T": block_t, "num_warps": 1,
                             "DPT": dpt, "BC_AHEAD": bc_ahead}, monkeypatch)


@gpu
@pytest.mark.parametrize("block_d,block_t,bc_ahead", [(4, 16, False), (4, 8, True)])
def test_gpu_scan_fwd_gluon_bc_f32(block_d, block_t, bc_ahead, monkeypatch):
    """bfloat16 B/C through the kernel's float32 path (BC_PACKED off), which float32 takes."""
    check_gluon_scan(torch.bfloat16, {"KIND": "gluon", "BLOCK_D": block_d, "BLOCK_T": block_t,
                                      "num_warps": 1, "BC_AHEAD": bc_ahead, "BC_PACKED": False}, monkeypatch)


def check_gluon_scan(dtype, cfg, monkeypatch):
    if not scan_gluon.available(0):
        pytest.skip("Gluon not available")
    ran = []
    launch = scan_gluon.launch_fwd
    monkeypatch.setattr(scan_gluon, "launch_fwd",
                        lambda *a, **k: ran.append(k["BC_PACKED"]) or launch(*a, **k))
    monkeypatch.setattr(ss_mod, "scan_config", lambda *a, **k: cfg)
    block_t = cfg["BLOCK_T"]
    cases = [(2, 70, 301, 16, None, True, "contiguous"), (1, 37, 1, 16, None, True, "contiguous"),
             (3, 16, 5, 16, None, True, "contiguous"), (1, 32, block_t, 16, None, True, "contiguous"),
             (1, 32, 2 * block_t, 16, None, True, "contiguous"), (1, 32, 3 * block_t + 1, 16, 2, True,
                                                                   "contiguous"),
             (2, 40, 77, 12, None, True, "contiguous"), (1, 24, 50, 16, None, False, "contiguous"),
             (2, 48, 257, 16, None, True, "model")]
    for batch, dim, length, dstate, groups, options, layout in cases:
        ran.clear()
        kw = make_scan_inputs(batch, dim, length, dstate, groups, dtype, "cuda", options, layout)
        check_scan_fwd(kw, TOL[dtype])
        # 16-bit B/C packed into one word per state unless the config says otherwise
        packed = {torch.bfloat16: 1, torch.float16: 2}.get(dtype, 0) if cfg.get("BC_PACKED", True) else 0
        assert ran == [packed], (batch, dim, length, dstate)


@gpu
@pytest.mark.parametrize("kind", ["seq", "chunk", "split", "gluon"])
def test_gpu_scan_fwd_long(kind, monkeypatch):
    force_scan_kind(monkeypatch, kind)
    kw = make_scan_inputs(1, 8, 70001, 16, None, torch.bfloat16, "cuda")
    check_scan_fwd(kw, TOL[torch.bfloat16])


@gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("batch,dim,length,groups", [(2, 40, 300, None), (1, 37, 130, None),
                                                     (1, 64, 200, 4)])
def test_gpu_scan_bwd(dtype, batch, dim, length, groups):
    check_scan_bwd(make_scan_inputs(batch, dim, length, 16, groups, dtype, "cuda"), TOL[dtype])


@gpu
def test_gpu_scan_int64_offsets():
    """B*D*L > 2^31: the last channels' offsets only fit in int64. Compare them with the same
    kernel run on those channels alone (small offsets)."""
    dim, length = 1536, (2**31) // 1536 + 4096
    dt = torch.bfloat16
    g = torch.Generator(device="cuda").manual_seed(3)
    u = torch.randn(1, dim, length, device="cuda", dtype=dt, generator=g)
    delta = torch.randn(1, dim, length, device="cuda", dtype=dt, generator=g)
    z = torch.randn(1, dim, length, device="cuda", dtype=dt, generator=g)
    Bm = torch.randn(1, 16, length, device="cuda", dtype=dt, generator=g)
    Cm = torch.randn(1, 16, length, device="cuda", dtype=dt, generator=g)
    A = -torch.rand(dim, 16, device="cuda") - 0.5
    Dv = torch.randn(dim, device="cuda")
    bias = torch.randn(dim, device="cuda") - 2.0
    out, last = selective_scan_fwd(u, delta, A, Bm, Cm, Dv, z, bias, True)
    s = slice(dim - 8, dim)
    out_s, last_s = selective_scan_fwd(u[:, s].contiguous(), delta[:, s].contiguous(), A[s], Bm,
                                       Cm, Dv[s], z[:, s].contiguous(), bias[s], True)
    assert rel(last[:, s], last_s) < 1e-5
    assert rel(out[:, s], out_s) < 1e-2  # bf16 outputs: same math, different block shape
    assert torch.isfinite(out).all()


@gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_gpu_state_update(dtype):
    kw = make_update_inputs(5, 1000, 16, None, dtype, "cuda")
    out, new = selective_state_update_fwd(**kw)
    r_out, r_new = update_ref(kw)
    assert rel(out, r_out) <= TOL[dtype] and rel(new, r_new) <= 1e-5
    state = kw["state"].clone()
    out, new = selective_state_update_fwd(**dict(kw, state=state), out_state=state)
    assert rel(out, r_out) <= TOL[dtype] and rel(state, r_new) <= 1e-5


@gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("layout", ["contiguous", "model"])
def test_gpu_conv(dtype, layout):
    x, w, b = conv_inputs(2, 300, 1000, 4, dtype, layout, "cuda")
    init = torch.randn(2, 300, 3, device="cuda").to(dtype)
    out, final = causal_conv1d_fwd(x, w, b, init, True)
    r_out, r_final = ref.causal_conv1d(f64(x), f64(w), f64(b), f64(init), True)
    assert rel(out, r_out) <= TOL[dtype] and rel(final, r_final) == 0.0
    state = final.clone()
    xs = torch.randn(2, 300, device="cuda").to(dtype)
    r_o, r_s = ref.causal_conv1d_update(f64(xs), f64(state), f64(w), f64(b), True)
    o, s = causal_conv1d_update_fwd(xs, state, w, b, True, out_state=state)
    assert rel(o, r_o) <= TOL[dtype] and rel(state, r_s) == 0.0

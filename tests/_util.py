"""Helpers shared by the tests."""

import torch


def rel_err(out: torch.Tensor, ref: torch.Tensor) -> float:
    """||out - ref|| / ||ref|| in float64; NaN anywhere gives inf (never passes a bound)."""
    out64, ref64 = out.detach().double(), ref.detach().double()
    if not torch.isfinite(out64).all():
        return float("inf")
    denom = ref64.norm().item()
    return (out64 - ref64).norm().item() / (denom if denom > 0 else 1.0)


def scan_inputs(batch, dim, length, dstate, groups=0, dtype=torch.float64, device="cpu",
                with_options=True, seed=None):
    """Fresh random inputs for the selective scan at mamba-like magnitudes.

    Returns a dict of the scan's keyword arguments (delta raw, with softplus and bias)."""
    g = torch.Generator().manual_seed(seed if seed is not None else torch.randint(0, 2**31, ()).item())
    r = lambda *s: torch.randn(*s, generator=g, dtype=torch.float64)
    bc_shape = (batch, groups, dstate, length) if groups else (batch, dstate, length)
    args = dict(
        u=r(batch, dim, length),
        delta=r(batch, dim, length) * 0.5 - 1.0,
        A=-torch.rand(dim, dstate, generator=g, dtype=torch.float64) * 2 - 0.1,
        B=r(*bc_shape),
        C=r(*bc_shape),
    )
    if with_options:
        args.update(D=r(dim), z=r(batch, dim, length), delta_bias=r(dim) * 0.1,
                    delta_softplus=True, initial_state=r(batch, dim, dstate))
    param_dtype = torch.float64 if dtype == torch.float64 else torch.float32
    activations = ("u", "delta", "B", "C", "z")
    return {k: v.to(device=device, dtype=dtype if k in activations else param_dtype)
            if isinstance(v, torch.Tensor) else v for k, v in args.items()}

"""Compile the Mamba-2, decode (embedding and greedy selection included) and selective-scan
Triton kernels for sm_90 without a GPU (Triton's AOT path), in a process where TRITON_INTERPRET
is unset. The interpreter runs a kernel's Python,
not Triton's compiler: type and layout errors that only the compiler sees surface here, on CPU.
Prints one line per kernel variant; exits non-zero on the first failure. Run by
tests/test_aot_compile.py."""

import inspect
import sys

import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

from mamba_export.kernels import (causal_conv1d, decode_linear, embedding, gated_rmsnorm, greedy, rmsnorm,
                                  selective_scan, ssd_scan, ssd_update, state_update)

FLOAT_SCALARS = {"dt_lo", "dt_hi", "eps"}


def compile_for_sm90(kernel, constexprs, pointer_type, num_warps=4, num_stages=2):
    """Build the signature from the parameter names: ``*_ptr`` are pointers (element type from
    ``pointer_type(name)``), the float scalars float32, every other runtime argument int32;
    constexprs the case leaves out take their defaults (PDL: off)."""
    sig = {}
    constexprs = dict(constexprs)
    for name, param in inspect.signature(kernel.fn).parameters.items():
        if "constexpr" in str(param.annotation) and param.default is not inspect.Parameter.empty:
            constexprs.setdefault(name, param.default)
        if name in constexprs:
            sig[name] = "constexpr"
        elif name.endswith("_ptr"):
            sig[name] = "*" + pointer_type(name)
        else:
            sig[name] = "fp32" if name in FLOAT_SCALARS else "i32"
    names = list(sig)
    src = ASTSource(fn=getattr(kernel, "jit", kernel), signature=sig,  # (a project kernel, or a plain JIT one)
                    constexprs={(names.index(k),): v for k, v in constexprs.items()})
    compiled = triton.compile(src, target=GPUTarget("cuda", 90, 32),
                              options={"num_warps": num_warps, "num_stages": num_stages})
    print(f"{kernel.__name__} {sorted(constexprs.items())[:3]}... ok, shared {compiled.metadata.shared}")
    return compiled


def main():
    fp32 = {"A_ptr", "D_ptr", "bias_ptr", "state_ptr", "nstate_ptr", "init_ptr", "final_ptr",
            "cw_ptr", "cbias_ptr", "w_ptr"}
    for dt in ("bf16", "fp16"):
        ptr = lambda n, dt=dt: "fp32" if n in fp32 else dt  # noqa: E731
        block_t, block_p, num_warps, num_stages = ssd_scan.default_config(1, 80)
        compile_for_sm90(ssd_scan._ssd_scan_fwd_kernel, dict(
            HAS_D=True, HAS_Z=True, HAS_BIAS=True, SOFTPLUS=True, HAS_LIMIT=True, HAS_INIT=True,
            IEEE=False, WIDEN=False,
            BLOCK_T=block_t, BLOCK_P=block_p, BLOCK_N=128), ptr, num_warps, num_stages)
        for conv, sums in ((True, False), (False, False), (False, True)):  # (model: early state, PDL)
            compile_for_sm90(ssd_update._ssd_update_kernel, dict(
                HAS_D=True, HAS_Z=not conv, HAS_BIAS=True, SOFTPLUS=True, HAS_LIMIT=True,
                BLOCK_P=32, BLOCK_N=128, CONV=conv, CONV_BIAS=conv, WIDTH=4 if conv else 1,
                EARLY_STATE=True, NORM_SUMS=sums, EARLY_C=True, PDL=True), ptr)
        for fused in (True, False):  # (fused: the model's, state read before the PDL wait)
            compile_for_sm90(state_update._state_update_kernel, dict(
                HAS_D=True, HAS_Z=True, HAS_BIAS=True, SOFTPLUS=True, DT_PROJ=fused, BLOCK_D=4,
                BLOCK_N=16, BLOCK_R=256 if fused else 1, EARLY_STATE=fused, EARLY_W=fused, EARLY_BD=fused,
                EARLY_XZ=fused, PDL=fused),
                ptr, num_warps=1)
        compile_for_sm90(state_update._state_update_rows_kernel, dict(  # (the model's at 16 rows)
            HAS_D=True, HAS_Z=True, HAS_BIAS=True, SOFTPLUS=True, DT_PROJ=True, IEEE=False,
            BLOCK_M=16, BLOCK_D=16, BLOCK_N=16, BLOCK_R=256, EARLY_STATE=True, EARLY_W=True, EARLY_BD=True,
            EARLY_XZ=True, PDL=True),
            ptr, num_warps=2)
        compile_for_sm90(rmsnorm._add_rmsnorm_kernel, dict(  # (the model's: residual read early)
            HAS_RESIDUAL=True, BLOCK=2048, EARLY=True, PDL=True), ptr)
        compile_for_sm90(gated_rmsnorm._gated_rmsnorm_kernel, dict(
            HAS_Z=True, NORM_BEFORE_GATE=False, FP64=False, BLOCK=2048, COMMIT=True, BLOCK_C=64,
            BLOCK_S=4), ptr, num_warps=8)
        # (one-tile cases: the weight read before the PDL wait, the model's add + RMSNorm, the
        # conv (in_proj) or the gated norm's scaling (out_proj, one or two groups) folded in, and
        # the next block's add + norm sums in out_proj's epilogue; K groups at 16 rows: in_proj
        # in one tile with the conv and the norm, one-tile K slices, a K loop; the x_proj-like
        # split cases also prefetch a weight into L2; the K loops without PDL read their first
        # tile early)
        for dot, split, rows, pdl, norm, conv, groups, k_groups in (
                (False, 1, 1, True, True, True, 0, 1), (False, 6, 1, False, False, False, 0, 1),
                (True, 1, 16, True, True, False, 0, 1), (True, 4, 16, False, False, True, 1, 1),
                (False, 2, 16, False, False, False, 2, 1), (True, 1, 16, True, False, True, 0, 1),
                (False, 1, 1, True, False, False, 2, 1), (True, 1, 16, True, False, False, 1, 1),
                (True, 10, 16, True, False, False, 0, 1), (True, 1, 16, True, False, True, 1, 4),
                (True, 3, 16, True, False, False, 0, 8), (True, 1, 16, False, False, False, 1, 2)):
            compile_for_sm90(decode_linear._decode_linear_kernel, dict(
                HAS_BIAS=True, DOT=dot, IEEE=False, WIDEN=False, SPLIT=split, BLOCK_M=rows,
                BLOCK_N=32 if dot else 4, BLOCK_K=1024 if norm or k_groups > 1 else 128, EARLY_W=pdl,
                ADD_NORM=norm, HAS_RES=norm, CONV=conv, CONV_BIAS=conv, WIDTH=4, BLOCK_S=4,
                ROW_NORM=groups > 0, BLOCK_G=max(groups, 1), BLOCK_Q=8, NEXT_NORM=groups == 1,
                K_GROUPS=k_groups, PREFETCH=split in (3, 6), EARLY_C=pdl,
                EARLY_K0=not pdl and k_groups == 1, PDL=pdl),
                lambda n, dt=dt: "fp32" if n in ("ws_ptr", "sq_ptr", "nsum_ptr", "nrout_ptr") else
                ("i32" if n == "cnt_ptr" else dt), num_warps=8)
        for rows, early_k0 in ((16, True), (8, False)):  # weight @ x.T K loops (SWAP_AB: mamba-1.4b's)
            compile_for_sm90(decode_linear._decode_linear_kernel, dict(
                HAS_BIAS=False, DOT=True, IEEE=False, WIDEN=False, SPLIT=4, BLOCK_M=rows, BLOCK_N=64,
                BLOCK_K=128, EARLY_W=False, ADD_NORM=False, HAS_RES=False, CONV=False, CONV_BIAS=False,
                WIDTH=2, BLOCK_S=1, ROW_NORM=False, BLOCK_G=1, BLOCK_Q=1, NEXT_NORM=False, K_GROUPS=1,
                PREFETCH=False, EARLY_C=False, EARLY_K0=early_k0, SWAP_AB=True, PDL=True),
                lambda n, dt=dt: "fp32" if n in ("ws_ptr", "sq_ptr", "nsum_ptr", "nrout_ptr") else
                ("i32" if n == "cnt_ptr" else dt), num_warps=4, num_stages=4)
        compile_for_sm90(causal_conv1d._conv_commit_kernel, dict(BLOCK_D=256, BLOCK_S=4), ptr)
        compile_for_sm90(causal_conv1d._conv_update_kernel, dict(  # (Mamba-1's decode conv kernel)
            HAS_BIAS=True, SILU=True, WIDTH=4, BLOCK_S=4, BLOCK_D=128, EARLY_STATE=True, PDL=True), ptr)
    # the decode step's ends: embedding rows (int64 ids), greedy tokens (one chunk; several)
    compile_for_sm90(embedding._embedding_kernel, dict(BLOCK=1024, PDL=True),
                     lambda n: "i64" if n == "ids_ptr" else "fp16")
    for chunks in (1, 32):
        compile_for_sm90(greedy._greedy_kernel, dict(BLOCK=2048, CHUNKS=chunks, PDL=True),
                         lambda n: {"logits_ptr": "fp16", "out_ptr": "i64", "part_val_ptr": "fp32"}.get(n, "i32"))
    # Mamba-1 selective scan: the forward kernels at their GPU defaults (seq, split's two passes,
    # chunk) and the backward, bf16 activations, float32 state, parameters and scratch
    act = {"u_ptr", "dt_ptr", "z_ptr", "out_ptr", "dout_ptr", "du_ptr", "ddt_ptr", "dz_ptr"}
    ptr = lambda n: "bf16" if n in act else "fp32"  # noqa: E731
    scan = dict(HAS_D=True, HAS_Z=True, HAS_BIAS=True, SOFTPLUS=True, BC_ROW=True, DSTATE=16,
                BLOCK_N=16)
    ss = selective_scan
    for block_d, block_t, prefetch in ((8, 16, 1), (4, 16, 2), (16, 8, 1)):
        compile_for_sm90(ss._scan_fwd_seq_kernel, dict(scan, HAS_H0=True, BLOCK_D=block_d,
                                                       BLOCK_T=block_t, PREFETCH=prefetch), ptr,
                         num_warps=1)
    for states_only in (True, False):
        compile_for_sm90(ss._scan_fwd_split_kernel, dict(scan, HAS_H0=True, STATES_ONLY=states_only,
                                                         BLOCK_D=8, BLOCK_T=16), ptr, num_warps=1)
    compile_for_sm90(ss._scan_fwd_kernel, dict(scan, HAS_H0=True, WRITE_OUT=True, STORE_CHUNKS=False,
                                               BLOCK_D=4, BLOCK_T=256, LAST_LEVELS=3), ptr, num_warps=2)
    compile_for_sm90(ss._scan_bwd_kernel, dict(scan, HAS_DLAST=True, BLOCK_D=8, BLOCK_T=64), ptr)
    return 0


if __name__ == "__main__":
    sys.exit(main())

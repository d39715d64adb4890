"""Inductor must see exactly which tensors the project's kernels write.

Under torch.compile a Triton kernel launched through ``wrap_triton`` is analysed from its TTIR:
a tensor argument counts as written when a store's address derives from it. A store address
that derives from a device function's result makes the analysis count *every* pointer passed to
that function as written; Inductor then copies those inputs around the kernel and scatters the
"written" views back into their bases. The selective-scan kernels did that for a while (their
shared set-up helper also built the output rows), and on the H100 (2026-11-23, torch 2.11,
Triton 3.6) ``torch.compile`` training then gave wrong scan gradients while eager and
``aot_eager`` were right: Inductor's copies of the "written" strided B/C views were laid out
wrongly (docs/kernel_notes.md, v11). So: no input of any launch may look written, every launch writes
something, and the analysis itself must not fail (torch then assumes every input written).

The analysis runs on CPU in a fresh process (tests/_inductor_writes.py: TTIR for sm_90, no GPU;
TRITON_INTERPRET, which this test session sets, must be unset when Triton is imported).
"""

import json

import pytest
from _util import run_compiler_script

pytest.importorskip("triton")


@pytest.fixture(scope="module")
def launches():
    tkw = pytest.importorskip("torch._higher_order_ops.triton_kernel_wrap")
    if not hasattr(tkw, "identify_accessed_tensors"):
        pytest.skip("this torch has no identify_accessed_tensors")
    stdout = run_compiler_script("_inductor_writes.py")
    return [json.loads(line) for line in stdout.splitlines() if line.startswith("{")]


def test_every_launcher_was_analysed(launches):
    cases = {r["case"].split()[0] for r in launches}
    assert cases == {"selective_scan_fwd", "selective_scan_bwd", "selective_state_update_fwd",
                     "causal_conv1d_fwd", "causal_conv1d_update_fwd", "conv_state_commit_fwd",
                     "ssd_scan_fwd", "ssd_state_update_fwd", "ssd_conv_state_update_fwd",
                     "gated_rmsnorm_fwd", "decode_linear_fwd"}
    assert all(r["kernel"] for r in launches), [r["case"] for r in launches if not r["kernel"]]
    assert not [r for r in launches if r["failed"]], "the analysis failed on some kernels"


def test_no_kernel_appears_to_write_its_inputs(launches):
    wrong = [(r["case"], r["kernel"], r["inputs_written"]) for r in launches if r["inputs_written"]]
    assert not wrong
    assert all(r["written"] for r in launches)


def test_scan_kernels_write_exactly_their_outputs(launches):
    """The scan's forward kinds and backward, named output by output."""
    written = {(r["case"].split()[0], r["kernel"]): set(r["written"]) for r in launches}
    assert written["selective_scan_fwd", "_scan_fwd_seq_kernel"] == {"out_ptr", "hlast_ptr"}
    assert written["selective_scan_fwd", "_scan_fwd_kernel"] == {"out_ptr", "hlast_ptr", "scr_ptr"}
    assert written["selective_scan_bwd", "_scan_fwd_kernel"] == {"hchunk_ptr", "hlast_ptr",
                                                                 "scr_ptr"}
    assert written["selective_scan_bwd", "_scan_bwd_kernel"] >= {
        "du_ptr", "ddt_ptr", "dB_ptr", "dC_ptr", "dA_ptr", "dD_ptr", "dbias_ptr", "dh0_ptr"}

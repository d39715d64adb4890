"""Whether CUDA AOTInductor packages load and run here: a plain torch module ("plain") and the
project's graphs ("decode", "prefill"; "decode2" a Mamba-2 model), each compiled with
aoti_compile_and_package and loaded with aoti_load_package in its own process (a crash there
ends only that case). On the device machine (H100, torch 2.11.0+cu130, 2026-11-24) loading
segfaulted for the plain module as for ours, so the fault is not the project's ops.

    PYTHONPATH=. python3 scripts/aoti_cuda_probe.py [plain decode prefill decode2]"""
import subprocess
import sys

CASE = r'''
import sys, faulthandler, torch, tempfile, os
faulthandler.enable()
case = sys.argv[1]
d = tempfile.mkdtemp()
from torch._inductor import aoti_compile_and_package, aoti_load_package
if case == "plain":
    class M(torch.nn.Module):
        def __init__(s):
            super().__init__(); s.l = torch.nn.Linear(64, 64)
        def forward(s, x):
            return torch.relu(s.l(x)).cumsum(1)
    m = M().cuda().eval()
    x = torch.randn(4, 64, device="cuda")
    ep = torch.export.export(m, (x,), dynamic_shapes={"x": {0: torch.export.Dim("b", min=1, max=64)}})
    args = (x,)
    want = m(x)
else:
    import mamba_export as me
    from mamba_export.export.programs import export_program
    from mamba_export.export.graphs import example_inputs
    torch.manual_seed(0)
    cfg = dict(d_model=64, n_layer=2, vocab_size=128, d_state=16)
    if case.endswith("2"):
        cfg = dict(layer="Mamba2", d_model=32, n_layer=2, vocab_size=50, d_state=8, headdim=16, ngroups=2, chunk_size=4)
    model = me.MambaLM(me.MambaConfig(**cfg), device="cuda").eval()
    graph = "decode" if case.startswith("decode") else "prefill"
    ep = export_program(model, graph)
    args = example_inputs(model, graph)
    with torch.no_grad():
        want = ep.module()(*args)[0]
print(case, "exported", flush=True)
path = aoti_compile_and_package(ep, package_path=os.path.join(d, "p.pt2"))
print(case, "packaged", os.path.getsize(path), flush=True)
if os.environ.get("LIST"):
    import zipfile; print([n for n in zipfile.ZipFile(path).namelist()][:40])
runner = aoti_load_package(path)
print(case, "loaded", flush=True)
with torch.no_grad():
    out = runner(*args)
out = out[0] if isinstance(out, (list, tuple)) else out
torch.cuda.synchronize()
print(case, "ran; rel err", ((out.double() - want.double()).norm() / want.double().norm()).item(), flush=True)
'''
for case in sys.argv[1:] or ["plain", "decode", "prefill", "decode2"]:  # (LIST=1: the package's files)
    r = subprocess.run([sys.executable, "-c", CASE, case], capture_output=True, text=True, timeout=400)
    print(f"--- {case}: rc {r.returncode}")
    print(r.stdout[-3000:])
    print(r.stderr[-4000:])

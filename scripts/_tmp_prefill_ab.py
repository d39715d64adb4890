import time, torch, mamba_export as me
from mamba_export.kernels import scan_gluon
avail = scan_gluon.available
m = me.MambaLM(me.MambaConfig.preset("mamba-2.8b"), device="cuda", dtype=torch.float16).eval()
ids = torch.randint(0, 1000, (1, 2048), device="cuda"); st = m.new_state(1)
def t(n=5):
    with torch.no_grad():
        for _ in range(2): m.prefill(ids, st)
        torch.cuda.synchronize(); s = time.perf_counter()
        for _ in range(n): m.prefill(ids, st)
        torch.cuda.synchronize(); return (time.perf_counter() - s) / n * 1e3
for name, f in (("gluon", avail), ("triton", lambda i: False), ("gluon", avail)):
    scan_gluon.available = f
    print(name, f"{t():.2f} ms wall")
for name, f in (("gluon", avail), ("triton", lambda i: False)):
    scan_gluon.available = f
    with torch.no_grad(), torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as p:
        m.prefill(ids, st); torch.cuda.synchronize()
    print(name); print(p.key_averages().table(sort_by="cuda_time_total", row_limit=10))

"""Section ``peak``: square float32 matrix-multiply throughput of the array library and of torch.

The best of the sizes is the peak that the other sections measure utilisation against.
"""

from __future__ import annotations

import numpy as np

from .context import Ctx
from .peer import torch
from .runners import free
from .timing import alternate, kernel_contender, median


def section_peak(ctx: Ctx) -> dict:
    """Square float32 matmul GFLOP/s of the array library and torch, alternating; the best is the peak."""
    st, xp = ctx.settings, ctx.xp
    rng = np.random.default_rng(0)
    rows = []
    lib = ctx.backend.name
    for n in st.peak_sizes:
        a_h = rng.standard_normal((n, n), dtype=np.float32)
        b_h = rng.standard_normal((n, n), dtype=np.float32)
        contenders = {}
        a, b = xp.asarray(a_h), xp.asarray(b_h)
        c = xp.empty((n, n), dtype=np.float32)
        contenders[lib] = kernel_contender(lambda a=a, b=b, c=c: (lambda: xp.matmul(a, b, out=c), None),
                                           ctx.sync_npvit, 0.3)
        if ctx.torch_device:
            ta, tb = torch.from_numpy(a_h).to(ctx.torch_device), torch.from_numpy(b_h).to(ctx.torch_device)
            tc = torch.empty((n, n), dtype=torch.float32, device=ctx.torch_device)
            contenders["torch"] = kernel_contender(lambda: (lambda: torch.mm(ta, tb, out=tc), None),
                                                   ctx.sync_torch, 0.3)
        ctx.log(f"peak: sgemm {n}x{n}")
        samples = alternate(contenders, ctx.settings.warmup, st.peak_repeats, st.pause_s)
        row = {"n": n}
        for name, s in samples.items():
            t = median(s["fwd"])
            row[name] = {"seconds": t, "gflops": 2 * n**3 / t / 1e9, "samples": s["fwd"]}
        rows.append(row)
        del a, b, c, contenders
        free()
    best = max(r[name]["gflops"] for r in rows for name in r if name != "n")
    ctx.peak_gflops = best
    return {"rows": rows, "peak_gflops": best, "libraries": [lib] + (["torch"] if ctx.torch_device else [])}

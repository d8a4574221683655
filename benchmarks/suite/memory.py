"""Peak memory of one (framework, preset, batch), each measured in a fresh process.

``memory_in_subprocess`` runs ``run.py --memory-probe SPEC`` (same threads, backend and TF32 settings) and
reads back the report of ``memory_probe``: the memory after setup, then the peak over one inference forward
and over one training step, above the setup. CPU: the resident set (VmHWM, reset through
/proc/self/clear_refs); GPU: CuPy's memory-pool high-water, ``torch.cuda.max_memory_allocated``.
"""

from __future__ import annotations

import gc
import json
import os
import subprocess
import sys
from typing import Any

from npvit.demo import PRESETS

from . import ROOT, RUN_PY
from .batch import make_batch
from .context import Ctx
from .environment import proc_kb
from .peer import torch
from .runners import NpvitRunner, TorchRunner


def memory_in_subprocess(ctx: Ctx, framework: str, preset: str, batch: int) -> dict:
    """Run ``memory_probe`` in a fresh interpreter (same threads, backend, TF32) and return its report."""
    spec = {"framework": framework, "preset": preset, "batch": batch, "backend": ctx.backend.name}
    cmd = [sys.executable, str(RUN_PY), "--memory-probe", json.dumps(spec),
           "--threads", str(ctx.threads), "--backend", ctx.backend.name] + (["--tf32"] if ctx.tf32 else [])
    cmd += ["--torch-thp"] if os.environ.get("THP_MEM_ALLOC_ENABLE") == "1" else []
    path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)
    env = dict(os.environ, PYTHONPATH=path)
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=1800)
    except subprocess.TimeoutExpired:
        return {"error": "timed out"}
    if proc.returncode != 0:
        return {"error": (proc.stderr.strip().splitlines() or ["failed"])[-1]}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _status_kb(field_name: str) -> int:
    return proc_kb("/proc/self/status", field_name)


def _reset_peak_rss() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # resets VmHWM to the current resident set (Linux >= 4.0)
        return True
    except OSError:
        return False


def memory_probe(spec: dict, ctx: Ctx) -> dict:
    """In a fresh process: memory after setup, then the peak over one inference forward and one training
    step, above the setup (MB)."""
    cfg = PRESETS[spec["preset"]]()
    batch, fw = spec["batch"], spec["framework"]
    images, labels = make_batch(cfg, batch)
    gpu = ctx.backend.name == "cupy"
    if fw == "npvit":
        runner: Any = NpvitRunner(ctx, cfg, batch)
    else:
        # Weights do not change memory: no npvit model is built in this process (its host-side
        # initialisation would only raise the baseline).
        runner = TorchRunner(ctx, cfg, images, labels, ctx.attention_of(fw))
        # Create AdamW's state and the gradients up front (npvit allocates both at construction).
        for p in runner.model.parameters():
            p.grad = torch.zeros_like(p)
        lr = runner.opt.param_groups[0]["lr"]
        for g in runner.opt.param_groups:
            g["lr"] = 0.0
        runner.opt.step()
        for g in runner.opt.param_groups:
            g["lr"] = lr
    mb = 1 / 1024**2
    gc.collect()
    if gpu and fw == "npvit":
        pool = ctx.xp.get_default_memory_pool()
        ctx.sync_npvit()
        pool.free_all_blocks()
        base = pool.total_bytes()
        runner.forward()
        fwd_peak = pool.total_bytes()
        pool.free_all_blocks()
        runner.train_step()
        train_peak = pool.total_bytes()
        method = "GPU: CuPy memory-pool bytes held after the pass (upper bound of the peak in use)"
        return {"method": method, "base_mb": base * mb, "forward_mb": (fwd_peak - base) * mb,
                "train_mb": (train_peak - base) * mb}
    if gpu:
        ctx.sync_torch()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        runner.forward()
        fwd_peak = torch.cuda.max_memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        runner.train_step()
        train_peak = torch.cuda.max_memory_allocated()
        return {"method": "GPU: torch.cuda.max_memory_allocated", "base_mb": base * mb,
                "forward_mb": (fwd_peak - base) * mb, "train_mb": (train_peak - base) * mb}
    kb = 1 / 1024
    base = _status_kb("VmRSS")
    exact = _reset_peak_rss()
    before = _status_kb("VmHWM")
    runner.forward()
    fwd_peak = _status_kb("VmHWM")
    _reset_peak_rss()
    runner.train_step()
    train_peak = _status_kb("VmHWM")
    method = ("CPU: peak resident set (VmHWM, reset via /proc/self/clear_refs) minus the resident set after "
              "setup, fresh process per measurement") if exact else (
              "CPU: VmHWM minus the resident set after setup (could not reset the peak: upper bound)")
    return {"method": method, "exact": exact, "base_mb": base * kb, "hwm_before_mb": before * kb,
            "forward_mb": (fwd_peak - base) * kb, "train_mb": (train_peak - base) * kb,
            "forward_peak_mb": fwd_peak * kb, "train_peak_mb": train_peak * kb}

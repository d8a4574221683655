"""Section ``seqlen``: training step time against the number of tokens (patch grids of growing size), the
measured share of the attention core, and a least-squares fit t(T) = c0 + c1 T + c2 T^2.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Callable

import numpy as np

import npvit
from npvit.kernels import DropoutKey

from .context import Ctx
from .flops import TRAIN_FACTOR, attention_flops_per_image, matmul_flops_per_image
from .kernels import attention_core_setups
from .runners import free, make_runners
from .timing import alternate, kernel_contender, median, usage


def section_seqlen(ctx: Ctx, base: npvit.ViTConfig | None = None, label: str = "Keras preset") -> dict:
    """Training step time against the token count: ``base`` (default Keras) at image_size = grid x patch."""
    st = ctx.settings
    base = base or npvit.ViTConfig.keras()
    rows = []
    for grid in st.seq_grids:
        cfg = replace(base, image_size=grid * base.patch_size)
        t, b = cfg.num_tokens, st.seq_batch
        ctx.log(f"seqlen: grid {grid}x{grid} ({t} tokens), batch {b}")
        runners = make_runners(ctx, cfg, b)
        rng = np.random.default_rng(3)
        qkv_h = rng.standard_normal((b, t, 3, cfg.num_heads, cfg.key_dim), dtype=np.float32)
        do_h = rng.standard_normal((b, t, cfg.num_heads, cfg.key_dim), dtype=np.float32)
        np_core, t_core = attention_core_setups(ctx, cfg, qkv_h, do_h, DropoutKey(4))

        contenders: dict[str, Callable] = {}
        for name, r in runners.items():
            contenders[f"{name}/step"] = r.train_step
        contenders["npvit/attention"] = kernel_contender(np_core, ctx.sync_npvit, st.kernel_target_s)
        for peer in ctx.peers:
            contenders[f"{peer}/attention"] = kernel_contender(t_core(ctx.attention_of(peer)), ctx.sync_torch,
                                                               st.kernel_target_s)
        samples = alternate(contenders, max(1, st.warmup), st.seq_repeats, st.pause_s)
        names = list(runners)
        del runners, contenders
        free()
        flops = matmul_flops_per_image(cfg)
        row = {"grid": grid, "tokens": t, "batch": b, "gflop_per_image": flops / 1e9,
               "attention_flop_share": attention_flops_per_image(cfg) / flops}
        for name in names:
            step = median(samples[f"{name}/step"]["step"])
            att = samples[f"{name}/attention"]
            att_s = cfg.depth * (median(att["fwd"]) + median(att["bwd"]))
            row[name] = {"step_s": step, "images_per_s": b / step, "attention_s": att_s,
                         "step_usage": usage(samples[f"{name}/step"]), "attention_usage": usage(att),
                         "attention_share": att_s / step,
                         "gflops": TRAIN_FACTOR * flops * b / step / 1e9,
                         "step_samples": samples[f"{name}/step"]["step"], "attention_samples": att}
            if ctx.peak_gflops:
                row[name]["util"] = row[name]["gflops"] / ctx.peak_gflops
        rows.append(row)
    fits = {}
    for name in ["npvit", *ctx.peers]:
        fits[name] = quadratic_fit([r["tokens"] for r in rows], [r[name]["step_s"] for r in rows])
    return {"rows": rows, "fits": fits, "batch": st.seq_batch, "label": label, "patch_size": base.patch_size}


def quadratic_fit(tokens: list[int], seconds: list[float]) -> dict | None:
    """Least squares t(T) = c0 + c1 T + c2 T^2 (needs 3 or more points)."""
    if len(tokens) < 3:
        return None
    tt = np.asarray(tokens, dtype=np.float64)
    coef, *_ = np.linalg.lstsq(np.stack([np.ones_like(tt), tt, tt * tt], axis=1), np.asarray(seconds), rcond=None)
    c0, c1, c2 = (float(c) for c in coef)
    t_max = float(tt.max())
    return {"c0": c0, "c1": c1, "c2": c2,
            "quadratic_share_at_max": c2 * t_max**2 / (c0 + c1 * t_max + c2 * t_max**2)}

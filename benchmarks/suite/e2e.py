"""Section ``e2e``: training and inference images/s of the presets over a range of batch sizes, with model
FLOPs, utilisation against the measured peak and the peak memory of each (framework, preset, batch).
"""

from __future__ import annotations

from npvit.demo import PRESETS

from .context import Ctx
from .flops import TRAIN_FACTOR, matmul_flops_per_image
from .memory import memory_in_subprocess
from .runners import free, make_runners
from .timing import alternate, median, usage


def section_e2e(ctx: Ctx) -> dict:
    st = ctx.settings
    rows = []
    for preset, batches in st.e2e.items():
        cfg = PRESETS[preset]()
        for batch in batches:
            ctx.log(f"e2e: {preset}, batch {batch}")
            runners = make_runners(ctx, cfg, batch, ctx.e2e_peers)
            contenders = {}
            for name, r in runners.items():
                contenders[f"{name}/train"] = r.train_step
            for name, r in runners.items():
                contenders[f"{name}/forward"] = r.forward
            warmup = max(st.warmup, 2) if "torch-compile" in runners else st.warmup  # compiling, then settling
            samples = alternate(contenders, warmup, st.e2e_repeats, st.pause_s)
            n_params = runners["npvit"].model.num_params()
            names = list(runners)
            del runners, contenders
            free()
            row = {"preset": preset, "batch": batch, "params": n_params,
                   "gflop_per_image": matmul_flops_per_image(cfg) / 1e9,
                   "train_gflop_per_image": TRAIN_FACTOR * matmul_flops_per_image(cfg) / 1e9}
            for name in names:
                train, fwd = samples[f"{name}/train"]["step"], samples[f"{name}/forward"]["forward"]
                r = {"train_s": median(train), "forward_s": median(fwd), "train_samples": train,
                     "forward_samples": fwd, "train_usage": usage(samples[f"{name}/train"]),
                     "forward_usage": usage(samples[f"{name}/forward"])}
                r["train_ips"] = batch / r["train_s"]
                r["forward_ips"] = batch / r["forward_s"]
                r["train_gflops"] = r["train_ips"] * row["train_gflop_per_image"]
                r["forward_gflops"] = r["forward_ips"] * row["gflop_per_image"]
                if ctx.peak_gflops:
                    r["train_util"] = r["train_gflops"] / ctx.peak_gflops
                    r["forward_util"] = r["forward_gflops"] / ctx.peak_gflops
                if ctx.memory and name in ("npvit", *ctx.peers):  # the probe builds these (not the e2e extras)
                    ctx.log(f"e2e: {preset}, batch {batch}: peak memory of {name} (fresh process)")
                    r["memory"] = memory_in_subprocess(ctx, name, preset, batch)
                row[name] = r
            rows.append(row)
    return {"rows": rows, "peak_gflops": ctx.peak_gflops}

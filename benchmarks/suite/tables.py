"""Markdown output of the suite: number formats, the header, one table per section, the noise report."""

from __future__ import annotations

import math

from .context import FRAMEWORKS


def md_table(headers: list[str], rows: list[list[str]]) -> str:
    out = ["| " + " | ".join(headers) + " |", "|" + "|".join(["---"] + ["---:"] * (len(headers) - 1)) + "|"]
    out += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(out)


def fmt(x: float | None) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "—"
    ax = abs(x)
    if ax >= 100:
        return f"{x:,.0f}"
    if ax >= 10:
        return f"{x:.1f}"
    if ax >= 1:
        return f"{x:.2f}"
    return f"{x:.3g}"


def fmt_ms(seconds: float) -> str:
    return "—" if seconds is None or math.isnan(seconds) else fmt(seconds * 1e3)


def fmt_pct(x: float | None) -> str:
    return "—" if x is None or math.isnan(x) else f"{100 * x:.1f}%"


def fmt_ratio(x: float) -> str:
    return "—" if x is None or math.isnan(x) or math.isinf(x) else f"{x:.2f}x"


def fmt_rate(row: dict, r: dict) -> str:
    if not row["unit"]:
        return "—"
    fwd = row["work_fwd"] / r["fwd"] / 1e9 if row["work_fwd"] else math.nan
    bwd = row["work_bwd"] / r["bwd"] / 1e9 if row["work_bwd"] and not math.isnan(r["bwd"]) else math.nan
    return f"{fmt(fwd)} / {fmt(bwd)} {row['unit']}" if not math.isnan(bwd) else f"{fmt(fwd)} {row['unit']}"


def print_header(env: dict) -> None:
    print("# npvit benchmark suite\n")
    print(f"- date: {env['date']}")
    print(f"- command: `{env['command']}`")
    print(f"- machine: {env['cpu']}, {env['logical_cpus']} logical CPUs ({env['usable_cpus']} usable), "
          f"{env['memory_gib']:.1f} GiB" if env["memory_gib"] else f"- machine: {env['cpu']}")
    if env.get("gpu"):
        print(f"- GPU: {env['gpu']}, CUDA runtime {env['cuda_runtime']}, TF32 {'on' if env['tf32'] else 'off'} "
              f"(CUPY_TF32={env['CUPY_TF32']}, torch {env.get('torch_allow_tf32')})")
    print(f"- load average at start: {', '.join(f'{x:.2f}' for x in env['load_average_start'])}")
    print(f"- versions: Python {env['python']}, numpy {env['numpy']} ({env['numpy_blas']}), scipy {env['scipy']}, "
          f"torch {env['torch'] or 'not installed'}"
          + (f" ({env.get('torch_blas')})" if env.get("torch_blas") else "")
          + f", cupy {env['cupy'] or 'not installed'}, npvit {env['npvit']}")
    print(f"- threads: {env['threads']} (env {env['thread_env']}; OpenBLAS reports "
          f"{env['openblas_threads'] or 'n/a'}; torch.get_num_threads() = {env['torch_threads']})")
    print(f"- memory: transparent huge pages {env['thp_mode']}; NumPy madvises huge pages: "
          f"{env['numpy_hugepage_madvise']}; torch THP allocator (--torch-thp): {env['torch_thp_alloc']}")
    print(f"- backend: {env['backend']}, {env['dtype']}; torch peer: {env['torch_peer']}")
    print(f"- npvit {env.get('npvit_kernels', 'kernels: numpy')}\n")


def print_peak(res: dict) -> None:
    libs = res["libraries"]
    print("## Matrix-multiply peak (float32 sgemm, square)\n")
    headers = ["n"] + [f"{lib} GFLOP/s" for lib in libs] + ([f"{libs[0]}/torch"] if "torch" in libs else [])
    rows = []
    for r in res["rows"]:
        line = [str(r["n"])] + [fmt(r[lib]["gflops"]) for lib in libs]
        if "torch" in libs:
            line.append(fmt_ratio(r[libs[0]]["gflops"] / r["torch"]["gflops"]))
        rows.append(line)
    print(md_table(headers, rows))
    print(f"\nPeak used for utilisation: **{fmt(res['peak_gflops'])} GFLOP/s** (best of the above).\n")


def print_kernels(res: dict) -> None:
    peers = [p for p in res["step"] if p != "npvit"]
    cfg = res["config"]
    print(f"## Kernels: {res['label']} shapes (T={cfg['image_size'] // cfg['patch_size']}^2 tokens, dim "
          f"{cfg['dim']}), batch {res['batch']}, float32\n")
    print("Times are per call (ms); rates are forward / backward; share = calls x (fwd + bwd) / measured "
          "training step; ratio = npvit / torch time (fwd + bwd), > 1 means npvit is slower.\n")
    headers = ["kernel", "shape", "calls", "npvit fwd ms", "npvit bwd ms", "npvit rate", "npvit share"]
    for p in peers:
        headers += [f"{p} fwd ms", f"{p} bwd ms", f"{p} rate", f"{p} share", f"npvit/{p}"]
    lines = []
    groups = [("sum", None), ("other", None), ("composite", "**composite layers** (not added up)"),
              ("step", "**whole step**"), ("outside", "**outside the step**")]
    for group, title in groups:
        if title:
            lines.append([title] + [""] * (len(headers) - 1))
        if group == "other":
            line = ["other (residual adds, head split/merge, pos-embed, input check, ...)", "", "", "", "", "",
                    fmt_pct(res["step"]["npvit"]["other"] / res["step"]["npvit"]["median"]["step"])]
            for p in peers:
                other = res["step"][p]["other"] / res["step"][p]["median"]["step"]
                line += ["", "", "", fmt_pct(other), fmt_ratio(res["step"]["npvit"]["other"]
                                                                 / res["step"][p]["other"])]
            lines.append(line)
            continue
        if group == "step":
            for key, label in (("forward", "forward (training mode)"), ("loss", "loss forward + backward"),
                               ("backward", "backward"), ("adamw", "AdamW"), ("step", "training step")):
                line = [label, "", "1", fmt_ms(res["step"]["npvit"]["median"][key]), "", "",
                        fmt_pct(res["step"]["npvit"]["median"][key] / res["step"]["npvit"]["median"]["step"])]
                for p in peers:
                    m = res["step"][p]["median"]
                    line += [fmt_ms(m[key]), "", "", fmt_pct(m[key] / m["step"]),
                             fmt_ratio(res["step"]["npvit"]["median"][key] / m[key])]
                lines.append(line)
            fe = res["forward_eval"]
            line = ["forward (inference)", "", "", fmt_ms(fe["npvit"]["median"]["forward"]), "", "", ""]
            for p in peers:
                line += [fmt_ms(fe[p]["median"]["forward"]), "", "", "",
                         fmt_ratio(fe["npvit"]["median"]["forward"] / fe[p]["median"]["forward"])]
            lines.append(line)
            continue
        for row in res["rows"]:
            if row["group"] != group:
                continue
            name = row["name"] + (f" ({row['note']})" if row["note"].startswith(("skipped", "failed")) else "")
            line = [name, row["shape"], str(row["calls"])]
            for fw in ["npvit"] + peers:
                r = row.get(fw)
                if r is None:
                    line += ["—"] * (4 if fw == "npvit" else 5)
                    continue
                line += [fmt_ms(r["fwd"]), fmt_ms(r["bwd"]), fmt_rate(row, r), fmt_pct(r["share"])]
                if fw != "npvit":
                    n = row.get("npvit")
                    line.append(fmt_ratio(n["per_step"] / r["per_step"]) if n else "—")
            lines.append(line)
    print(md_table(headers, lines))
    for name, st in res["step"].items():
        m = st["median"]
        print(f"\n{name}: kernels above add up to {fmt_ms(st['sum_of_kernels'])} ms of a "
              f"{fmt_ms(m['step'])} ms step ({fmt_pct(st['sum_of_kernels'] / m['step'])}); the step used "
              f"{fmt(m.get('cpu_user_s'))} s user and {fmt(m.get('cpu_sys_s'))} s system CPU time, "
              f"{fmt(m.get('minor_faults'))} minor page faults.", end="")
    print("\n")


def print_e2e(res: dict, peers: list[str]) -> None:
    rows = res["rows"]
    fws = ["npvit"] + peers
    print("## End to end: throughput (images/s, float32)\n")
    print("train = forward + loss + backward + AdamW; forward = inference (no dropout, no caches / "
          "inference_mode). Ratio = npvit / torch images/s, < 1 means npvit is slower.\n")
    headers = ["preset", "batch", "params", "GFLOP/img (fwd)"]
    for kind in ("train", "forward"):
        headers += [f"{fw} {kind}" for fw in fws] + [f"{kind} npvit/{p}" for p in peers]
    lines = []
    for r in rows:
        line = [r["preset"], str(r["batch"]), f"{r['params'] / 1e6:.1f}M", f"{r['gflop_per_image']:.3f}"]
        for kind in ("train", "forward"):
            line += [fmt(r[fw][f"{kind}_ips"]) for fw in fws]
            line += [fmt_ratio(r["npvit"][f"{kind}_ips"] / r[p][f"{kind}_ips"]) for p in peers]
        lines.append(line)
    print(md_table(headers, lines))
    peak = res.get("peak_gflops")
    print(f"\n## End to end: utilisation (matmul GFLOP/s / measured peak {fmt(peak) if peak else 'n/a'} GFLOP/s)"
          " and peak memory (MB above the setup)\n")
    headers = ["preset", "batch"]
    for kind in ("train", "forward"):
        headers += [f"{fw} {kind} GFLOP/s (util)" for fw in fws]
    headers += [f"{fw} train sys s (faults)" for fw in fws]
    has_mem = any("memory" in r[fw] for r in rows for fw in fws)
    if has_mem:
        for kind in ("train", "forward"):
            headers += [f"{fw} {kind} MB" for fw in fws] + [f"{kind} MB npvit/{p}" for p in peers]
    lines = []
    for r in rows:
        line = [r["preset"], str(r["batch"])]
        for kind in ("train", "forward"):
            for fw in fws:
                util = r[fw].get(f"{kind}_util")
                line.append(f"{fmt(r[fw][f'{kind}_gflops'])} ({fmt_pct(util) if util is not None else 'n/a'})")
        for fw in fws:
            u = r[fw].get("train_usage", {})
            line.append(f"{fmt(u.get('cpu_sys_s'))} ({fmt(u.get('minor_faults'))})")
        if has_mem:
            for kind in ("train", "forward"):
                mem = {fw: r[fw].get("memory", {}).get(f"{kind}_mb") for fw in fws}
                line += [fmt(mem[fw]) if mem[fw] is not None else "—" for fw in fws]
                line += [fmt_ratio(mem["npvit"] / mem[p]) if mem["npvit"] and mem[p] else "—" for p in peers]
        lines.append(line)
    print(md_table(headers, lines))
    print("\nsys s (faults): median system CPU seconds and minor page faults of the process per training step; "
          "system time is the kernel handing out fresh memory, not arithmetic.")
    methods = {r[fw]["memory"].get("method") for r in rows for fw in fws if "memory" in r[fw]}
    if methods:
        print(f"\nMemory method: {'; '.join(sorted(m for m in methods if m))}.")
    print()


def print_seqlen(res: dict, peers: list[str]) -> None:
    fws = ["npvit"] + peers
    print(f"## Sequence length: {res['label']}, patch {res['patch_size']}, batch {res['batch']}, training step\n")
    print("attn share = depth x attention core (Q K^T, softmax, dropout, A V; forward + backward) measured "
          "alone / step (alone, it pays for its fresh memory every call: it can exceed its in-step cost); "
          "step s (sys) = median step and its system CPU seconds; ratio = npvit / torch step time, > 1 means "
          "npvit is slower.\n")
    headers = ["grid", "tokens", "GFLOP/img (fwd)", "attn FLOP share"]
    for fw in fws:
        headers += [f"{fw} step s (sys)", f"{fw} img/s", f"{fw} attn share", f"{fw} util"]
    headers += [f"npvit/{p}" for p in peers]
    lines = []
    for r in res["rows"]:
        line = [f"{r['grid']}x{r['grid']}", str(r["tokens"]), f"{r['gflop_per_image']:.3f}",
                fmt_pct(r["attention_flop_share"])]
        for fw in fws:
            x = r[fw]
            line += [f"{x['step_s']:.3f} ({fmt(x.get('step_usage', {}).get('cpu_sys_s'))})",
                     fmt(x["images_per_s"]), fmt_pct(x["attention_share"]),
                     fmt_pct(x["util"]) if "util" in x else "n/a"]
        line += [fmt_ratio(r["npvit"]["step_s"] / r[p]["step_s"]) for p in peers]
        lines.append(line)
    print(md_table(headers, lines))
    for fw, fit in res["fits"].items():
        if fit:
            print(f"\n{fw}: t(T) = {fit['c0']:.3g} + {fit['c1']:.3g} T + {fit['c2']:.3g} T^2 s; the T^2 term "
                  f"is {fmt_pct(fit['quadratic_share_at_max'])} of the fitted step at T = "
                  f"{res['rows'][-1]['tokens']}.", end="")
    print("\n")


def spread_report(results: dict, threshold: float = 1.5) -> list[str]:
    """Measurements whose samples spread by more than ``threshold`` (max / min): the noisy ones."""
    noisy = []

    def check(label: str, values: list[float] | None) -> None:
        vals = [v for v in values or [] if v and not math.isnan(v)]
        if len(vals) >= 2 and max(vals) / min(vals) > threshold:
            noisy.append(f"{label} ({max(vals) / min(vals):.1f}x)")

    for name, st in results.get("kernels", {}).get("step", {}).items():
        check(f"kernels: {name} training step", st["samples"].get("step"))
    for row in results.get("kernels", {}).get("rows", []):
        for fw in FRAMEWORKS:
            if fw in row:
                for key in ("fwd", "bwd"):
                    check(f"kernels: {row['name']} {fw} {key}", row[fw]["samples"].get(key))
    for row in results.get("e2e", {}).get("rows", []):
        for fw in [k for k in row if isinstance(row[k], dict)]:
            check(f"e2e: {row['preset']} b{row['batch']} {fw} train", row[fw]["train_samples"])
            check(f"e2e: {row['preset']} b{row['batch']} {fw} forward", row[fw]["forward_samples"])
    for row in results.get("seqlen", {}).get("rows", []):
        for fw in [k for k in row if isinstance(row[k], dict)]:
            check(f"seqlen: grid {row['grid']} {fw} step", row[fw]["step_samples"])
    return noisy

"""Section ``kernels``: every kernel of one training step, timed alone against its torch peer.

``kernel_cases`` lists the kernels of a config and batch as ``KernelCase`` rows (a forward/backward pair per
framework, the work it does, its calls per step); ``section_kernels`` times them and the whole step, and
``add_shares`` gives each row's share of the measured step.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

import npvit
from npvit import kernels as K
from npvit.kernels import DropoutKey
from npvit.model import Context

from .context import Ctx
from .flops import dense_flops
from .peer import F, TR, torch
from .runners import free, make_runners
from .timing import alternate, kernel_contender, median, medians


@dataclass
class KernelCase:
    """One row of the kernel table: a forward/backward pair per framework and what it computes."""

    name: str
    shape: str
    calls: int  # per training step
    unit: str  # "GFLOP/s", "GB/s" or "" (no rate)
    work_fwd: float  # FLOPs or bytes per call
    work_bwd: float
    npvit: Callable[[], tuple] | None
    torch: Callable[[], tuple] | None = None
    group: str = "sum"  # "sum": part of the step; "composite": a whole layer; "outside": not in the step
    note: str = ""


def kernel_cases(ctx: Ctx, cfg: npvit.ViTConfig, batch: int, runners: dict[str, Any]) -> list[KernelCase]:
    """The kernels of one training step at ``cfg`` and ``batch``, as measurable cases."""
    xp, be = ctx.xp, ctx.backend
    rng = np.random.default_rng(1)
    dev = ctx.torch_device
    f4 = 4  # bytes per float32

    def host(*shape: int) -> np.ndarray:
        return rng.standard_normal(shape, dtype=np.float32)

    def dev_np(a: np.ndarray) -> Any:
        return be.asarray(a)

    def leaf(a: np.ndarray, grad: bool = True) -> Any:
        return torch.from_numpy(np.ascontiguousarray(a)).to(dev).requires_grad_(grad)

    def tgrad(outputs: Any, inputs: list, grads: Any) -> None:
        torch.autograd.grad(outputs, inputs, grads, retain_graph=True)

    b, t, d = batch, cfg.num_tokens, cfg.dim
    h, kd = cfg.num_heads, cfg.key_dim
    hd = h * kd
    rows, depth = b * t, cfg.depth
    scale = 1.0 / math.sqrt(kd)
    drop_key = DropoutKey(2)
    cases: list[KernelCase] = []

    # ---- patches ----------------------------------------------------------------------------------------
    img = host(b, cfg.image_size, cfg.image_size, cfg.channels)
    dpatch = host(b, cfg.num_patches, cfg.patch_dim)
    n_patch = dpatch.size

    def np_patches():
        x, dy = dev_np(img), dev_np(dpatch)
        return (lambda: K.patches_forward(x, cfg.patch_size)[1],
                lambda cache: K.patches_backward(dy, cache))

    def t_patches():
        x, dy = leaf(img), leaf(dpatch, False)
        return (lambda: TR.extract_patches(x, cfg.patch_size), lambda y: tgrad(y, [x], dy))

    cases.append(KernelCase("patches", f"{b}x{cfg.image_size}^2x{cfg.channels} -> {b}x{cfg.num_patches}x"
                            f"{cfg.patch_dim}", 1, "GB/s", 2 * f4 * n_patch, 2 * f4 * n_patch,
                            np_patches, t_patches))

    # ---- dense layers -----------------------------------------------------------------------------------
    def dense_case(name: str, sizes: list[tuple[int, int]], calls: int, tokens: int = t) -> KernelCase:
        data = [(host(b, tokens, i), host(i, o), host(o), host(b, tokens, o)) for i, o in sizes]

        def np_setup():
            arrs = [tuple(dev_np(a) for a in group) for group in data]

            def fwd():
                return [K.dense_forward(x, w, bias)[1] for x, w, bias, _ in arrs]

            def bwd(caches):
                for (_, w, _, dy), cache in zip(arrs, caches):
                    K.dense_backward(dy, cache, w)
            return fwd, bwd

        def t_setup():
            arrs = [(leaf(x), leaf(w.T), leaf(bias), leaf(dy, False)) for x, w, bias, dy in data]

            def fwd():
                return [F.linear(x, w, bias) for x, w, bias, _ in arrs]

            def bwd(ys):
                tgrad(ys, [a for x, w, bias, _ in arrs for a in (x, w, bias)], [dy for *_, dy in arrs])
            return fwd, bwd

        flops = sum(dense_flops(b * tokens, i, o) for i, o in sizes)
        shape = " + ".join(f"{b}x{tokens}x{i} @ {i}x{o}" for i, o in sizes)
        return KernelCase(name, shape, calls, "GFLOP/s", flops, 2 * flops, np_setup, t_setup)

    cases.append(dense_case("patch-embed dense", [(cfg.patch_dim, d)], 1, tokens=cfg.num_patches))

    # ---- layer norm -------------------------------------------------------------------------------------
    ln_x, ln_dy = host(b, t, d), host(b, t, d)
    ln_g, ln_b = 1 + 0.1 * host(d), 0.1 * host(d)

    def np_ln():
        x, dy, g, bb = dev_np(ln_x), dev_np(ln_dy), dev_np(ln_g), dev_np(ln_b)
        return (lambda: K.layernorm_forward(x, g, bb, cfg.ln_eps)[1],
                lambda cache: K.layernorm_backward(dy, cache, g))

    def t_ln():
        x, dy, g, bb = leaf(ln_x), leaf(ln_dy, False), leaf(ln_g), leaf(ln_b)
        return (lambda: F.layer_norm(x, (d,), g, bb, cfg.ln_eps), lambda y: tgrad(y, [x, g, bb], dy))

    n_ln = ln_x.size
    cases.append(KernelCase("layer norm", f"{b}x{t}x{d}", 2 * depth + 1, "GB/s", 2 * f4 * n_ln, 3 * f4 * n_ln,
                            np_ln, t_ln))

    cases.append(dense_case("qkv dense", [(d, 3 * hd)], depth))

    # ---- attention core pieces --------------------------------------------------------------------------
    qkv_h = host(b, t, 3, h, kd)
    s_h, ds_h = host(b, h, t, t), host(b, h, t, t)
    do_h = host(b, t, h, kd)  # the incoming gradient arrives as (B, N, H, d) and is viewed as (B, H, N, d)
    n_att = s_h.size
    att_flops = 2 * b * h * t * t * kd

    def np_qkv_views():
        qkv = dev_np(qkv_h).transpose(2, 0, 3, 1, 4)  # (3, B, H, N, d) views, as mha_forward makes them
        return qkv[0], qkv[1], qkv[2]

    def t_qkv_views():
        qkv = torch.from_numpy(qkv_h).to(dev).permute(2, 0, 3, 1, 4)
        return tuple(qkv[i].detach().requires_grad_(True) for i in range(3))

    def np_scores():
        q, k, _ = np_qkv_views()
        ds = dev_np(ds_h)

        def fwd():
            qs = q * q.dtype.type(scale)
            return qs, qs @ k.swapaxes(-1, -2)

        def bwd(state):
            qs, _ = state
            ds.swapaxes(-1, -2) @ qs
            dq = ds @ k
            dq *= dq.dtype.type(scale)
        return fwd, bwd

    def t_scores():
        q, k, _ = t_qkv_views()
        ds = leaf(ds_h, False)
        return (lambda: (q * scale) @ k.transpose(-2, -1), lambda s: tgrad(s, [q, k], ds))

    cases.append(KernelCase("attention scores Q K^T", f"{b}x{h}x{t}x{kd} @ {kd}x{t}", depth, "GFLOP/s",
                            att_flops, 2 * att_flops, np_scores, t_scores,
                            note="the products of attention_core_forward/backward that give S, on the whole batch at "
                                 "once (the engine runs them a cache-sized chunk at a time: see the core row)"))

    def np_softmax():
        s, dy = dev_np(s_h), dev_np(ds_h)
        return lambda: K.softmax_forward(s)[1], lambda cache: K.softmax_backward(dy, cache)

    def t_softmax():
        s, dy = leaf(s_h), leaf(ds_h, False)
        return lambda: s.softmax(dim=-1), lambda y: tgrad(y, [s], dy)

    cases.append(KernelCase("softmax", f"{b}x{h}x{t}x{t}", depth, "GB/s", 2 * f4 * n_att, 3 * f4 * n_att,
                            np_softmax, t_softmax,
                            note="the kernel alone, whole batch, last axis (inside the attention core the "
                                 "engine normalises transposed scores a cache-sized chunk at a time)"))

    def dropout_case(name: str, shapes: list[tuple[int, ...]], rate: float, calls: int) -> KernelCase:
        xs = [(host(*s), host(*s)) for s in shapes]
        n = sum(x.size for x, _ in xs)

        def np_setup():
            arrs = [(dev_np(x), dev_np(dy)) for x, dy in xs]
            return (lambda: [K.dropout_forward(x, rate, drop_key)[1] for x, _ in arrs],
                    lambda caches: [K.dropout_backward(dy, c) for (_, dy), c in zip(arrs, caches)])

        def t_setup():
            arrs = [(leaf(x), leaf(dy, False)) for x, dy in xs]
            return (lambda: [F.dropout(x, rate, training=True) for x, _ in arrs],
                    lambda ys: tgrad(ys, [x for x, _ in arrs], [dy for _, dy in arrs]))

        shape = " + ".join("x".join(map(str, s)) for s in shapes)
        return KernelCase(name, f"{shape}, rate {rate}", calls, "GB/s", (2 * f4 + 1) * n, (2 * f4 + 1) * n,
                          np_setup, t_setup, note="bytes: x, y and a 1-byte mask")

    if cfg.attention_dropout:
        cases.append(dropout_case("attention dropout", [(b, h, t, t)], cfg.attention_dropout, depth))

    def np_av():
        _, _, v = np_qkv_views()
        a = dev_np(s_h)
        do = dev_np(do_h).transpose(0, 2, 1, 3)

        def bwd(_):
            a.swapaxes(-1, -2) @ do
            do @ v.swapaxes(-1, -2)
        return lambda: a @ v, bwd

    def t_av():
        _, _, v = t_qkv_views()
        a = leaf(s_h)
        do = torch.from_numpy(do_h).to(dev).permute(0, 2, 1, 3)
        return lambda: a @ v, lambda o: tgrad(o, [a, v], do)

    cases.append(KernelCase("attention-weighted sum A V", f"{b}x{h}x{t}x{t} @ {t}x{kd}", depth, "GFLOP/s",
                            att_flops, 2 * att_flops, np_av, t_av,
                            note="the products of attention_core_forward/backward that give O, on the whole batch at "
                                 "once (the engine runs them a cache-sized chunk at a time: see the core row)"))

    cases.append(dense_case("attention out-projection dense", [(hd, d)], depth))

    # ---- MLP of the blocks ------------------------------------------------------------------------------
    sizes = list(zip((d, *cfg.mlp_units), cfg.mlp_units))
    cases.append(dense_case("MLP dense (all layers)", sizes, depth))

    gelu_shapes = [(b, t, u) for u in cfg.mlp_units]
    gx = [(host(*s), host(*s)) for s in gelu_shapes]
    n_gelu = sum(x.size for x, _ in gx)
    approximate = "none" if cfg.gelu == "erf" else "tanh"

    def np_gelu():
        arrs = [(dev_np(x), dev_np(dy)) for x, dy in gx]
        return (lambda: [K.gelu_forward(x, cfg.gelu)[1] for x, _ in arrs],
                lambda caches: [K.gelu_backward(dy, c) for (_, dy), c in zip(arrs, caches)])

    def t_gelu():
        arrs = [(leaf(x), leaf(dy, False)) for x, dy in gx]
        return (lambda: [F.gelu(x, approximate=approximate) for x, _ in arrs],
                lambda ys: tgrad(ys, [x for x, _ in arrs], [dy for _, dy in arrs]))

    cases.append(KernelCase(f"GELU ({cfg.gelu}, MLP)", " + ".join("x".join(map(str, s)) for s in gelu_shapes),
                            depth, "GB/s", 2 * f4 * n_gelu, 3 * f4 * n_gelu, np_gelu, t_gelu))
    if cfg.dropout:
        cases.append(dropout_case("dropout (MLP)", gelu_shapes, cfg.dropout, depth))

    # ---- head, loss, optimizer --------------------------------------------------------------------------
    nv = runners["npvit"]
    model, params, grads = nv.model, nv.model.params, nv.model.grads
    head_sizes = (cfg.pooled_dim, *cfg.head_units, cfg.num_classes)
    head_flops = sum(dense_flops(b, i, o) for i, o in zip(head_sizes, head_sizes[1:]))
    pooled_h, dlogits_h = host(b, cfg.pooled_dim), host(b, cfg.num_classes)

    def np_head():
        pooled, dlogits = dev_np(pooled_h), dev_np(dlogits_h)
        ctx_train = Context(training=True, dropout_key=DropoutKey(1))

        def fwd():
            hh, c_drop = ctx_train.dropout(pooled, cfg.head_dropout, "head_drop")
            hh, c_head = model.head.forward(params, hh, ctx_train)
            _, c_out = model.head_out.forward(params, hh, ctx_train)
            return c_drop, c_head, c_out

        def bwd(state):
            c_drop, c_head, c_out = state
            dh = model.head_out.backward(params, grads, dlogits, c_out)
            dh = model.head.backward(params, grads, dh, c_head)
            K.dropout_backward(dh, c_drop)
        return fwd, bwd

    def t_head(peer: str = "torch"):
        tm = runners[peer].model.train()
        pooled, dlogits = leaf(pooled_h), leaf(dlogits_h, False)
        inputs = [pooled, *tm.head.parameters()]
        return lambda: tm.head(tm.head_drop(pooled)), lambda y: tgrad(y, inputs, dlogits)

    cases.append(KernelCase("head MLP (dropout, dense, GELU, all layers)",
                            " -> ".join(map(str, head_sizes)) + f", batch {b}", 1, "GFLOP/s", head_flops,
                            2 * head_flops, np_head, t_head))

    labels_h = rng.integers(0, cfg.num_classes, b)

    def np_loss():
        logits, labels = dev_np(dlogits_h), be.asarray(labels_h)
        return lambda: K.cross_entropy_forward(logits, labels)[1], lambda c: K.cross_entropy_backward(c)

    def t_loss():
        logits, labels = leaf(dlogits_h), torch.from_numpy(labels_h).to(dev)
        return lambda: F.cross_entropy(logits, labels), lambda loss: tgrad(loss, [logits], None)

    cases.append(KernelCase("loss (softmax cross-entropy)", f"{b}x{cfg.num_classes}", 1, "", 0, 0,
                            np_loss, t_loss))

    n_params = sum(int(p.size) for p in params.values())

    def np_adamw():
        ps = {n: p.copy() for n, p in params.items()}
        gs = {n: xp.asarray(rng.standard_normal(p.shape, dtype=np.float32)) for n, p in params.items()}
        opt = npvit.AdamW(ps, lr=1e-3, weight_decay=1e-4)
        return lambda: opt.step(gs), None

    def t_adamw():
        ps = [p.detach().clone().requires_grad_(True) for p in runners["torch"].model.parameters()]
        for p in ps:
            p.grad = torch.randn_like(p)
        opt = torch.optim.AdamW(ps, lr=1e-3, weight_decay=1e-4, eps=1e-7)
        return lambda: opt.step(), None

    cases.append(KernelCase("AdamW step", f"{n_params:,} parameters", 1, "GB/s", 7 * f4 * n_params, 0,
                            np_adamw, t_adamw, note="bytes: read p, g, m, v; write p, m, v"))

    # ---- composites: whole layers through npvit's real code path ---------------------------------------
    x_h, dy_h = host(b, t, d), host(b, t, d)
    blk = model.blocks[0]
    ctx_train = Context(training=True, dropout_key=DropoutKey(1))
    core_flops = 2 * att_flops

    np_core, t_core = attention_core_setups(ctx, cfg, qkv_h, do_h, drop_key)

    cases.append(KernelCase("attention core (kernels.attention_core_*)", f"{b}x{h}x{t}x{kd}", depth,
                            "GFLOP/s", core_flops, 2 * core_flops, np_core, t_core("eager"), group="composite"))

    def np_layer(module: Any):
        def setup():
            x, dy = dev_np(x_h), dev_np(dy_h)
            return (lambda: module.forward(params, x, ctx_train)[1],
                    lambda cache: module.backward(params, grads, dy, cache))
        return setup

    def t_layer(get: Callable[[Any], Any]):
        def setup():
            mod = get(runners["torch"].model.train())
            x, dy = leaf(x_h), leaf(dy_h, False)
            inputs = [x, *mod.parameters()]
            return lambda: mod(x), lambda y: tgrad(y, inputs, dy)
        return setup

    mha_flops = dense_flops(rows, d, 3 * hd) + dense_flops(rows, hd, d) + core_flops
    mlp_flops = sum(dense_flops(rows, i, o) for i, o in sizes)
    cases.append(KernelCase("attention layer (qkv .. out-projection)", f"{b}x{t}x{d}", depth, "GFLOP/s",
                            mha_flops, 2 * mha_flops, np_layer(blk.attn), t_layer(lambda m: m.blocks[0].attn),
                            group="composite"))
    cases.append(KernelCase("block MLP (dense, GELU, dropout, all layers)", f"{b}x{t}x{d}", depth, "GFLOP/s",
                            mlp_flops, 2 * mlp_flops, np_layer(blk.mlp), t_layer(lambda m: m.blocks[0].mlp),
                            group="composite"))
    cases.append(KernelCase("transformer block", f"{b}x{t}x{d}", depth, "GFLOP/s", mha_flops + mlp_flops,
                            2 * (mha_flops + mlp_flops), np_layer(blk), t_layer(lambda m: m.blocks[0]),
                            group="composite"))

    # ---- augmentation (outside the step) -----------------------------------------------------------------
    try:
        from npvit.data.augment import Augmenter
    except ImportError as exc:
        cases.append(KernelCase("augmentation", "npvit.data.augment not available", 1, "", 0, 0, None,
                                group="outside", note=f"skipped: {exc}"))
    else:
        src = 32
        raw = rng.integers(0, 256, (b, src, src, cfg.channels), dtype=np.uint8)

        def np_aug():
            aug = Augmenter([125.0] * cfg.channels, [4000.0] * cfg.channels, image_size=cfg.image_size)
            images, aug_rng = be.asarray(raw), be.rng(0)
            return lambda: aug(images, training=True, rng=aug_rng), None

        cases.append(KernelCase("augmentation (normalize, resize, flip, rotate, zoom)",
                                f"{b}x{src}x{src}x{cfg.channels} uint8 -> {b}x{cfg.image_size}^2x"
                                f"{cfg.channels}", 1, "GB/s",
                                raw.size + f4 * b * cfg.image_size**2 * cfg.channels, 0, np_aug, None,
                                group="outside", note="no torch peer (torchvision is not a dependency)"))
    return cases


def attention_core_setups(ctx: Ctx, cfg: npvit.ViTConfig, qkv_h: np.ndarray, do_h: np.ndarray, drop_key: Any
                          ) -> tuple[Callable[[], tuple], Callable[[str], Callable[[], tuple]]]:
    """Setups timing the attention core (forward and backward) of ``cfg`` on host data: ``qkv_h`` (B, N, 3, H, d)
    and the incoming gradient ``do_h`` (B, N, H, d), viewed as (B, H, N, d) as the engine views them.

    Returns the npvit setup (``kernels.attention_core_*``, dropout masks keyed by ``drop_key``) and a function of the
    torch attention implementation ("eager" or "sdpa") giving the torch setup.
    """
    scale = 1.0 / math.sqrt(cfg.key_dim)

    def np_core():
        q, k, v = ctx.backend.asarray(qkv_h).transpose(2, 0, 3, 1, 4)
        do = ctx.backend.asarray(do_h).transpose(0, 2, 1, 3)
        return (lambda: K.attention_core_forward(q, k, v, cfg.attention_dropout, drop_key)[2],
                lambda cache: K.attention_core_backward(do, cache))

    def t_core(impl: str) -> Callable[[], tuple]:
        def setup():
            qkv = torch.from_numpy(qkv_h).to(ctx.torch_device).permute(2, 0, 3, 1, 4)
            q, k, v = (qkv[i].detach().requires_grad_(True) for i in range(3))
            do = torch.from_numpy(do_h).to(ctx.torch_device).permute(0, 2, 1, 3)
            return (lambda: TR.attention_core(q, k, v, scale, cfg.attention_dropout, impl),
                    lambda o: torch.autograd.grad(o, [q, k, v], do, retain_graph=True))
        return setup

    return np_core, t_core


def section_kernels(ctx: Ctx, cfg: npvit.ViTConfig | None = None, batch: int | None = None,
                    label: str = "Keras preset") -> dict:
    """Time every kernel and the training step of ``cfg`` (default: the Keras preset) at ``batch``."""
    st = ctx.settings
    cfg = cfg or npvit.ViTConfig.keras()
    batch = batch or st.kernel_batch
    peers = ("torch",) if ctx.torch_device else ()  # kernels are torch eager ops: one peer
    runners = make_runners(ctx, cfg, batch, peers)

    ctx.log(f"kernels: training step, batch {batch}")
    contenders = {name: (lambda r=r: r.train_step(breakdown=True)) for name, r in runners.items()}
    step = alternate(contenders, st.warmup, st.kernel_repeats, st.pause_s)
    fwd_eval = alternate({name: r.forward for name, r in runners.items()}, st.warmup, st.kernel_repeats,
                         st.pause_s)

    rows = []
    for case in kernel_cases(ctx, cfg, batch, runners):
        row: dict[str, Any] = {"name": case.name, "shape": case.shape, "calls": case.calls, "unit": case.unit,
                               "work_fwd": case.work_fwd, "work_bwd": case.work_bwd, "group": case.group,
                               "note": case.note}
        setups = {"npvit": case.npvit, "torch": case.torch if peers else None}
        syncs = {"npvit": ctx.sync_npvit, "torch": ctx.sync_torch}
        live = {name: s for name, s in setups.items() if s is not None}
        if live:
            ctx.log(f"kernels: {case.name}")
            try:
                contenders = {name: kernel_contender(s, syncs[name], st.kernel_target_s)
                              for name, s in live.items()}
                samples = alternate(contenders, max(1, st.warmup), st.kernel_repeats, st.pause_s)
            except Exception as exc:  # a kernel that cannot run here (e.g. a new module's API) skips its row
                row["note"] = f"failed: {type(exc).__name__}: {exc}"
                samples = {}
                ctx.log(f"kernels: {case.name} failed: {exc}")
            for name, s in samples.items():
                row[name] = {"fwd": median(s["fwd"]), "bwd": median(s["bwd"]), "samples": s}
        rows.append(row)
        contenders = samples = None
        free(collect=False)
    result = {"config": cfg.to_dict(), "label": label, "batch": batch, "rows": rows,
              "step": {name: {"median": medians(s), "samples": s} for name, s in step.items()},
              "forward_eval": {name: {"median": medians(s), "samples": s} for name, s in fwd_eval.items()}}
    add_shares(result)
    del runners
    free()
    return result


def add_shares(result: dict) -> None:
    """Per row and framework: time per step (calls x (fwd + bwd)) and its share of the measured step."""
    for name, st in result["step"].items():
        step = st["median"]["step"]
        total = 0.0
        for row in result["rows"]:
            if name not in row:
                continue
            r = row[name]
            per_call = r["fwd"] + (0.0 if math.isnan(r["bwd"]) else r["bwd"])
            r["per_step"] = row["calls"] * per_call
            r["share"] = r["per_step"] / step
            if row["group"] == "sum":
                total += r["per_step"]
        st["sum_of_kernels"] = total
        st["other"] = step - total

"""npvit.reference, the model written to be read: every function against central finite differences
(float64), and the whole model and AdamW against the fast ``npvit.ViT`` and ``npvit.AdamW`` to 1e-12."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from parity import assert_close, assert_reference_equals_fast, fast_and_reference
from key_bias import zero_key_bias_grads
from processes import run_python

from npvit import AdamW, ViT, ViTConfig, gradcheck, cross_entropy_backward, cross_entropy_forward
from npvit import reference as ref

RTOL = 1e-6  # gradient checks, as for the kernels


def fixed_masks(seed: int, store: dict | None = None) -> ref.Masks:
    """A masks function that returns the same mask for a site at every call (for finite differences)."""
    store = {} if store is None else store
    rng = np.random.default_rng(seed)

    def masks(site: str, shape: tuple[int, ...], rate: float) -> np.ndarray:
        if site not in store:
            store[site] = rng.random(shape) >= rate
        assert store[site].shape == shape, f"{site}: mask asked with shape {shape}, then {store[site].shape}"
        return store[site]

    return masks


def tiny(pool: str = "flatten", gelu: str = "erf", dropout: bool = False, **changes) -> ViTConfig:
    rates = dict(dropout=0.2, attention_dropout=0.2, head_dropout=0.3) if dropout else dict(
        dropout=0.0, attention_dropout=0.0, head_dropout=0.0)
    return dataclasses.replace(ViTConfig.tiny(), pool=pool, gelu=gelu, **rates, **changes)


def random_params(cfg: ViTConfig, seed: int = 1) -> dict:
    """The initial parameters with random biases and layer-norm shifts: zeros would hide their gradients."""
    params = ref.init_params(cfg, seed)
    data = np.random.default_rng(seed + 100)
    for p in params.values():
        if p.ndim == 1:
            p += data.standard_normal(p.shape) * 0.1
    return params


def arr(rng: np.random.Generator, *shape: int, scale: float = 1.0) -> np.ndarray:
    return rng.standard_normal(shape) * scale


# ---- every function against finite differences ----------------------------------------------------------------
def test_dense_gradients(rng) -> None:
    x, w, b = arr(rng, 2, 3, 5), arr(rng, 5, 4), arr(rng, 4)
    gradcheck(lambda x, w, b: ref.dense_forward(x, w, b)[0],
                   lambda x, w, b, dy: ref.dense_backward(dy, ref.dense_forward(x, w, b)[1], w),
                   [x, w, b], rtol=RTOL, names=["x", "w", "b"])


@pytest.mark.parametrize("size", [8, 9])  # 9: one row and column of pixels belong to no patch (overlap 0)
@pytest.mark.parametrize("overlap", [0, 1, 3])  # 3: windows of 10 reach across two neighbours on each side
def test_patch_embed_gradients(rng, size, overlap) -> None:
    k = 4 + 2 * overlap
    images, w, b = arr(rng, 2, size, size, 3), arr(rng, k * k * 3, 5), arr(rng, 5)
    gradcheck(lambda x, w, b: ref.patch_embed_forward(x, w, b, 4, overlap)[0],
                   lambda x, w, b, dy: ref.patch_embed_backward(
                       dy, ref.patch_embed_forward(x, w, b, 4, overlap)[1], w),
                   [images, w, b], rtol=RTOL, names=["images", "w", "b"])


def test_layernorm_gradients(rng) -> None:
    x, g, b = arr(rng, 3, 2, 6), arr(rng, 6), arr(rng, 6)
    gradcheck(lambda x, g, b: ref.layernorm_forward(x, g, b, 1e-6)[0],
                   lambda x, g, b, dy: ref.layernorm_backward(dy, ref.layernorm_forward(x, g, b, 1e-6)[1], g),
                   [x, g, b], rtol=RTOL, names=["x", "gamma", "beta"])


@pytest.mark.parametrize("kind", ["erf", "tanh"])
def test_gelu_gradients(rng, kind) -> None:
    x = arr(rng, 4, 7, scale=2.0)
    gradcheck(lambda x: ref.gelu_forward(x, kind)[0],
                   lambda x, dy: [ref.gelu_backward(dy, ref.gelu_forward(x, kind)[1])], [x], rtol=RTOL)


def test_drop_path_gradients(rng) -> None:
    x, keep = arr(rng, 5, 3, 4), np.array([True, False, True, False, True]).reshape(5, 1, 1)
    gradcheck(lambda x: ref.drop_path_forward(x, 0.3, mask=keep)[0],
                   lambda x, dy: [ref.drop_path_backward(dy, ref.drop_path_forward(x, 0.3, mask=keep)[1])],
                   [x], rtol=RTOL)
    y, _ = ref.drop_path_forward(x, 0.3, mask=keep)
    assert np.all(y[1] == 0) and np.all(y[3] == 0)
    np.testing.assert_allclose(y[0], x[0] / (1 - ref.drop_probability(0.3)), rtol=1e-15)


def test_dropout_gradients(rng) -> None:
    x, keep = arr(rng, 5, 6), rng.random((5, 6)) >= 0.3
    gradcheck(lambda x: ref.dropout_forward(x, 0.3, mask=keep)[0],
                   lambda x, dy: [ref.dropout_backward(dy, ref.dropout_forward(x, 0.3, mask=keep)[1])],
                   [x], rtol=RTOL)


def test_softmax_gradients(rng) -> None:
    x = arr(rng, 3, 4, 5, scale=3.0)
    gradcheck(lambda x: ref.softmax_forward(x)[0],
                   lambda x, dy: [ref.softmax_backward(dy, ref.softmax_forward(x)[1])], [x], rtol=RTOL)


@pytest.mark.parametrize("rate", [0.0, 0.25])
def test_attention_gradients(rng, rate) -> None:
    heads, d = 2, 3
    x = arr(rng, 2, 4, 5)
    w_qkv, b_qkv = arr(rng, 5, 3 * heads * d, scale=0.5), arr(rng, 3 * heads * d, scale=0.1)
    w_proj, b_proj = arr(rng, heads * d, 5, scale=0.5), arr(rng, 5, scale=0.1)
    keep = (rng.random((2, heads, 4, 4)) >= rate) if rate else None

    def forward(*inputs):
        return ref.attention_forward(*inputs, heads, rate, mask=keep)

    gradcheck(lambda *a: forward(*a)[0],
                   lambda *a: ref.attention_backward(a[-1], forward(*a[:-1])[1], a[1], a[3]),
                   [x, w_qkv, b_qkv, w_proj, b_proj], rtol=RTOL,
                   names=["x", "w_qkv", "b_qkv", "w_proj", "b_proj"])


def test_cross_entropy_gradients(rng) -> None:
    logits, labels = arr(rng, 4, 5, scale=2.0), np.array([0, 3, 4, 3])
    gradcheck(lambda z: ref.cross_entropy_forward(z, labels, 0.1)[0],
                   lambda z, dy: [ref.cross_entropy_backward(ref.cross_entropy_forward(z, labels, 0.1)[1],
                                                             float(dy))], [logits], rtol=RTOL)


def check_params_function(forward, backward, params: dict, names: list[str], x: np.ndarray,
                          max_checks: int | None = None) -> None:
    """Gradient check of a function of (params[names], x): ``forward(x) -> y``, ``backward(dy) -> (dx, grads)``,
    both reading ``params`` (perturbed in place by the checker)."""
    gradcheck(lambda *a: forward(a[-1]),
                   lambda *a: [*(lambda dx, grads: [grads[n] for n in names] + [dx])(*backward(a[-2], a[-1]))],
                   [params[n] for n in names] + [x], rtol=RTOL, names=names + ["x"], max_checks=max_checks)


@pytest.mark.parametrize("gelu", ["erf", "tanh"])
def test_mlp_gradients(rng, gelu) -> None:
    cfg = tiny(gelu=gelu, dropout=True)
    params = random_params(cfg)
    names = [n for n in params if n.startswith("blocks.0.mlp.")]
    masks = fixed_masks(0)
    x = arr(rng, 2, 3, cfg.dim)

    def run(x):
        return ref.mlp_forward(params, "blocks.0.mlp", x, len(cfg.mlp_units), gelu, cfg.dropout, masks)

    def backward(x, dy):
        grads: dict = {}
        dx = ref.mlp_backward(dy, run(x)[1], params, grads)
        return dx, grads

    check_params_function(lambda x: run(x)[0], backward, params, names, x)


@pytest.mark.parametrize("drop_path", [0.0, 0.5])
def test_block_gradients(rng, drop_path) -> None:
    cfg = tiny(dropout=True, drop_path=drop_path)
    params = random_params(cfg)
    names = [n for n in params if n.startswith("blocks.1.")]
    store: dict = {}
    masks = fixed_masks(0, store)
    x = arr(rng, 2, cfg.num_tokens, cfg.dim)

    def backward(x, dy):
        grads: dict = {}
        dx = ref.block_backward(dy, ref.block_forward(params, 1, x, cfg, masks)[1], params, grads)
        return dx, grads

    check_params_function(lambda x: ref.block_forward(params, 1, x, cfg, masks)[0], backward, params, names, x)
    if drop_path:  # block 1 has the whole rate; its two branches' masks were drawn per sample
        assert all(store[f"blocks.1.drop_path{j}"].shape == (2, 1, 1) for j in (1, 2))


@pytest.mark.parametrize("pool", ["flatten", "cls", "gap"])
def test_pool_gradients(rng, pool) -> None:
    t = arr(rng, 2, 5, 3)
    gradcheck(lambda t: ref.pool_forward(t, pool)[0],
                   lambda t, dy: [ref.pool_backward(dy, ref.pool_forward(t, pool)[1])], [t], rtol=RTOL)


def test_head_gradients(rng) -> None:
    cfg = tiny(dropout=True, head_units=(7, 6))
    params = random_params(cfg)
    names = [n for n in params if n.startswith("head.")]
    masks = fixed_masks(0)
    x = arr(rng, 3, cfg.pooled_dim)

    def backward(x, dy):
        grads: dict = {}
        return ref.head_backward(dy, ref.head_forward(params, x, cfg, masks)[1], params, grads), grads

    check_params_function(lambda x: ref.head_forward(params, x, cfg, masks)[0], backward, params, names, x)


@pytest.mark.parametrize("pool", ["flatten", "cls", "gap"])
def test_whole_model_gradients_with_dropout(rng, pool) -> None:
    """vit_forward -> cross-entropy: every parameter and the images, dropout and drop path on with fixed masks."""
    cfg = tiny(pool=pool, gelu="tanh" if pool == "gap" else "erf", dropout=True, depth=3, drop_path=0.5)
    params = random_params(cfg)
    names = list(params)
    store: dict = {}
    masks = fixed_masks(0, store)
    images, labels = arr(rng, 3, 8, 8, 3), np.array([0, 1, 4])

    def loss(x):
        logits, cache = ref.vit_forward(params, x, cfg, masks)
        return ref.cross_entropy_forward(logits, labels, 0.1), cache

    def backward(x, dloss):
        (_, c_loss), cache = loss(x)
        grads, dimages = ref.vit_backward(ref.cross_entropy_backward(c_loss, float(dloss)), cache, params)
        assert set(grads) == set(params)
        return dimages, grads

    # 24 elements of every input (seeded, plus its largest gradient): the parts are checked whole above.
    check_params_function(lambda x: loss(x)[0][0], backward, params, names, images, max_checks=24)
    drop_path_masks = np.concatenate([m.ravel() for site, m in store.items() if "drop_path" in site])
    assert drop_path_masks.any() and not drop_path_masks.all()  # some branches dropped, some kept


# ---- the same numbers as the fast model -----------------------------------------------------------------------
@pytest.mark.parametrize("attention_fans", ["axes", "receptive"])
def test_init_params_are_the_fast_models(attention_fans) -> None:
    for pool in ("flatten", "cls"):
        cfg = tiny(pool=pool, attention_fans=attention_fans)
        fast = ViT(cfg, dtype="float64", seed=5).params
        params = ref.init_params(cfg, seed=5)
        assert list(params) == list(fast)
        for name, p in params.items():
            assert np.array_equal(p, fast[name]), name




def batch(cfg: ViTConfig, size: int = 5, seed: int = 3) -> tuple[np.ndarray, np.ndarray]:
    data = np.random.default_rng(seed)
    return (data.standard_normal((size, cfg.image_size, cfg.image_size, cfg.channels)),
            data.integers(0, cfg.num_classes, size))


def compare_step(model: ViT, params: dict, cfg: ViTConfig, images, labels, masks=None, smoothing=0.1,
                 forward: dict | None = None) -> None:
    images, labels = model.backend.asarray(images), model.backend.asarray(labels)
    logits = model.forward(images, training=True, **(forward or {}))
    loss, c_loss = cross_entropy_forward(logits, labels, smoothing)
    dimages = model.backward(cross_entropy_backward(c_loss))

    assert_reference_equals_fast(model, params, images, labels, cfg, masks, smoothing, logits, loss, dimages)


@pytest.mark.parametrize("pool", ["flatten", "cls", "gap"])
@pytest.mark.parametrize("gelu", ["erf", "tanh"])
def test_same_logits_loss_and_gradients_as_the_fast_model(backend, pool, gelu) -> None:
    """Dropout off; on NumPy the fast model's batch is split over two threads."""
    cfg = tiny(pool=pool, gelu=gelu)
    model, params = fast_and_reference(cfg, threads=2, backend=backend)
    images, labels = batch(cfg)
    compare_step(model, params, cfg, images, labels)


def mask_sites(cfg: ViTConfig) -> list[str]:
    """Every dropout and drop path site of the model, in forward order (a block of drop path rate 0 has none)."""
    sites = []
    for i in range(cfg.depth):
        drop_path = [f"blocks.{i}.drop_path1", f"blocks.{i}.drop_path2"] if cfg.drop_path_rate(i) > 0 else ["", ""]
        sites += [f"blocks.{i}.attn.attn_drop", drop_path[0]]
        sites += [f"blocks.{i}.mlp.drop{j}" for j in range(len(cfg.mlp_units))] + [drop_path[1]]
    sites = [site for site in sites if site]
    return sites + ["head_drop"] + [f"head.drop{j}" for j in range(len(cfg.head_units))]


@pytest.mark.parametrize("overlap", [1, 2])
def test_same_numbers_as_the_fast_model_with_overlapping_patches(backend, overlap) -> None:
    cfg = tiny(pool="gap", gelu="tanh", patch_overlap=overlap, image_size=9)  # 9: a pixel row in no cell
    model, params = fast_and_reference(cfg, threads=2, backend=backend)
    images, labels = batch(cfg)
    compare_step(model, params, cfg, images, labels)


@pytest.mark.parametrize("pool", ["flatten", "cls", "gap"])
@pytest.mark.parametrize("drop_path", [0.0, 0.4])
def test_same_numbers_as_the_fast_model_with_dropout(backend, pool, drop_path) -> None:
    """Dropout (and drop path) on: the reference draws its masks through npvit's keyed mask function, the fast
    model splits the batch over two threads; the masks, and so every number, are the same."""
    cfg = tiny(pool=pool, gelu="tanh" if pool == "cls" else "erf", dropout=True, depth=3, drop_path=drop_path)
    model, params = fast_and_reference(cfg, threads=2, backend=backend)
    images, labels = batch(cfg, size=6)
    asked: list[str] = []
    keyed = ref.keyed_masks(1234, first_sample=40, xp=model.backend.xp)

    def masks(site, shape, rate):
        asked.append(site)
        return keyed(site, shape, rate)

    compare_step(model, params, cfg, images, labels, masks, forward=dict(dropout_seed=1234, first_sample=40))
    assert asked == mask_sites(cfg)


def test_keyed_masks_follow_the_global_sample_index() -> None:
    """Images 2.. of a batch, given first_sample=2, get the masks they get inside the whole batch."""
    cfg = tiny(dropout=True)
    params = random_params(cfg)
    images, _ = batch(cfg, size=5)
    whole, _ = ref.vit_forward(params, images, cfg, ref.keyed_masks(9))
    part, _ = ref.vit_forward(params, images[2:], cfg, ref.keyed_masks(9, first_sample=2))
    other, _ = ref.vit_forward(params, images, cfg, ref.keyed_masks(10))
    assert_close(part, whole[2:], "logits of images 2..", tol=1e-14)
    assert not np.allclose(other, whole)  # another seed, other masks


@pytest.mark.parametrize("decay_convention,epsilon_convention,clip_norm", [
    ("keras", "keras", None), ("keras", "pytorch", 0.5), ("tfa", "keras", 0.5), ("tfa", "pytorch", None)])
def test_same_parameters_after_three_adamw_steps(decay_convention, epsilon_convention, clip_norm) -> None:
    cfg = tiny(pool="cls")
    model, params = fast_and_reference(cfg, threads=2)
    settings = dict(lr=0.01, weight_decay=0.05, decay_convention=decay_convention,
                    epsilon_convention=epsilon_convention, exclude_from_decay=model.no_decay_names(),
                    clip_norm=clip_norm)
    opt, state = AdamW(model.params, **settings), ref.adamw_init(params)
    clipped = False
    for step in range(3):
        images, labels = batch(cfg, seed=step)
        logits = model.forward(images, training=True)
        model.backward(cross_entropy_backward(cross_entropy_forward(logits, labels)[1]))
        r_logits, cache = ref.vit_forward(params, images, cfg)
        grads, _ = ref.vit_backward(ref.cross_entropy_backward(ref.cross_entropy_forward(r_logits, labels)[1]),
                                    cache, params)
        zero_key_bias_grads(cfg, model.grads)
        zero_key_bias_grads(cfg, grads)
        norm = opt.step(model.grads)
        r_norm = ref.adamw_step(params, grads, state, **settings)
        assert_close(r_norm, norm, f"gradient norm, step {step + 1}")
        clipped |= clip_norm is not None and norm > clip_norm
    assert clipped == (clip_norm is not None)  # the clipping path really ran
    for name, p in model.params.items():
        assert_close(params[name], p, name)
        assert_close(state.m[name], opt.m[name], f"m/{name}")
        assert_close(state.v[name], opt.v[name], f"v/{name}")


def test_adamw_step_with_a_non_finite_gradient_changes_nothing() -> None:
    cfg = tiny()
    model, params = fast_and_reference(cfg, threads=1)
    opt, state = AdamW(model.params, lr=0.01), ref.adamw_init(params)
    grads = {n: np.ones_like(p) for n, p in params.items()}
    ref.adamw_step(params, grads, state, lr=0.01)
    opt.step(grads)
    before = {n: p.copy() for n, p in params.items()}
    fast_before = {n: p.copy() for n, p in model.params.items()}
    grads["pos_embed"][0, 0] = np.inf
    assert not np.isfinite(ref.adamw_step(params, grads, state, lr=0.01))
    assert not np.isfinite(float(opt.step(grads)))
    assert state.t == opt.step_count == 1
    for name, p in params.items():
        assert np.array_equal(p, before[name]) and np.array_equal(model.params[name], fast_before[name]), name
        assert_close(state.m[name], opt.m[name], f"m/{name}")  # the moments of step 1, on both sides


# ---- details --------------------------------------------------------------------------------------------------
def test_attention_element_by_element(rng) -> None:
    """attention_forward against a loop over images, heads, queries and keys."""
    heads, d, tokens, dim = 2, 3, 4, 5
    x = arr(rng, 2, tokens, dim)
    w_qkv, b_qkv = arr(rng, dim, 3 * heads * d), arr(rng, 3 * heads * d)
    w_proj, b_proj = arr(rng, heads * d, dim), arr(rng, dim)
    y, _, _ = ref.attention_forward(x, w_qkv, b_qkv, w_proj, b_proj, heads)
    expected = np.empty_like(y)
    for b in range(2):
        qkv = x[b] @ w_qkv + b_qkv
        concat = []
        for h in range(heads):
            q, k, v = (qkv[:, (i * heads + h) * d:(i * heads + h + 1) * d] for i in range(3))
            o = np.zeros((tokens, d))
            for i in range(tokens):
                scores = [float(q[i] @ k[j]) / np.sqrt(d) for j in range(tokens)]
                weights = np.exp(scores) / np.exp(scores).sum()
                o[i] = sum(weights[j] * v[j] for j in range(tokens))
            concat.append(o)
        expected[b] = np.concatenate(concat, axis=1) @ w_proj + b_proj
    assert_close(y, expected, "attention", tol=1e-13)


def test_dropout_sites_and_keep_probability() -> None:
    cfg = tiny(dropout=True)
    params = ref.init_params(cfg)
    store: dict = {}
    ref.vit_forward(params, np.zeros((2, 8, 8, 3)), cfg, fixed_masks(0, store))
    assert sorted(store) == sorted(mask_sites(cfg))
    assert store["blocks.0.attn.attn_drop"].shape == (2, cfg.num_heads, cfg.num_tokens, cfg.num_tokens)
    assert ref.drop_probability(0.1) == 6554 / 65536
    cfg = tiny(dropout=True, drop_path=0.2)
    store.clear()
    ref.vit_forward(params, np.zeros((2, 8, 8, 3)), cfg, fixed_masks(0, store))
    assert sorted(store) == sorted(mask_sites(cfg))
    assert store["blocks.1.drop_path1"].shape == store["blocks.1.drop_path2"].shape == (2, 1, 1)
    y, _ = ref.dropout_forward(np.ones(4), 0.1, mask=np.array([True, False, True, True]))
    assert np.array_equal(y, np.array([1, 0, 1, 1]) / (1 - 6554 / 65536))
    keep = ref.keyed_masks(0)("x", (200, 1000), 0.25)
    assert abs(keep.mean() - 0.75) < 0.005


def test_training_demo_runs_and_learns(capsys) -> None:
    assert ref.main(["--steps", "12", "--batch", "16"]) == 0
    lines = capsys.readouterr().out.splitlines()
    losses = [float(line.split()[3]) for line in lines if line.startswith("step")]
    assert len(losses) == 12 and all(np.isfinite(losses))
    assert np.mean(losses[-3:]) < np.mean(losses[:3])


def test_module_runs_as_a_program() -> None:
    out = run_python("-m", "npvit.reference", "--steps", "2", timeout=60)
    assert out.returncode == 0, out.stderr
    assert "step   2  loss" in out.stdout

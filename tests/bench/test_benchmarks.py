"""Smoke tests of the benchmark suite (benchmarks/run.py and its package benchmarks/suite/), of the scaling
script (benchmarks/scaling.py) and of the PyTorch reference model.

Benchmarks are never timed here: each section of the suite runs once on the tiny config with the smallest
settings, so the code paths cannot rot, and only the shape of the results is checked. The scaling script's
cost model is checked against its formula worked by hand, and its data-parallel step against one process on
the whole batch. The PyTorch reference (npvit.torch_reference), which the suite times against npvit, must
compute the same logits as npvit in float32, with either attention implementation, and honour train/eval
mode.
"""

from __future__ import annotations

import importlib.util
import json
import math
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import npvit

RUN_PY = Path(__file__).resolve().parents[2] / "benchmarks" / "run.py"
SCALING_PY = RUN_PY.parent / "scaling.py"

try:
    import torch
except ImportError:
    torch = None

needs_torch = pytest.mark.skipif(torch is None, reason="PyTorch is not installed: pip install 'npvit[torch]'")


def load_script(path: Path, name: str):
    """A benchmarks/ script imported as a module (its thread set-up only happens when run as a script)."""
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up here
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def run():
    """benchmarks/run.py, whose names are the suite's public helpers."""
    yield load_script(RUN_PY, "npvit_benchmarks_run")
    sys.modules.pop("npvit_benchmarks_run", None)


@pytest.fixture(scope="module")
def scaling():
    yield load_script(SCALING_PY, "npvit_benchmarks_scaling")
    sys.modules.pop("npvit_benchmarks_scaling", None)


@pytest.fixture
def one_torch_thread():
    """One torch thread while a test alternates NumPy and torch without pauses: otherwise torch's OpenMP
    threads and OpenBLAS's spinning workers fight over the cores and tiny ops take milliseconds."""
    if torch is None:
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def tiny_ctx(run, with_torch: bool):
    settings = run.Settings(
        warmup=1, peak_sizes=(32,), peak_repeats=1, kernel_batch=3, kernel_repeats=1, kernel_target_s=0.0,
        e2e={"tiny": (3,)}, e2e_repeats=1, seq_grids=(2, 3, 4), seq_batch=2, seq_repeats=1, pause_s=0.0,
    )
    return run.Ctx(backend=npvit.get_backend("numpy"), settings=settings, threads=1,
                   torch_device="cpu" if with_torch else None, memory=False, verbose=False)


WITH_TORCH = [False, pytest.param(True, marks=needs_torch)]


@pytest.mark.parametrize("with_torch", WITH_TORCH)
def test_every_section_runs_on_the_tiny_config(
    run, with_torch: bool, capsys: pytest.CaptureFixture, one_torch_thread: None
) -> None:
    ctx = tiny_ctx(run, with_torch)
    fws = ["npvit"] + (["torch"] if with_torch else [])
    results = {"peak": run.section_peak(ctx)}
    assert results["peak"]["peak_gflops"] > 0 and ctx.peak_gflops == results["peak"]["peak_gflops"]

    results["kernels"] = run.section_kernels(ctx, npvit.ViTConfig.tiny(), batch=3, label="tiny")
    kernels = results["kernels"]
    names = [row["name"] for row in kernels["rows"]]
    for expected in ("patches", "patch-embed dense", "layer norm", "qkv dense", "attention scores Q K^T",
                     "softmax", "attention dropout", "attention-weighted sum A V",
                     "attention out-projection dense", "MLP dense (all layers)", "dropout (MLP)",
                     "loss (softmax cross-entropy)", "AdamW step", "transformer block"):
        assert expected in names
    assert any(n.startswith("GELU") for n in names) and any(n.startswith("head MLP") for n in names)
    assert any(n.startswith("augmentation") for n in names)  # timed, or skipped with a note
    for row in kernels["rows"]:
        if row["npvit"] if "npvit" in row else False:
            assert row["npvit"]["fwd"] > 0 and row["npvit"]["share"] >= 0
        if row["group"] != "outside":
            assert all(fw in row for fw in fws), f"{row['name']}: {row.get('note')}"
    for fw in fws:
        assert kernels["step"][fw]["median"]["step"] > 0

    results["e2e"] = run.section_e2e(ctx)
    (row,) = results["e2e"]["rows"]
    assert row["preset"] == "tiny" and row["batch"] == 3 and row["gflop_per_image"] > 0
    for fw in fws:
        assert row[fw]["train_ips"] > 0 and row[fw]["forward_ips"] > 0 and 0 < row[fw]["train_util"]

    results["seqlen"] = run.section_seqlen(ctx, base=npvit.ViTConfig.tiny(), label="tiny")
    seq = results["seqlen"]
    assert [r["tokens"] for r in seq["rows"]] == [4, 9, 16]
    assert seq["fits"]["npvit"] is not None and set(seq["fits"]) == set(fws)
    assert all(0 < r["attention_flop_share"] < 1 for r in seq["rows"])

    run.print_peak(results["peak"])
    run.print_kernels(kernels)
    run.print_e2e(results["e2e"], fws[1:])
    run.print_seqlen(seq, fws[1:])
    out = capsys.readouterr().out
    for title in ("## Matrix-multiply peak", "## Kernels", "## End to end: throughput", "## Sequence length"):
        assert title in out
    if with_torch:
        assert "npvit/torch" in out
    run.spread_report(results)
    json.dumps(run.jsonable(results))  # the JSON file must be writable


@pytest.mark.parametrize("with_torch", WITH_TORCH)
def test_memory_probe_reports_peaks(run, with_torch: bool, one_torch_thread: None) -> None:
    ctx = tiny_ctx(run, with_torch)
    for fw in ["npvit"] + (["torch"] if with_torch else []):
        mem = run.memory_probe({"framework": fw, "preset": "tiny", "batch": 3, "backend": "numpy"}, ctx)
        assert mem["base_mb"] > 0 and mem["train_mb"] >= 0 and mem["forward_mb"] >= 0 and mem["method"]


def test_flop_counts_and_thread_argument(run) -> None:
    cfg = npvit.ViTConfig.keras()
    flops = run.matmul_flops_per_image(cfg)
    # By hand, T = 144 tokens: patches 2*144*108*64; per block qkv 2*144*64*768, out 2*144*256*64,
    # MLP 2*144*(64*128 + 128*64), scores + weighted sum 2*2*144*144*256;
    # head 2*(9216*2048 + 2048*1024 + 1024*100)
    per_block = 2 * 144 * 64 * 768 + 2 * 144 * 256 * 64 + 2 * 144 * (64 * 128 + 128 * 64) + 4 * 144 * 144 * 256
    head = 2 * (9216 * 2048 + 2048 * 1024 + 1024 * 100)
    assert flops == 2 * 144 * 108 * 64 + 8 * per_block + head == 402_751_488
    assert 0 < run.attention_flops_per_image(cfg) < flops
    assert run.requested_threads(["--threads", "3"]) == 3 and run.requested_threads(["--threads=5"]) == 5
    fit = run.quadratic_fit([1, 2, 3, 4], [1 + 2 * t + 3 * t * t for t in (1, 2, 3, 4)])
    assert math.isclose(fit["c2"], 3.0, rel_tol=1e-9)


# ---- the PyTorch reference ---------------------------------------------------------------------------------
@needs_torch
@pytest.mark.parametrize("attention", ["eager", "sdpa"])
def test_torch_reference_logits_match_npvit_float32(attention: str) -> None:
    from npvit.torch_reference import TorchViT

    cfg = npvit.ViTConfig.tiny()
    model = npvit.ViT(cfg, dtype="float32", seed=0)
    ref = TorchViT.from_npvit(model, attention=attention).eval()
    images = np.random.default_rng(0).standard_normal((4, 8, 8, 3)).astype(np.float32)
    with torch.no_grad():
        expected = ref(torch.from_numpy(images)).numpy()
    np.testing.assert_allclose(model.forward(images), expected, rtol=1e-5, atol=1e-5)


@needs_torch
def test_torch_reference_dropout_follows_train_and_eval_modes() -> None:
    from npvit.torch_reference import TorchViT

    cfg = npvit.ViTConfig.tiny()
    ref = TorchViT.from_npvit(npvit.ViT(cfg, seed=0))
    assert ref.blocks[0].attn.attn_drop.p == cfg.attention_dropout and ref.head_drop.p == cfg.head_dropout
    x = torch.from_numpy(np.random.default_rng(1).standard_normal((4, 8, 8, 3)).astype(np.float32))
    with torch.no_grad():
        ref.eval()
        assert torch.equal(ref(x), ref(x))
        ref.train()
        assert not torch.equal(ref(x), ref(x))


@needs_torch
def test_torch_reference_round_trips_npvit_parameters() -> None:
    from npvit.torch_reference import TorchViT

    model = npvit.ViT(npvit.ViTConfig.tiny(), dtype="float64", seed=3)
    ref = TorchViT.from_npvit(model)
    assert next(ref.parameters()).dtype == torch.float64
    state = ref.npvit_state()
    assert set(state) == set(model.params)
    for name, value in state.items():
        np.testing.assert_array_equal(value, model.params[name], err_msg=name)
    with pytest.raises(ValueError, match="missing"):
        ref.load_npvit_params({k: v for k, v in model.params.items() if k != "pos_embed"})


def test_ab_script_times_two_checkouts_and_refuses_a_folder_without_npvit(tmp_path) -> None:
    ab = RUN_PY.parent / "ab.py"
    root = str(RUN_PY.parents[1])
    proc = subprocess.run([sys.executable, str(ab), root, root, "--preset", "tiny", "--batch", "2",
                           "--rounds", "1", "--repeats", "1"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "| before |" in proc.stdout and "| after |" in proc.stdout
    proc = subprocess.run([sys.executable, str(ab), str(tmp_path), root], capture_output=True, text=True)
    assert proc.returncode == 2 and "holds no npvit/ package" in proc.stderr


def test_e2e_rows_option(run) -> None:
    import argparse

    assert run.e2e_rows("keras:128, keras:256,small:64") == {"keras": (128, 256), "small": (64,)}
    for bad in ("keras", "keras:0", "nope:8", " , "):
        with pytest.raises(argparse.ArgumentTypeError, match="PRESET:BATCH"):
            run.e2e_rows(bad)


def test_kernels_option_picks_the_kernel_table_model(run) -> None:
    import argparse

    from suite import cli

    assert cli.kernel_row("fast:128") == ("fast", 128)
    for bad in ("fast", "fast:128,keras:256", "fast:128,fast:64", "nope:8"):
        with pytest.raises(argparse.ArgumentTypeError, match="PRESET:BATCH"):
            cli.kernel_row(bad)
    assert cli.kernels_section(None) is run.section_kernels
    seen = {}
    real = cli.section_kernels
    try:
        cli.section_kernels = lambda ctx, cfg, batch, label: seen.update(cfg=cfg, batch=batch, label=label)
        cli.kernels_section(("fast", 128))(None)
        assert seen == {"cfg": npvit.ViTConfig.fast(num_classes=10), "batch": 128, "label": "fast preset"}
        cli.kernels_section(("keras", 64))(None)
        assert seen["cfg"] == npvit.ViTConfig.keras() and seen["batch"] == 64
    finally:
        cli.section_kernels = real


def test_e2e_times_npvit_on_its_numpy_kernels_beside_the_default_tier_and_names_torch_compile(
    run, capsys: pytest.CaptureFixture
) -> None:
    import dataclasses

    ctx = dataclasses.replace(tiny_ctx(run, False), numpy_kernels=True, compile=True)
    assert ctx.e2e_peers == ("npvit-numpy",)  # no torch peer: no torch-compile either
    res = run.section_e2e(ctx)
    (row,) = res["rows"]
    assert row["npvit-numpy"]["train_ips"] > 0 and row["npvit"]["forward_ips"] > 0
    run.print_e2e(res, list(ctx.e2e_peers))
    assert "train npvit/npvit-numpy" in capsys.readouterr().out
    with_torch = dataclasses.replace(ctx, torch_device="cpu", sdpa=True)
    assert with_torch.e2e_peers == ("npvit-numpy", "torch", "torch-sdpa", "torch-compile")
    assert with_torch.peers == ("torch", "torch-sdpa")  # the kernels and seqlen sections: eager peers only


def test_run_py_keeps_its_public_helpers_and_command_line(run) -> None:
    from suite import cli, timing

    for name in run.__all__:
        assert getattr(run, name) is not None, name
    assert run.alternate is timing.alternate and run.main is cli.main and run.Ctx.__module__ == "suite.context"
    proc = subprocess.run([sys.executable, str(RUN_PY), "--help"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines()[0].startswith("usage: run.py")
    for flag in ("--backend", "--quick", "--threads", "--json", "--sections", "--repeats", "--e2e", "--tf32",
                 "--sdpa", "--no-torch", "--torch-thp", "--no-memory", "--kernels", "--keep-freed-memory",
                 "--compile", "--numpy-kernels"):
        assert flag in proc.stdout
    assert "--memory-probe" not in proc.stdout
    proc = subprocess.run([sys.executable, str(RUN_PY), "--sections", "peak,nope"], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 2 and "unknown section(s) ['nope']" in proc.stderr


# ---- the scaling script ------------------------------------------------------------------------------------
def test_ring_allreduce_cost_and_projection_follow_the_formula(scaling) -> None:
    gbit = 10.0
    # 2 (N - 1) / N x bytes / bandwidth: 87 MB at 10 Gbit/s is 69.6 ms for 2 nodes, 0 for one, 2x bytes / bw
    # in the limit.
    assert scaling.ring_allreduce_s(87e6, 1, gbit) == 0.0
    assert math.isclose(scaling.ring_allreduce_s(87e6, 2, gbit), 87e6 * 8 / 10e9, rel_tol=1e-12)
    assert math.isclose(scaling.ring_allreduce_s(87e6, 64, gbit), 2 * 63 / 64 * 87e6 * 8 / 10e9, rel_tol=1e-12)
    assert math.isclose(scaling.ring_allreduce_s(87e6, 1 << 30, 100.0), 2 * 87e6 * 8 / 100e9, rel_tol=1e-8)

    cost = scaling.StepCost(batch=256, compute_s=2.8, backward_s=2.0, optimizer_s=0.2, gradient_bytes=87e6,
                            overlap_share=0.9)
    one = scaling.project(cost, 1, gbit, 256)
    assert one["step_s"] == pytest.approx(3.0) and one["efficiency"] == pytest.approx(1.0)
    # 4 nodes, the global batch split: 64 images each -> compute 0.7 s, AdamW 0.2 s, allreduce 1.5 x 69.6 ms
    ar = 2 * 3 / 4 * 87e6 * 8 / 10e9
    p = scaling.project(cost, 4, gbit, 64)
    assert p["allreduce_s"] == pytest.approx(ar) and p["step_s"] == pytest.approx(0.9 + ar)
    assert p["images_per_s"] == pytest.approx(256 / (0.9 + ar))
    assert p["efficiency"] == pytest.approx(3.0 / (4 * (0.9 + ar)))
    # levers: the overlap window (0.9 x 2.0 s x 64/256 = 0.45 s) hides the whole allreduce; float16 halves it;
    # a sharded AdamW costs a quarter
    assert scaling.project(cost, 4, gbit, 64, overlap=True)["step_s"] == pytest.approx(0.9)
    assert scaling.project(cost, 4, gbit, 64, gradient_scale=0.5)["step_s"] == pytest.approx(0.9 + ar / 2)
    assert scaling.project(cost, 4, gbit, 64, shard_optimizer=True)["step_s"] == pytest.approx(0.75 + ar)
    # the batch per node held: efficiency = 3 / (3 + allreduce)
    weak = scaling.project(cost, 64, gbit, 256)
    assert weak["efficiency"] == pytest.approx(3.0 / (3.0 + 2 * 63 / 64 * 87e6 * 8 / 10e9))
    # split batch: efficiency = 3 / (2.8 + N (0.2 + allreduce(N))): 8 nodes 0.59, 16 nodes 0.37
    assert scaling.stop_point(cost, gbit, 256) == 8
    assert scaling.ceiling_images_per_s(cost, gbit, 256) == pytest.approx(256 / (0.2 + 2 * 87e6 * 8 / 10e9),
                                                                          rel=1e-6)


def test_data_parallel_step_sums_to_the_whole_batch_step(scaling) -> None:
    """Two ranks' steps on the halves of a batch, their flat gradients summed, make the one-process step on
    the whole batch (float64, dropout on: its masks are keyed by each image's global index)."""
    cfg = npvit.ViTConfig.tiny()
    assert cfg.dropout and cfg.attention_dropout and cfg.head_dropout
    rng = np.random.default_rng(0)
    x = rng.standard_normal((6, 8, 8, 3))
    y = rng.integers(0, cfg.num_classes, 6)

    def rank(comm, part: slice):
        model = npvit.ViT(cfg, dtype="float64", seed=0, threads=1)
        opt = npvit.AdamW(model.params, lr=1e-2)
        times = scaling.data_parallel_step(model, opt, comm, x[part], y[part], part.start, 6, dropout_seed=7)
        assert set(times) == {"forward", "backward", "allreduce", "optimizer", "step"}
        return model

    class Keep(scaling.SingleProcess):  # rank 1 of 2: keeps its gradient for rank 0
        size = 2

        def allreduce_sum(self, buffer):
            self.buffer = buffer.copy()

    class AddOther(scaling.SingleProcess):  # rank 0 of 2: adds rank 1's gradient to its own
        size = 2

        def allreduce_sum(self, buffer):
            buffer += other.buffer

    other = Keep()
    rank(other, slice(3, 6))
    model = rank(AddOther(), slice(0, 3))

    whole = npvit.ViT(cfg, dtype="float64", seed=0, threads=1)  # a plain training step on the whole batch
    logits = whole.forward(x, training=True, dropout_seed=7)
    whole.backward(npvit.cross_entropy_backward(npvit.cross_entropy_forward(logits, y)[1]))
    npvit.AdamW(whole.params, lr=1e-2).step(whole.grads)
    np.testing.assert_allclose(model.grads.flat, whole.grads.flat, rtol=1e-12, atol=1e-14)
    # AdamW's first step moves each weight by about lr = 1e-2; a gradient that is zero up to rounding moves it
    # by ~1e-15 either way
    np.testing.assert_allclose(model.params.flat, whole.params.flat, rtol=1e-10, atol=1e-12)
    assert not np.allclose(model.params.flat, npvit.ViT(cfg, dtype="float64", seed=0).params.flat)


needs_mpi = pytest.mark.skipif(shutil.which("mpiexec") is None or importlib.util.find_spec("mpi4py") is None,
                               reason="mpiexec or mpi4py missing: pip install -e '.[mpi]'")


@needs_mpi
def test_scaling_script_measures_both_layouts_and_reprints_from_json(tmp_path) -> None:
    out = tmp_path / "scaling.json"
    proc = subprocess.run([sys.executable, str(SCALING_PY), "--preset", "tiny", "--batch", "4", "--steps", "1",
                           "--allreduce-repeats", "1", "--layouts", "1x2,2x1", "--json", str(out)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    results = json.loads(out.read_text())
    one, two = results["layouts"]["1 process x 2 threads"][0], results["layouts"]["2 processes x 1 thread"][0]
    params = npvit.ViT(npvit.ViTConfig.tiny()).num_params()
    assert one["ranks"] == 1 and two["ranks"] == 2 and one["gradient_bytes"] == two["gradient_bytes"] == 4 * params
    assert one["median_s"]["step"] > 0 and two["allreduce_alone_s"] > 0
    # the two ranks held different images: equal weights after the step mean the gradients were summed
    assert two["ranks_agree"] is True and len(two["samples"]) == 2
    for title in ("## Measured on this machine", "## Projection", "### Where the split batch stops scaling"):
        assert title in proc.stdout
    again = subprocess.run([sys.executable, str(SCALING_PY), "--from", str(out)], capture_output=True, text=True,
                           timeout=120)
    assert again.returncode == 0 and again.stdout == proc.stdout.replace(f"Results written to {out}\n", "")


def test_ablation_script_runs_its_variants_and_reprints_its_table(tmp_path) -> None:
    ablation = RUN_PY.parent / "ablation.py"
    proc = subprocess.run([sys.executable, str(ablation), "--smoke", "--only",
                           "fast,subset-no-crop,subset-mix,subset-ema", "--out", str(tmp_path)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    doc = json.loads((tmp_path / "ablation.json").read_text())
    assert [r["name"] for r in doc["results"]] == ["fast", "subset-no-crop", "subset-mix", "subset-ema"]
    assert all(r["steps"] == 1 and 0 <= r["test_top1"] <= 1 for r in doc["results"])
    assert "| subset-no-crop | ... without the random crop |" in proc.stdout
    again = subprocess.run([sys.executable, str(ablation), "--from", str(tmp_path / "ablation.json")],
                           capture_output=True, text=True)
    assert again.returncode == 0 and again.stdout.splitlines()[2].startswith("| fast | the fast recipe")
    bad = subprocess.run([sys.executable, str(ablation), "--smoke", "--only", "fastest"], capture_output=True,
                         text=True)
    assert bad.returncode == 2 and "unknown variant(s) fastest" in bad.stderr


def test_sizing_script_prints_its_table() -> None:
    sizing = RUN_PY.parent / "sizing.py"
    proc = subprocess.run([sys.executable, str(sizing), "--only", "2", "--batch", "2", "--repeats", "1"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert len(lines) == 4 and lines[2].startswith("| fast: width 64, 6 blocks | 208,842 | 64 | 32 |")

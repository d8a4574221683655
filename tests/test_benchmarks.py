"""Smoke tests of the benchmark suite (benchmarks/run.py) and of the PyTorch reference model.

Benchmarks are never timed here: each section of the suite runs once on the tiny config with the smallest
settings, so the code paths cannot rot, and only the shape of the results is checked. The PyTorch reference
(npvit.torch_reference), which the suite times against npvit, must compute the same logits as npvit in
float32, with either attention implementation, and honour train/eval mode.
"""

from __future__ import annotations

import importlib.util
import json
import math
import sys
from pathlib import Path

import numpy as np
import pytest

import npvit

RUN_PY = Path(__file__).resolve().parents[1] / "benchmarks" / "run.py"

try:
    import torch
except ImportError:
    torch = None

needs_torch = pytest.mark.skipif(torch is None, reason="PyTorch is not installed: pip install 'npvit[torch]'")


@pytest.fixture(scope="module")
def run():
    """benchmarks/run.py imported as a module (its thread set-up only happens when run as a script)."""
    spec = importlib.util.spec_from_file_location("npvit_benchmarks_run", RUN_PY)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up here
    spec.loader.exec_module(module)
    yield module
    sys.modules.pop(spec.name, None)


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
    import subprocess

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

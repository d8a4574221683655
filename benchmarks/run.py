"""npvit benchmark suite: kernels, end to end, sequence length and matmul peak, side by side with PyTorch.

    python benchmarks/run.py                          # everything, NumPy backend (about 15 minutes on 2 cores)
    python benchmarks/run.py --quick                  # smoke run: smaller batches, fewer repeats (minutes)
    python benchmarks/run.py --backend cupy           # CuPy vs PyTorch CUDA, TF32 off on both
    python benchmarks/run.py --backend cupy --tf32    # ... with TF32 matmuls on both
    python benchmarks/run.py --sections kernels,e2e --threads 2 --json out.json

Prints a header (date, machine, library versions, threads, command) and one markdown table per section, and
writes everything (every sample, not only medians) to ``benchmarks/results/<date>-<backend>[-quick].json``.

Sections (``--sections``, comma separated; default all):

* ``peak``: float32 matrix-multiply throughput (square sgemm, several sizes) of the array library and of
  torch, measured in this run; the best of them is the "peak" that utilisation is measured against. Always
  measured when e2e or seqlen runs.
* ``kernels``: every kernel of the Keras preset at batch 256, forward and backward, with GFLOP/s (matrix
  products: 2 FLOPs per multiply-add) or GB/s (elementwise kernels: the minimal traffic, each input read
  once and each output written once; dropout masks count one byte per element), its calls per training step
  and its share of the measured training step. The rows above "other" plus "other" (residual adds, head
  split/merge copies, ...: the step minus their sum) make up the step; composite rows time whole layers
  through npvit's real code path (model modules, ``kernels.attention_core_*``), not added up. Augmentation
  (``npvit.augment``, if present) runs outside the step.
* ``e2e``: training images/s (forward, loss, backward, AdamW) and forward-only (inference) images/s for
  the keras, keras-wide and small presets over a range of batch sizes; model FLOPs per image; utilisation
  against the peak; peak memory.
* ``seqlen``: the Keras preset with patch grids 8x8 to 24x24 (patch 6, so 64 to 576 tokens; --quick: 8, 16
  and 24) at a fixed batch: time per training step, the measured share of the attention core (Q K^T,
  softmax, dropout, A V, forward and backward) and a least-squares fit t(T) = c0 + c1 T + c2 T^2 showing the
  quadratic term.

Fairness rules:

* npvit and PyTorch (``npvit.torch_reference.TorchViT``, eager, written as a competent PyTorch user would)
  run the same network with the same initial weights (npvit's copied into torch), on the same batch, in
  float32, with the same thread count; their measurements alternate (npvit, torch, npvit, torch, ...) after
  warm-up rounds, and tables report medians (every sample is in the JSON; measurements whose samples spread
  by more than 1.5x are listed at the end). Every row prints the npvit/torch ratio.
* On CPU each turn starts after a 0.2 s pause: OpenBLAS workers spin for about 0.1 s after a call (and
  torch's OpenMP threads briefly too), and on a 2-core machine the next library's threads would fight them
  (measured: a torch matmul 2.5x slower right after a NumPy one, and NumPy 1.4x slower after torch).
* torch trains the way its users do: ``zero_grad(set_to_none=True)``, ``F.cross_entropy``, ``backward``,
  ``torch.optim.AdamW`` (default implementation); inference runs under ``torch.inference_mode`` in eval mode.
  It does not compute the image gradient that npvit's ``backward`` returns (a small cost for npvit).
* Memory pages: on Linux NumPy asks for transparent huge pages for large arrays; torch's CPU allocator
  does not unless THP_MEM_ALLOC_ENABLE=1 (``--torch-thp``). With fresh activations every step, torch then
  takes ~500x more page faults (on the 2-core VM: seconds of system time per Keras b256 step). The default
  compares stock torch; the header and the per-sample CPU/system time and page faults make this visible.
* Threads: ``--threads N`` (default: OMP_NUM_THREADS if set, else the CPUs this process may use) is written
  to OMP_NUM_THREADS, OPENBLAS_NUM_THREADS and MKL_NUM_THREADS *before NumPy is imported* (so run this file
  as a script, not imported), and given to ``torch.set_num_threads``. The header reports the BLAS thread
  count queried from the loaded OpenBLAS, so a mismatch shows.
* Memory: each (framework, preset, batch) is measured in a fresh subprocess. On CPU: the resident set
  after setup (model, optimizer state, gradients -- torch's AdamW state and ``.grad`` are created up front
  so both frameworks start equal), then the peak resident set (VmHWM, reset through
  /proc/self/clear_refs) over one inference forward, and again over one training step: the tables report
  peak minus setup, i.e. activations, caches and temporaries. On GPU: CuPy's memory pool high-water
  (bytes held after the pass, an upper bound of the bytes in use) and ``torch.cuda.max_memory_allocated``.
* GPU: ``--backend cupy`` pairs CuPy with PyTorch CUDA. TF32 is off on both by default (CUPY_TF32=0;
  ``torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False``); ``--tf32`` turns it
  on in both. Timers synchronise the device.

Benchmarks are never run as tests; ``tests/test_benchmarks.py`` only smoke-tests these code paths on the
tiny config.
"""

from __future__ import annotations

import os
import sys

THREAD_VARS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")


def default_threads() -> int:
    """CPUs this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def requested_threads(argv: list[str]) -> int:
    """--threads N from the command line, else OMP_NUM_THREADS, else every CPU this process may use."""
    for i, arg in enumerate(argv):
        value = argv[i + 1] if arg == "--threads" and i + 1 < len(argv) else (
            arg.split("=", 1)[1] if arg.startswith("--threads=") else None)
        if value is not None:
            try:
                return max(1, int(value))
            except ValueError:
                break  # argparse reports it
    try:
        return max(1, int(os.environ.get("OMP_NUM_THREADS", "")))
    except ValueError:
        return default_threads()


if __name__ == "__main__":
    # Thread pools read these when their library loads: set them before NumPy (and torch) are imported.
    _THREADS = requested_threads(sys.argv[1:])
    for _var in THREAD_VARS:
        os.environ[_var] = str(_THREADS)
    if "--torch-thp" in sys.argv[1:]:
        os.environ["THP_MEM_ALLOC_ENABLE"] = "1"  # read by torch's CPU allocator

import argparse  # noqa: E402
import gc  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import platform  # noqa: E402
import shlex  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import time  # noqa: E402
from dataclasses import dataclass, replace  # noqa: E402
from datetime import datetime  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any, Callable  # noqa: E402

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))
if str(ROOT) not in sys.path:
    sys.path.append(str(ROOT))

import numpy as np  # noqa: E402

try:
    import resource  # noqa: E402
except ImportError:  # not Unix: no CPU-time and page-fault counts
    resource = None

import npvit  # noqa: E402
from npvit import kernels as K  # noqa: E402
from npvit.demo import PRESETS  # noqa: E402
from npvit.kernels import DropoutKey  # noqa: E402
from npvit.model import Context  # noqa: E402

from flops import attention_flops_per_image, dense_flops, matmul_flops_per_image, TRAIN_FACTOR  # noqa: E402

try:
    import torch
    import torch.nn.functional as F

    from npvit import torch_reference as TR
except ImportError:  # torch is optional: the suite then runs npvit alone
    torch = F = TR = None

SECTIONS = ("peak", "kernels", "e2e", "seqlen")
FRAMEWORKS = ("npvit", "torch")
DTYPE = "float32"


# ==================================================================================== settings and context
@dataclass(frozen=True)
class Settings:
    """Sizes and repeat counts of one run (full or quick, CPU or GPU)."""

    warmup: int
    peak_sizes: tuple[int, ...]
    peak_repeats: int
    kernel_batch: int
    kernel_repeats: int
    kernel_target_s: float  # each kernel sample loops until about this long
    e2e: dict[str, tuple[int, ...]]
    e2e_repeats: int
    seq_grids: tuple[int, ...]
    seq_batch: int
    seq_repeats: int
    pause_s: float = 0.0  # idle time before each contender's turn, so the other library's threads go to sleep


SETTINGS = {
    ("cpu", "full"): Settings(
        warmup=1, peak_sizes=(2048, 3072, 4096), peak_repeats=3,
        kernel_batch=256, kernel_repeats=3, kernel_target_s=0.1,
        e2e={"keras": (64, 128, 256), "keras-wide": (32, 64), "small": (128, 256)}, e2e_repeats=3,
        seq_grids=(8, 12, 16, 20, 24), seq_batch=64, seq_repeats=2, pause_s=0.2,
    ),
    ("cpu", "quick"): Settings(
        warmup=1, peak_sizes=(1024, 2048), peak_repeats=2,
        kernel_batch=32, kernel_repeats=3, kernel_target_s=0.02,
        e2e={"keras": (16, 32), "keras-wide": (16,), "small": (32,)}, e2e_repeats=3,
        seq_grids=(8, 16, 24), seq_batch=8, seq_repeats=2, pause_s=0.2,
    ),
    ("gpu", "full"): Settings(
        warmup=3, peak_sizes=(4096, 8192), peak_repeats=5,
        kernel_batch=256, kernel_repeats=10, kernel_target_s=0.05,
        e2e={"keras": (64, 128, 256, 512), "keras-wide": (64, 128, 256), "small": (128, 256, 512)},
        e2e_repeats=10, seq_grids=(8, 12, 16, 20, 24), seq_batch=64, seq_repeats=10,
    ),
    ("gpu", "quick"): Settings(
        warmup=2, peak_sizes=(2048, 4096), peak_repeats=3,
        kernel_batch=64, kernel_repeats=3, kernel_target_s=0.02,
        e2e={"keras": (64, 256), "keras-wide": (64,), "small": (256,)}, e2e_repeats=3,
        seq_grids=(8, 12, 16, 20, 24), seq_batch=32, seq_repeats=3,
    ),
}


@dataclass
class Ctx:
    """What every section needs: the npvit backend, the torch peer (if any), settings and a logger."""

    backend: npvit.Backend
    settings: Settings
    threads: int
    torch_device: str | None = None  # None: no torch peer
    torch_note: str = ""
    sdpa: bool = False  # also time torch with F.scaled_dot_product_attention
    memory: bool = True
    tf32: bool = False
    verbose: bool = True
    peak_gflops: float | None = None

    @property
    def peers(self) -> tuple[str, ...]:
        """The torch contenders: eager, plus SDPA with --sdpa; none without torch."""
        if not self.torch_device:
            return ()
        return ("torch", "torch-sdpa") if self.sdpa else ("torch",)

    @property
    def xp(self) -> Any:
        return self.backend.xp

    def sync_npvit(self) -> None:
        self.backend.synchronize()

    def sync_torch(self) -> None:
        if self.torch_device and self.torch_device.startswith("cuda"):
            torch.cuda.synchronize()

    def log(self, msg: str) -> None:
        if self.verbose:
            print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# ========================================================================================== timing helpers
def median(values: list[float]) -> float:
    return statistics.median(values) if values else math.nan


def _usage() -> tuple[float, float, int]:
    """(user CPU s, system CPU s, minor page faults) of this process so far, all threads."""
    if resource is None:
        return 0.0, 0.0, 0
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime, r.ru_stime, r.ru_minflt


def alternate(
    contenders: dict[str, Callable[[], dict[str, float]]], warmup: int, repeats: int, pause: float = 0.0
) -> dict[str, dict[str, list[float]]]:
    """Run the contenders in turn (a, b, c, a, b, c, ...) ``warmup + repeats`` times; keep the last ``repeats``.

    Each contender returns a dict of timings (seconds); the result maps contender -> timing name -> samples.
    Every sample also records the process's user and system CPU seconds and minor page faults during the
    call (``cpu_user_s``, ``cpu_sys_s``, ``minor_faults``): large system time means the measurement paid for
    fresh memory (page faults), not arithmetic.
    ``pause`` seconds pass before each turn: OpenBLAS worker threads spin for about 0.1 s after a call, and
    torch's OpenMP threads briefly too; on a small machine they would steal cores from the next contender
    (measured: torch 2.5x slower right after a NumPy matmul).
    """
    samples: dict[str, dict[str, list[float]]] = {name: {} for name in contenders}
    for i in range(warmup + repeats):
        for name, fn in contenders.items():
            if pause:
                time.sleep(pause)
            before = _usage()
            result = fn()
            after = _usage()
            result = dict(result, cpu_user_s=after[0] - before[0], cpu_sys_s=after[1] - before[1],
                          minor_faults=after[2] - before[2])
            if i >= warmup:
                for key, value in result.items():
                    samples[name].setdefault(key, []).append(value)
    return samples


def medians(samples: dict[str, list[float]]) -> dict[str, float]:
    return {k: median(v) for k, v in samples.items()}


def usage(samples: dict[str, list[float]]) -> dict[str, float]:
    """Median CPU user/system seconds and minor page faults per sample."""
    return {k: median(samples.get(k, [])) for k in ("cpu_user_s", "cpu_sys_s", "minor_faults")}


def loop_pair(fwd: Callable[[], Any], bwd: Callable[[Any], Any] | None, k: int,
              sync: Callable[[], None]) -> dict[str, float]:
    """Seconds per call of ``fwd`` (k calls), then of ``bwd`` on the last forward's output (k calls)."""
    sync()
    t0 = time.perf_counter()
    state = None
    for _ in range(k):
        state = None  # free the previous output first, as a training loop would
        state = fwd()
    sync()
    t1 = time.perf_counter()
    if bwd is not None:
        for _ in range(k):
            bwd(state)
        sync()
    t2 = time.perf_counter()
    return {"fwd": (t1 - t0) / k, "bwd": (t2 - t1) / k if bwd is not None else math.nan}


def kernel_contender(setup: Callable[[], tuple], sync: Callable[[], None], target_s: float) -> Callable:
    """A contender timing a (fwd, bwd) pair; its first call (a warm-up) sets how many calls make a sample."""
    fwd, bwd = setup()
    inner = {"k": 0}

    def run() -> dict[str, float]:
        if not inner["k"]:
            result = loop_pair(fwd, bwd, 1, sync)
            once = result["fwd"] + (0.0 if bwd is None else result["bwd"])
            inner["k"] = int(min(200, max(1, target_s // max(once, 1e-7))))
            return result
        return loop_pair(fwd, bwd, inner["k"], sync)

    return run


# ============================================================================================ data, models
def make_batch(cfg: npvit.ViTConfig, batch: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Normalised random images (B, S, S, C) float32 and integer labels, on the host."""
    rng = np.random.default_rng(seed)
    images = rng.standard_normal((batch, cfg.image_size, cfg.image_size, cfg.channels), dtype=np.float32)
    return images, rng.integers(0, cfg.num_classes, batch)


def time_phases(sync: Callable[[], None], phases: list[tuple[str, Callable[[Any], Any]]],
                breakdown: bool) -> dict[str, float]:
    """Run the (name, fn) phases of one training step in order, each fn given the previous one's result.

    Returns {"step": seconds}, plus one entry per phase with ``breakdown`` (the device is then synchronised
    after every phase, which costs a little on a GPU; without it only at the end).
    """
    sync()
    start = last = time.perf_counter()
    times: dict[str, float] = {}
    result: Any = None
    for i, (name, fn) in enumerate(phases):
        result = fn(result)
        if breakdown or i == len(phases) - 1:
            sync()
        now = time.perf_counter()
        times[name], last = now - last, now
    return dict(times, step=last - start) if breakdown else {"step": last - start}


class NpvitRunner:
    """npvit model, AdamW and one batch; ``train_step`` / ``forward`` return their timings."""

    name = "npvit"

    def __init__(self, ctx: Ctx, cfg: npvit.ViTConfig, batch: int, seed: int = 0) -> None:
        self.ctx = ctx
        self.model = npvit.ViT(cfg, backend=ctx.backend, dtype=DTYPE, seed=seed)
        self.opt = npvit.AdamW(self.model.params, lr=1e-3, weight_decay=1e-4)
        images, labels = make_batch(cfg, batch, seed)
        self.images, self.labels = images, labels
        self.x, self.y = ctx.backend.asarray(images), ctx.backend.asarray(labels)

    def train_step(self, breakdown: bool = False) -> dict[str, float]:
        return time_phases(self.ctx.sync_npvit, [
            ("forward", lambda _: self.model.forward(self.x, training=True)),
            ("loss", lambda logits: npvit.cross_entropy_backward(npvit.cross_entropy_forward(logits, self.y)[1])),
            ("backward", self.model.backward),
            ("adamw", lambda _: self.opt.step(self.model.grads)),
        ], breakdown)

    def forward(self) -> dict[str, float]:
        self.ctx.sync_npvit()
        t0 = time.perf_counter()
        self.model.forward(self.x)
        self.ctx.sync_npvit()
        return {"forward": time.perf_counter() - t0}


class TorchRunner:
    """TorchViT with npvit's initial weights, torch AdamW and the same batch."""

    def __init__(self, ctx: Ctx, cfg: npvit.ViTConfig, images: np.ndarray, labels: np.ndarray,
                 attention: str = "eager", params: dict | None = None) -> None:
        self.ctx, self.name = ctx, "torch" if attention == "eager" else f"torch-{attention}"
        dev = ctx.torch_device
        self.model = TR.TorchViT(cfg, dtype=torch.float32, device=dev, attention=attention)
        if params is not None:
            self.model.load_npvit_params(params)  # npvit's initial weights
        self.opt = torch.optim.AdamW(self.model.parameters(), lr=1e-3, weight_decay=1e-4, eps=1e-7)
        self.x = torch.from_numpy(images).to(dev)
        self.y = torch.from_numpy(labels).to(dev)

    def train_step(self, breakdown: bool = False) -> dict[str, float]:
        self.model.train()

        def forward(_: Any) -> Any:
            self.opt.zero_grad(set_to_none=True)
            return self.model(self.x)

        return time_phases(self.ctx.sync_torch, [
            ("forward", forward),
            ("loss", lambda logits: F.cross_entropy(logits, self.y)),
            ("backward", lambda loss: loss.backward()),
            ("adamw", lambda _: self.opt.step()),
        ], breakdown)

    def forward(self) -> dict[str, float]:
        self.model.eval()
        self.ctx.sync_torch()
        t0 = time.perf_counter()
        with torch.inference_mode():
            self.model(self.x)
        self.ctx.sync_torch()
        return {"forward": time.perf_counter() - t0}


def make_runners(ctx: Ctx, cfg: npvit.ViTConfig, batch: int, peers: tuple[str, ...] | None = None
                 ) -> dict[str, Any]:
    """npvit, then each torch peer built from npvit's initial weights and batch."""
    runners: dict[str, Any] = {"npvit": NpvitRunner(ctx, cfg, batch)}
    nv = runners["npvit"]
    for peer in ctx.peers if peers is None else peers:
        attention = "sdpa" if peer == "torch-sdpa" else "eager"
        runners[peer] = TorchRunner(ctx, cfg, nv.images, nv.labels, attention, params=nv.model.params)
    return runners


def free(collect: bool = True) -> None:
    """Collect garbage and return cached device memory, so one row does not inflate the next (callers drop
    their references first). Reference counting frees arrays by itself; ``collect`` also breaks cycles (about
    0.1 s with torch loaded)."""
    if collect:
        gc.collect()
    if sys.modules.get("cupy") is not None:
        sys.modules["cupy"].get_default_memory_pool().free_all_blocks()
    if torch is not None and torch.cuda.is_available():
        torch.cuda.empty_cache()


# =================================================================================================== peak
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


# ================================================================================================ kernels
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
    drop_rng = DropoutKey(2)
    cases: list[KernelCase] = []

    # ---- patches ----------------------------------------------------------------------------------------
    img = host(b, cfg.image_size, cfg.image_size, cfg.channels)
    dpatch = host(b, cfg.num_patches, cfg.patch_dim)
    n_patch = dpatch.size

    def np_patches():
        x, dy = dev_np(img), dev_np(dpatch)
        return (lambda: K.patches_forward(x, cfg.patch_size)[1],
                lambda cache: K.patches_backward(dy, cache, cfg.patch_size))

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
        return lambda: K.softmax_forward(s)[1], lambda y: K.softmax_backward(dy, y)

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
            return (lambda: [K.dropout_forward(x, rate, drop_rng)[1] for x, _ in arrs],
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
                lambda caches: [K.gelu_backward(dy, c, cfg.gelu) for (_, dy), c in zip(arrs, caches)])

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

    def np_core():
        q, k, v = np_qkv_views()
        do = dev_np(do_h).transpose(0, 2, 1, 3)
        return (lambda: K.attention_core_forward(q, k, v, cfg.attention_dropout, drop_rng)[2],
                lambda cache: K.attention_core_backward(do, cache))

    def t_core():
        q, k, v = t_qkv_views()
        do = torch.from_numpy(do_h).to(dev).permute(0, 2, 1, 3)
        return (lambda: TR.attention_core(q, k, v, scale, cfg.attention_dropout),
                lambda o: tgrad(o, [q, k, v], do))

    cases.append(KernelCase("attention core (kernels.attention_core_*)", f"{b}x{h}x{t}x{kd}", depth,
                            "GFLOP/s", core_flops, 2 * core_flops, np_core, t_core, group="composite"))

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
        from npvit.augment import Augmenter
    except ImportError as exc:
        cases.append(KernelCase("augmentation", "npvit.augment not available", 1, "", 0, 0, None,
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


# ==================================================================================================== e2e
def section_e2e(ctx: Ctx) -> dict:
    st = ctx.settings
    rows = []
    for preset, batches in st.e2e.items():
        cfg = PRESETS[preset]()
        for batch in batches:
            ctx.log(f"e2e: {preset}, batch {batch}")
            runners = make_runners(ctx, cfg, batch)
            contenders = {}
            for name, r in runners.items():
                contenders[f"{name}/train"] = r.train_step
            for name, r in runners.items():
                contenders[f"{name}/forward"] = r.forward
            samples = alternate(contenders, st.warmup, st.e2e_repeats, st.pause_s)
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
                if ctx.memory:
                    ctx.log(f"e2e: {preset}, batch {batch}: peak memory of {name} (fresh process)")
                    r["memory"] = memory_in_subprocess(ctx, name, preset, batch)
                row[name] = r
            rows.append(row)
    return {"rows": rows, "peak_gflops": ctx.peak_gflops}


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


# ================================================================================================= memory
def memory_in_subprocess(ctx: Ctx, framework: str, preset: str, batch: int) -> dict:
    """Run ``memory_probe`` in a fresh interpreter (same threads, backend, TF32) and return its report."""
    spec = {"framework": framework, "preset": preset, "batch": batch, "backend": ctx.backend.name}
    cmd = [sys.executable, str(Path(__file__).resolve()), "--memory-probe", json.dumps(spec),
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


def _proc_kb(path: str, field_name: str) -> int:
    """A "Name:  value kB" field of a /proc file such as /proc/self/status or /proc/meminfo."""
    with open(path) as f:
        for line in f:
            if line.startswith(field_name + ":"):
                return int(line.split()[1])
    raise KeyError(field_name)


def _status_kb(field_name: str) -> int:
    return _proc_kb("/proc/self/status", field_name)


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
        runner = TorchRunner(ctx, cfg, images, labels, "sdpa" if fw == "torch-sdpa" else "eager")
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


# ================================================================================================= seqlen
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
        scale = 1.0 / math.sqrt(cfg.key_dim)
        drop_rng = DropoutKey(4)

        def np_core():
            q, k, v = ctx.backend.asarray(qkv_h).transpose(2, 0, 3, 1, 4)
            do = ctx.backend.asarray(do_h).transpose(0, 2, 1, 3)
            return (lambda: K.attention_core_forward(q, k, v, cfg.attention_dropout, drop_rng)[2],
                    lambda cache: K.attention_core_backward(do, cache))

        def t_core(impl: str):
            def setup():
                qkv = torch.from_numpy(qkv_h).to(ctx.torch_device).permute(2, 0, 3, 1, 4)
                q, k, v = (qkv[i].detach().requires_grad_(True) for i in range(3))
                do = torch.from_numpy(do_h).to(ctx.torch_device).permute(0, 2, 1, 3)
                return (lambda: TR.attention_core(q, k, v, scale, cfg.attention_dropout, impl),
                        lambda o: torch.autograd.grad(o, [q, k, v], do, retain_graph=True))
            return setup

        contenders: dict[str, Callable] = {}
        for name, r in runners.items():
            contenders[f"{name}/step"] = r.train_step
        contenders["npvit/attention"] = kernel_contender(np_core, ctx.sync_npvit, st.kernel_target_s)
        for peer in ctx.peers:
            impl = "sdpa" if peer == "torch-sdpa" else "eager"
            contenders[f"{peer}/attention"] = kernel_contender(t_core(impl), ctx.sync_torch, st.kernel_target_s)
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


# ============================================================================================ noise report
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


# ========================================================================================= formatting
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


def jsonable(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [jsonable(v) for v in obj]
    if isinstance(obj, (np.floating, float)):
        return None if math.isnan(obj) or math.isinf(obj) else float(obj)
    if isinstance(obj, np.integer):
        return int(obj)
    return obj


# ============================================================================================ environment
def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def mem_total_gib() -> float | None:
    try:
        return _proc_kb("/proc/meminfo", "MemTotal") / 1024**2
    except (OSError, KeyError):
        return None


def openblas_threads() -> dict[str, int]:
    """Thread count of every OpenBLAS loaded in this process, asked through its C API."""
    import ctypes

    found: dict[str, int] = {}
    try:
        with open("/proc/self/maps") as f:
            paths = {line.split()[-1] for line in f if "openblas" in line.lower() and "/" in line}
    except OSError:
        return found
    for path in sorted(paths):
        try:
            lib = ctypes.CDLL(path)
        except OSError:
            continue
        for sym in ("scipy_openblas_get_num_threads64_", "scipy_openblas_get_num_threads",
                    "openblas_get_num_threads64_", "openblas_get_num_threads"):
            fn = getattr(lib, sym, None)
            if fn is not None:
                found[Path(path).name] = int(fn())
                break
    return found


def _read_first_line(path: str) -> str | None:
    try:
        with open(path) as f:
            return f.readline().strip()
    except OSError:
        return None


def _numpy_madvise_hugepage() -> bool | None:
    """Whether NumPy asks for transparent huge pages for its large arrays (it does by default on Linux)."""
    try:
        return bool(np._core.multiarray._get_madvise_hugepage())
    except AttributeError:
        return None


def version_of(dist: str) -> str | None:
    from importlib import metadata

    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def environment(ctx: Ctx, argv: list[str]) -> dict:
    import scipy

    env: dict[str, Any] = {
        "date": datetime.now().astimezone().isoformat(timespec="seconds"),
        "command": "python " + " ".join(shlex.quote(a) for a in [os.path.relpath(__file__)] + argv),
        "cpu": cpu_model(), "logical_cpus": os.cpu_count(), "usable_cpus": default_threads(),
        "memory_gib": mem_total_gib(), "load_average_start": list(os.getloadavg()),
        "python": platform.python_version(), "numpy": np.__version__, "scipy": scipy.__version__,
        "npvit": npvit.__version__, "torch": torch.__version__ if torch is not None else None,
        "cupy": version_of("cupy") or version_of("cupy-cuda12x") or version_of("cupy-cuda13x"),
        "backend": ctx.backend.name, "dtype": DTYPE, "threads": ctx.threads,
        "thread_env": {v: os.environ.get(v) for v in THREAD_VARS},
        "openblas_threads": openblas_threads(),
        "torch_threads": torch.get_num_threads() if torch is not None else None,
        "torch_peer": ctx.torch_device or f"none ({ctx.torch_note})", "tf32": ctx.tf32,
        "torch_thp_alloc": os.environ.get("THP_MEM_ALLOC_ENABLE") == "1",
        "numpy_hugepage_madvise": _numpy_madvise_hugepage(),
        "thp_mode": _read_first_line("/sys/kernel/mm/transparent_hugepage/enabled"),
        "settings": {k: v for k, v in ctx.settings.__dict__.items()},
    }
    try:
        blas = np.show_config(mode="dicts")["Build Dependencies"]["blas"]
        env["numpy_blas"] = f"{blas.get('name')} {blas.get('version')}"
    except Exception:
        env["numpy_blas"] = None
    if torch is not None:
        info = torch.__config__.show()
        env["torch_blas"] = next((p.split("=")[1] for p in info.replace(",", " ").split()
                                  if p.startswith("BLAS_INFO=")), None)
    if ctx.backend.name == "cupy":
        cp = ctx.xp
        props = cp.cuda.runtime.getDeviceProperties(cp.cuda.Device().id)
        name = props["name"]
        env["gpu"] = name.decode() if isinstance(name, bytes) else str(name)
        env["cuda_runtime"] = cp.cuda.runtime.runtimeGetVersion()
        env["CUPY_TF32"] = os.environ.get("CUPY_TF32")
        if ctx.torch_device:
            env["torch_cuda"] = torch.version.cuda
            env["torch_allow_tf32"] = {"matmul": torch.backends.cuda.matmul.allow_tf32,
                                       "cudnn": torch.backends.cudnn.allow_tf32}
    return env


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
    print(f"- backend: {env['backend']}, {env['dtype']}; torch peer: {env['torch_peer']}\n")


# =================================================================================================== main
def build_ctx(args: argparse.Namespace) -> Ctx:
    if args.backend == "cupy":
        os.environ["CUPY_TF32"] = "1" if args.tf32 else "0"  # read by CuPy at its first float32 matmul
    backend = npvit.get_backend(args.backend)
    gpu = args.backend == "cupy"
    settings = SETTINGS[("gpu" if gpu else "cpu", "quick" if args.quick else "full")]
    if args.repeats:
        settings = replace(settings, kernel_repeats=args.repeats, e2e_repeats=args.repeats,
                           seq_repeats=args.repeats, peak_repeats=args.repeats)
    if args.e2e:
        settings = replace(settings, e2e=args.e2e)
    device, note = None, ""
    if torch is None:
        note = "torch is not installed"
    elif args.no_torch:
        note = "--no-torch"
    elif gpu and not torch.cuda.is_available():
        note = "torch has no CUDA device"
    else:
        device = "cuda" if gpu else "cpu"
        torch.set_num_threads(args.threads)
        if gpu:
            torch.backends.cuda.matmul.allow_tf32 = args.tf32
            torch.backends.cudnn.allow_tf32 = args.tf32
    return Ctx(backend=backend, settings=settings, threads=args.threads, torch_device=device, torch_note=note,
               sdpa=args.sdpa and device is not None, memory=not args.no_memory, tf32=args.tf32,
               verbose=not args.memory_probe)


def e2e_rows(text: str) -> dict[str, tuple[int, ...]]:
    """Parse --e2e: "keras:256,small:128" -> {"keras": (256,), "small": (128,)}."""
    rows: dict[str, tuple[int, ...]] = {}
    for item in (part.strip() for part in text.split(",") if part.strip()):
        preset, _, batch = item.partition(":")
        if preset not in PRESETS or not batch.isdigit() or int(batch) < 1:
            raise argparse.ArgumentTypeError(
                f"{item!r}: expected PRESET:BATCH with PRESET one of {', '.join(sorted(PRESETS))} and a positive "
                "batch, e.g. keras:256")
        rows[preset] = rows.get(preset, ()) + (int(batch),)
    if not rows:
        raise argparse.ArgumentTypeError("expected at least one PRESET:BATCH, e.g. keras:256")
    return rows


def default_json_path(backend: str, quick: bool) -> Path:
    return HERE / "results" / f"{datetime.now():%Y-%m-%d}-{backend}{'-quick' if quick else ''}.json"


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backend", choices=("numpy", "cupy"), default="numpy")
    parser.add_argument("--quick", action="store_true", help="smaller batches, fewer repeats (a few minutes)")
    parser.add_argument("--threads", type=int, default=requested_threads(argv),
                        help="threads for BLAS/OpenMP and torch (default: OMP_NUM_THREADS or all usable CPUs)")
    parser.add_argument("--json", help="where to write the results (default benchmarks/results/<date>-<backend>"
                                       "[-quick].json)")
    parser.add_argument("--sections", default=",".join(SECTIONS),
                        help=f"comma-separated subset of {','.join(SECTIONS)} (default all)")
    parser.add_argument("--repeats", type=int, help="measured repeats per row, overriding the defaults")
    parser.add_argument("--e2e", type=e2e_rows, metavar="PRESET:BATCH[,...]",
                        help="end-to-end rows to time instead of the defaults, e.g. keras:256 or "
                             "keras:128,keras:256")
    parser.add_argument("--tf32", action="store_true", help="GPU: allow TF32 matmuls in both CuPy and torch")
    parser.add_argument("--sdpa", action="store_true",
                        help="also time torch with F.scaled_dot_product_attention (e2e and seqlen)")
    parser.add_argument("--no-torch", action="store_true", help="time npvit alone")
    parser.add_argument("--torch-thp", action="store_true",
                        help="CPU: let torch's allocator use transparent huge pages (THP_MEM_ALLOC_ENABLE=1), "
                             "as NumPy does by default for large arrays; fewer page faults for torch")
    parser.add_argument("--no-memory", action="store_true", help="skip the peak-memory subprocesses")
    parser.add_argument("--memory-probe", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    sections = [s.strip() for s in args.sections.split(",") if s.strip()]
    unknown = sorted(set(sections) - set(SECTIONS))
    if unknown:
        parser.error(f"unknown section(s) {unknown}; choose from {', '.join(SECTIONS)}")
    if args.threads < 1:
        parser.error("--threads must be positive")

    try:
        ctx = build_ctx(args)
    except npvit.BackendUnavailableError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.memory_probe:
        print(json.dumps(jsonable(memory_probe(json.loads(args.memory_probe), ctx))))
        return 0

    env = environment(ctx, argv)
    blas = env["openblas_threads"]
    if ctx.backend.name == "numpy" and blas and args.threads not in blas.values():
        ctx.log(f"warning: OpenBLAS runs {env['openblas_threads']} threads, not {args.threads}: was NumPy imported "
                "before the thread variables were set? Run this file as a script.")
    print_header(env)
    results: dict[str, Any] = {"environment": env}
    peers = list(ctx.peers)
    start = time.perf_counter()
    if "peak" in sections or "e2e" in sections or "seqlen" in sections:
        results["peak"] = section_peak(ctx)
        print_peak(results["peak"])
        sys.stdout.flush()
    if "kernels" in sections:
        results["kernels"] = section_kernels(ctx)
        print_kernels(results["kernels"])
        sys.stdout.flush()
    if "e2e" in sections:
        results["e2e"] = section_e2e(ctx)
        print_e2e(results["e2e"], peers)
        sys.stdout.flush()
    if "seqlen" in sections:
        results["seqlen"] = section_seqlen(ctx)
        print_seqlen(results["seqlen"], peers)
    noisy = spread_report(results)
    results["noisy"] = noisy
    if noisy:
        print(f"Noisy measurements (max/min of the samples above 1.5; the medians are reported): {len(noisy)}: "
              + "; ".join(noisy) + "\n")
    env["load_average_end"] = list(os.getloadavg())
    env["wall_seconds"] = time.perf_counter() - start
    print(f"Load average at the end: {', '.join(f'{x:.2f}' for x in env['load_average_end'])}; "
          f"wall time {env['wall_seconds']:.0f} s.")
    path = Path(args.json) if args.json else default_json_path(ctx.backend.name, args.quick)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(jsonable(results), indent=1))
    print(f"Results written to {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The first run on a GPU: does npvit's CuPy path work there, wait for nothing, match NumPy and PyTorch, and how fast?

    python benchmarks/gpu_check.py --out DIR                       # on a GPU: about 5 minutes (--budget 300)
    python benchmarks/gpu_check.py --out DIR --kernel-cache OLD/kernel-cache.tar.gz   # a second run, warm
    python benchmarks/gpu_check.py --simulate --out DIR            # on a CPU, through the test suite's fake CuPy

Made for a short device lease: the sections run cheapest and most informative first, each with its own share
of ``--budget`` seconds, and after every section ``DIR/report.md`` and ``DIR/results.json`` are rewritten
atomically, so a run cut short loses at most the section in progress. ``faulthandler`` writes the tracebacks
of a hang to ``DIR/faulthandler.txt``. CuPy's compiled kernels are packed into ``DIR/kernel-cache.tar.gz``;
``--kernel-cache`` unpacks such a file before CuPy starts. At most 8 files are written, all directly in DIR.

Sections (``--skip`` takes their names):

* ``environment``: GPU, driver, CUDA, CuPy, NCCL, PyTorch; which way gradients would go between GPUs.
* ``selftest``: the backend's own smoke test, and whether TF32 switches.
* ``steps``: one training step of ``--recipe fast`` (TrivialAugment, AdamW, the running sums, EMA) and of the
  Keras preset: host synchronisations per step (on a GPU, a clock-spinning kernel queued ahead of the step
  shows whether the host waited for it), launches per step (counted by the fake under ``--simulate``), and
  those of one evaluation pass.
* ``correctness``: the model's loss and gradients against NumPy float64 (float64 <= 1e-10, float32 with TF32
  off <= 1e-4, on <= 1e-2) and against the PyTorch model on CUDA when torch has CUDA.
* ``nccl``: one NCCL rank initialised (the id as bytes) and an allreduce.
* ``speed``: the training step, Keras preset at batch 256 and 1024, fast at 128 and 512, TF32 off and on,
  against PyTorch CUDA eager on the same model in the same process.
* ``colsum``: column sums of (B*T, C) arrays: CuPy's one reduction against npvit's two-stage sum.
* ``tests``: the CuPy test cases, with what time remains.

Runs from a checkout with ``PYTHONPATH=.``; nothing is installed. Without a usable GPU (and without
``--simulate``) it stops at once with the reason (exit status 2).
"""

from __future__ import annotations

import argparse
import faulthandler
import json
import os
import platform
import signal
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
import traceback
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

SECTIONS = ("environment", "selftest", "steps", "correctness", "nccl", "speed", "colsum", "tests")
# Each section's share of the budget: it may use at most this fraction of it (and never more than remains).
SHARES = {"environment": 0.05, "selftest": 0.05, "steps": 0.25, "correctness": 0.15, "nccl": 0.05,
          "speed": 0.35, "colsum": 0.05, "tests": 1.0}
MAX_FILES = 8
SPIN = r'''
extern "C" __global__ void npvit_spin(long long cycles) {
    long long start = clock64();
    while (clock64() - start < cycles) { }
}
'''


class SectionTimeout(Exception):
    """A section ran past its share of the budget."""


@dataclass
class Section:
    name: str
    status: str = "not run"
    seconds: float = 0.0
    lines: list[str] = field(default_factory=list)
    results: dict[str, Any] = field(default_factory=dict)


# --------------------------------------------------------------------------------------------- the run
@dataclass
class Run:
    out: Path
    simulate: bool
    budget: float
    started: float = field(default_factory=time.monotonic)
    sections: list[Section] = field(default_factory=list)
    backend: Any = None
    fake: Any = None  # the fake CuPy under --simulate
    command: str = ""

    def remaining(self) -> float:
        return self.budget - (time.monotonic() - self.started)

    def write(self) -> None:
        """report.md and results.json, each replaced atomically."""
        from npvit.files import atomic_write

        doc = {"command": self.command, "simulate": self.simulate, "budget_s": self.budget,
               "date": datetime.now().astimezone().isoformat(timespec="seconds"),
               "sections": {s.name: {"status": s.status, "seconds": round(s.seconds, 2), **s.results}
                            for s in self.sections}}
        steps = next((s.results.get("steps") for s in self.sections if s.name == "steps"), None)
        if steps:
            doc["steps"] = steps
        atomic_write(self.out / "results.json", lambda f: f.write(json.dumps(doc, indent=1, default=str).encode()))
        atomic_write(self.out / "report.md", lambda f: f.write(self.render().encode()))

    def render(self) -> str:
        kind = "simulated on the fake CuPy (CPU): counts are real, times are not" if self.simulate else "GPU"
        lines = ["# npvit GPU check", "", f"- command: `{self.command}`", f"- {kind}",
                 f"- date: {datetime.now().astimezone().isoformat(timespec='seconds')}", "",
                 "| section | status | seconds |", "|---|---|---:|",
                 *[f"| {s.name} | {s.status} | {s.seconds:.1f} |" for s in self.sections], ""]
        for s in self.sections:
            lines += [f"## {s.name}", "", *s.lines, ""]
        return "\n".join(lines).rstrip() + "\n"


@contextmanager
def time_limit(seconds: float) -> Iterator[None]:
    """Raise SectionTimeout in the main thread after ``seconds`` (SIGALRM; no limit where it is missing)."""
    if not hasattr(signal, "setitimer"):
        yield
        return

    def expire(signum: int, frame: Any) -> None:
        raise SectionTimeout(f"ran past its {seconds:.0f} s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, max(0.01, seconds))
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


# --------------------------------------------------------------------------------------- the backends
def load_fake() -> Any:
    """The test suite's fake CuPy, installed; host syncs recorded (not raised), launches counted."""
    sys.path.insert(0, str(ROOT / "tests" / "support"))
    import fakecupy

    fake = fakecupy.install()
    fake.syncs.strict = False
    np.seterr(all="ignore")  # TrivialAugment computes every operation on every image on a GPU: no warnings there
    fakecupy.emulate_kernel("npvit_spin", lambda cycles: None)
    return fake


def xp_sync(backend: Any) -> None:
    backend.synchronize()


# ------------------------------------------------------------------------------------------ sections
def s_environment(run: Run, sec: Section) -> None:
    from npvit import __version__
    from npvit.distributed import SingleProcess, gradient_path
    from npvit.distributed.nccl import load_nccl

    cp = run.backend.xp
    props = cp.cuda.runtime.getDeviceProperties(0)
    name = props["name"].decode() if isinstance(props["name"], bytes) else str(props["name"])
    nccl = load_nccl()
    env = {"GPU": f"{name} ({props.get('multiProcessorCount', '?')} SMs, "
                  f"{props.get('totalGlobalMem', 0) / 2**30:.0f} GiB, compute capability "
                  f"{props.get('major')}.{props.get('minor')})",
           "CUDA runtime / driver": f"{cp.cuda.runtime.runtimeGetVersion()} / {cp.cuda.runtime.driverGetVersion()}",
           "CuPy": cp.__version__, "NumPy": np.__version__, "npvit": __version__,
           "Python": platform.python_version(), "host": f"{platform.machine()}, {os.cpu_count()} CPUs",
           "NCCL": "not available to CuPy" if nccl is None else f"version {nccl.get_version()}",
           "gradients (one process)": gradient_path(SingleProcess(), "cupy")}
    try:
        import torch

        env["PyTorch"] = f"{torch.__version__}, CUDA available: {torch.cuda.is_available()}"
    except ImportError:
        env["PyTorch"] = "not installed"
    sec.results["env"] = env
    sec.lines += [f"- {k}: {v}" for k, v in env.items()]
    sec.status = "passed"


def s_selftest(run: Run, sec: Section) -> None:
    from npvit.backend import _smoke_test

    b = run.backend
    _smoke_test(b.xp)
    rng = np.random.default_rng(0)
    a, c = rng.standard_normal((2, 4, 128, 128))
    exact = a.astype(np.float32).astype(np.float64) @ c.astype(np.float32).astype(np.float64)
    rows = {}
    for on in (False, True):
        in_use = b.set_tf32(on)
        got = b.to_numpy(b.xp.matmul(b.asarray(a, dtype="float32"), b.asarray(c, dtype="float32")))
        rows[f"tf32_{'on' if on else 'off'}"] = {"in_use": in_use,
                                                 "rel_error": float(np.abs(got - exact).max() / np.abs(exact).max())}
    b.set_tf32(False)
    sec.results.update(rows)
    sec.lines += ["| TF32 | in use | relative error of a float32 batched product |", "|---|---|---:|",
                  *[f"| {k[5:]} | {v['in_use']} | {v['rel_error']:.2e} |" for k, v in rows.items()]]
    ok = rows["tf32_off"]["rel_error"] < 1e-5 and (not rows["tf32_on"]["in_use"] or rows["tf32_on"]["rel_error"] > 1e-5)
    sec.status = "passed" if ok else "FAILED"


def recipe_settings(recipe: str, batch: int, out: str, steps: int, image_size: int | None = None) -> dict[str, Any]:
    from npvit.settings import build_parser, resolve_settings

    args = ["--recipe", recipe, "--dataset", "synthetic", "--synthetic-size", f"{batch * (steps + 1)},{batch}",
            "--synthetic-image-size", "32", "--batch-size", str(batch), "--epochs", "1", "--max-steps",
            str(steps), "--quiet", "--out", out, "--seed", "1", "--ema", "0.999", "--backend", "cupy",
            "--validation-split", "0.1", *(["--image-size", str(image_size)] if image_size else [])]
    settings, _ = resolve_settings(vars(build_parser().parse_args(args)))
    return settings


def count_steps(run: Run, recipe: str, batch: int, steps: int = 3) -> dict[str, Any]:
    """Train ``steps`` steps of ``recipe`` through the training program; per step: launches (fake only) and
    host synchronisations; then one evaluation pass. The last step's counts are reported (the first compiles
    and uploads constants). On a GPU a spinning kernel is queued before each step: if queueing the step takes
    as long as the spin, the host waited for the device."""
    from npvit.train.command import train

    fake, b = run.fake, run.backend
    rows: list[dict[str, Any]] = []
    spin = None if fake else b.xp.RawKernel(SPIN, "npvit_spin")
    marks = {"t": time.perf_counter()}

    def before_next() -> None:  # queue the spin, then the next step is queued behind it
        if spin is not None:
            b.synchronize()
            spin((1,), (1,), (np.int64(2_000_000_000 // 10),))  # about 0.1 s at 2 GHz
        marks["t"] = time.perf_counter()

    def on_step(step: int) -> None:
        queued = time.perf_counter() - marks["t"]
        row: dict[str, Any] = {"step": step, "queue_ms": 1e3 * queued}
        if fake:
            by_file: dict[str, int] = {}
            for site, n in (fake.launches.sites or {}).items():
                by_file[site.split(":")[0]] = by_file.get(site.split(":")[0], 0) + n
            row.update(launches=fake.launches.total, kinds=dict(fake.launches.counts),
                       by_file=dict(sorted(by_file.items(), key=lambda kv: -kv[1])),
                       host_syncs=len(fake.syncs.sites), gets=fake.syncs.gets,
                       sites=sorted({str(s).rsplit("/npvit/", 1)[-1] for s in fake.syncs.sites}))
            fake.launches.reset()
            fake.syncs.reset()
        else:
            row["host_waited"] = queued > 0.08  # the spin takes about 0.1 s: queueing behind it means waiting
        rows.append(row)
        before_next()

    with tempfile.TemporaryDirectory(prefix="npvit-gpu-check-") as tmp:
        # Simulated, the Keras model sees 32x32 images (not 72x72): the same kernels, at a CPU's pace.
        settings = recipe_settings(recipe, batch, str(Path(tmp) / "run"), steps,
                                   32 if run.simulate and recipe == "keras" else None)
        if fake:
            fake.launches.sites = {}  # where each launch comes from: the per-file breakdown
            fake.launches.reset()
            fake.syncs.reset()
        before_next()
        try:
            status = train(settings, None, on_step=on_step)
        finally:
            if fake:
                fake.launches.sites = None
    if status != 0:
        raise RuntimeError(f"the {recipe} training run ended with status {status}")
    last = rows[-1]
    # The loop reads its running sums now and then (a CPU-slow step makes that every step here): that one
    # explicit read is the loop's, not the step's.
    result = {"recipe": recipe, "batch": batch, "per_step": rows}
    if fake:
        result.update(host_syncs=last["host_syncs"], launches=last["launches"], kinds=last["kinds"],
                      by_file=last["by_file"],
                      loop_reads=last["gets"])
    else:
        result.update(host_syncs=sum(r["host_waited"] for r in rows[1:]), launches=None)
    return result


def count_evaluation(run: Run, recipe: str, batch: int) -> dict[str, Any]:
    import npvit
    from npvit.data.augment import Augmenter
    from npvit.evaluate import evaluate
    from npvit.settings import model_config

    settings = recipe_settings(recipe, batch, "unused", 1)
    cfg = model_config(settings, 10)
    model = npvit.ViT(cfg, backend=run.backend, seed=1)
    aug = Augmenter(np.full(3, 120.0), np.full(3, 3600.0), image_size=cfg.image_size)
    x = np.random.default_rng(0).integers(0, 256, (3 * batch, 32, 32, 3), dtype=np.uint8)
    y = np.arange(3 * batch) % 10
    fake = run.fake
    if fake:
        fake.syncs.reset()
        fake.launches.reset()
    evaluate(model, aug, x, y, batch_size=batch, flip=bool(settings["eval_flip"]))
    out = {"batches": 3}
    if fake:
        out.update(host_syncs=len(fake.syncs.sites), reads=fake.syncs.gets, launches=fake.launches.total)
    return out


def s_steps(run: Run, sec: Section) -> None:
    batches = {"fast": 16, "keras": 8} if run.simulate else {"fast": 128, "keras": 256}
    steps: dict[str, Any] = {}
    for recipe, batch in batches.items():
        r = count_steps(run, recipe, batch, steps=2 if run.simulate else 3)
        r["evaluation"] = count_evaluation(run, recipe, batch)
        steps[recipe] = r
        sec.results["steps"] = {k: {"host_syncs": v["host_syncs"], "launches": v["launches"], "batch": v["batch"],
                                    "kinds": v.get("kinds"), "by_file": v.get("by_file"),
                                    "evaluation": v.get("evaluation")}
                                for k, v in steps.items()}
        run.write()
    sec.lines += ["| recipe | batch | host syncs per step | launches per step | by kind | evaluation pass |",
                  "|---|---:|---:|---:|---|---|"]
    for k, v in steps.items():
        e = v["evaluation"]
        sec.lines.append(f"| {k} | {v['batch']} | {v['host_syncs']} | {v['launches'] if v['launches'] is not None else 'n/a'}"
                         f" | {v.get('kinds') or ''} | {e} |")
    sec.lines += ["", "Host syncs: implicit reads inside the step (the loop's own read of the running sums, now and "
                  "then, is not one). Launches: kernels the fake CuPy counts (elementwise, reduction, matrix product, "
                  "copy, fused and raw kernels); a GPU run shows n/a."]
    limits = {"fast": 600, "keras": 900}
    syncs_ok = all(v["host_syncs"] == 0 for v in steps.values())
    launches_ok = all(v["launches"] is None or v["launches"] <= limits[k] for k, v in steps.items())
    sec.results["limits"] = limits
    sec.status = "passed" if syncs_ok and launches_ok else ("FAILED: host syncs" if not syncs_ok else
                                                           "measured: launches above the limits")


def model_and_batch(run: Run, preset: str, dtype: str, batch: int, seed: int = 3) -> tuple[Any, ...]:
    import dataclasses

    import npvit
    from npvit.config import PRESETS

    cfg = dataclasses.replace(PRESETS[preset](num_classes=10), dropout=0.0, attention_dropout=0.0,
                              head_dropout=0.0, drop_path=0.0)
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((batch, cfg.image_size, cfg.image_size, cfg.channels))
    y = rng.integers(0, 10, batch)
    return cfg, x, y


def loss_and_grads(model: Any, x: Any, y: Any) -> tuple[float, np.ndarray]:
    import npvit

    logits = model.forward(x, training=True)
    loss, cache = npvit.cross_entropy_forward(logits, y)
    model.grads.flat[...] = 0
    model.backward(npvit.cross_entropy_backward(cache))
    return float(model.backend.to_numpy(loss)), model.backend.to_numpy(model.grads.flat).astype(np.float64)


def s_correctness(run: Run, sec: Section) -> None:
    import npvit

    b = run.backend
    preset, batch = ("tiny", 4) if run.simulate else ("keras", 16)
    cfg, x, y = model_and_batch(run, preset, "float64", batch)
    ref = npvit.ViT(cfg, backend="numpy", dtype="float64", seed=3)
    ref_loss, ref_grads = loss_and_grads(ref, x, y)
    scale = np.abs(ref_grads).max()
    rows = {}
    for dtype, tf32, limit in (("float64", False, 1e-10), ("float32", False, 1e-4), ("float32", True, 1e-2)):
        in_use = b.set_tf32(tf32)
        model = npvit.ViT(cfg, backend=b, dtype=dtype, seed=3)
        loss, grads = loss_and_grads(model, b.asarray(x, dtype=dtype), b.asarray(y))
        err = float(np.abs(grads - ref_grads).max() / scale)
        rows[f"{dtype}{', TF32' if in_use else ''}"] = {"gradient_rel_error": err, "loss": loss, "limit": limit,
                                                         "ok": err <= limit}
    b.set_tf32(False)
    try:
        import torch

        if torch.cuda.is_available() and not run.simulate:
            from npvit.torch_reference import TorchViT

            tm = TorchViT.from_npvit(ref, dtype="float64", device="cuda")
            logits = tm(torch.as_tensor(x, device="cuda"))
            t_loss = torch.nn.functional.cross_entropy(logits, torch.as_tensor(y, device="cuda"))
            rows["PyTorch CUDA float64 loss"] = {"loss": float(t_loss), "rel_error": abs(float(t_loss) - ref_loss)
                                                 / abs(ref_loss), "ok": abs(float(t_loss) - ref_loss) <= 1e-10 * abs(ref_loss)}
        else:
            sec.lines.append("PyTorch has no CUDA here: the PyTorch comparison is left out.")
    except ImportError:
        sec.lines.append("PyTorch is not installed: the PyTorch comparison is left out.")
    sec.results["rows"] = rows
    sec.lines += [f"{preset} preset, batch {batch}, gradients against NumPy float64 (relative to the largest):", "",
                  "| run | error | limit | ok |", "|---|---:|---:|---|",
                  *[f"| {k} | {v.get('gradient_rel_error', v.get('rel_error')):.2e} | {v.get('limit', 1e-10):.0e} | "
                    f"{v['ok']} |" for k, v in rows.items()]]
    sec.status = "passed" if all(v["ok"] for v in rows.values()) else "FAILED"


def s_nccl(run: Run, sec: Section) -> None:
    from npvit.distributed import SingleProcess
    from npvit.distributed.nccl import NCCLCommunicator, load_nccl

    nccl = load_nccl()
    if nccl is None:
        sec.lines.append("CuPy has no NCCL here (pip install 'npvit[cuda13]' brings it).")
        sec.status = "skipped: no NCCL"
        return
    comm = NCCLCommunicator(SingleProcess(), nccl, run.backend.xp)
    a = run.backend.asarray(np.arange(1000, dtype=np.float32))
    comm.allreduce_sum(a)
    ok = bool(np.array_equal(run.backend.to_numpy(a), np.arange(1000, dtype=np.float32)))
    sec.lines.append(f"{comm.name}: one rank joined with a {type(nccl.get_unique_id()).__name__} id; allreduce of "
                     f"1000 float32 values {'exact' if ok else 'WRONG'}.")
    sec.results.update(name=comm.name, allreduce_ok=ok)
    sec.status = "passed" if ok else "FAILED"


def step_time(run: Run, preset: str, batch: int, tf32: bool, repeats: int) -> dict[str, Any]:
    import npvit

    b = run.backend
    b.set_tf32(tf32)
    cfg, x, y = model_and_batch(run, preset, "float32", batch)
    model = npvit.ViT(cfg, backend=b, seed=3)
    opt = npvit.AdamW(model.params)
    dx, dy = b.asarray(x, dtype="float32"), b.asarray(y)

    def step() -> None:
        logits = model.forward(dx, training=True)
        _, cache = npvit.cross_entropy_forward(logits, dy)
        model.backward(npvit.cross_entropy_backward(cache))
        opt.step(model.grads)

    times = []
    for i in range(repeats + 1):
        b.synchronize()
        start = time.perf_counter()
        step()
        b.synchronize()
        if i:
            times.append(time.perf_counter() - start)
    ms = 1e3 * statistics.median(times)
    row = {"preset": preset, "batch": batch, "tf32": tf32, "npvit_ms": ms, "npvit_images_per_s": batch / ms * 1e3}
    try:
        import torch

        if torch.cuda.is_available() and not run.simulate:
            from npvit.torch_reference import TorchViT

            torch.backends.cuda.matmul.allow_tf32 = tf32
            tm = TorchViT.from_npvit(model, device="cuda")
            topt = torch.optim.AdamW(tm.parameters(), lr=1e-3)
            tx, ty = torch.as_tensor(x, dtype=torch.float32, device="cuda"), torch.as_tensor(y, device="cuda")
            ttimes = []
            for i in range(repeats + 1):
                torch.cuda.synchronize()
                start = time.perf_counter()
                topt.zero_grad(set_to_none=True)
                torch.nn.functional.cross_entropy(tm(tx), ty).backward()
                topt.step()
                torch.cuda.synchronize()
                if i:
                    ttimes.append(time.perf_counter() - start)
            row["torch_ms"] = 1e3 * statistics.median(ttimes)
    except ImportError:
        pass
    b.set_tf32(False)
    return row


def s_speed(run: Run, sec: Section) -> None:
    cases = ([("tiny", 8, False)] if run.simulate else
             [(p, n, t) for p, sizes in (("keras", (256, 1024)), ("fast", (128, 512))) for n in sizes
              for t in (False, True)])
    rows = []
    sec.lines += ["| preset | batch | TF32 | npvit ms | images/s | PyTorch eager ms |", "|---|---:|---|---:|---:|---:|"]
    for preset, batch, tf32 in cases:
        r = step_time(run, preset, batch, tf32, repeats=1 if run.simulate else 5)
        rows.append(r)
        sec.lines.append(f"| {preset} | {batch} | {tf32} | {r['npvit_ms']:.1f} | {r['npvit_images_per_s']:.0f} | "
                         f"{r.get('torch_ms', float('nan')):.1f} |")
        sec.results["rows"] = rows
        run.write()
    sec.status = "measured"


def s_colsum(run: Run, sec: Section) -> None:
    from npvit.backend import column_sum

    b = run.backend
    rows = []
    shapes = [(64, 64)] if run.simulate else [(128 * 65, c) for c in (64, 128, 256)] + [(256 * 145, 64)]
    for n, c in shapes:
        x = b.asarray(np.random.default_rng(0).standard_normal((n, c)), dtype="float32")
        timings = {}
        for name, fn in (("one reduction", lambda: x.sum(axis=0)), ("two-stage", lambda: column_sum(x))):
            fn()
            b.synchronize()
            start = time.perf_counter()
            for _ in range(20):
                fn()
            b.synchronize()
            timings[name] = 1e6 * (time.perf_counter() - start) / 20
        same = float(np.abs(b.to_numpy(x.sum(axis=0)) - b.to_numpy(column_sum(x))).max())
        rows.append({"rows": n, "columns": c, "us": timings, "max_difference": same})
    sec.results["rows"] = rows
    sec.lines += ["| (rows, columns) | one reduction (us) | two-stage (us) | max difference |", "|---|---:|---:|---:|",
                  *[f"| ({r['rows']}, {r['columns']}) | {r['us']['one reduction']:.1f} | {r['us']['two-stage']:.1f} |"
                    f" {r['max_difference']:.1e} |" for r in rows]]
    sec.status = "measured"


def s_tests(run: Run, sec: Section) -> None:
    target = ["tests/backend/test_fake_device.py"] if run.simulate else ["-k", "cupy or gpu_path", "tests"]
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *target]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    limit = max(5.0, run.remaining())
    try:
        p = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=limit)
        text, rc = p.stdout + p.stderr, p.returncode
    except subprocess.TimeoutExpired as exc:
        text, rc = (exc.stdout or b"").decode() if isinstance(exc.stdout, bytes) else (exc.stdout or ""), 124
    (run.out / "tests.txt").write_text(text[-200_000:])
    last = text.strip().splitlines()[-1] if text.strip() else "(no output)"
    sec.lines.append(f"`{' '.join(cmd[2:])}`: {last} (whole output in tests.txt)")
    sec.results.update(rc=rc, summary=last)
    sec.status = "passed" if rc == 0 else ("timed out" if rc == 124 else "FAILED")


SECTION_FUNCTIONS: dict[str, Callable[[Run, Section], None]] = {
    "environment": s_environment, "selftest": s_selftest, "steps": s_steps, "correctness": s_correctness,
    "nccl": s_nccl, "speed": s_speed, "colsum": s_colsum, "tests": s_tests}


# --------------------------------------------------------------------------------------- kernel cache
def unpack_cache(archive: Path, cache_dir: Path) -> int:
    """Unpack a kernel-cache archive (plain files only, nothing outside ``cache_dir``); returns files."""
    cache_dir.mkdir(parents=True, exist_ok=True)
    count = 0
    with tarfile.open(archive, "r:gz") as tar:
        for member in tar.getmembers():
            target = (cache_dir / member.name).resolve()
            if not member.isfile() or not str(target).startswith(str(cache_dir.resolve()) + os.sep):
                continue
            target.parent.mkdir(parents=True, exist_ok=True)
            with tar.extractfile(member) as src:  # type: ignore[union-attr]
                target.write_bytes(src.read())
            count += 1
    return count


def pack_cache(cache_dir: Path, out: Path) -> int:
    from npvit.files import atomic_write

    files = [p for p in cache_dir.rglob("*") if p.is_file()] if cache_dir.is_dir() else []

    def write(f: Any) -> None:
        with tarfile.open(fileobj=f, mode="w:gz") as tar:
            for p in files:
                tar.add(p, arcname=str(p.relative_to(cache_dir)))

    atomic_write(out / "kernel-cache.tar.gz", write)
    return len(files)


# ---------------------------------------------------------------------------------------------- main
def default_out() -> Path:
    if os.environ.get("OUT"):
        return Path(os.environ["OUT"])
    return ROOT / "benchmarks" / "results" / f"{datetime.now():%Y-%m-%d-%H%M}-gpu-check"


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, help="output folder (default $OUT, else benchmarks/results/<date>-gpu-check)")
    parser.add_argument("--budget", type=float, default=300.0, help="seconds all sections share (default 300)")
    parser.add_argument("--kernel-cache", type=Path, help="a kernel-cache.tar.gz of an earlier run: start warm")
    parser.add_argument("--simulate", action="store_true", help="run every section on the test suite's fake CuPy")
    parser.add_argument("--skip", default="", help=f"comma-separated sections to leave out, of {', '.join(SECTIONS)}")
    args = parser.parse_args(argv)
    skip = {s.strip() for s in args.skip.split(",") if s.strip()}
    if skip - set(SECTIONS):
        parser.error(f"unknown section(s) {sorted(skip - set(SECTIONS))}; choose from {', '.join(SECTIONS)}")
    if args.budget <= 0:
        parser.error("--budget must be a positive number of seconds")
    if args.kernel_cache is not None and not args.kernel_cache.is_file():
        parser.error(f"--kernel-cache {args.kernel_cache}: no such file")
    out = args.out or default_out()
    run = Run(out, args.simulate, args.budget, command="python benchmarks/gpu_check.py " + " ".join(argv))

    cache_dir = Path(os.environ.setdefault("CUPY_CACHE_DIR", str(Path(tempfile.gettempdir()) / "npvit-cupy-cache")))
    if args.kernel_cache is not None:
        print(f"gpu_check: {unpack_cache(args.kernel_cache, cache_dir)} cached kernels unpacked", flush=True)
    from npvit.backend import BackendUnavailableError, get_backend

    if args.simulate:
        run.fake = load_fake()
    try:
        run.backend = get_backend("cupy")
    except BackendUnavailableError as exc:
        print(f"gpu_check: no usable GPU here, nothing to check. {exc}", file=sys.stderr)
        return 2
    out.mkdir(parents=True, exist_ok=True)
    hang = open(out / "faulthandler.txt", "w")
    faulthandler.enable(hang)
    faulthandler.dump_traceback_later(args.budget + 60, repeat=False, file=hang)
    for name in SECTIONS:
        sec = Section(name)
        run.sections.append(sec)
        if name in skip:
            sec.status = "skipped (--skip)"
            run.write()
            continue
        limit = min(SHARES[name] * args.budget, run.remaining())
        if limit < 1:
            sec.status = "skipped (out of budget)"
            run.write()
            continue
        print(f"gpu_check: {name} (at most {limit:.0f} s) ...", flush=True)
        start = time.perf_counter()
        try:
            with time_limit(limit):
                SECTION_FUNCTIONS[name](run, sec)
        except SectionTimeout as exc:
            sec.status = f"timed out ({exc})"
        except Exception as exc:  # one section's failure is a finding of the report, not the end of the run
            sec.status = "FAILED"
            sec.lines += ["```", *traceback.format_exception_only(type(exc), exc), "```"]
            sec.results["error"] = f"{type(exc).__name__}: {exc}"
        sec.seconds = time.perf_counter() - start
        if name == "steps" or name == SECTIONS[-1]:
            pack_cache(cache_dir, out)
        run.write()
        print(f"gpu_check: {name}: {sec.status} ({sec.seconds:.1f} s)", flush=True)
    pack_cache(cache_dir, out)
    faulthandler.cancel_dump_traceback_later()
    faulthandler.disable()
    hang.close()
    files = [p.name for p in out.iterdir()]
    assert len(files) <= MAX_FILES, files
    print(f"gpu_check: report in {out / 'report.md'}", flush=True)
    good = ("passed", "measured", "skipped")
    return 0 if all(s.status.startswith(good) for s in run.sections) else 1


if __name__ == "__main__":
    sys.exit(main())

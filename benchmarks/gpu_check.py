"""What to run first on a new GPU: does npvit's CuPy path work there, is it exact, and how fast is it?

    python benchmarks/gpu_check.py                          # everything: under 10 minutes on one GPU
    python benchmarks/gpu_check.py --out report.md --skip kernels,tests

One markdown report (default ``benchmarks/results/<date>-gpu-check.md``) with the GPU, driver, CUDA and CuPy
versions and one section per step. Each step has a time limit; a step that fails or runs out of time is
reported as such and the others still run. Steps (``--skip`` takes their names):

* ``checks``: TF32 really switches (the relative error of a float32 batched and a 2-D product against float64,
  TF32 off and on: about 1e-7 off, about 1e-3 on), and a fingerprint of the Philox draws of a fixed seed
  (compare it between GPUs: equal fingerprints mean the random streams do not depend on the GPU model).
* ``tests``: the test suite's CuPy cases (``pytest -k cupy``) and the GPU-path tests, on this GPU.
* ``step``: one training step of the Keras preset at batch 256 (float32), median of a few: forward, loss,
  backward and AdamW each timed between device synchronisations, then whole steps with a single
  synchronisation at the end (images/s), and how long Python takes to queue a step: when queueing takes
  about as long as the step, the GPU waits on Python (launch overhead or a hidden host synchronisation).
* ``resume``: a short training run, and the same run interrupted (``--max-steps k``) and resumed: the final
  weights and optimizer state must be bit-identical.
* ``kernels``: ``benchmarks/run.py --backend cupy --sections kernels`` against PyTorch CUDA, TF32 off and on
  (needs torch with CUDA for the comparison column).

Without a usable GPU it stops at once with the reason (exit status 2).
"""

from __future__ import annotations

import argparse
import hashlib
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Callable

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import npvit  # noqa: E402
from npvit.backend import PHILOX_STATES, Backend, BackendUnavailableError, _env_tf32, get_backend  # noqa: E402
from npvit.config import PRESETS  # noqa: E402

STEPS = ("checks", "tests", "step", "resume", "kernels")
TOTAL_SECONDS = 570
# The kernel table comes from the benchmark suite's command line, the one interface of it this script uses.
KERNEL_TABLE = [sys.executable, str(ROOT / "benchmarks" / "run.py"), "--backend", "cupy", "--sections", "kernels",
                "--quick", "--no-memory"]


@dataclass
class Section:
    """One step's outcome: a status line and markdown lines for the report."""

    name: str
    status: str = "not run"
    seconds: float = 0.0
    lines: list[str] = field(default_factory=list)


# ------------------------------------------------------------------------------------------- environment
def environment(backend: Backend) -> dict[str, str]:
    """GPU, compute capability, driver, CUDA runtime and library versions."""
    cp = backend.xp
    device = cp.cuda.Device()
    props = cp.cuda.runtime.getDeviceProperties(device.id)
    name = props["name"].decode() if isinstance(props["name"], bytes) else str(props["name"])

    def cuda_version(v: int) -> str:
        return f"{v // 1000}.{v % 1000 // 10}"

    env = {
        "GPU": f"{name} (compute capability {device.compute_capability[:-1]}.{device.compute_capability[-1]}, "
               f"{props.get('multiProcessorCount', '?')} SMs, {props.get('totalGlobalMem', 0) / 2**30:.0f} GiB)",
        "driver": f"CUDA {cuda_version(cp.cuda.runtime.driverGetVersion())}" + _nvidia_smi_driver(),
        "CUDA runtime": cuda_version(cp.cuda.runtime.runtimeGetVersion()),
        "CuPy": cp.__version__,
        "NumPy": np.__version__,
        "npvit": npvit.__version__,
        "Python": platform.python_version(),
        "host": f"{platform.machine()}, {os.cpu_count()} logical CPUs",
    }
    try:
        import torch

        env["PyTorch"] = f"{torch.__version__} (CUDA {torch.version.cuda}, available: {torch.cuda.is_available()})"
    except ImportError:
        env["PyTorch"] = "not installed (the kernel table has no comparison column)"
    return env


def _nvidia_smi_driver() -> str:
    if shutil.which("nvidia-smi") is None:
        return ""
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=20).stdout.strip().splitlines()
    except (OSError, subprocess.SubprocessError):
        return ""
    return f", driver {out[0]}" if out else ""


# ------------------------------------------------------------------------------------------------ checks
def tf32_check(backend: Backend, size: int = 256) -> list[dict[str, Any]]:
    """Relative error (max |got - exact| / max |exact|) of float32 products against float64, TF32 off and on:
    a batched (8, size, size) product, which TF32 reaches through the cuBLAS math mode, and a 2-D one, which
    it reaches through CuPy's compute type. Restores the setting CUPY_TF32 asks for."""
    rng = np.random.default_rng(0)
    a, b = rng.standard_normal((2, 8, size, size))
    exact = a.astype(np.float32).astype(np.float64) @ b.astype(np.float32).astype(np.float64)
    da, db = backend.asarray(a, dtype="float32"), backend.asarray(b, dtype="float32")
    rows = []
    try:
        for enabled in (False, True):
            in_use = backend.set_tf32(enabled)
            batched = backend.to_numpy(backend.xp.matmul(da, db))
            flat = backend.to_numpy(da[0] @ db[0])
            rows.append({"asked": enabled, "in_use": in_use,
                         "batched": float(np.abs(batched - exact).max() / np.abs(exact).max()),
                         "2-D": float(np.abs(flat - exact[0]).max() / np.abs(exact[0]).max())})
    finally:
        backend.set_tf32(_env_tf32())  # what the backend applied when it loaded
    return rows


def tf32_verdict(rows: list[dict[str, Any]]) -> tuple[bool, str]:
    off, on = rows
    ok = off["batched"] < 1e-5 and off["2-D"] < 1e-5
    if on["in_use"]:
        ok = ok and on["batched"] > 1e-4 and on["2-D"] > 1e-4
        return ok, "off: float32 accuracy; on: TF32 accuracy in both kinds of product" if ok else \
            "TF32 does not switch as Backend.set_tf32 says (see the table)"
    return ok, "this GPU has no TF32 (compute capability below 8.0): products stay float32"


def rng_fingerprint(backend: Backend, seed: int = 1234, count: int = 1 << 20) -> dict[str, Any]:
    """SHA-256 (first 16 hex digits) of ``count`` float32 draws of ``backend.rng(seed)``, and whether a second
    generator of the same seed repeats them."""
    first = backend.to_numpy(backend.rng(seed).random(count, dtype="float32"))
    again = backend.to_numpy(backend.rng(seed).random(count, dtype="float32"))
    return {"sha256": hashlib.sha256(first.tobytes()).hexdigest()[:16], "first": first[:3].tolist(),
            "repeatable": bool(np.array_equal(first, again)), "states": PHILOX_STATES, "count": count}


def run_checks(backend: Backend, section: Section) -> None:
    rows = tf32_check(backend)
    ok, verdict = tf32_verdict(rows)
    section.lines += ["TF32 (`Backend.set_tf32`): relative error of float32 products against float64.", "",
                      "| TF32 asked | in use | batched (8x256x256) | 2-D (256x256) |", "|---|---|---:|---:|"]
    section.lines += [f"| {r['asked']} | {r['in_use']} | {r['batched']:.2e} | {r['2-D']:.2e} |" for r in rows]
    section.lines += ["", f"Verdict: {verdict}.", ""]
    fp = rng_fingerprint(backend)
    section.lines += [f"Philox draws, seed 1234, {fp['count']:,} float32 values, {fp['states']:,} states: "
                      f"fingerprint `{fp['sha256']}`, first values {fp['first']}; repeatable: {fp['repeatable']}. "
                      "The same fingerprint on another GPU model means the same random streams there."]
    section.status = "passed" if ok and fp["repeatable"] else "FAILED"


# ------------------------------------------------------------------------------------------------- tests
def run_tests(section: Section, timeout: float) -> None:
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-k", "cupy or gpu_path",
           str(ROOT / "tests")]
    result = _run(cmd, timeout)
    summary = result["tail"].strip().splitlines()[-1:] if result["tail"].strip() else ["(no output)"]
    section.lines += [f"`{' '.join(cmd[1:])}`: {summary[0]}", ""]
    if result["rc"] != 0:
        section.lines += ["```", *result["tail"].splitlines()[-40:], "```"]
    section.status = "passed" if result["rc"] == 0 else ("timed out" if result["timed_out"] else "FAILED")


# -------------------------------------------------------------------------------------------------- step
def step_breakdown(backend: Backend, preset: str = "keras", batch: int = 256, repeats: int = 5,
                   num_classes: int = 100) -> dict[str, float]:
    """Median milliseconds of each phase of a training step (synchronised around each phase), of a whole
    step synchronised once at its end, and of queueing a step (no synchronisation); and images/s."""
    cfg = PRESETS[preset](num_classes=num_classes)
    model = npvit.ViT(cfg, backend=backend)
    opt = npvit.AdamW(model.params)
    rng = np.random.default_rng(0)
    images = backend.asarray(rng.standard_normal((batch, cfg.image_size, cfg.image_size, cfg.channels)),
                             dtype="float32")
    labels = backend.asarray(rng.integers(0, cfg.num_classes, batch))
    state: dict[str, Any] = {}

    def forward() -> None:
        state["logits"] = model.forward(images, training=True)

    def loss() -> None:
        state["cache"] = npvit.cross_entropy_forward(state["logits"], labels)[1]

    def backward() -> None:
        model.backward(npvit.cross_entropy_backward(state["cache"]))

    def adamw() -> None:
        opt.step(model.grads)

    phases: dict[str, Callable[[], None]] = {"forward": forward, "loss": loss, "backward": backward,
                                             "AdamW": adamw}
    times: dict[str, list[float]] = {name: [] for name in [*phases, "step", "queue"]}
    for i in range(repeats + 1):  # the first round warms up (kernel compilation, memory pool)
        for name, fn in phases.items():
            backend.synchronize()
            start = time.perf_counter()
            fn()
            backend.synchronize()
            if i:
                times[name].append(time.perf_counter() - start)
        backend.synchronize()
        start = time.perf_counter()
        for fn in phases.values():
            fn()
        queued = time.perf_counter() - start
        backend.synchronize()
        if i:
            times["queue"].append(queued)
            times["step"].append(time.perf_counter() - start)
    result = {name: 1e3 * statistics.median(values) for name, values in times.items()}
    result["images_per_s"] = batch / (result["step"] / 1e3)
    return result


def run_step(backend: Backend, section: Section, preset: str, batch: int) -> None:
    r = step_breakdown(backend, preset, batch)
    section.lines += [f"{preset} preset, batch {batch}, float32, median of 5 after one warm-up:", "",
                      "| forward | loss | backward | AdamW | step | queueing a step | images/s |",
                      "|---:|---:|---:|---:|---:|---:|---:|",
                      f"| {r['forward']:.1f} ms | {r['loss']:.2f} ms | {r['backward']:.1f} ms | {r['AdamW']:.1f} ms "
                      f"| {r['step']:.1f} ms | {r['queue']:.1f} ms | {r['images_per_s']:.0f} |", ""]
    share = r["queue"] / r["step"]
    section.lines.append(f"Queueing takes {100 * share:.0f}% of the step: "
                         + ("the GPU waits on Python (launch overhead or a host synchronisation inside the step)."
                            if share > 0.8 else "the GPU, not Python, sets the pace."))
    section.status = "measured"


# ------------------------------------------------------------------------------------------------ resume
def resume_check(backend_name: str, workdir: Path, steps: int = 6, preset: str = "small", batch: int = 32,
                 timeout: float = 240.0) -> tuple[bool, str]:
    """Train ``steps`` steps in one go, and ``steps // 2`` then resume to ``steps``; compare the checkpoints.
    Returns (identical, what differed or a summary)."""
    from npvit.checkpoint import load_checkpoint

    base = [sys.executable, "-m", "npvit.train", "--dataset", "synthetic", "--synthetic-size", "256,32",
            "--preset", preset, "--batch-size", str(batch), "--epochs", "10", "--backend", backend_name,
            "--quiet"]
    runs = [base + ["--max-steps", str(steps), "--out", str(workdir / "straight")],
            base + ["--max-steps", str(steps // 2), "--out", str(workdir / "resumed")],
            [sys.executable, "-m", "npvit.train", "--resume", str(workdir / "resumed"), "--max-steps", str(steps),
             "--quiet"]]
    deadline = time.monotonic() + timeout
    for cmd in runs:
        result = _run(cmd, max(1.0, deadline - time.monotonic()))
        if result["rc"] != 0:
            return False, f"`{' '.join(cmd[1:])}` failed:\n```\n{result['tail'][-2000:]}\n```"
    a = load_checkpoint(workdir / "straight" / "last.npz")
    b = load_checkpoint(workdir / "resumed" / "last.npz")
    differ = [f"param/{k}" for k in a.params if not np.array_equal(a.params[k], b.params[k])]
    differ += [f"opt/{k}" for k in a.optimizer if not np.array_equal(a.optimizer[k], b.optimizer[k])]
    if differ:
        worst = max((float(np.abs(a.params[k[6:]] - b.params[k[6:]]).max()) for k in differ
                     if k.startswith("param/")), default=0.0)
        return False, f"{len(differ)} arrays differ (largest parameter difference {worst:.3e}): {differ[:5]}"
    return True, (f"{steps} steps straight vs {steps // 2} + resumed {steps - steps // 2} ({preset} preset, batch "
                  f"{batch}, synthetic data): all {len(a.params)} parameters and {len(a.optimizer)} optimizer "
                  "arrays bit-identical")


def run_resume(backend: Backend, section: Section, timeout: float) -> None:
    with tempfile.TemporaryDirectory(prefix="npvit-gpu-check-") as tmp:
        ok, text = resume_check(backend.name, Path(tmp), timeout=timeout)
    section.lines.append(text)
    section.status = "passed" if ok else "FAILED"


# ----------------------------------------------------------------------------------------------- kernels
def run_kernels(section: Section, timeout: float) -> None:
    statuses = []
    for tf32 in (False, True):
        with tempfile.TemporaryDirectory(prefix="npvit-gpu-check-") as tmp:
            cmd = KERNEL_TABLE + ["--json", str(Path(tmp) / "kernels.json")] + (["--tf32"] if tf32 else [])
            result = _run(cmd, timeout / 2)
        shown = ["python", "benchmarks/run.py", *KERNEL_TABLE[2:], *(["--tf32"] if tf32 else [])]
        section.lines += [f"### TF32 {'on' if tf32 else 'off'}: `{' '.join(shown)}`", ""]
        table = _benchmark_sections(result["out"])
        section.lines += table if table else ["```", *result["tail"].splitlines()[-30:], "```"]
        section.lines.append("")
        statuses.append("timed out" if result["timed_out"] else ("measured" if result["rc"] == 0 else "FAILED"))
    section.status = "measured" if statuses == ["measured"] * 2 else ", ".join(statuses)


def _benchmark_sections(text: str) -> list[str]:
    """The sections of a benchmark printout: from its first "## " heading (made a level-4 heading here) to the
    closing "Load average" / "Results written" lines, which are left out."""
    out: list[str] = []
    for line in text.splitlines():
        if line.startswith(("Load average at the end", "Results written")):
            break
        if line.startswith("## "):
            line = "#### " + line[3:]
        if out or line.startswith("#### "):
            out.append(line)
    return out


# ------------------------------------------------------------------------------------------------ report
def _run(cmd: list[str], timeout: float) -> dict[str, Any]:
    """Run a command from the repository root with npvit importable; never raises for its failure."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]).rstrip(
        os.pathsep))
    try:
        p = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
        return {"rc": p.returncode, "out": p.stdout, "tail": (p.stdout + p.stderr)[-20000:], "timed_out": False}
    except subprocess.TimeoutExpired as exc:
        out = exc.stdout.decode() if isinstance(exc.stdout, bytes) else (exc.stdout or "")
        return {"rc": 124, "out": out, "tail": out[-20000:] + f"\n(timed out after {timeout:.0f} s)",
                "timed_out": True}


def render(env: dict[str, str], sections: list[Section], command: str) -> str:
    lines = ["# npvit GPU check", "", f"- date: {datetime.now().astimezone().isoformat(timespec='seconds')}",
             f"- command: `{command}`", *[f"- {k}: {v}" for k, v in env.items()], "",
             "| step | status | seconds |", "|---|---|---:|",
             *[f"| {s.name} | {s.status} | {s.seconds:.0f} |" for s in sections], ""]
    for s in sections:
        lines += [f"## {s.name}", "", *s.lines, ""]
    return "\n".join(lines).rstrip() + "\n"


def write_atomic(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", help="report path (default benchmarks/results/<date>-gpu-check.md)")
    parser.add_argument("--skip", default="", help=f"comma-separated steps to leave out, of {', '.join(STEPS)}")
    parser.add_argument("--preset", default="keras", choices=sorted(PRESETS), help="model of the step timing")
    parser.add_argument("--batch", type=int, default=256, help="batch of the step timing (default 256)")
    args = parser.parse_args(argv)
    skip = {s.strip() for s in args.skip.split(",") if s.strip()}
    if skip - set(STEPS):
        parser.error(f"unknown step(s) {sorted(skip - set(STEPS))}; choose from {', '.join(STEPS)}")

    try:
        backend = get_backend("cupy")
    except BackendUnavailableError as exc:
        print(f"gpu_check: no usable GPU here, nothing to check. {exc}", file=sys.stderr)
        return 2
    env = environment(backend)
    print("\n".join(f"{k}: {v}" for k, v in env.items()), flush=True)
    # Seconds each step may take at most; all together they stay within TOTAL_SECONDS, so the check ends in
    # under 10 minutes (the in-process steps, checks and step, are short and are not interrupted).
    deadline = time.monotonic() + TOTAL_SECONDS
    limits = {"tests": 200.0, "resume": 90.0, "kernels": 200.0}

    def limit(name: str) -> float:
        return min(limits[name], deadline - time.monotonic())

    jobs: dict[str, Callable[[Section], None]] = {
        "checks": lambda s: run_checks(backend, s),
        "tests": lambda s: run_tests(s, limit("tests")),
        "step": lambda s: run_step(backend, s, args.preset, args.batch),
        "resume": lambda s: run_resume(backend, s, limit("resume")),
        "kernels": lambda s: run_kernels(s, limit("kernels")),
    }
    sections = []
    for name in STEPS:
        section = Section(name)
        sections.append(section)
        if name in skip:
            section.status = "skipped (--skip)"
            continue
        if deadline - time.monotonic() < 20:
            section.status = "skipped (out of time)"
            continue
        print(f"gpu_check: {name} ...", flush=True)
        start = time.perf_counter()
        try:
            jobs[name](section)
        except Exception as exc:  # one step's failure is a finding of the report, not the end of the check
            section.status = "FAILED"
            section.lines.append(f"{type(exc).__name__}: {exc}")
        section.seconds = time.perf_counter() - start
        print(f"gpu_check: {name}: {section.status} ({section.seconds:.0f} s)", flush=True)
    out = Path(args.out) if args.out else ROOT / "benchmarks" / "results" / \
        f"{datetime.now():%Y-%m-%d}-gpu-check.md"
    write_atomic(out, render(env, sections, "python benchmarks/gpu_check.py " + " ".join(argv)))
    print(f"gpu_check: report written to {out}")
    return 0 if all(s.status in ("passed", "measured") or s.status == "skipped (--skip)" for s in sections) else 1


if __name__ == "__main__":
    sys.exit(main())

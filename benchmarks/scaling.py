"""Data-parallel scaling: 1 process x T threads against P processes x 1 thread here, and a model for N nodes.

    python benchmarks/scaling.py                                  # Keras preset, global batch 256: 1x2 and 2x1
    python benchmarks/scaling.py --preset small --batch 128 --steps 5 --rounds 2
    python benchmarks/scaling.py --allreduce-only                 # raw MPI Allreduce of the gradient's size
    python benchmarks/scaling.py --project-step 1.38,1.96,0.067   # project a step measured elsewhere
    python benchmarks/scaling.py --from benchmarks/results/scaling.json   # the tables again, no measuring

**Measured on this machine.** Each layout runs in fresh processes with its thread variables set before NumPy
loads: one process with ``threads`` shards (npvit's own threads), or ``mpiexec -n P`` processes of one
thread each. Every process builds the same model (same seed) and the same global batch, takes its disjoint
slice of the batch (``npvit.distributed.rank_slice``, as the trainer's step does; its dropout masks keyed
by the global index of its first image, so the masks are the single process's), and times steps of forward,
loss, backward, a sum of the flat float32 gradient buffer (``model.grads.flat``) over the processes (one MPI
Allreduce in place, the loss gradient scaled by local / global batch so that the sum is the gradient of the
global mean loss), and AdamW. Per phase the table gives the slowest rank's time, median over the steps after
one warm-up; "allreduce alone" is the same Allreduce again with the ranks lined up by a barrier: the transfer
without waiting for the slower rank. Rounds alternate the layouts.

**Projected to N nodes** (``project``): a node is this machine running the 1-process layout; each step pays
its compute (forward, loss, backward, proportional to the images it holds), AdamW over every parameter (every
rank runs it whole), and a ring allreduce of the gradient, whose bandwidth term is 2 (N - 1) / N x bytes /
bandwidth (``ring_allreduce_s``). Printed for 1 to 64 nodes at 10 and 100 Gbit/s, with the global batch
split over the nodes (``--batch-size`` stays the global batch) and with the batch per node held, and for the
levers that move the point where scaling stops (bucketed allreduce overlapped with the backward, float16
gradients, the head on the pooled token instead of all tokens, AdamW sharded over the ranks).
``benchmarks/NOTES.md`` ("Scaling out") has the numbers and what they mean.

The processes talk through mpi4py directly (``pip install -e '.[mpi]'`` or mpi4py and an MPI); the single
process never imports it. Once ``mpiexec -n N python -m npvit.train`` trains data-parallel, its
communicator and step replace ``Mpi`` and ``data_parallel_step`` below, so the same measurement times the
trainer's own code path.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, replace
from datetime import datetime
from pathlib import Path
from typing import Any

HERE = Path(os.path.abspath(__file__)).parent
ROOT = HERE.parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))  # the suite package
if str(ROOT) not in sys.path:
    sys.path.append(str(ROOT))  # npvit, where it is not installed

from suite.threads import THREAD_VARS, default_threads  # noqa: E402  (imports nothing heavy)

GBIT = 1e9  # bits per second in one Gbit/s
NODES = (1, 2, 4, 8, 16, 32, 64)
BANDWIDTHS_GBIT = (10.0, 100.0)
STOP_EFFICIENCY = 0.5  # "stops scaling": the efficiency falls below this


# ============================================================================================ cost model
@dataclass(frozen=True)
class StepCost:
    """One node's measured training step: what the projection scales.

    ``compute_s`` (forward, loss and backward of ``batch`` images) scales with the images a node holds;
    ``optimizer_s`` (AdamW) does not: every rank updates every parameter. ``backward_s`` (part of
    ``compute_s``) is the window a bucketed allreduce can overlap, times ``overlap_share``, the share of the
    backward that runs after the first bucket of gradients is ready.
    """

    batch: int
    compute_s: float
    backward_s: float
    optimizer_s: float
    gradient_bytes: float
    overlap_share: float = 0.0


def ring_allreduce_s(nbytes: float, nodes: int, gbit_per_s: float) -> float:
    """Bandwidth term of a ring allreduce of ``nbytes`` over ``nodes``: each node sends (and receives)
    2 (N - 1) / N x bytes (a reduce-scatter, then an all-gather, of N - 1 chunks of bytes / N each).
    The latency term, 2 (N - 1) messages, is left out: ~25 us each, 3 ms at 64 nodes."""
    return 2 * (nodes - 1) / nodes * nbytes * 8 / (gbit_per_s * GBIT)


def project(cost: StepCost, nodes: int, gbit_per_s: float, batch_per_node: float, *,
            gradient_scale: float = 1.0, overlap: bool = False, shard_optimizer: bool = False) -> dict[str, float]:
    """Step time, images/s and scaling efficiency of ``nodes`` nodes holding ``batch_per_node`` images each.

        compute(N)   = compute_s x batch_per_node / batch
        allreduce(N) = 2 (N - 1) / N x gradient_bytes x gradient_scale / bandwidth
        exposed(N)   = allreduce(N) - min(allreduce(N), overlap_share x backward_s x batch_per_node / batch)
                       with ``overlap`` (bucketed allreduce running beside the backward), else allreduce(N)
        step(N)      = compute(N) + optimizer_s / (N if shard_optimizer else 1) + exposed(N)
        images/s     = N x batch_per_node / step(N)
        efficiency   = images/s / (N x batch / (compute_s + optimizer_s))   (against N ideal copies of the
                       measured node: 1 at N = 1 for the measured batch)

    ``gradient_scale`` multiplies the bytes (0.5: float16 gradients). Compute proportional to the images
    held is optimistic for small batches per node (per-call overheads, smaller matrix products).
    """
    fraction = batch_per_node / cost.batch
    allreduce = ring_allreduce_s(cost.gradient_bytes * gradient_scale, nodes, gbit_per_s)
    hidden = min(allreduce, cost.overlap_share * cost.backward_s * fraction) if overlap else 0.0
    optimizer = cost.optimizer_s / (nodes if shard_optimizer else 1)
    step = cost.compute_s * fraction + optimizer + allreduce - hidden
    images_per_s = nodes * batch_per_node / step
    ideal = nodes * cost.batch / (cost.compute_s + cost.optimizer_s)
    return {"nodes": nodes, "batch_per_node": batch_per_node, "step_s": step, "allreduce_s": allreduce,
            "exposed_allreduce_s": allreduce - hidden, "images_per_s": images_per_s,
            "efficiency": images_per_s / ideal}


def stop_point(cost: StepCost, gbit_per_s: float, global_batch: int, max_nodes: int = 4096,
               **levers: Any) -> int | None:
    """The most nodes (powers of two) at which the global batch split over them keeps ``STOP_EFFICIENCY``;
    None when not even one node does (never with the measured step)."""
    best = None
    nodes = 1
    while nodes <= min(max_nodes, global_batch):
        if project(cost, nodes, gbit_per_s, global_batch / nodes, **levers)["efficiency"] < STOP_EFFICIENCY:
            break
        best, nodes = nodes, nodes * 2
    return best


def ceiling_images_per_s(cost: StepCost, gbit_per_s: float, global_batch: int, **levers: Any) -> float:
    """Images/s as N grows without bound with the global batch split: compute -> 0, allreduce -> 2 x bytes /
    bandwidth (an upper bound: a node holds at least one image, so its compute never reaches zero)."""
    big = 1 << 30
    return global_batch / (project(cost, big, gbit_per_s, global_batch / big, **levers)["step_s"])


LEVERS: tuple[tuple[str, dict[str, Any]], ...] = (
    ("none: one allreduce after the backward", {}),
    ("bucketed allreduce overlapped with the backward", {"overlap": True}),
    ("float16 gradients (half the bytes)", {"gradient_scale": 0.5}),
    ("head on the pooled token (--pool gap)", {"head": "gap"}),
    ("AdamW sharded over the ranks (reduce-scatter + all-gather)", {"shard_optimizer": True}),
    ("all four", {"overlap": True, "gradient_scale": 0.5, "head": "gap", "shard_optimizer": True}),
)


# ================================================================================= the measured processes
class Mpi:
    """The few collectives the measurement needs, on mpi4py's world communicator."""

    def __init__(self) -> None:
        from mpi4py import MPI  # only the multi-process layouts import it

        self.MPI, self.comm = MPI, MPI.COMM_WORLD
        self.rank, self.size = self.comm.Get_rank(), self.comm.Get_size()

    def allreduce_sum(self, buffer: Any) -> None:
        self.comm.Allreduce(self.MPI.IN_PLACE, buffer, op=self.MPI.SUM)

    def barrier(self) -> None:
        self.comm.Barrier()

    def gather(self, value: Any) -> list[Any] | None:
        return self.comm.gather(value, root=0)


class SingleProcess:
    """The same interface for one process: nothing to sum, nobody to wait for."""

    rank, size = 0, 1

    def allreduce_sum(self, buffer: Any) -> None:
        pass

    def barrier(self) -> None:
        pass

    def gather(self, value: Any) -> list[Any]:
        return [value]


def data_parallel_step(model: Any, opt: Any, comm: Any, x: Any, y: Any, first_sample: int, global_batch: int,
                       dropout_seed: int) -> dict[str, float]:
    """One data-parallel training step on this rank's images ``x``, ``y`` (global indices from
    ``first_sample``), timed by phase (seconds): the gradient buffer summed over the ranks before AdamW."""
    import npvit

    t0 = time.perf_counter()
    logits = model.forward(x, training=True, dropout_seed=dropout_seed, first_sample=first_sample)
    t1 = time.perf_counter()
    dlogits = npvit.cross_entropy_backward(npvit.cross_entropy_forward(logits, y)[1])
    dlogits *= dlogits.dtype.type(len(x) / global_batch)  # local mean -> this rank's share of the global mean
    model.backward(dlogits)
    t2 = t3 = time.perf_counter()
    if comm.size > 1:  # one process has nothing to sum
        comm.allreduce_sum(model.grads.flat)
        t3 = time.perf_counter()
    opt.step(model.grads)
    t4 = time.perf_counter()
    return {"forward": t1 - t0, "backward": t2 - t1, "allreduce": t3 - t2, "optimizer": t4 - t3, "step": t4 - t0}


def worker(spec: dict[str, Any]) -> dict[str, Any] | None:
    """One process of a layout: time ``spec["steps"]`` steps after a warm-up; rank 0 returns the report."""
    import numpy as np

    import npvit
    from npvit.demo import PRESETS
    from npvit.distributed import rank_slice
    from suite.batch import make_batch

    comm: Any = Mpi() if spec["ranks"] > 1 else SingleProcess()
    if comm.size != spec["ranks"]:
        raise SystemExit(f"expected {spec['ranks']} MPI processes, found {comm.size}: launch with mpiexec -n "
                         f"{spec['ranks']}")
    if spec.get("allreduce_mb"):  # the raw collective alone
        buffer = np.ones(int(spec["allreduce_mb"] * 1e6 / 4), dtype=np.float32)
        report = allreduce_alone(comm, buffer, spec)
        return report if comm.rank == 0 else None
    cfg = PRESETS[spec["preset"]]()
    model = npvit.ViT(cfg, dtype="float32", seed=0, threads=spec["threads"])
    opt = npvit.AdamW(model.params, lr=1e-3, weight_decay=1e-4)
    images, labels = make_batch(cfg, spec["batch"])
    part = rank_slice(spec["batch"], comm.rank, comm.size)
    x, y = np.ascontiguousarray(images[part]), labels[part]
    steps = []
    for i in range(spec["steps"] + 1):
        comm.barrier()  # every step starts together; the allreduce then holds any imbalance of this step
        times = data_parallel_step(model, opt, comm, x, y, part.start, spec["batch"], dropout_seed=i)
        if i:  # the first step warms up allocators and caches
            steps.append(times)
    alone = allreduce_alone(comm, model.grads.flat, spec) if comm.size > 1 else None
    checksum = float(sum(float(np.sum(p, dtype=np.float64)) for p in model.params.values()))
    gathered = comm.gather({"steps": steps, "checksum": checksum})
    if comm.rank != 0:
        return None
    phases = steps[0].keys()
    slowest = {k: statistics.median(max(g["steps"][s][k] for g in gathered) for s in range(len(steps)))
               for k in phases}
    return {"ranks": comm.size, "threads": spec["threads"], "batch": spec["batch"], "preset": spec["preset"],
            "params": model.num_params(), "gradient_bytes": int(model.grads.flat.nbytes),
            "median_s": slowest, "allreduce_alone_s": alone["seconds"] if alone else 0.0,
            "allreduce_alone_faults": alone["faults"] if alone else 0,
            "ranks_agree": len({g["checksum"] for g in gathered}) == 1,
            "samples": [g["steps"] for g in gathered]}


def allreduce_alone(comm: Any, buffer: Any, spec: dict[str, Any]) -> dict[str, Any]:
    """Median seconds of an in-place Allreduce of ``buffer``, the ranks lined up by a barrier before each, and
    the median minor page faults per call (the slowest rank's)."""
    from suite.timing import process_usage

    samples, faults = [], []
    for i in range(spec["allreduce_repeats"] + 1):
        comm.barrier()
        start, before = time.perf_counter(), process_usage()[2]
        comm.allreduce_sum(buffer)
        if i:
            samples.append(time.perf_counter() - start)
            faults.append(process_usage()[2] - before)
    every = comm.gather((samples, faults))
    if not every:
        return {}
    seconds = statistics.median(max(s[i] for s, _ in every) for i in range(len(samples)))
    return {"ranks": comm.size, "bytes": int(buffer.nbytes), "seconds": seconds,
            "faults": statistics.median(max(f[i] for _, f in every) for i in range(len(faults))),
            "samples": [s for s, _ in every]}


def launch(spec: dict[str, Any], timeout: float) -> dict[str, Any]:
    """Run ``worker(spec)`` in fresh processes (``mpiexec -n ranks`` for more than one) with the layout's
    thread count in every thread variable; return rank 0's report."""
    cmd = [sys.executable, os.path.abspath(__file__), "--worker", json.dumps(spec)]
    if spec["ranks"] > 1:
        mpiexec = shutil.which("mpiexec")
        if mpiexec is None:
            raise SystemExit("error: mpiexec not found: pip install -e '.[mpi]' (mpi4py and the mpich wheel) or "
                             "load your cluster's MPI")
        cmd = [mpiexec, "-n", str(spec["ranks"])] + cmd
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p))
    env.update({var: str(spec["threads"]) for var in THREAD_VARS})
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout)
    if proc.returncode != 0:
        tail = "\n".join(proc.stderr.strip().splitlines()[-5:]) or "no message"
        raise SystemExit(f"error: {shlex.join(cmd[:4])} ... failed (exit {proc.returncode}):\n{tail}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


# =================================================================================================== tables
def step_cost(measured: dict[str, Any], overlap_share: float) -> StepCost:
    """The projection's basis from a 1-process measurement."""
    m = measured["median_s"]
    return StepCost(batch=measured["batch"], compute_s=m["forward"] + m["backward"], backward_s=m["backward"],
                    optimizer_s=m["optimizer"], gradient_bytes=measured["gradient_bytes"],
                    overlap_share=overlap_share)


def head_shares(preset: str) -> dict[str, float]:
    """What the head weighs in the preset: its share of the gradient bytes, the share of the backward after
    its gradient is ready (the blocks', by matrix FLOPs), and the parameters and FLOPs with the head on the
    pooled token (``pool="gap"``) instead."""
    import npvit
    from npvit.demo import PRESETS
    from suite.flops import dense_flops, matmul_flops_per_image

    def head_flops(cfg: npvit.ViTConfig) -> int:
        sizes = (cfg.pooled_dim, *cfg.head_units, cfg.num_classes)
        return sum(dense_flops(1, a, b) for a, b in zip(sizes, sizes[1:]))

    cfg = PRESETS[preset]()
    gap = replace(cfg, pool="gap")
    model = npvit.ViT(cfg, seed=0)
    head = sum(int(p.size) for name, p in model.params.items() if name.startswith("head."))
    return {"params": model.num_params(), "head_bytes_share": head / model.num_params(),
            "overlap_share": 1 - head_flops(cfg) / matmul_flops_per_image(cfg),
            "gap_params": npvit.ViT(gap, seed=0).num_params(),
            "gap_flops_saved": 1 - matmul_flops_per_image(gap) / matmul_flops_per_image(cfg)}


def print_tables(results: dict[str, Any]) -> None:
    from suite.tables import fmt, fmt_pct, fmt_ratio, md_table

    env, runs = results["environment"], results["layouts"]
    print(f"# Data-parallel scaling: {results['preset']} preset, global batch {results['batch']}, float32\n")
    print(f"- date: {env['date']}; command: `{env['command']}`")
    print(f"- machine: {env['cpu']}, {env['usable_cpus']} usable CPUs; Python {env['python']}, numpy "
          f"{env['numpy']}, mpi4py {env['mpi4py']}, mpiexec {env['mpiexec']}")
    print(f"- load average at start {env['load_start']}, at the end {env['load_end']}\n")
    if runs:
        print("## Measured on this machine\n")
        print(f"Median over {results['steps']} steps after a warm-up (per phase the slowest rank), "
              f"{results['rounds']} round(s) alternating the layouts, every round's images/s listed. "
              "Allreduce in the step includes waiting for the slower rank; alone, the ranks start together.\n")
        headers = ["layout", "images/s (each round)", "step s", "forward s", "backward s", "allreduce s",
                   "allreduce alone s (faults)", "AdamW s", "gradient MB", "sent per rank MB", "ranks agree"]
        lines = []
        for name, rounds in runs.items():
            r = rounds[0]
            med = {k: statistics.median(x["median_s"][k] for x in rounds) for k in r["median_s"]}
            sent = 2 * (r["ranks"] - 1) / r["ranks"] * r["gradient_bytes"]
            lines.append([name, " / ".join(fmt(r["batch"] / x["median_s"]["step"]) for x in rounds), fmt(med["step"]),
                          fmt(med["forward"]), fmt(med["backward"]), fmt(med["allreduce"]),
                          f"{fmt(statistics.median(x['allreduce_alone_s'] for x in rounds))} "
                          f"({fmt(statistics.median(x['allreduce_alone_faults'] for x in rounds))})",
                          fmt(med["optimizer"]), fmt(r["gradient_bytes"] / 1e6), fmt(sent / 1e6),
                          "—" if r["ranks"] == 1 else str(all(x["ranks_agree"] for x in rounds))])
        print(md_table(headers, lines))
        print()
    if results.get("allreduce"):
        a = results["allreduce"]
        bus = 2 * (a["ranks"] - 1) / a["ranks"] * a["bytes"] / a["seconds"]
        print(f"Raw MPI Allreduce of {fmt(a['bytes'] / 1e6)} MB float32 between {a['ranks']} local processes: "
              f"{fmt(a['seconds'] * 1e3)} ms (median of {len(a['samples'][0])}): {fmt(a['bytes'] / a['seconds'] / 1e9)}"
              f" GB/s of buffer, bus bandwidth 2(N-1)/N x bytes / t = {fmt(bus / 1e9)} GB/s "
              f"({fmt(bus * 8 / GBIT)} Gbit/s), {fmt(a['faults'])} minor page faults per call in these fresh processes "
              "(\"allreduce alone\" above is the same call after training steps).\n")
    cost = results.get("cost")
    if not cost:
        return
    cost = StepCost(**cost)
    share = results["head"]
    b = results["batch"]
    print(f"## Projection: N nodes like this one ({results['basis']})\n")
    print(f"Per node: compute {fmt(cost.compute_s)} s for {cost.batch} images (backward {fmt(cost.backward_s)} s), "
          f"AdamW {fmt(cost.optimizer_s)} s, gradient {fmt(cost.gradient_bytes / 1e6)} MB; ring allreduce "
          "2(N-1)/N x bytes / bandwidth; efficiency = images/s against N ideal copies of the node.\n")
    for title, per_node in ((f"global batch {b} split over the nodes (the semantics of --batch-size)",
                             lambda n: b / n), (f"{b} images per node (global batch {b} x N)", lambda n: b)):
        print(f"### {title[0].upper() + title[1:]}\n")
        headers = ["nodes", "images per node"]
        for bw in BANDWIDTHS_GBIT:
            headers += [f"{bw:g} Gbit/s: allreduce s", "images/s", "efficiency"]
        lines = []
        for n in NODES:
            line = [str(n), fmt(per_node(n))]
            for bw in BANDWIDTHS_GBIT:
                p = project(cost, n, bw, per_node(n))
                line += [fmt(p["allreduce_s"]), fmt(p["images_per_s"]), fmt_pct(p["efficiency"])]
            lines.append(line)
        print(md_table(headers, lines))
        print()
    print(f"### Where the split batch stops scaling (efficiency below {fmt_pct(STOP_EFFICIENCY)}), and what "
          "moves it\n")
    print(f"Global batch {b}; the limit is the most nodes (powers of two, at most one image each) at "
          f"{fmt_pct(STOP_EFFICIENCY)} or more; the ceiling is images/s with unboundedly many nodes (AdamW plus "
          "the exposed allreduce per step).\n")
    headers = ["lever", "gradient MB"] + [f"{bw:g} Gbit/s: {k}" for bw in BANDWIDTHS_GBIT
                                          for k in ("limit (nodes)", "images/s at 64", "ceiling images/s")]
    lines = []
    for label, levers in LEVERS:
        levers = dict(levers)
        c = cost
        if levers.pop("head", None) == "gap":
            c = replace(cost, gradient_bytes=cost.gradient_bytes * share["gap_params"] / share["params"])
        line = [label, fmt(c.gradient_bytes * levers.get("gradient_scale", 1.0) / 1e6)]
        for bw in BANDWIDTHS_GBIT:
            limit = stop_point(c, bw, b, **levers)
            line += [str(limit) if limit else "—", fmt(project(c, 64, bw, b / 64, **levers)["images_per_s"]),
                     fmt(ceiling_images_per_s(c, bw, b, **levers))]
        lines.append(line)
    print(md_table(headers, lines))
    one = project(cost, 1, BANDWIDTHS_GBIT[0], b)["images_per_s"]
    print(f"\nOne node: {fmt(one)} images/s. Overlap assumes the allreduce can run beside the last "
          f"{fmt_pct(cost.overlap_share)} of the backward (by matrix FLOPs: the blocks' backward, which starts once "
          f"the head's gradient, {fmt_pct(share['head_bytes_share'])} of the bytes, is ready); the pooled head "
          f"(--pool gap) has {share['gap_params']:,} parameters against {share['params']:,}, "
          f"{fmt_ratio(share['params'] / share['gap_params'])} fewer bytes (its compute, "
          f"{fmt_pct(share['gap_flops_saved'])} less by matrix FLOPs, is not credited).\n")


def environment_facts(argv: list[str]) -> dict[str, Any]:
    import numpy as np

    from suite.environment import cpu_model, version_of

    mpiexec = shutil.which("mpiexec")
    version = None
    if mpiexec:
        try:
            out = subprocess.run([mpiexec, "--version"], capture_output=True, text=True, timeout=30).stdout
            version = next((line.split(":", 1)[1].strip() for line in out.splitlines()
                            if line.strip().startswith("Version")), None)
        except (OSError, subprocess.TimeoutExpired):
            pass
    return {"date": datetime.now().astimezone().isoformat(timespec="seconds"),
            "command": "python " + shlex.join([os.path.relpath(__file__)] + argv), "cpu": cpu_model(),
            "usable_cpus": default_threads(), "python": sys.version.split()[0], "numpy": np.__version__,
            "mpi4py": version_of("mpi4py") or "not installed",
            "mpiexec": f"{mpiexec} ({version})" if mpiexec else "not found",
            "load_start": ", ".join(f"{x:.2f}" for x in os.getloadavg())}


def layout(text: str) -> tuple[int, int]:
    """"2x1" -> (2 processes, 1 thread)."""
    ranks, _, threads = text.partition("x")
    if not (ranks.isdigit() and threads.isdigit() and int(ranks) >= 1 and int(threads) >= 1):
        raise argparse.ArgumentTypeError(f"{text!r}: expected PROCESSESxTHREADS, e.g. 2x1")
    return int(ranks), int(threads)


def layout_name(ranks: int, threads: int) -> str:
    return f"{ranks} process{'es' if ranks > 1 else ''} x {threads} thread{'s' if threads > 1 else ''}"


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="keras", help="model preset (default keras)")
    parser.add_argument("--batch", type=int, default=256, help="global batch, split over the processes")
    parser.add_argument("--steps", type=int, default=3, help="measured steps per process, after one warm-up")
    parser.add_argument("--rounds", type=int, default=1, help="rounds, each running every layout in turn")
    parser.add_argument("--layouts", type=lambda s: [layout(x) for x in s.split(",") if x.strip()],
                        default=None, help="comma-separated PROCESSESxTHREADS (default 1xC,Cx1 for the C "
                                           "usable CPUs); the first must be one process: it is the node projected")
    parser.add_argument("--allreduce-repeats", type=int, default=5, help="samples of the allreduce alone")
    parser.add_argument("--allreduce-only", action="store_true",
                        help="measure only a raw Allreduce of --allreduce-mb between --ranks local processes")
    parser.add_argument("--allreduce-mb", type=float, help="buffer size (default: the preset's gradient)")
    parser.add_argument("--ranks", type=int, default=2, help="processes of --allreduce-only (default 2)")
    parser.add_argument("--project-step", metavar="FORWARD_S,BACKWARD_S,ADAMW_S",
                        type=lambda t: [float(x) for x in t.split(",")],
                        help="measure nothing: project from this step of one node at --batch (seconds of the "
                             "forward with the loss, the backward and AdamW), e.g. from run.py's kernel table")
    parser.add_argument("--json", help="also write the results to this file")
    parser.add_argument("--from", dest="from_json", help="print the tables of a --json file; measure nothing")
    parser.add_argument("--timeout", type=float, default=1800, help="seconds per launched layout")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.worker:
        report = worker(json.loads(args.worker))
        if report is not None:
            print(json.dumps(report))
        return 0
    if args.from_json:
        print_tables(json.loads(Path(args.from_json).read_text()))
        return 0
    from npvit.demo import PRESETS

    if args.preset not in PRESETS:
        parser.error(f"--preset: choose from {', '.join(sorted(PRESETS))}")
    cpus = default_threads()
    layouts = args.layouts or [(1, cpus), (cpus, 1)]
    if layouts[0][0] != 1:
        parser.error("--layouts: the first layout must be one process (PROCESSESxTHREADS = 1xT)")
    if min(args.batch, args.steps, args.rounds, args.allreduce_repeats, args.ranks) < 1:
        parser.error("--batch, --steps, --rounds, --allreduce-repeats and --ranks must be positive")
    env = environment_facts(argv)
    head = head_shares(args.preset)
    results: dict[str, Any] = {"environment": env, "preset": args.preset, "batch": args.batch,
                               "steps": args.steps, "rounds": args.rounds, "layouts": {}, "head": head}
    spec = {"preset": args.preset, "batch": args.batch, "steps": args.steps,
            "allreduce_repeats": args.allreduce_repeats}
    megabytes = args.allreduce_mb or head["params"] * 4 / 1e6
    if args.project_step:
        if len(args.project_step) != 3 or min(args.project_step) <= 0:
            parser.error("--project-step: expected three positive seconds FORWARD_S,BACKWARD_S,ADAMW_S")
        forward, backward, optimizer = args.project_step
        results["cost"] = asdict(StepCost(batch=args.batch, compute_s=forward + backward, backward_s=backward,
                                          optimizer_s=optimizer, gradient_bytes=head["params"] * 4,
                                          overlap_share=head["overlap_share"]))
        results["basis"] = (f"a step given on the command line: forward {forward:g} s, backward {backward:g} s, "
                            f"AdamW {optimizer:g} s for {args.batch} images")
    elif args.allreduce_only:
        print(f"[{time.strftime('%H:%M:%S')}] allreduce of {megabytes:.1f} MB, {args.ranks} processes",
              file=sys.stderr, flush=True)
        results["allreduce"] = launch(dict(spec, ranks=args.ranks, threads=1, allreduce_mb=megabytes),
                                      args.timeout)
    else:
        for r in range(args.rounds):
            for ranks, threads in layouts:
                name = layout_name(ranks, threads)
                print(f"[{time.strftime('%H:%M:%S')}] round {r + 1}: {name}", file=sys.stderr, flush=True)
                run = launch(dict(spec, ranks=ranks, threads=threads), args.timeout)
                results["layouts"].setdefault(name, []).append(run)
        first = results["layouts"][layout_name(*layouts[0])]
        basis = sorted(first, key=lambda x: x["median_s"]["step"])[len(first) // 2]  # the median round
        results["cost"] = asdict(step_cost(basis, head["overlap_share"]))
        results["basis"] = f"the {layout_name(*layouts[0])} step measured above, its median round"
    env["load_end"] = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    print_tables(results)
    if args.json:
        path = Path(args.json)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps(results, indent=1))
        tmp.replace(path)
        print(f"Results written to {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

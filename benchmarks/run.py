"""npvit benchmark suite: kernels, end to end, sequence length and matmul peak, side by side with PyTorch.

    python benchmarks/run.py                          # everything, NumPy backend (about 15 minutes on 2 cores)
    python benchmarks/run.py --quick                  # smoke run: smaller batches, fewer repeats (minutes)
    python benchmarks/run.py --backend cupy           # CuPy vs PyTorch CUDA, TF32 off on both
    python benchmarks/run.py --backend cupy --tf32    # ... with TF32 matmuls on both
    python benchmarks/run.py --sections kernels,e2e --threads 2 --json out.json
    python benchmarks/run.py --sections kernels --kernels fast:128 --keep-freed-memory   # the fast recipe's step
    python benchmarks/run.py --sections e2e --e2e fast:128,fast:512 --compile --numpy-kernels --no-memory \
        --keep-freed-memory     # the fast model against PyTorch eager and torch.compile, on both kernel tiers

Prints a header (date, machine, library versions, threads, command) and one markdown table per section, and
writes everything (every sample, not only medians) to ``benchmarks/results/<date>-<backend>[-quick].json``.

Sections (``--sections``, comma separated; default all):

* ``peak``: float32 matrix-multiply throughput (square sgemm, several sizes) of the array library and of
  torch, measured in this run; the best of them is the "peak" that utilisation is measured against. Always
  measured when e2e or seqlen runs.
* ``kernels``: every kernel of the Keras preset at batch 256 (``--kernels PRESET:BATCH``: another preset and
  batch, e.g. ``fast:128``), forward and backward, with GFLOP/s (matrix
  products: 2 FLOPs per multiply-add) or GB/s (elementwise kernels: the minimal traffic, each input read
  once and each output written once; dropout masks count one byte per element), its calls per training step
  and its share of the measured training step. The rows above "other" plus "other" (residual adds, head
  split/merge copies, ...: the step minus their sum) make up the step; composite rows time whole layers
  through npvit's real code path (model modules, ``kernels.attention_core_*``), not added up. Augmentation
  (``npvit.data.augment``, if present) runs outside the step.
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
* ``--compile`` adds ``torch-compile`` to the e2e section: the same PyTorch model called through
  ``torch.compile`` (default inductor backend; AdamW stays eager), compiled in the warm-up round (the
  training graphs, then the inference graph). ``--numpy-kernels`` adds ``npvit-numpy``: npvit on its NumPy
  kernels, beside ``npvit`` on the default tier (compiled when Numba is installed; the header says which).
* torch trains the way its users do: ``zero_grad(set_to_none=True)``, ``F.cross_entropy``, ``backward``,
  ``torch.optim.AdamW`` (default implementation); inference runs under ``torch.inference_mode`` in eval mode.
  It does not compute the image gradient that npvit's ``backward`` returns (a small cost for npvit).
* Memory pages: on Linux NumPy asks for transparent huge pages for large arrays; torch's CPU allocator
  does not unless THP_MEM_ALLOC_ENABLE=1 (``--torch-thp``). With fresh activations every step, torch then
  takes ~500x more page faults (on the 2-core VM: seconds of system time per Keras b256 step). The default
  compares stock torch; the header and the per-sample CPU/system time and page faults make this visible.
* Allocator: ``--keep-freed-memory`` sets glibc's malloc as ``python -m npvit.train`` does
  (``npvit.cli.allocator``; NOTES entry 18), for the whole process and so for both frameworks; without it (the
  default, as the tables in benchmarks/README.md were measured) small models pay page faults on every step.
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

The code lives in the package ``benchmarks/suite/`` (one module per job: timers, runners, one module per
section, memory probes, environment, tables, command line; its ``__init__`` lists them). This file is the
command line, and the public helpers stay importable from here (``from run import alternate, Ctx, ...``).

Benchmarks are never run as tests; ``tests/bench/test_benchmarks.py`` only smoke-tests these code paths on the
tiny config.
"""

from __future__ import annotations

import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))  # the suite package
if str(ROOT) not in sys.path:
    sys.path.append(str(ROOT))  # npvit, where it is not installed

from suite.threads import THREAD_VARS, default_threads, requested_threads, set_thread_env  # noqa: E402

if __name__ == "__main__":
    # Thread pools read these when their library loads: set them before NumPy (and torch) are imported.
    set_thread_env(requested_threads(sys.argv[1:]), torch_thp="--torch-thp" in sys.argv[1:])

# The public helpers, importable from this file as before the suite became a package.
from suite.batch import make_batch  # noqa: E402
from suite.cli import build_ctx, default_json_path, e2e_rows, jsonable, main  # noqa: E402
from suite.context import DTYPE, FRAMEWORKS, SECTIONS, SETTINGS, Ctx, Settings  # noqa: E402
from suite.e2e import section_e2e  # noqa: E402
from suite.environment import cpu_model, environment, mem_total_gib, openblas_threads, version_of  # noqa: E402
from suite.flops import (TRAIN_FACTOR, attention_flops_per_image, dense_flops,  # noqa: E402
                         matmul_flops_per_image, train_flops_per_image)
from suite.kernels import KernelCase, add_shares, kernel_cases, section_kernels  # noqa: E402
from suite.memory import memory_in_subprocess, memory_probe  # noqa: E402
from suite.peak import section_peak  # noqa: E402
from suite.runners import NpvitRunner, TorchRunner, free, make_runners  # noqa: E402
from suite.seqlen import quadratic_fit, section_seqlen  # noqa: E402
from suite.tables import (fmt, fmt_ms, fmt_pct, fmt_ratio, fmt_rate, md_table, print_e2e,  # noqa: E402
                          print_header, print_kernels, print_peak, print_seqlen, spread_report)
from suite.timing import (alternate, kernel_contender, loop_pair, median, medians,  # noqa: E402
                          process_usage, time_phases, usage)

__all__ = [
    "THREAD_VARS", "default_threads", "requested_threads", "set_thread_env",
    "build_ctx", "default_json_path", "e2e_rows", "jsonable", "main",
    "DTYPE", "FRAMEWORKS", "SECTIONS", "SETTINGS", "Ctx", "Settings",
    "section_e2e", "cpu_model", "environment", "mem_total_gib", "openblas_threads", "version_of",
    "TRAIN_FACTOR", "attention_flops_per_image", "dense_flops", "matmul_flops_per_image", "train_flops_per_image",
    "KernelCase", "add_shares", "kernel_cases", "section_kernels", "memory_in_subprocess", "memory_probe",
    "section_peak", "NpvitRunner", "TorchRunner", "free", "make_batch", "make_runners",
    "quadratic_fit", "section_seqlen",
    "fmt", "fmt_ms", "fmt_pct", "fmt_ratio", "fmt_rate", "md_table", "print_e2e", "print_header",
    "print_kernels", "print_peak", "print_seqlen", "spread_report",
    "alternate", "kernel_contender", "loop_pair", "median", "medians", "process_usage", "time_phases", "usage",
]

if __name__ == "__main__":
    sys.exit(main())

"""Before/after timing of two npvit checkouts, alternated process by process.

    git worktree add /tmp/npvit-before HEAD~1
    python benchmarks/ab.py /tmp/npvit-before .                    # Keras preset, batch 256, 3 rounds
    python benchmarks/ab.py /tmp/npvit-before . --preset small --batch 128 --rounds 5

Each round runs one fresh process per checkout, in turn: the checkout's npvit is imported from its own
directory and times an inference forward and a whole training step (forward, loss, backward, AdamW) on the
same random batch, reporting the median of ``--repeats`` after one warm-up. Alternating whole processes
spreads the machine's drifts (other tenants, frequency, memory state) over both sides; the table gives
every round, so the spread is visible. This is the measurement behind the entries of benchmarks/NOTES.md
that compare two versions of the code.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys

CHILD = r"""
import json, statistics, sys, time
sys.path.insert(0, sys.argv[1])
import numpy as np
import npvit
from npvit.demo import PRESETS
cfg = PRESETS[sys.argv[2]](num_classes=100)
batch, repeats = int(sys.argv[3]), int(sys.argv[4])
model = npvit.ViT(cfg)
opt = npvit.AdamW(model.params)
rng = np.random.default_rng(0)
x = rng.standard_normal((batch, cfg.image_size, cfg.image_size, cfg.channels), dtype=np.float32)
y = rng.integers(0, cfg.num_classes, batch)
fwd, step = [], []
for i in range(repeats + 1):
    t = time.perf_counter()
    model.forward(x)
    f = time.perf_counter() - t
    t = time.perf_counter()
    logits = model.forward(x, training=True)
    model.backward(npvit.cross_entropy_backward(npvit.cross_entropy_forward(logits, y)[1]))
    opt.step(model.grads)
    s = time.perf_counter() - t
    if i:
        fwd.append(f)
        step.append(s)
print(json.dumps({"npvit": npvit.__file__, "forward": statistics.median(fwd), "step": statistics.median(step)}))
"""


def run_side(path: str, args: argparse.Namespace) -> dict:
    env = dict(os.environ, PYTHONPATH=os.path.abspath(path))
    proc = subprocess.run(
        [sys.executable, "-c", CHILD, os.path.abspath(path), args.preset, str(args.batch), str(args.repeats)],
        capture_output=True, text=True, env=env,
    )
    if proc.returncode != 0:
        raise SystemExit(f"{path}: {(proc.stderr.strip().splitlines() or ['failed'])[-1]}")
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    if not os.path.abspath(result["npvit"]).startswith(os.path.abspath(path)):
        raise SystemExit(f"{path}: imported npvit from {result['npvit']}, not from the checkout")
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("before", help="checkout (folder holding npvit/) measured first in every round")
    parser.add_argument("after", help="checkout measured second in every round")
    parser.add_argument("--preset", default="keras")
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=3, help="timed repeats per process (median)")
    args = parser.parse_args(argv)
    for path in (args.before, args.after):
        if not os.path.isfile(os.path.join(path, "npvit", "__init__.py")):
            parser.error(f"{path} holds no npvit/ package: pass the root of a checkout")

    rows = {"before": [], "after": []}
    for r in range(args.rounds):
        for side in ("before", "after"):
            rows[side].append(run_side(getattr(args, side), args))
            res = rows[side][-1]
            print(f"round {r + 1} {side:6s}: forward {res['forward']:.3f} s, step {res['step']:.3f} s",
                  file=sys.stderr, flush=True)

    print(f"\n{args.preset}, batch {args.batch}: medians per process, {args.rounds} alternating rounds\n")
    print("| | forward s (each round) | forward images/s | step s (each round) | step images/s |")
    print("|---|---|---:|---|---:|")
    for side in ("before", "after"):
        fwd = [r["forward"] for r in rows[side]]
        step = [r["step"] for r in rows[side]]
        print(f"| {side} | {' / '.join(f'{t:.3f}' for t in fwd)} | {args.batch / statistics.median(fwd):.1f} | "
              f"{' / '.join(f'{t:.3f}' for t in step)} | {args.batch / statistics.median(step):.1f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())

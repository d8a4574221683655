"""Before/after timing of two npvit checkouts, alternated process by process.

    git worktree add /tmp/npvit-before HEAD~1
    python benchmarks/ab.py /tmp/npvit-before .                    # Keras preset, batch 256, 3 rounds
    python benchmarks/ab.py /tmp/npvit-before . --preset small --batch 128 --rounds 5

Each round runs this folder's step_time.py once per checkout, in turn, in a fresh process that imports the
checkout's npvit: the same timing code on both sides, an inference forward and a whole training step
(forward, loss, backward, AdamW), the median of ``--repeats`` after one warm-up. Alternating whole processes
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
import tempfile

STEP_TIME = os.path.join(os.path.dirname(os.path.abspath(__file__)), "step_time.py")


def run_side(path: str, args: argparse.Namespace) -> dict:
    """step_time.py against the npvit of checkout ``path``: {"forward": s, "step": s}."""
    root = os.path.abspath(path)
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "result.json")
        proc = subprocess.run(
            [sys.executable, STEP_TIME, "--preset", args.preset, "--batch", str(args.batch),
             "--repeats", str(args.repeats), "--json", out],
            capture_output=True, text=True, env=dict(os.environ, PYTHONPATH=root),
        )
        if proc.returncode != 0:
            raise SystemExit(f"{path}: {(proc.stderr.strip().splitlines() or ['failed'])[-1]}")
        with open(out) as f:
            result = json.load(f)
    if not os.path.abspath(result["npvit"]).startswith(root + os.sep):
        raise SystemExit(f"{path}: imported npvit from {result['npvit']}, not from the checkout")
    return {"forward": result["seconds"]["forward (eval)"], "step": result["step_seconds"]}


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

    rows: dict[str, list[dict]] = {"before": [], "after": []}
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

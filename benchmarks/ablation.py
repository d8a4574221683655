"""Ablations of the fast recipe: short training runs that each change one thing, at about equal wall time.

    python benchmarks/ablation.py --data-dir /path/to/cifar-10-binary.tar.gz            # every variant
    python benchmarks/ablation.py --data-dir ... --only fast,no-crop --out runs/ablation
    python benchmarks/ablation.py --from runs/ablation/ablation.json                      # the table again
    python benchmarks/ablation.py --smoke                                                  # each variant, 1 step

Each variant is one ``python -m npvit.train --dataset cifar10 ...`` run in a fresh process, one after the
other (nothing else should run on the machine meanwhile), in its own folder under ``--out``. The table gives
the whole command's wall time (data loading, training, validation, test), the images trained on, and the
final validation and test top-1 of the best epoch.

Two groups, because a 5-minute run cannot show everything at once:

* **full data, about 6 minutes**: the fast recipe cut to 2 epochs against the Keras example's recipe run for
  the same time (its model is 4x slower per image, so it sees a quarter of the images) and against the fast
  recipe with a constant learning rate: what the model and the schedule buy early.
* **10,000 training images, 6 epochs**: with few images the model overfits within minutes, which is the
  regime the regularisers (random crop, label smoothing, Mixup/CutMix, drop path) are for; each variant
  removes or adds one of them.

Short runs rank changes by what they do early; a regulariser that costs points in 6 minutes can still pay
over 2 hours. ``benchmarks/NOTES.md`` ("Recipe fast") reads the table that way.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

FULL = ["--recipe", "fast", "--epochs", "2", "--warmup-steps", "100"]
SUBSET = ["--recipe", "fast", "--train-subset", "10000", "--epochs", "6", "--warmup-steps", "100"]
VARIANTS: list[tuple[str, str, list[str]]] = [
    # (name, what it changes, flags after --dataset cifar10)
    ("fast", "the fast recipe, 2 epochs", FULL),
    ("keras", "the Keras example's recipe, same time", ["--recipe", "keras", "--max-steps", "90"]),
    ("fast-constant-lr", "fast, constant learning rate, no warmup", [*FULL, "--lr-schedule", "constant",
                                                                     "--warmup-steps", "0"]),
    ("subset", "fast on 10,000 images, 6 epochs", SUBSET),
    ("subset-no-crop", "... without the random crop", [*SUBSET, "--crop-padding", "0"]),
    ("subset-no-smoothing", "... without label smoothing", [*SUBSET, "--label-smoothing", "0"]),
    ("subset-mix", "... with Mixup 0.8 / CutMix 1.0", [*SUBSET, "--mixup", "0.8", "--cutmix", "1.0"]),
    ("subset-drop-path", "... with drop path 0.1", [*SUBSET, "--drop-path", "0.1"]),
    ("subset-ema", "... evaluating an EMA of the weights (decay 0.99)", [*SUBSET, "--ema", "0.99"]),
]
SMOKE = ["--dataset", "synthetic", "--synthetic-size", "64,32", "--synthetic-image-size", "32",
         "--eval-batch-size", "64"]
SMOKE_AFTER = ["--max-steps", "1", "--train-subset", "32"]  # after the variant's flags, so that they win


def run_variant(name: str, flags: list[str], out: Path, data: list[str], after: list[str]) -> dict:
    """Train one variant in a fresh process; its wall time, images trained on and best-epoch accuracies."""
    folder = out / name
    command = [sys.executable, "-m", "npvit.train", *data, *flags, *after, "--quiet", "--out", str(folder)]
    print("$", shlex.join(command[1:]), flush=True)
    start = time.perf_counter()
    done = subprocess.run(command, cwd=ROOT, env=dict(os.environ, PYTHONPATH=str(ROOT)))
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"variant {name} failed (exit {done.returncode}); its folder is {folder}")
    summary = json.loads((folder / "summary.json").read_text())
    rows = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]
    return {"name": name, "flags": flags, "seconds": seconds, "steps": summary["steps"],
            "images": round(sum(r["seconds"] * r["images_per_s"] for r in rows)), "epochs": rows[-1]["epoch"],
            "val_top1": summary["best_val_top1"], "test_top1": summary["test"]["top1"]}


def table(results: list[dict]) -> str:
    what = {name: text for name, text, _ in VARIANTS}
    lines = ["| variant | what changes | wall | images trained | val top-1 | test top-1 |",
             "|---|---|---:|---:|---:|---:|"]
    for r in results:
        val = "-" if r["val_top1"] is None else f"{100 * r['val_top1']:.1f}%"
        lines.append(f"| {r['name']} | {what.get(r['name'], shlex.join(r['flags']))} | {r['seconds'] / 60:.1f} min "
                     f"| {r['images']:,} | {val} | {100 * r['test_top1']:.1f}% |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", help="the CIFAR-10 archive or folder (see docs/training.md, Data)")
    parser.add_argument("--out", default="runs/ablation", help="folder for the runs and ablation.json")
    parser.add_argument("--only", help="comma-separated variant names (default: all): "
                        + ", ".join(name for name, _, _ in VARIANTS))
    parser.add_argument("--from", dest="from_json", help="print the table of an earlier ablation.json")
    parser.add_argument("--smoke", action="store_true", help="each variant for 1 step on tiny synthetic data")
    args = parser.parse_args(argv)
    if args.from_json:
        print(table(json.loads(Path(args.from_json).read_text())["results"]))
        return 0
    names = [name for name, _, _ in VARIANTS]
    chosen = names if not args.only else args.only.split(",")
    unknown = sorted(set(chosen) - set(names))
    if unknown:
        parser.error(f"unknown variant(s) {', '.join(unknown)}; known: {', '.join(names)}")
    after: list[str] = []
    if args.smoke:
        data, after = SMOKE, SMOKE_AFTER
    elif args.data_dir:
        data = ["--dataset", "cifar10", "--data-dir", args.data_dir, "--no-download"]
    else:
        parser.error("--data-dir is required (or --smoke, or --from)")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results: list[dict] = []
    for name, _, flags in VARIANTS:
        if name in chosen:
            results.append(run_variant(name, flags, out, data, after))
            print(table(results[-1:]).splitlines()[-1], flush=True)
            save(out / "ablation.json", {"date": time.strftime("%Y-%m-%d %H:%M"), "data": data, "results": results})
    print(table(results))
    return 0


def save(path: Path, doc: dict) -> None:
    """Write ``doc`` as JSON through a temporary file and a rename: after every variant, so that a failed or
    interrupted ablation keeps the variants that finished."""
    with tempfile.NamedTemporaryFile("w", dir=path.parent, suffix=".tmp", delete=False) as f:
        json.dump(doc, f, indent=1)
    os.replace(f.name, path)


if __name__ == "__main__":
    sys.exit(main())

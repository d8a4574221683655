"""Damaged and hostile checkpoints in every command that loads one (evaluate, predict, visualize): one clear
message and exit status 2, no traceback, nothing allocated from the file's word, and no file written or
changed; real processes where the exit status matters."""

from __future__ import annotations

import io
import json
import math
import os
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
from fault_checks import PIL_Image, digests, needs_matplotlib, needs_pillow, one_error_line
from processes import run_python

import npvit
from npvit import evaluate as evaluate_cli
from npvit.checkpoint import CheckpointError, load_checkpoint, save_checkpoint

pytestmark = pytest.mark.usefixtures("private_cache")  # no test touches the real dataset cache


def rewrite(src: Path, dest: Path, meta: dict | None = None, params: dict | None = None) -> Path:
    """A copy of checkpoint ``src`` with its metadata and parameters changed as given."""
    ckpt = load_checkpoint(src)
    new_meta = dict(ckpt.meta, **(meta or {}))
    new_meta.pop("format_version")
    save_checkpoint(dest, dict(ckpt.params, **(params or {})), ckpt.optimizer, new_meta)
    return dest



def _png(pixels: np.ndarray) -> bytes:
    buf = io.BytesIO()
    PIL_Image.fromarray(pixels).save(buf, format="PNG")
    return buf.getvalue()


def _file(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def _npz(path: Path, **arrays: np.ndarray) -> Path:
    with open(path, "wb") as f:
        np.savez(f, **arrays)
    return path


def bad_checkpoints(run: Path, tmp: Path) -> dict[str, tuple[Path, str]]:
    """name -> (a damaged checkpoint, what the message must say)."""
    best = run / "best.npz"
    ckpt = load_checkpoint(best)
    meta, run_settings = ckpt.meta, ckpt.meta["run"]
    np.save(tmp / "array.npy", np.zeros(3))
    os.replace(tmp / "array.npy", tmp / "renamed.npz")
    norm = meta["normalization"]
    huge_model = dict(meta["model"], dim=4096, mlp_units=[4096], head_units=[4096, 4096])
    nan_weights = {k: np.full_like(v, np.nan) for k, v in ckpt.params.items()}
    return {
        "npy-renamed": (tmp / "renamed.npz", "it is a single .npy array, not a .npz"),
        "not-a-zip": (_file(tmp / "text.npz", b"hello"), "not a .npz (zip) file"),
        "truncated": (_file(tmp / "cut.npz", best.read_bytes()[:3000]), "cannot read checkpoint"),
        "meta-list": (_npz(tmp / "list.npz", meta=np.array(json.dumps([1, 2]))), "metadata is a JSON list"),
        "meta-not-json": (_npz(tmp / "notjson.npz", meta=np.array("{oops")), "metadata is not valid JSON"),
        "meta-number": (_npz(tmp / "number.npz", meta=np.array(7.0)), "'meta' entry is not a JSON text"),
        "object-array": (_npz(tmp / "object.npz", meta=np.array(json.dumps(meta)),
                              **{"param/x": np.array(["a"], dtype="U1").astype(object)}), "plain numbers only"),
        "norm-nan": (rewrite(best, tmp / "nan.npz", {"normalization": dict(norm, mean=[math.nan] * 3)}),
                     "normalization mean must be 3 finite numbers"),
        "norm-short": (rewrite(best, tmp / "short.npz", {"normalization": dict(norm, variance=[1.0])}),
                       "normalization variance must be 3 finite numbers"),
        "norm-text": (rewrite(best, tmp / "text-norm.npz", {"normalization": dict(norm, mean=["a", "b", "c"])}),
                      "normalization mean"),
        "norm-negative": (rewrite(best, tmp / "neg.npz", {"normalization": dict(norm, variance=[1, -1, 1])}),
                          "variance has a negative value"),
        "no-norm": (rewrite(best, tmp / "nonorm.npz", {"normalization": None}), "no 'normalization' object"),
        "dataset": (rewrite(best, tmp / "dataset.npz", {"run": dict(run_settings, dataset="imagenet")}),
                    "the run setting dataset (--dataset): must be one of cifar10, cifar100, synthetic"),
        "synthetic-size": (rewrite(best, tmp / "size.npz", {"run": dict(run_settings, synthetic_size=[10**9, 1])}),
                           "synthetic_size (--synthetic-size) must be at most 1,000,000 images"),
        "synthetic-size-one": (rewrite(best, tmp / "size1.npz", {"run": dict(run_settings, synthetic_size=[5])}),
                               "synthetic_size (--synthetic-size) must be two integers"),
        "lr-nan": (rewrite(best, tmp / "lr.npz", {"run": dict(run_settings, learning_rate=math.nan)}),
                   "learning_rate (--learning-rate): must be a finite number, got nan"),
        "wd-inf": (rewrite(best, tmp / "wd.npz", {"run": dict(run_settings, weight_decay=math.inf)}),
                   "weight_decay (--weight-decay): must be a finite number, got inf"),
        "epsilon-zero": (rewrite(best, tmp / "eps.npz", {"run": dict(run_settings, epsilon=0)}),
                         "epsilon (--epsilon): expected a number > 0, got '0.0'"),
        "lr-huge-int": (rewrite(best, tmp / "lrint.npz", {"run": dict(run_settings, learning_rate=10**400)}),
                        "learning_rate (--learning-rate): must be a finite number, got 1000"),
        "run-list": (rewrite(best, tmp / "runlist.npz", {"run": [1]}), "run settings are a JSON list"),
        "model-string": (rewrite(best, tmp / "model.npz", {"model": "vit"}), "no model config"),
        "model-field": (rewrite(best, tmp / "field.npz", {"model": dict(meta["model"], depth="2")}),
                        "model config is invalid"),
        "model-huge": (rewrite(best, tmp / "huge.npz", {"model": huge_model}),
                       f"describes {npvit.ViTConfig.from_dict(huge_model).num_params():,} parameters but it holds"),
        "dtype": (rewrite(best, tmp / "dtype.npz", {"dtype": "float16"}), "dtype is 'float16'"),
        "class-names": (rewrite(best, tmp / "names.npz", {"class_names": ["a"]}), "class_names must be 4 strings"),
        "nan-weights-ok": (rewrite(best, tmp / "nanw.npz", params=nan_weights), ""),
        "empty-test-split": (rewrite(best, tmp / "empty.npz", {"run": dict(run_settings, synthetic_size=[64, 0])}),
                             "synthetic_size (--synthetic-size): expected positive sizes"),
    }


@pytest.fixture(scope="module")
def damaged(run: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, str]]:
    return bad_checkpoints(run, tmp_path_factory.mktemp("damaged"))


@pytest.mark.parametrize("command", ["evaluate", pytest.param("predict", marks=needs_pillow),
                                     pytest.param("visualize", marks=needs_matplotlib)])
def test_damaged_checkpoints_are_one_clear_error_in_every_command(damaged, run: Path, tmp_path: Path, capsys,
                                                                  command: str) -> None:
    from npvit import predict as predict_cli
    from npvit.visualize.__main__ import main as visualize

    image = tmp_path / "image.png"
    image.write_bytes(_png(np.zeros((16, 16, 3), np.uint8)) if PIL_Image is not None else b"")
    figure = tmp_path / "figure.png"
    figure.write_bytes(b"an earlier figure")
    before = digests(run.parent) | digests(tmp_path)
    for name, (path, message) in damaged.items():
        if name == "nan-weights-ok" or (name == "empty-test-split" and command != "evaluate"):
            continue  # valid files for this command: NaN outputs are the next test's business
        main = {"evaluate": lambda p: evaluate_cli.main([str(p)]),
                "predict": lambda p: predict_cli.main([str(p), str(image)]),
                "visualize": lambda p: visualize(["filters", str(p), "--out", str(figure)])}[command]
        started = time.perf_counter()
        assert main(path) == 2, name
        captured = capsys.readouterr()
        assert captured.out == "", name
        one_error_line(captured.err, message)
        assert time.perf_counter() - started < 10, name  # nothing is allocated from the file's word
    assert digests(run.parent) | digests(tmp_path) == before  # no file written, none changed


@needs_pillow
def test_real_processes_exit_with_one_message(damaged, run: Path, tmp_path: Path) -> None:
    figure = tmp_path / "figure.png"
    figure.write_bytes(b"an earlier figure")
    image = tmp_path / "image.png"
    PIL_Image.fromarray(np.zeros((16, 16, 3), np.uint8)).save(image)
    cases = [
        (["-m", "npvit.evaluate", str(damaged["npy-renamed"][0])], "single .npy array"),
        (["-m", "npvit.predict", str(damaged["meta-list"][0]), str(image)], "metadata is a JSON list"),
        (["-m", "npvit.visualize", "pos-embed", str(run), "--dpi", "100000", "--out", str(figure)],
         "argument --dpi: expected a number > 0 and <= 1200, got '100000'"),
    ]
    for args, message in cases:
        proc = run_python(*args)
        assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
        assert message in proc.stderr and proc.stdout == ""
    assert figure.read_bytes() == b"an earlier figure"



def test_evaluate_json_is_strict_json_even_for_nan(damaged, capsys) -> None:
    path, _ = damaged["nan-weights-ok"]
    assert evaluate_cli.main([str(path), "--json"]) == 0
    captured = capsys.readouterr()

    def refuse(token: str) -> None:
        raise AssertionError(f"bare {token} in the JSON output")

    doc = json.loads(captured.out, parse_constant=refuse)
    assert doc["loss"] is None and doc["top1"] is not None
    assert captured.err.startswith("warning: not finite, written as null: loss")


def test_evaluate_accepts_a_run_folder(run: Path, capsys) -> None:
    assert evaluate_cli.main([str(run / "best.npz"), "--json"]) == 0
    from_file = json.loads(capsys.readouterr().out)
    assert evaluate_cli.main([str(run), "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == from_file
    assert evaluate_cli.main([str(run.parent)]) == 2  # a folder with no checkpoint: one message
    one_error_line(capsys.readouterr().err, "holds no checkpoint (best.npz or last.npz)")


def test_hostile_npz_members_allocate_nothing(run: Path, tmp_path: Path) -> None:
    good = (run / "best.npz").read_bytes()
    # A member whose .npy header declares 10^12 floats but which holds a few bytes.
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(header, {"descr": "<f8", "fortran_order": False, "shape": (10**12,)})
    lying = tmp_path / "lying.npz"
    with zipfile.ZipFile(lying, "w") as zf:
        zf.writestr("meta.npy", _member(np.array(json.dumps({"format_version": 1}))))
        zf.writestr("param/x.npy", header.getvalue() + b"\0" * 64)
    with pytest.raises(CheckpointError, match=r"declares shape \(1000000000000,\)"):
        load_checkpoint(lying)
    # A compressed member that would inflate 1000 times: a zip bomb.
    bomb = tmp_path / "bomb.npz"
    with zipfile.ZipFile(bomb, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("meta.npy", _member(np.array(json.dumps({"format_version": 1}))))
        zf.writestr("param/x.npy", _member(np.zeros(4 << 20)))
    with pytest.raises(CheckpointError, match="more than the file can hold"):
        load_checkpoint(bomb)
    # A checkpoint saved compressed (np.savez_compressed) is still read.
    ckpt = load_checkpoint(run / "best.npz")
    packed = tmp_path / "packed.npz"
    np.savez_compressed(packed, meta=np.array(json.dumps(ckpt.meta)),
                        **{f"param/{k}": v for k, v in ckpt.params.items()})
    again = load_checkpoint(packed)
    assert all(np.array_equal(again.params[k], v) for k, v in ckpt.params.items())
    assert (run / "best.npz").read_bytes() == good


def _member(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, array)
    return buf.getvalue()


def test_param_count_matches_the_model() -> None:
    import dataclasses

    for config in (npvit.ViTConfig.tiny(), npvit.ViTConfig.small(), npvit.ViTConfig.keras(),
                   dataclasses.replace(npvit.ViTConfig.tiny(), pool="cls", num_heads=3, key_dim=5),
                   dataclasses.replace(npvit.ViTConfig.tiny(), pool="gap", head_units=())):
        assert config.num_params() == npvit.ViT(config, threads=1).num_params()

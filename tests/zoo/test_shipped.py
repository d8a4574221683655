"""The models the package really ships (``npvit/zoo/NAME/``): each loads, is what its metrics.json and the README
say (parameters, classes, test top-1), and computes the logits recorded for its seeded check batch. The test
accuracy is measured again where a CIFAR-10 copy is at hand (``$NPVIT_CIFAR10_DIR``, or ``../shared/data``)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import npvit
from npvit import zoo
from npvit.zoo.ship import check_logits

ROOT = Path(__file__).resolve().parents[2]
PACKAGE_ZOO = ROOT / "npvit" / "zoo"
SHIPPED = zoo.list_pretrained(PACKAGE_ZOO)
SHARED_DATA = ROOT.parent / "shared" / "data"

pytestmark = pytest.mark.skipif(not SHIPPED, reason="the package ships no pretrained model yet (npvit/zoo/ holds "
                                "none): python -m npvit.export RUN --pretrained cifar10 --half --data-dir PATH adds one")


@pytest.fixture(autouse=True)
def package_registry(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(zoo.ROOT_ENV, raising=False)


def metrics_of(name: str) -> dict:
    return json.loads((PACKAGE_ZOO / name / "metrics.json").read_text())


@pytest.mark.parametrize("name", SHIPPED)
def test_it_is_what_its_metrics_and_the_readme_say(name: str) -> None:
    loaded, metrics = npvit.pretrained(name), metrics_of(name)
    assert loaded.model.num_params() == metrics["parameters"]
    assert loaded.class_names == metrics["classes"]
    assert sum((PACKAGE_ZOO / name / f).stat().st_size for f in zoo.FILES) <= zoo.MAX_BYTES
    assert metrics["test"] is not None and metrics["command"].startswith("python -m npvit.export ")
    readme = (ROOT / "README.md").read_text()
    if f"pretrained:{name}" in readme:  # the README's figures are the measured ones
        assert f"{metrics['parameters']:,}" in readme, "README: the shipped model's parameter count"
        assert f"{100 * metrics['test']['top1']:.2f}%" in readme, "README: the shipped model's test top-1"


@pytest.mark.parametrize("name", SHIPPED)
def test_it_classifies_the_check_batch_as_recorded(name: str) -> None:
    check = metrics_of(name)["check"]
    first, second = check_logits(npvit.pretrained(name)), check_logits(npvit.load(f"pretrained:{name}"))
    np.testing.assert_array_equal(first, second)  # deterministic
    # Another machine's BLAS sums in another order: equal to float32 rounding, and the same classes wherever
    # the recorded top two are not within that rounding of each other.
    recorded = np.asarray(check["logits"])
    np.testing.assert_allclose(first, recorded, rtol=1e-4, atol=1e-4)
    top2 = np.sort(recorded, axis=1)[:, -2:]
    clear = top2[:, 1] - top2[:, 0] > 1e-3
    assert (first.argmax(axis=1)[clear] == np.asarray(check["predictions"])[clear]).all()


def cifar10_copy(tmp_path_factory: pytest.TempPathFactory) -> Path | None:
    """``$NPVIT_CIFAR10_DIR``, else the copy ``../shared/data/build_cifar10.py`` builds (15 s), else None."""
    if os.environ.get("NPVIT_CIFAR10_DIR"):
        return Path(os.environ["NPVIT_CIFAR10_DIR"])
    script = SHARED_DATA / "build_cifar10.py"
    if not script.is_file():
        return None
    out = tmp_path_factory.mktemp("cifar10")
    subprocess.run([sys.executable, str(script), "--out", str(out)], check=True, capture_output=True)
    return out / "cifar-10-batches-bin"


@pytest.mark.parametrize("name", [n for n in SHIPPED if metrics_of(n)["dataset"] == "cifar10"])
def test_evaluate_gives_the_recorded_top1(name: str, tmp_path_factory: pytest.TempPathFactory, capsys) -> None:
    from npvit.evaluate import main as evaluate_main

    data = cifar10_copy(tmp_path_factory)
    if data is None:
        pytest.skip("no CIFAR-10 copy here: set NPVIT_CIFAR10_DIR (or have ../shared/data) to measure the accuracy")
    assert evaluate_main([f"pretrained:{name}", "--data-dir", str(data), "--json"]) == 0
    top1 = json.loads(capsys.readouterr().out)["top1"]
    assert f"{100 * top1:.2f}" == f"{100 * metrics_of(name)['test']['top1']:.2f}"  # as the README shows it

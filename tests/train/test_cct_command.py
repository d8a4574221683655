"""The compact transformer through the commands: the training flags, the run's checkpoint and config read back
(and resumed), evaluation, the attention figure, and clear refusals where a conv model has no meaning."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from training_runs import TINY

import npvit
from npvit.settings import UsageError, build_parser, model_config, resolve_settings
from npvit.train import command as train_cli

CCT_FLAGS = ["--tokenizer", "conv", "--conv-channels", "4,8", "--pool", "seq"]


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("runs") / "cct"
    assert train_cli.main([*TINY, *CCT_FLAGS, "--out", str(out)]) == 0
    return out


def settings_of(argv: list[str]) -> dict:
    return resolve_settings(vars(build_parser().parse_args(argv)))[0]


def test_flags_build_the_config() -> None:
    cfg = model_config(settings_of(["--preset", "fast", "--tokenizer", "conv", "--conv-channels", "32,64",
                                    "--pool", "seq"]), 10)
    assert (cfg.tokenizer, cfg.conv_channels, cfg.pool, cfg.num_tokens) == ("conv", (32, 64), "seq", 64)
    assert model_config(settings_of(["--preset", "compact"]), 10) == npvit.ViTConfig.compact()
    with pytest.raises(UsageError, match='model setting tokenizer "conv" needs conv_channels'):
        model_config(settings_of(["--preset", "fast", "--tokenizer", "conv"]), 10)
    with pytest.raises(UsageError, match="belongs to tokenizer \"conv\""):
        model_config(settings_of(["--preset", "fast", "--conv-channels", "8"]), 10)
    with pytest.raises(SystemExit):
        build_parser().parse_args(["--conv-channels", "8,0"])  # refused by its argument type


def test_run_saves_and_loads_the_conv_model(run: Path) -> None:
    doc = json.loads((run / "config.json").read_text())
    assert doc["run"]["tokenizer"] == "conv" and doc["run"]["conv_channels"] == [4, 8]
    loaded = npvit.load(run)
    cfg = loaded.model.config
    assert (cfg.tokenizer, cfg.conv_channels, cfg.pool) == ("conv", (4, 8), "seq")
    assert "tokenizer.conv1.w" in loaded.model.params and "attention_pool.w" in loaded.model.params
    start = npvit.ViT(cfg, seed=0).params  # the run's seed: training moved every weight from there
    for name, p in loaded.model.params.items():
        assert np.abs(p - start[name]).max() > 0, name


def test_resume_keeps_the_tokenizer(run: Path) -> None:
    settings, _ = resolve_settings({"resume": str(run), "epochs": 2})
    assert (settings["tokenizer"], settings["conv_channels"]) == ("conv", (4, 8))
    with pytest.raises(UsageError, match="cannot change --conv-channels"):
        resolve_settings({"resume": str(run), "conv_channels": (4, 4)})


def test_attention_figure_and_refusals(run: Path, tmp_path: Path, capsys) -> None:
    pytest.importorskip("matplotlib")
    from npvit.visualize.__main__ import main as visualize

    assert visualize(["attention", str(run), "--out", str(tmp_path / "a.png"), "--dpi", "40"]) == 0
    for figure in ("filters", "patches"):
        assert visualize([figure, str(run), "--out", str(tmp_path / "x.png")]) == 2
        err = capsys.readouterr().err
        assert "convolutional tokenizer" in err and "Traceback" not in err
    assert not (tmp_path / "x.png").exists()

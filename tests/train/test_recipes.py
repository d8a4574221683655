"""Named recipes (npvit.recipes): defaults for the settings of a run, below the flags a user gives."""

from __future__ import annotations

import dataclasses
import json

import pytest

from npvit import settings as settings_module
from npvit.train import command as train_cli
from npvit.config import PRESETS, ViTConfig
from npvit.model import ViT
from npvit.recipes import RECIPES
from npvit.settings import BY_NAME, DEFAULTS, UsageError, build_parser, check_value, model_config, resolve_settings


def resolve(*argv: str) -> dict:
    return resolve_settings(vars(build_parser().parse_args(list(argv))))[0]


def test_the_keras_recipe_is_the_table_of_defaults() -> None:
    # The Keras example stays the default run: no recipe, and --recipe keras, change nothing.
    assert RECIPES["keras"] == {}
    plain, keras = resolve(), resolve("--recipe", "keras")
    assert plain == keras
    assert {k: v for k, v in plain.items() if k != "out"} == {k: v for k, v in DEFAULTS.items() if k != "out"}


def test_every_recipe_value_is_a_setting_the_command_line_would_accept() -> None:
    for name, recipe in RECIPES.items():
        for key, value in recipe.items():
            assert key in BY_NAME, f"recipe {name}: {key} is not a setting"
            assert check_value(BY_NAME[key], value) == value, f"recipe {name}: {key}={value!r}"


def test_fast_recipe_sets_its_values_and_flags_given_win() -> None:
    fast = resolve("--dataset", "cifar10", "--recipe", "fast")
    for key, value in RECIPES["fast"].items():
        assert fast[key] == value, key
    assert fast["out"].endswith("cifar10-fast")
    assert model_config(fast, 10) == ViTConfig.fast(10)
    longer = resolve("--dataset", "cifar10", "--recipe", "fast", "--epochs", "60", "--crop-padding", "2",
                     "--projection-dim", "128")
    assert longer["epochs"] == 60 and longer["crop_padding"] == 2 and longer["batch_size"] == 128
    assert model_config(longer, 10).dim == 128 and model_config(longer, 10).pool == "gap"
    hundred = resolve("--dataset", "cifar100", "--recipe", "fast")  # the CIFAR-100 variant: 100 outputs
    assert model_config(hundred, 100) == ViTConfig.fast(100) and hundred["out"].endswith("cifar100-fast")


def test_every_switch_a_recipe_turns_on_can_be_turned_off_and_back() -> None:
    switches = [s.name for s in BY_NAME.values() if s.kind == "bool"]
    assert {"flip", "exclude_from_decay", "eval_flip", "download", "quiet"} <= set(switches)
    for name in switches:
        flag = "--" + name.replace("_", "-")
        assert resolve(flag)[name] is True and resolve("--no-" + flag[2:])[name] is False, name
    assert resolve("--recipe", "fast", "--no-exclude-from-decay")["exclude_from_decay"] is False
    assert resolve("--recipe", "fast")["exclude_from_decay"] is True


def test_unknown_recipe_is_refused(capsys) -> None:
    with pytest.raises(SystemExit):
        build_parser().parse_args(["--recipe", "fastest"])
    assert "invalid choice: 'fastest'" in capsys.readouterr().err


def test_fast_model_is_what_its_docstring_says() -> None:
    cfg = ViTConfig.fast()
    assert PRESETS["fast"] == ViTConfig.fast
    assert (cfg.image_size, cfg.patch_size, cfg.num_tokens, cfg.dim, cfg.depth, cfg.num_heads) == (32, 4, 64, 64, 6, 2)
    assert cfg.pool == "gap" and cfg.head_units == () and cfg.gelu == "tanh"
    assert cfg.attention_fans == "receptive" and "receptive-field fans" in ViTConfig.fast.__doc__
    count = sum(p.size for p in ViT(cfg, dtype="float64").params.values())
    assert count == cfg.num_params() == 208_842
    assert f"{count:,} trainable parameters" in ViTConfig.fast.__doc__


def test_a_fast_run_records_its_settings_and_resumes_with_them(tmp_path) -> None:
    out = tmp_path / "run"
    small = ["--dataset", "synthetic", "--synthetic-size", "96,32", "--synthetic-classes", "4", "--quiet",
             "--recipe", "fast", "--projection-dim", "8", "--num-heads", "2", "--key-dim", "4",
             "--transformer-layers", "1", "--batch-size", "32", "--warmup-steps", "2", "--out", str(out)]
    assert train_cli.main([*small, "--epochs", "1"]) == 0
    run = json.loads((out / "config.json").read_text())["run"]
    assert run["recipe"] == "fast" and run["crop_padding"] == 4 and run["lr_schedule"] == "cosine"
    # Resuming reads the recorded values; the recipe cannot be swapped under a run.
    assert train_cli.main(["--resume", str(out), "--epochs", "2", "--quiet"]) == 0
    with pytest.raises(UsageError, match="cannot change --recipe"):
        settings_module.resolve_settings({"resume": str(out), "recipe": "keras"})


def test_a_resumed_run_keeps_the_model_it_recorded_when_its_preset_changes(tmp_path, monkeypatch, capsys) -> None:
    # The fast preset changed from width 96 to width 64 once; a run started before must resume as it began.
    out = tmp_path / "run"
    small = ["--dataset", "synthetic", "--synthetic-size", "96,32", "--synthetic-classes", "4", "--quiet",
             "--preset", "tiny", "--batch-size", "32", "--out", str(out)]
    assert train_cli.main([*small, "--epochs", "1"]) == 0
    recorded = json.loads((out / "config.json").read_text())["model"]
    wider = lambda num_classes=5: dataclasses.replace(ViTConfig.tiny(num_classes), dim=12, mlp_units=(12, 12))
    monkeypatch.setitem(PRESETS, "tiny", wider)
    assert model_config(resolve(*small), 4) != ViTConfig.from_dict(recorded)
    assert train_cli.main(["--resume", str(out), "--epochs", "2", "--quiet"]) == 0
    assert json.loads((out / "config.json").read_text())["model"] == recorded
    assert [json.loads(line)["epoch"] for line in (out / "metrics.jsonl").read_text().splitlines()] == [1, 2]
    # A config.json whose model entry is damaged is a clear error, not a traceback.
    doc = json.loads((out / "config.json").read_text())
    (out / "config.json").write_text(json.dumps(dict(doc, model=dict(recorded, depth="two"))))
    assert train_cli.main(["--resume", str(out), "--epochs", "3", "--quiet"]) == 2
    err = capsys.readouterr().err
    assert 'its "model" entry is not a model config' in err and "Traceback" not in err


def test_the_compact_recipes_are_the_fast_settings_on_the_runs_they_reproduce() -> None:
    # --recipe cct and --recipe compact are the commands of the 2-hour and 1-hour runs in docs/training.md
    # (which ran as --recipe fast with model flags, the 2-hour one's test-time shifts given on its resume): the
    # same settings and the same model.
    fast = resolve("--dataset", "cifar10", "--recipe", "fast")
    cct = resolve("--dataset", "cifar10", "--recipe", "cct")
    ran_as = resolve("--dataset", "cifar10", "--recipe", "fast", "--preset", "compact", "--conv-channels", "64,128",
                     "--projection-dim", "128", "--transformer-layers", "2", "--num-heads", "2", "--key-dim", "64",
                     "--transformer-units", "128,128", "--epochs", "60", "--eval-shift", "1")
    assert model_config(cct, 10) == model_config(ran_as, 10) == ViTConfig.cct(10)
    assert cct["epochs"] == ran_as["epochs"] == 60 and cct["out"].endswith("cifar10-cct")
    assert cct["eval_shift"] == ran_as["eval_shift"] == 1 and fast["eval_shift"] == 0
    compact = resolve("--dataset", "cifar10", "--recipe", "compact")
    assert model_config(compact, 10) == ViTConfig.compact(10) and compact["epochs"] == 40
    for run in (cct, compact):
        differ = {k for k in fast if k not in ("preset", "epochs", "out", "recipe", "eval_shift") and run[k] != fast[k]}
        assert not differ, differ
    assert compact["eval_shift"] == 0
    count = sum(p.size for p in ViT(ViTConfig.cct(), dtype="float64").params.values())
    assert count == ViTConfig.cct().num_params() == 284_490
    assert f"{count:,} trainable parameters" in ViTConfig.cct.__doc__


def test_the_help_text_names_every_recipe() -> None:
    text = build_parser().format_help()  # argparse expands % in help strings: a stray one breaks --help
    for name in RECIPES:
        assert name in text, name

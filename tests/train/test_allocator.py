"""The allocator tuning of the command-line tools (npvit.cli.allocator): applied once, on glibc only, by training."""

from __future__ import annotations

import platform

import pytest

from npvit.train import command as train_cli
from npvit.cli import allocator

from training_runs import run

ON_GLIBC = platform.libc_ver()[0] == "glibc"


@pytest.fixture
def fresh(monkeypatch):
    """keep_freed_memory as if no call had happened yet in this process."""
    monkeypatch.setattr(allocator, "_DONE", None)


@pytest.mark.skipif(not ON_GLIBC, reason="mallopt is glibc's; elsewhere keep_freed_memory returns False")
def test_glibc_accepts_every_setting(fresh) -> None:
    assert allocator.keep_freed_memory() is True


def test_only_the_first_call_acts(fresh, monkeypatch) -> None:
    calls = []
    monkeypatch.setattr(allocator, "_mallopt", lambda param, value: calls.append((param, value)) or True)
    assert allocator.keep_freed_memory() is True
    assert allocator.keep_freed_memory() is True
    assert calls == list(allocator.SETTINGS)


def test_every_value_fits_mallopts_int() -> None:
    assert all(-2**31 <= value < 2**31 for _, value in allocator.SETTINGS)


def test_other_c_libraries_are_left_alone(fresh, monkeypatch) -> None:
    monkeypatch.setattr(platform, "libc_ver", lambda *args, **kwargs: ("", ""))
    assert allocator.keep_freed_memory() is False


def test_a_refused_setting_is_reported(fresh, monkeypatch) -> None:
    monkeypatch.setattr(allocator, "_mallopt", lambda param, value: param != allocator.M_TOP_PAD)
    assert allocator.keep_freed_memory() is False


def test_training_on_numpy_keeps_freed_memory(tmp_path, monkeypatch) -> None:
    calls = []
    monkeypatch.setattr(train_cli, "keep_freed_memory", lambda: calls.append(1) or True)
    status, _ = run(tmp_path, "run", "--epochs", "1")
    assert status == 0 and calls == [1]


def test_evaluate_on_numpy_keeps_freed_memory(tmp_path, monkeypatch, capsys) -> None:
    from npvit import evaluate as evaluate_cli

    status, _ = run(tmp_path, "run", "--epochs", "1")
    calls = []
    monkeypatch.setattr(evaluate_cli, "keep_freed_memory", lambda: calls.append(1) or True)
    assert status == 0 and evaluate_cli.main([str(tmp_path / "run"), "--json"]) == 0 and calls == [1]

"""Bad settings and flags on the command line: one message and exit status 2 (3 for out of memory), never a
traceback; bugs keep theirs."""

from __future__ import annotations

from pathlib import Path

import pytest
from fault_checks import one_error_line
from training_runs import TINY

from npvit.train import command as train_cli
from npvit.cli.args import bounded, positive
from npvit.cli.status import run_command
from npvit.data import DataError

pytestmark = pytest.mark.usefixtures("private_cache")  # no test touches the real dataset cache


def test_bad_run_settings_from_the_command_line_are_one_message(tmp_path: Path, capsys) -> None:
    out = tmp_path / "out"
    for flags, message in [(["--synthetic-size", "5"], "synthetic_size (--synthetic-size) must be two integers"),
                           (["--dataset", "cifar10", "--label-mode", "coarse", "--no-download"],
                            "only CIFAR-100 has coarse labels")]:
        args = [*TINY, "--out", str(out), *flags]
        assert train_cli.main(args) == 2
        one_error_line(capsys.readouterr().err, message)
    assert not out.exists() or list(out.iterdir()) == []


def test_flags_refuse_non_finite_numbers() -> None:
    import argparse

    for text in ("inf", "nan", "-inf", "1e999"):
        with pytest.raises(argparse.ArgumentTypeError):
            positive(text)
    assert positive("1e-3") == 1e-3 and bounded(0, 10)("10") == 10.0
    with pytest.raises(argparse.ArgumentTypeError, match="a number > 0 and <= 10"):
        bounded(0, 10)("0")


def test_expected_errors_are_one_line_and_bugs_keep_their_traceback(capsys) -> None:
    assert run_command(lambda: (_ for _ in ()).throw(DataError("no data")), (DataError,)) == 2
    assert capsys.readouterr().err == "error: no data\n"
    assert run_command(lambda: (_ for _ in ()).throw(MemoryError()), (DataError,), "; try less") == 3
    assert capsys.readouterr().err == "error: out of memory; try less\n"
    assert run_command(lambda: (_ for _ in ()).throw(BrokenPipeError()), (OSError,)) == 141  # `| head`: quiet
    assert capsys.readouterr().err == ""
    with pytest.raises(ZeroDivisionError):
        run_command(lambda: 1 // 0, (DataError,))

"""The demo command runs a real training step end to end."""

from __future__ import annotations

import pytest

from npvit import demo


def test_demo_runs_and_prints_losses(capsys: pytest.CaptureFixture[str]) -> None:
    assert demo.main(["--preset", "tiny", "--batch", "4", "--steps", "2"]) == 0
    out = capsys.readouterr().out
    assert "step 1/2  loss" in out and "step 2/2  loss" in out


def test_demo_rejects_bad_flags(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        demo.main(["--batch", "0"])
    assert "expected a positive integer" in capsys.readouterr().err

"""The model's thread pool without threadpoolctl: shards run one at a time (never oversubscribed) and it
says so once; with it, one pool and the same numbers."""

from __future__ import annotations

import pytest
from processes import run_python

pytestmark = pytest.mark.usefixtures("private_cache")  # no test touches the real dataset cache


WITHOUT_THREADPOOLCTL = """
import sys
if sys.argv[1] == "hidden":
    sys.modules["threadpoolctl"] = None  # import threadpoolctl now raises ImportError
import numpy as np
import npvit
from npvit import parallel
cfg = npvit.ViTConfig.tiny()
x = np.random.default_rng(0).standard_normal((8, cfg.image_size, cfg.image_size, 3))
one = npvit.ViT(cfg, dtype="float64", threads=1).forward(x)
two = npvit.ViT(cfg, dtype="float64", threads=2)
out = [two.forward(x) for _ in range(3)]
assert all(np.allclose(o, one, rtol=1e-12, atol=1e-12) for o in out), "shards changed the numbers"
print("pools", len(parallel._POOLS))
"""


@pytest.mark.parametrize("threadpoolctl", ["hidden", "installed"])
def test_without_threadpoolctl_shards_run_one_at_a_time_and_it_says_so_once(threadpoolctl: str) -> None:
    if threadpoolctl == "installed":
        pytest.importorskip("threadpoolctl")
    proc = run_python("-c", WITHOUT_THREADPOOLCTL, threadpoolctl)
    assert proc.returncode == 0, proc.stderr
    if threadpoolctl == "hidden":
        assert proc.stdout.strip() == "pools 0"  # no thread pool: never side by side
        assert proc.stderr.count("threadpoolctl is not installed") == 1
        assert "pip install threadpoolctl" in proc.stderr and "one after another" in proc.stderr
    else:
        assert proc.stdout.strip() == "pools 1" and "threadpoolctl" not in proc.stderr

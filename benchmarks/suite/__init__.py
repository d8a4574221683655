"""npvit benchmark suite: kernels, end to end, sequence length and matmul peak, side by side with PyTorch.

One job per module; ``benchmarks/run.py`` is the command line and documents what is measured and how.

=================  ===================================================================================
``threads``        thread-count variables, set before NumPy and torch load (imports nothing heavy)
``timing``         timers: alternating contenders, a (forward, backward) loop, the phases of a step
``context``        the sizes of a run (``Settings``, ``SETTINGS``) and what every section gets (``Ctx``)
``peer``           PyTorch and the torch reference model, or ``None`` where torch is not installed
``batch``          the random input batch of a config
``runners``        one model, optimizer and batch per framework, with a timed step and forward
``flops``          FLOP counts of the Vision Transformer
``peak``           section ``peak``: the matrix-multiply peak
``kernels``        section ``kernels``: every kernel of a training step, as measurable cases
``e2e``            section ``e2e``: training and inference images/s, utilisation, peak memory
``seqlen``         section ``seqlen``: step time against the number of tokens, and its quadratic fit
``memory``         peak memory of one (framework, preset, batch), measured in a fresh process
``environment``    the machine, the libraries and their thread counts
``tables``         markdown tables of every section, the header and the noise report
``cli``            the argument parser and ``main``: runs the chosen sections, prints, writes the JSON
=================  ===================================================================================

The modules import each other relatively; ``benchmarks/`` must be on ``sys.path`` (``run.py`` puts it there).
"""

from __future__ import annotations

import os
from pathlib import Path

BENCHMARKS = Path(os.path.abspath(__file__)).parent.parent  # the benchmarks/ folder
ROOT = BENCHMARKS.parent  # the checkout, holding npvit/
DESCRIPTION = __doc__.splitlines()[0]  # the first line of --help
RUN_PY = BENCHMARKS / "run.py"  # the command line; memory probes run it again in a fresh process

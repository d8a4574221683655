"""The training program: ``python -m npvit.train`` (see ``--help``).

    command.py   the command line: flags, exit status, the ranks' fault handling, then train()
    run.py       Run: a run's model, data, optimizer and run folder, and its epoch loop
    step.py      one optimizer step and the running sums it leaves on the device
    state.py     the training state a checkpoint records (epoch, step, best, totals)
    folder.py    the run folder: lock, config.json, metrics.jsonl, summary.json
    memory.py    the memory a run will need, checked before it starts
    signals.py   Ctrl-C and SIGTERM: finish the step, save, stop
"""

from .command import DEFAULTS, RESUMABLE, UsageError, build_parser, main, model_config, resolve_settings, train

__all__ = ["DEFAULTS", "RESUMABLE", "UsageError", "build_parser", "main", "model_config", "resolve_settings",
           "train"]

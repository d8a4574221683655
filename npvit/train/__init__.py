"""The training program: ``python -m npvit.train`` (see ``--help``).

    command.py      the command line: flags, exit status, the ranks' fault handling, then train()
    trainer.py      Trainer: a run's settings, folder, data, model, optimizer and EMA; restore and save
    loop.py         the epoch loop: the learning rate of each step, reads, validation, the final test
    step.py         one optimizer step and the running sums it leaves on the device
    evaluation.py   a split evaluated across the ranks
    state.py        the training state a checkpoint records (epoch, step, best, totals)
    folder.py       the run folder: lock, config.json, metrics.jsonl and .csv, summary.json
    tensorboard.py  --tensorboard: event files of the same numbers
    memory.py       the memory a run will need, checked before it starts
    signals.py      Ctrl-C and SIGTERM: finish the step, save, stop
"""

from .command import DEFAULTS, RESUMABLE, UsageError, build_parser, main, model_config, resolve_settings, train

__all__ = ["DEFAULTS", "RESUMABLE", "UsageError", "build_parser", "main", "model_config", "resolve_settings",
           "train"]

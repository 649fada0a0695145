"""The command line behind ``train.py``: fit, then test the best checkpoint.

``python train.py --config configs/quickstart.yaml [--trainer.max_epochs 3] [--ckpt_path last]``

Every key of the YAML can be overridden on the command line. ``data.num_classes`` and ``data.in_chans`` are linked
into the model, so a config states them once (in the datamodule). Runs log to ``runs/<config name>/version_N``
(``run.json``: the config file and the hash of its experiment; CSV metrics, the resolved config, ``checkpoints/``
with the best and the last checkpoint; a config whose stem another config file already uses gets
``runs/<stem>-<hash of its path>``, see ``cvattn.runs``); the ``checkpoint``
section configures that ``ModelCheckpoint`` (``cvattn.checkpoint.LastCheckpoint``, whose ``last.ckpt`` is always the
newest state), e.g. ``checkpoint: {every_n_train_steps: 500}``. With ``--trainer.logger false`` a run still gets its
``version_N``, for the config and the checkpoints; ``--trainer.fast_dev_run true`` writes nothing.

``--ckpt_path last`` resumes from the newest ``version_N`` of the config that holds a ``last.ckpt`` and goes on
logging into it, after checking that the run is of the same experiment and that the checkpoint fits the model,
optimiser and schedule; the run's metrics.csv and config.yaml change only once training has resumed. On CPU the
resumed run ends bitwise where an uninterrupted one would (docs/distributed.md).
A run stopped by SIGTERM (a scheduler's time limit) says so and exits with 143, not 0.
The configs run unchanged on several devices: ``--trainer.devices 4 --trainer.strategy ddp``.

Bad input (malformed YAML, an unknown key, a bad value, a missing or foreign file, an unwritable run directory)
ends with one ``error: ...`` paragraph on stderr and exit code 1, and leaves no half-made run directory behind: a
failed run without a checkpoint removes exactly the folders it created, never one that existed before.

The parts live in library modules: the parser and its trainer defaults in ``cvattn.config``, the run directories in
``cvattn.runs``, the checkpoint files and callbacks in ``cvattn.checkpoint``, the CSV logger in
``cvattn.lightning.loggers``; this module only runs them.
"""
from __future__ import annotations

import signal
import sys
from pathlib import Path
from typing import NoReturn

from lightning.pytorch.utilities.exceptions import MisconfigurationException, SIGTERMException

from cvattn.checkpoint import check_checkpoint_fits, load_checkpoint
from cvattn.config import build_cli
from cvattn.lightning.loggers import ContinuingCSVLogger
from cvattn.runs import check_writable, first_missing, remove_partial_run, write_run_record

# Errors that mean "the input is wrong", reported as one paragraph; anything else is a bug and keeps its traceback.
INPUT_ERRORS = (ValueError, OSError, FloatingPointError, MisconfigurationException)


def main(argv: list[str] | None = None) -> None:
    """Train then test; ``argv`` defaults to the command line."""
    try:
        cli = build_cli(argv)
    except (*INPUT_ERRORS, TypeError) as err:  # TypeError here: a config argument the constructor does not take
        _fail(err)
    trainer = cli.trainer
    # No run directory of its own (fast_dev_run): the root dir, where nothing is written.
    run_dir = Path(trainer.log_dir or trainer.default_root_dir)
    created = first_missing(run_dir)   # what this run creates, and all that a failure may remove
    try:
        check_writable(run_dir)
        ckpt_path = cli.config.get("ckpt_path")
        if ckpt_path is not None:
            checkpoint = load_checkpoint(ckpt_path)
            check_checkpoint_fits(checkpoint, cli.model, ckpt_path)
            if created is None and isinstance(trainer.logger, ContinuingCSVLogger):
                # Rows from the checkpoint's step on are logged again; dropped at the resumed run's first row.
                trainer.logger.forget_from_step = checkpoint["global_step"]
        if created is not None and trainer.is_global_zero:
            write_run_record(run_dir, cli.config_file, cli.experiment)
        try:
            trainer.fit(cli.model, datamodule=cli.datamodule, ckpt_path=ckpt_path)
        except SIGTERMException:
            # Lightning stops cleanly on SIGTERM but exits 0, which tells a scheduler or a script the run finished.
            last = trainer.checkpoint_callback.last_model_path if trainer.checkpoint_callback else ""
            resume = (f"resume from {last} with the same command plus --ckpt_path last" if last else
                      "no checkpoint was saved yet, so running the command again starts over")
            print(f"error: training was stopped by SIGTERM before it ended and no test was run; {resume}.",
                  file=sys.stderr)
            raise SystemExit(128 + signal.SIGTERM) from None
        # Read before testing: loading the best checkpoint restores the callback's state as it was then.
        checkpoint = trainer.checkpoint_callback
        best = checkpoint.best_model_path if checkpoint is not None else ""
        last = checkpoint.last_model_path if checkpoint is not None else ""
        trainer.test(cli.model, datamodule=cli.datamodule, ckpt_path=best or None)
    except INPUT_ERRORS as err:
        if trainer.is_global_zero:
            remove_partial_run(run_dir, created)
        _fail(err)
    if trainer.is_global_zero:   # rank 0 wrote the files; no collective here, rank 1 may have exited
        _report(best, last, run_dir / "metrics.csv")


def _report(best: str, last: str, metrics: Path) -> None:
    """Print the paths of the run's files that exist (fast_dev_run, for one, writes none)."""
    print(f"\nbest checkpoint: {best if best and Path(best).is_file() else '(none saved)'}")
    if last and Path(last).is_file():
        print(f"last checkpoint: {last}")
    if metrics.is_file():
        print(f"metrics:         {metrics}")


def _fail(err: BaseException) -> NoReturn:
    message = str(err)
    if "Traceback (most recent call last)" in message:  # re-raised from a DataLoader worker: keep its last line
        message = message.strip().splitlines()[-1].split(": ", 1)[-1]
    if isinstance(err, OSError) and err.filename is not None:
        message = f"{err.strerror}: {err.filename}"
    print(f"error: {' '.join(message.split())}", file=sys.stderr)
    raise SystemExit(1)

"""Every private Lightning, jsonargparse and argparse detail cvattn relies on, in one place.

Each item says what it relies on and under which pin it was checked (``pyproject.toml``). ``tests/test_compat.py``
asserts each one still holds (the private methods exist with these signatures, the error texts still read this way
when provoked), so an upgrade that moves or renames one fails there, naming the pin, and not in a training run.
"""
from __future__ import annotations

import argparse
import csv
import re
from pathlib import Path

import lightning as L
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger
from lightning.pytorch.loggers.csv_logs import ExperimentWriter
from lightning.pytorch.loggers.logger import rank_zero_experiment

LIGHTNING_PIN = "lightning==2.6.6"
JSONARGPARSE_PIN = "jsonargparse==4.53.0"

__all__ = ["LIGHTNING_PIN", "JSONARGPARSE_PIN", "rank_zero_experiment", "ExperimentWriter", "MetricsKeepingWriter",
           "open_csv_experiment", "constructor_error",
           "saves_on_train_epoch_end", "skips_saving", "every_n_train_steps", "save_last_checkpoint", "parser_actions",
           "UNKNOWN_KEY", "CLASS_PATH", "PARSER_KEY", "MISSING_CLASS", "BAD_VALUE", "UNRECOGNIZED", "MISSING_FILE",
           "NOT_YAML", "YAML_POSITION", "GIVEN_VALUE", "UNION_VALUE", "UNEXPECTED_CONFIG"]


# --- Lightning's CSV logger (lightning==2.6.6) -----------------------------------------------------------------------
# ``ExperimentWriter`` (lightning.pytorch.loggers.csv_logs, not exported by lightning.pytorch.loggers) is the writer
# ``CSVLogger.experiment`` builds; ``rank_zero_experiment`` is the decorator that property carries (a dummy
# experiment on ranks other than 0).

class MetricsKeepingWriter(ExperimentWriter):
    """``ExperimentWriter`` that appends to an existing metrics.csv instead of deleting it: the file stays as it is
    until the first save, which appends (or, with new columns, rewrites it with the old rows first). With
    ``forget_from_step`` set (a resumed run), that first save first drops the rows logged at or after that step, which
    the resumed run logs again: the run's records change only once training has resumed and logged.

    Relies on ``ExperimentWriter.__init__(log_dir)`` calling ``self._check_log_dir_exists()`` after setting ``_fs``,
    ``metrics_file_path``, ``metrics`` and ``metrics_keys``, and on ``save()`` appending under ``metrics_keys`` when
    the file exists (lightning==2.6.6)."""

    forget_from_step: int | None = None

    def _check_log_dir_exists(self) -> None:
        if self._fs.isfile(self.metrics_file_path):
            with self._fs.open(self.metrics_file_path, "r", newline="") as file:
                self.metrics_keys = list(csv.DictReader(file).fieldnames or [])

    def save(self) -> None:
        if self.metrics and self.forget_from_step is not None:
            from cvattn.runs import forget_metrics_from
            forget_metrics_from(Path(self.metrics_file_path), self.forget_from_step)
            self.forget_from_step = None
        super().save()


def open_csv_experiment(logger: CSVLogger, writer: type[ExperimentWriter]) -> ExperimentWriter:
    """The body of ``CSVLogger.experiment`` with ``writer`` in place of ``ExperimentWriter``: the writer is made once,
    in ``logger.log_dir``, after making ``logger.root_dir``. Relies on ``CSVLogger._experiment`` (the cached writer,
    ``None`` until then) and ``CSVLogger._fs`` (its fsspec filesystem) (lightning==2.6.6)."""
    if logger._experiment is None:
        logger._fs.makedirs(logger.root_dir, exist_ok=True)
        logger._experiment = writer(log_dir=logger.log_dir)
    return logger._experiment


# --- ModelCheckpoint's private steps (lightning==2.6.6) --------------------------------------------------------------

def saves_on_train_epoch_end(callback: ModelCheckpoint, trainer: L.Trainer) -> bool:
    """Whether ``callback`` saves at the end of training epochs rather than after validation
    (``ModelCheckpoint._should_save_on_train_epoch_end(trainer)``)."""
    return callback._should_save_on_train_epoch_end(trainer)


def skips_saving(callback: ModelCheckpoint, trainer: L.Trainer) -> bool:
    """Whether nothing may be saved now: fast_dev_run, not fitting, sanity check, or this step already saved
    (``ModelCheckpoint._should_skip_saving_checkpoint(trainer)``)."""
    return callback._should_skip_saving_checkpoint(trainer)


def every_n_train_steps(callback: ModelCheckpoint) -> int:
    """The callback's ``every_n_train_steps`` (``ModelCheckpoint._every_n_train_steps``, 0 when unset)."""
    return callback._every_n_train_steps or 0


def save_last_checkpoint(callback: ModelCheckpoint, trainer: L.Trainer) -> None:
    """Write ``last.ckpt`` now (``ModelCheckpoint._save_last_checkpoint(trainer, monitor_candidates)`` with
    ``ModelCheckpoint._monitor_candidates(trainer)``, the metrics its file name may hold)."""
    callback._save_last_checkpoint(trainer, callback._monitor_candidates(trainer))


# --- argparse (the standard library; jsonargparse==4.53.0 subclasses it) ---------------------------------------------

def parser_actions(parser: argparse.ArgumentParser) -> list[argparse.Action]:
    """Every option of ``parser`` (``ArgumentParser._actions``: argparse has no public list of them)."""
    return list(parser._actions)


def constructor_error(err: BaseException) -> BaseException:
    """The error a class's constructor raised, out of jsonargparse's report on every type of the union it tried
    (jsonargparse==4.53.0 raises that report ``from`` the constructor's error); ``err`` itself when it is not one."""
    return err.__cause__ or err


# --- jsonargparse's error texts (jsonargparse==4.53.0) ---------------------------------------------------------------
# ``cvattn.config`` rewrites jsonargparse's nested parse errors into one paragraph by reading these parts of them.

# An unknown key: "Option 'model.init_args.lrr' is not accepted" (in a class's init_args, or at the top level),
# or "Group 'trainer' does not accept option 'max_epohcs'" (in a group of a class's arguments).
UNKNOWN_KEY = re.compile(r"Option '([\w.]+)' is not accepted|Group '(\w+)' does not accept option '(\w+)'")
# The class whose init_args were being parsed: "... class_path 'cvattn.lightning.ImageClassifier' ...".
CLASS_PATH = re.compile(r"class_path '([\w.]+)'")
# The section being parsed: 'Parser key "model": ...'.
PARSER_KEY = re.compile(r'Parser key "(\w+)"')
# A class_path naming a class its module lacks: "class_path 'a.B': module 'a' has no attribute 'B'".
MISSING_CLASS = re.compile(r"class_path '([\w.]+)':\s+module '([\w.]+)' has no attribute '(\w+)'")
# A value of the wrong type: 'Parser key "model": ... Parser key "lr": Expected a <class 'float'>. Got value: fast'.
BAD_VALUE = re.compile(r'Parser key "(\w+)":.*Parser key "(\w+)":\s+Expected a <class \'(\w+)\'>. Got value: (.*)',
                       re.DOTALL)
# An unknown command-line option (argparse's text, which jsonargparse passes on), matched at the start.
UNRECOGNIZED = re.compile(r"unrecognized arguments: (--[\w.]+)")
# A --config file that does not exist, matched at the start.
MISSING_FILE = re.compile(r'Parser key "config": File does not exist: (.*)')
# A config that is not YAML: "Problems parsing config: ..." with PyYAML's 'in "<unicode string>", line L, column C'.
NOT_YAML = re.compile(r"Problems parsing config")
YAML_POSITION = re.compile(r'\s*in "<unicode string>", (line \d+, column \d+)')
# Where jsonargparse starts echoing the whole value it was given, which the one paragraph leaves out.
GIVEN_VALUE = re.compile(r"\n\s*Given value")

# A value none of a Union's types accepts: 'Parser key "trainer.precision": Does not validate against any of the
# Union subtypes  Subtypes: [typing.Literal[64, 32, 16], ...] Errors: ... Given value: 17'.
UNION_VALUE = re.compile(r'Parser key "([\w.]+)":\s+Does not validate against any of the Union subtypes\s+'
                         r'Subtypes: \[(.*?)\]\s+Errors:.*Given value: (.*)', re.DOTALL)
# A config file that holds no mapping (an empty file): "Unexpected config: ", matched at the start.
UNEXPECTED_CONFIG = re.compile(r"Unexpected config")

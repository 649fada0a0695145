"""The command line behind ``train.py``: a LightningCLI that fits, then tests the best checkpoint.

``python train.py --config configs/quickstart.yaml [--trainer.max_epochs 3] [--ckpt_path last]``

Every key of the YAML can be overridden on the command line. ``data.num_classes`` and ``data.in_chans`` are linked
into the model, so a config states them once (in the datamodule). Runs log to ``runs/<config name>/version_N``
(CSV metrics, the resolved config, ``checkpoints/`` with the best and the last checkpoint); the ``checkpoint``
section configures that ``ModelCheckpoint`` (``cvattn.checkpoint.LastCheckpoint``, whose ``last.ckpt`` is always the
newest state), e.g. ``checkpoint: {every_n_train_steps: 500}``.

``--ckpt_path last`` resumes from the newest ``version_N`` of the config that holds a ``last.ckpt`` and goes on
logging into it; on CPU the resumed run ends bitwise where an uninterrupted one would (docs/distributed.md).
A run stopped by SIGTERM (a scheduler's time limit) says so and exits with 143, not 0.
The configs run unchanged on several devices: ``--trainer.devices 4 --trainer.strategy ddp``.

Bad input (malformed YAML, an unknown key, a bad value, a missing or foreign file, an unwritable run directory)
ends with one ``error: ...`` paragraph on stderr and exit code 1, and leaves no half-made run directory behind.
"""
from __future__ import annotations

import csv
import difflib
import importlib
import inspect
import os
import re
import shutil
import signal
import sys
import tempfile
from argparse import ArgumentError
from pathlib import Path
from typing import NoReturn

import lightning as L
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI
from lightning.pytorch.loggers import CSVLogger
from lightning.pytorch.loggers.csv_logs import ExperimentWriter
from lightning.pytorch.loggers.logger import rank_zero_experiment
from lightning.pytorch.utilities.exceptions import MisconfigurationException, SIGTERMException

from cvattn.checks import did_you_mean
from cvattn.checkpoint import ExactResume, LastCheckpoint, check_checkpoint_fits, load_checkpoint

# Errors that mean "the input is wrong", reported as one paragraph; anything else is a bug and keeps its traceback.
INPUT_ERRORS = (ValueError, OSError, FloatingPointError, MisconfigurationException)
# Config sections that jsonargparse reports as "Group '<name>' does not accept option ...", and what they configure.
GROUPS = {"trainer": L.Trainer, "checkpoint": LastCheckpoint}


class CvattnCLI(LightningCLI):
    """LightningCLI with ``--ckpt_path`` ('last': the newest run of this config), the ``checkpoint`` group
    (``LastCheckpoint``), the datamodule's ``num_classes`` and ``in_chans`` linked into the model, and parse and
    constructor errors rewritten to name the bad key or value and what is accepted."""

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.add_argument("--ckpt_path", type=str | None, default=None,
                            help="Resume from this checkpoint; 'last' resumes the newest run of this config.")
        parser.add_lightning_class_args(LastCheckpoint, "checkpoint")
        parser.set_defaults({"checkpoint.monitor": "val/acc", "checkpoint.mode": "max", "checkpoint.save_last": True,
                             "checkpoint.auto_insert_metric_name": False,
                             "checkpoint.filename": "epoch={epoch}-val_acc={val/acc:.4f}"})
        parser.link_arguments("data.num_classes", "model.init_args.num_classes", apply_on="instantiate")
        parser.link_arguments("data.in_chans", "model.init_args.in_chans", apply_on="instantiate")

    def parse_arguments(self, parser: LightningArgumentParser, args) -> None:
        try:
            super().parse_arguments(parser, args)
        except ArgumentError as err:
            raise ValueError(_explain_parse_error(str(err), parser)) from None

    def instantiate_classes(self) -> None:
        try:
            super().instantiate_classes()
        except (ValueError, TypeError) as err:
            # jsonargparse wraps a constructor's own error in a report on every type it tried: keep the cause.
            raise (err.__cause__ or err) from None

    def before_instantiate_classes(self) -> None:
        if self.config.get("ckpt_path") == "last":
            logger = self.config.trainer.logger
            if not {"save_dir", "name", "version"} <= set(vars(getattr(logger, "init_args", None) or {})):
                raise ValueError("--ckpt_path last looks for <save_dir>/<name>/version_N/checkpoints/last.ckpt, as the "
                                 "default CSV logger writes them; with this logger pass the checkpoint's path instead.")
            logger.init_args.version, checkpoint = _newest_last_checkpoint(
                Path(logger.init_args.save_dir) / logger.init_args.name)
            self.config.ckpt_path = str(checkpoint)


def main(argv: list[str] | None = None) -> None:
    """Train then test; ``argv`` defaults to the command line."""
    try:
        cli = _build_cli(argv)
    except (*INPUT_ERRORS, TypeError) as err:  # TypeError here: a config argument the constructor does not take
        _fail(err)
    trainer = cli.trainer
    # No logger (fast_dev_run, logger: false) means no run directory of its own: fall back to the root dir.
    log_dir = Path(trainer.log_dir or trainer.default_root_dir)
    resuming = log_dir.exists()
    try:
        _check_writable(log_dir)
        ckpt_path = cli.config.get("ckpt_path")
        if ckpt_path is not None:
            checkpoint = load_checkpoint(ckpt_path)
            check_checkpoint_fits(checkpoint, cli.model, ckpt_path)
            if resuming:
                _forget_rows_from(log_dir / "metrics.csv", checkpoint["global_step"])
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
        if trainer.is_global_zero and not resuming:
            _remove_partial_run(log_dir)
        _fail(err)
    if trainer.is_global_zero:
        print(f"\nbest checkpoint: {best or '(none saved)'}")
        if last:
            print(f"last checkpoint: {last}")
        if trainer.loggers:   # not trainer.log_dir: a collective, which rank 1 no longer joins here
            print(f"metrics:         {log_dir / 'metrics.csv'}")


def _build_cli(argv: list[str] | None) -> CvattnCLI:
    return CvattnCLI(
        L.LightningModule,
        L.LightningDataModule,
        subclass_mode_model=True,
        subclass_mode_data=True,
        run=False,
        args=argv,
        parser_kwargs={"exit_on_error": False},
        trainer_defaults={
            # Flushing at every logging step keeps metrics.csv complete up to the last checkpoint for resume.
            "logger": {"class_path": "cvattn.cli.ContinuingCSVLogger",
                       "init_args": {"save_dir": "runs", "name": _run_name(sys.argv[1:] if argv is None else argv),
                                     "flush_logs_every_n_steps": 1}},
            "callbacks": [ExactResume()],
            "plugins": {"class_path": "cvattn.checkpoint.AtomicCheckpointIO"},
        },
        save_config_kwargs={"overwrite": True},
    )


def _fail(err: BaseException) -> NoReturn:
    message = str(err)
    if "Traceback (most recent call last)" in message:  # re-raised from a DataLoader worker: keep its last line
        message = message.strip().splitlines()[-1].split(": ", 1)[-1]
    if isinstance(err, OSError) and err.filename is not None:
        message = f"{err.strerror}: {err.filename}"
    print(f"error: {' '.join(message.split())}", file=sys.stderr)
    raise SystemExit(1)


def _run_name(argv: list[str]) -> str:
    for i, arg in enumerate(argv):
        if arg in ("--config", "-c") and i + 1 < len(argv):
            return Path(argv[i + 1]).stem
        if arg.startswith("--config="):
            return Path(arg.split("=", 1)[1]).stem
    return "cvattn"


def _newest_last_checkpoint(root: Path) -> tuple[int, Path]:
    """``(N, root/version_N/checkpoints/last.ckpt)`` with the largest N."""
    found = {int(p.parent.parent.name[len("version_"):]): p for p in root.glob("version_*/checkpoints/last.ckpt")
             if p.parent.parent.name[len("version_"):].isdigit()}
    if not found:
        raise FileNotFoundError(f"--ckpt_path last found nothing to resume: no {root}/version_*/checkpoints/last.ckpt "
                                f"(a run of this config writes one at its first checkpoint). Train without "
                                f"--ckpt_path first, or pass the path of a checkpoint.")
    return max(found), found[max(found)]


def unwritable_ancestor(directory: Path) -> tuple[Path, str] | None:
    """``(the nearest existing folder or file on the way to directory, what is wrong with it)`` when ``directory``
    cannot be created or written to; ``None`` when it can."""
    existing = next(p for p in (directory, *directory.parents) if p.exists())
    if not existing.is_dir():
        return existing, "is not a directory"
    if not os.access(existing, os.W_OK | os.X_OK):
        return existing, "is not writable"
    return None


def _check_writable(log_dir: Path) -> None:
    """Fail before training if the run directory cannot be created, rather than after the first epoch."""
    if problem := unwritable_ancestor(log_dir):
        raise PermissionError(f"Cannot create the run directory {log_dir}: {problem[0]} {problem[1]}. Run from a "
                              f"writable folder or set --trainer.logger.init_args.save_dir to one.")


def _remove_partial_run(log_dir: Path) -> None:
    """Remove a run directory this process created if it holds no checkpoint (a checkpoint is kept for resume),
    then its parents left empty."""
    if not log_dir.is_dir() or any(log_dir.rglob("*.ckpt")):
        return
    shutil.rmtree(log_dir)
    for parent in log_dir.parents:
        if not parent.is_dir() or any(parent.iterdir()):
            break
        parent.rmdir()


def _forget_rows_from(metrics: Path, step: int) -> None:
    """Drop the metrics.csv rows logged at or after a resumed checkpoint's step: the resumed run logs them again."""
    if not metrics.is_file():
        return
    with metrics.open(newline="") as file:
        reader = csv.DictReader(file)
        rows = [row for row in reader if int(row["step"]) < step]
    fd, tmp = tempfile.mkstemp(prefix=".metrics.", suffix=".tmp", dir=metrics.parent)   # one per rank under torchrun
    with os.fdopen(fd, "w", newline="") as file:
        writer = csv.DictWriter(file, fieldnames=reader.fieldnames)
        writer.writeheader()
        writer.writerows(rows)
    os.replace(tmp, metrics)


class _ContinuingWriter(ExperimentWriter):
    def _check_log_dir_exists(self) -> None:
        if self._fs.isfile(self.metrics_file_path):
            with self._fs.open(self.metrics_file_path, "r", newline="") as file:
                self.metrics = [{k: v for k, v in row.items() if v != ""} for row in csv.DictReader(file)]
            self._fs.rm_file(self.metrics_file_path)   # rewritten whole, old rows first, at the next save


class ContinuingCSVLogger(CSVLogger):
    """Lightning's ``CSVLogger``, except that a writer opened on an existing run directory carries its metrics.csv
    over instead of deleting it: a run resumed with ``--ckpt_path last``, and the test after a ``ddp_spawn`` fit
    (it runs in new processes, so with a new writer), keep the rows logged before them."""

    @property
    @rank_zero_experiment
    def experiment(self) -> ExperimentWriter:
        if self._experiment is None:
            self._fs.makedirs(self.root_dir, exist_ok=True)
            self._experiment = _ContinuingWriter(log_dir=self.log_dir)
        return self._experiment


def _explain_parse_error(message: str, parser: LightningArgumentParser) -> str:
    """One paragraph from jsonargparse's nested error, suggesting the closest key for an unknown one."""
    unknown = re.search(r"Option '([\w.]+)' is not accepted|Group '(\w+)' does not accept option '(\w+)'", message)
    if unknown:
        option, group, group_option = unknown.groups()
        class_path = re.search(r"class_path '([\w.]+)'", message)
        section = re.search(r'Parser key "(\w+)"', message)
        if group is not None:
            key, where, accepted = group_option, group, _init_args(GROUPS.get(group))
        elif class_path and section:
            key, where = option, f"{section.group(1)}.init_args ({class_path.group(1)})"
            accepted = _init_args(_import(class_path.group(1)))
        else:
            key, where = option.split(".")[0], "the top level of the config"
            accepted = sorted({action.dest.split(".")[0] for action in parser._actions} - {"help", "print_config"})
        hint = did_you_mean(key, accepted) or f" Accepted: {', '.join(accepted)}."
        if not accepted:
            hint = " See --help for the accepted keys."
        return f"Unknown key {key!r} in {where}.{hint}"
    missing_class = re.search(r"class_path '([\w.]+)':\s+module '([\w.]+)' has no attribute '(\w+)'", message)
    if missing_class:
        module, name = missing_class.group(2), missing_class.group(3)
        classes = [n for n, obj in vars(importlib.import_module(module)).items() if isinstance(obj, type)]
        close = difflib.get_close_matches(name, classes, n=3)
        hint = f" Did you mean {', '.join(f'{module}.{c}' for c in close)}?" if close else ""
        return f"Unknown class_path {missing_class.group(1)!r}.{hint}"
    bad_value = re.search(r'Parser key "(\w+)":.*Parser key "(\w+)":\s+Expected a <class \'(\w+)\'>. Got value: (.*)',
                          message, re.DOTALL)
    if bad_value:
        section, key, expected, value = bad_value.groups()
        return f"Bad value for {section}.init_args.{key}: expected a {expected}, got {value.splitlines()[0]!r}."
    unrecognized = re.match(r"unrecognized arguments: (--[\w.]+)", message)
    if unrecognized:
        options = [option for action in parser._actions for option in action.option_strings]
        hint = did_you_mean(unrecognized.group(1), options, quote=False) or " See --help for the options."
        return f"Unknown option {unrecognized.group(1)}.{hint}"
    missing_file = re.match(r'Parser key "config": File does not exist: (.*)', message)
    if missing_file:
        return f"Config file {missing_file.group(1)} does not exist."
    if message.startswith("Problems parsing config"):
        detail = re.sub(r'\s*in "<unicode string>", (line \d+, column \d+)', r" (\1)", message.split(":", 1)[1])
        return f"The config is not valid YAML: {detail}"
    # Whatever else jsonargparse says, without the echo of the whole value.
    return re.split(r"\n\s*Given value", message)[0]


def _import(class_path: str) -> type:
    module, name = class_path.rsplit(".", 1)
    return getattr(importlib.import_module(module), name)


def _init_args(cls: type | None) -> list[str]:
    if cls is None:
        return []
    return [name for name, p in inspect.signature(cls).parameters.items()
            if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]

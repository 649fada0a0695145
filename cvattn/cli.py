"""The command line behind ``train.py``: a LightningCLI that fits, then tests the best checkpoint.

``python train.py --config configs/quickstart.yaml [--trainer.max_epochs 3] [--ckpt_path last]``

Every key of the YAML can be overridden on the command line. ``data.num_classes`` and ``data.in_chans`` are linked
into the model, so a config states them once (in the datamodule). Runs log to ``runs/<config name>/version_N``
(CSV metrics, the resolved config, ``checkpoints/`` with the best and the last checkpoint).
"""
from __future__ import annotations

import sys
from pathlib import Path

import lightning as L
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI

from cvattn.checkpoint import AtomicCheckpointIO


class CvattnCLI(LightningCLI):
    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.add_argument("--ckpt_path", type=str | None, default=None,
                            help="Resume from this checkpoint; 'last' resumes from the newest run's last.ckpt.")
        parser.link_arguments("data.num_classes", "model.init_args.num_classes", apply_on="instantiate")
        parser.link_arguments("data.in_chans", "model.init_args.in_chans", apply_on="instantiate")


def _run_name(argv: list[str]) -> str:
    for flag in ("--config", "-c"):
        if flag in argv[:-1]:
            return Path(argv[argv.index(flag) + 1]).stem
    return "cvattn"


def _checkpoint_callback() -> ModelCheckpoint:
    return ModelCheckpoint(monitor="val/acc", mode="max", save_last=True, auto_insert_metric_name=False,
                           filename="epoch={epoch}-val_acc={val/acc:.4f}")


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    cli = CvattnCLI(
        L.LightningModule,
        L.LightningDataModule,
        subclass_mode_model=True,
        subclass_mode_data=True,
        run=False,
        args=argv,
        trainer_defaults={
            "logger": {"class_path": "lightning.pytorch.loggers.CSVLogger",
                       "init_args": {"save_dir": "runs", "name": _run_name(argv)}},
            "callbacks": [_checkpoint_callback()],
            "plugins": [AtomicCheckpointIO()],
        },
        save_config_kwargs={"overwrite": True},
    )
    trainer = cli.trainer
    trainer.fit(cli.model, datamodule=cli.datamodule, ckpt_path=cli.config.get("ckpt_path"))
    if trainer.interrupted:
        return
    checkpoint = trainer.checkpoint_callback
    best = checkpoint.best_model_path if checkpoint is not None else ""
    trainer.test(cli.model, datamodule=cli.datamodule, ckpt_path=best or None)
    if trainer.is_global_zero:
        print(f"\nbest checkpoint: {best or '(none saved)'}")
        if checkpoint is not None and checkpoint.last_model_path:
            print(f"last checkpoint: {checkpoint.last_model_path}")
        if trainer.logger is not None and trainer.logger.log_dir:
            print(f"metrics:         {Path(trainer.logger.log_dir) / 'metrics.csv'}")

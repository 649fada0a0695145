"""``train.py`` configs: the parser that reads them, and building a run's model and datamodule from one.

``CvattnCLI`` is the LightningCLI parser (``--ckpt_path``, the ``checkpoint`` section, the datamodule's
``num_classes`` and ``in_chans`` linked into the model, parse and constructor errors rewritten to one paragraph);
``build_cli`` gives it the trainer defaults of ``train.py`` (the run directory's CSV logger, exact resume, atomic
checkpoints); ``build_from_config`` builds the untrained model and the datamodule of a config without training,
for notebooks, the saliency CLI and bench/ scripts.
"""
from __future__ import annotations

import difflib
import importlib
import inspect
import os
import sys
import warnings
from argparse import ArgumentError
from pathlib import Path

import lightning as L
import yaml
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI

from cvattn import _compat
from cvattn.checkpoint import ExactResume, LastCheckpoint
from cvattn.checks import did_you_mean
from cvattn.runs import newest_last_checkpoint, next_version, run_name

RUNS = "runs"
# Config sections that jsonargparse reports as "Group '<name>' does not accept option ...", and what they configure.
GROUPS = {"trainer": L.Trainer, "checkpoint": LastCheckpoint}


class CvattnCLI(LightningCLI):
    """LightningCLI with ``--ckpt_path`` ('last': the newest run of this config), the ``checkpoint`` group
    (``LastCheckpoint``), the datamodule's ``num_classes`` and ``in_chans`` linked into the model, and parse and
    constructor errors rewritten to name the bad key or value and what is accepted.

    ``run_name`` names the config's runs, ``runs/<run_name>/version_N``. With ``--trainer.logger false`` (and no
    ``default_root_dir``) a run still gets the next free ``version_N`` for its config and checkpoints, rather than
    writing them into the working directory.
    """

    def __init__(self, *args, run_name: str = "cvattn", **kwargs):
        self.run_name = run_name
        super().__init__(*args, **kwargs)

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
            raise ValueError(explain_parse_error(str(err), parser)) from None

    def instantiate_classes(self) -> None:
        try:
            super().instantiate_classes()
        except (ValueError, TypeError) as err:
            # jsonargparse wraps a constructor's own error in a report on every type it tried: keep that error.
            raise _compat.constructor_error(err) from None

    def before_instantiate_classes(self) -> None:
        trainer = self.config.trainer
        if self.config.get("ckpt_path") == "last":
            logger = trainer.logger
            if not {"save_dir", "name", "version"} <= set(vars(getattr(logger, "init_args", None) or {})):
                raise ValueError("--ckpt_path last looks for <save_dir>/<name>/version_N/checkpoints/last.ckpt, as the "
                                 "default CSV logger writes them; with this logger pass the checkpoint's path instead.")
            logger.init_args.version, checkpoint = newest_last_checkpoint(
                Path(logger.init_args.save_dir) / logger.init_args.name)
            self.config.ckpt_path = str(checkpoint)
        if trainer.logger is False and trainer.default_root_dir is None and not trainer.get("fast_dev_run"):
            # Without a logger Lightning saves checkpoints and config.yaml in default_root_dir, by default the working
            # directory, where the next run would overwrite them.
            trainer.default_root_dir = str(next_version(Path(RUNS) / self.run_name))


def build_cli(argv: list[str] | None = None) -> CvattnCLI:
    """``train.py``'s CLI on ``argv`` (default: the command line), parsed and instantiated, not run."""
    name = run_name(sys.argv[1:] if argv is None else argv)
    with warnings.catch_warnings():
        # LightningCLI warns when `args` is given while sys.argv holds the flags of the program calling main(argv).
        warnings.filterwarnings("ignore", message="LightningCLI's args parameter")
        return CvattnCLI(
            L.LightningModule,
            L.LightningDataModule,
            subclass_mode_model=True,
            subclass_mode_data=True,
            run=False,
            args=argv,
            run_name=name,
            parser_kwargs={"exit_on_error": False},
            trainer_defaults={
                # Flushing at every logging step keeps metrics.csv complete up to the last checkpoint for resume.
                "logger": {"class_path": "cvattn.lightning.ContinuingCSVLogger",
                           "init_args": {"save_dir": RUNS, "name": name, "flush_logs_every_n_steps": 1}},
                "callbacks": [ExactResume()],
                "plugins": {"class_path": "cvattn.checkpoint.AtomicCheckpointIO"},
            },
            save_config_kwargs={"overwrite": True},
        )


def build_from_config(config: str | os.PathLike) -> tuple[L.LightningModule, L.LightningDataModule]:
    """The (untrained) LightningModule and the datamodule of a ``train.py`` config (its ``model`` and ``data``
    sections; ``trainer`` settings play no part here, and a run's saved config may hold unparsable ones)."""
    path = Path(config)
    if not path.is_file():
        raise FileNotFoundError(f"Config {str(config)!r} does not exist (or is not a file); give the YAML the model "
                                f"was trained with, e.g. runs/<name>/version_N/config.yaml.")
    try:
        sections = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise ValueError(f"Config {str(config)!r} is not valid YAML: {err}") from None
    if not isinstance(sections, dict) or not {"model", "data"} <= sections.keys():
        raise ValueError(f"Config {str(config)!r} needs 'model' and 'data' sections, as train.py configs have.")
    for name in ("model", "data"):  # a section given as a file (configs/_base/...) is relative to the config
        if isinstance(sections[name], str):
            sections[name] = yaml.safe_load((path.parent / sections[name]).read_text())
    args = {"model": sections["model"], "data": sections["data"],
            "trainer": {"logger": False, "enable_progress_bar": False, "enable_model_summary": False}}
    with warnings.catch_warnings():
        # LightningCLI warns when `args` is given while sys.argv holds this program's own flags.
        warnings.filterwarnings("ignore", message="LightningCLI's args parameter")
        cli = CvattnCLI(L.LightningModule, L.LightningDataModule, subclass_mode_model=True, subclass_mode_data=True,
                        run=False, save_config_callback=None, seed_everything_default=False, args=args)
    return cli.model, cli.datamodule


def explain_parse_error(message: str, parser: LightningArgumentParser) -> str:
    """One paragraph from jsonargparse's nested error, suggesting the closest key for an unknown one."""
    unknown = _compat.UNKNOWN_KEY.search(message)
    if unknown:
        option, group, group_option = unknown.groups()
        class_path = _compat.CLASS_PATH.search(message)
        section = _compat.PARSER_KEY.search(message)
        if group is not None:
            key, where, accepted = group_option, group, _init_args(GROUPS.get(group))
        elif class_path and section:
            key, where = option, f"{section.group(1)}.init_args ({class_path.group(1)})"
            accepted = _init_args(_import(class_path.group(1)))
        else:
            key, where = option.split(".")[0], "the top level of the config"
            accepted = sorted({action.dest.split(".")[0] for action in _compat.parser_actions(parser)}
                              - {"help", "print_config"})
        hint = did_you_mean(key, accepted) or f" Accepted: {', '.join(accepted)}."
        if not accepted:
            hint = " See --help for the accepted keys."
        return f"Unknown key {key!r} in {where}.{hint}"
    missing_class = _compat.MISSING_CLASS.search(message)
    if missing_class:
        module, name = missing_class.group(2), missing_class.group(3)
        classes = [n for n, obj in vars(importlib.import_module(module)).items() if isinstance(obj, type)]
        close = difflib.get_close_matches(name, classes, n=3)
        hint = f" Did you mean {', '.join(f'{module}.{c}' for c in close)}?" if close else ""
        return f"Unknown class_path {missing_class.group(1)!r}.{hint}"
    bad_value = _compat.BAD_VALUE.search(message)
    if bad_value:
        section, key, expected, value = bad_value.groups()
        return f"Bad value for {section}.init_args.{key}: expected a {expected}, got {value.splitlines()[0]!r}."
    unrecognized = _compat.UNRECOGNIZED.match(message)
    if unrecognized:
        options = [option for action in _compat.parser_actions(parser) for option in action.option_strings]
        hint = did_you_mean(unrecognized.group(1), options, quote=False) or " See --help for the options."
        return f"Unknown option {unrecognized.group(1)}.{hint}"
    missing_file = _compat.MISSING_FILE.match(message)
    if missing_file:
        return f"Config file {missing_file.group(1)} does not exist."
    if _compat.NOT_YAML.match(message):
        detail = _compat.YAML_POSITION.sub(r" (\1)", message.split(":", 1)[1])
        return f"The config is not valid YAML: {detail}"
    # Whatever else jsonargparse says, without the echo of the whole value.
    return _compat.GIVEN_VALUE.split(message)[0]


def _import(class_path: str) -> type:
    module, name = class_path.rsplit(".", 1)
    return getattr(importlib.import_module(module), name)


def _init_args(cls: type | None) -> list[str]:
    if cls is None:
        return []
    return [name for name, p in inspect.signature(cls).parameters.items()
            if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]

"""``train.py`` configs: the parser that reads them, and building a run's model and datamodule from one.

``CvattnCLI`` is the LightningCLI parser (``--ckpt_path``, the ``checkpoint`` section, the datamodule's
``num_classes`` and ``in_chans`` linked into the model, parse and constructor errors rewritten to one paragraph).
It checks what it is given before any file is written: the config files (readable, UTF-8, a mapping, YAML aliases
that expand to at most ``MAX_YAML_NODES``, for every YAML jsonargparse reads), a training length that trains
something, model values that the data overrides, and, for ``--ckpt_path last``, that the run is of this experiment;
``build_cli`` gives it the trainer defaults of ``train.py`` (the run directory's CSV logger, exact resume, atomic
checkpoints); ``build_from_config`` builds the untrained model and the datamodule of a config without training,
for notebooks, the saliency CLI and bench/ scripts.
"""
from __future__ import annotations

import difflib
import importlib
import inspect
import os
import re
import sys
import warnings
from argparse import ArgumentError
from pathlib import Path

import jsonargparse
import lightning as L
import yaml
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI, SaveConfigCallback

from cvattn import _compat
from cvattn.checkpoint import ExactResume, LastCheckpoint
from cvattn.checks import did_you_mean
from cvattn.runs import (check_same_experiment, config_file, experiment_of, newest_last_checkpoint, next_version,
                         run_name, unique_run_name)

RUNS = "runs"
# The most YAML nodes a config (or a YAML value on the command line) may expand to through its aliases: the
# shipped configs have a few hundred; nine nested anchors of nine aliases each ("billion laughs") expand to 9**9
# from 1.3 KB and exhaust the memory.
MAX_YAML_NODES = 100_000
# Keys of the model and data sections that do not change the numbers, so not part of a run's identity.
NOT_EXPERIMENT = ("num_workers", "pin_memory", "persistent_workers", "prefetch_factor", "compile", "channels_last")
# Model arguments the datamodule sets (linked from data.num_classes and data.in_chans).
LINKED_FROM_DATA = ("num_classes", "in_chans")
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

    def __init__(self, *args, run_name: str = "cvattn", config_file: str | None = None, **kwargs):
        self.run_name, self.config_file = run_name, config_file
        self.experiment: dict = {}
        self._model_set: dict[str, object] = {}
        kwargs["parser_kwargs"] = {"parser_mode": BOUNDED_YAML, **kwargs.get("parser_kwargs", {})}
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
        if args is None or isinstance(args, (list, tuple)):
            for path in _config_files(sys.argv[1:] if args is None else list(args)):
                check_config_file(path)
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
        for key, value in self._model_set.items():
            from_data = getattr(self.datamodule, key, None)
            if from_data is not None and from_data != value:
                raise ValueError(
                    f"model.init_args.{key} is {value}, but the data gives {key}={from_data} "
                    f"({type(self.datamodule).__name__}): {', '.join(LINKED_FROM_DATA)} come from the data section and "
                    f"are linked into the model. Remove model.init_args.{key} (to change it, change the data).")

    def before_instantiate_classes(self) -> None:
        trainer = self.config.trainer
        _check_training_length(trainer)
        self._check_model_against_links()
        self.experiment = _experiment(self.config.as_dict())
        logger = trainer.logger
        init_args = getattr(logger, "init_args", None)
        init_args = set(vars(init_args)) if init_args is not None else set()
        if {"save_dir", "name"} <= init_args and logger.init_args.name == self.run_name:
            logger.init_args.name = unique_run_name(Path(logger.init_args.save_dir), self.run_name, self.config_file)
        if self.config.get("ckpt_path") == "last":
            if not {"save_dir", "name", "version"} <= init_args:
                raise ValueError("--ckpt_path last looks for <save_dir>/<name>/version_N/checkpoints/last.ckpt, as the "
                                 "default CSV logger writes them; with this logger pass the checkpoint's path instead.")
            logger.init_args.version, checkpoint = newest_last_checkpoint(
                Path(logger.init_args.save_dir) / logger.init_args.name)
            check_same_experiment(checkpoint.parent.parent, self.config_file, self.experiment)
            self.config.ckpt_path = str(checkpoint)
        if trainer.logger is False and trainer.default_root_dir is None and not trainer.get("fast_dev_run"):
            # Without a logger Lightning saves checkpoints and config.yaml in default_root_dir, by default the working
            # directory, where the next run would overwrite them.
            name = unique_run_name(Path(RUNS), self.run_name, self.config_file)
            trainer.default_root_dir = str(next_version(Path(RUNS) / name))

    def _check_model_against_links(self) -> None:
        """Refuse ``in_chans``/``num_classes`` in ``model_kwargs`` (they would reach ``create_model`` twice), and
        remember the ones set in ``model.init_args`` (not the class's default) to compare with the data's."""
        model = self.config.get("model")
        init_args = getattr(model, "init_args", None)
        if init_args is None:
            return
        kwargs = init_args.get("model_kwargs") or {}
        if twice := [key for key in LINKED_FROM_DATA if key in kwargs]:
            raise ValueError(f"model_kwargs sets {', '.join(twice)}, which the data gives the model "
                             f"({', '.join(LINKED_FROM_DATA)} are linked from the data section). Remove "
                             f"{', '.join(twice)} from model.init_args.model_kwargs.")
        try:
            parameters = inspect.signature(_import(model.class_path)).parameters
        except (ImportError, AttributeError, ValueError, TypeError):
            return
        self._model_set = {key: init_args.get(key) for key in LINKED_FROM_DATA
                           if key in parameters and init_args.get(key) != parameters[key].default}


# --- checks at the door: the config files, the YAML, the trainer's length --------------------------------------------

def yaml_nodes(text: str, source: str) -> int:
    """How many nodes ``text`` expands to with its aliases resolved (0 if it is not YAML: the parser reports that);
    a ``ValueError`` naming ``source`` when that is more than ``MAX_YAML_NODES``. Counted on the composed graph,
    where an alias is a reference, so a "billion laughs" document costs its own size to check."""
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError:
        return 0
    except RecursionError:
        raise ValueError(f"{source} is nested too deeply to read; flatten it (a train.py config needs a few "
                         f"levels).") from None
    sizes: dict[int, int] = {}

    def size(node: yaml.Node, open_nodes: frozenset[int]) -> int:
        if id(node) in sizes:
            return sizes[id(node)]
        if id(node) in open_nodes:
            raise ValueError(f"{source} holds an alias that contains itself, which expands without end; remove the "
                             f"recursive alias.")
        children = node.value if isinstance(node, yaml.SequenceNode) else \
            [n for pair in node.value for n in pair] if isinstance(node, yaml.MappingNode) else []
        sizes[id(node)] = total = 1 + sum(size(child, open_nodes | {id(node)}) for child in children)
        return total

    nodes = 0 if root is None else size(root, frozenset())
    if nodes > MAX_YAML_NODES:
        raise ValueError(f"{source} expands to {nodes} YAML nodes through its aliases (&anchor/*alias), more than the "
                         f"{MAX_YAML_NODES} a config may have (a 'billion laughs' document would exhaust the memory). "
                         f"Write the repeated values out, or nest fewer aliases.")
    return nodes


def _bounded_yaml_load(stream):
    """jsonargparse's YAML loader, after ``yaml_nodes`` has bounded what the text expands to: every config file
    and YAML value jsonargparse reads (``--config``, a file path given for a section, a value on the command line)
    goes through it."""
    if isinstance(stream, str) and ("&" in stream or "*" in stream):
        yaml_nodes(stream, "A YAML value")
    return _YAML_LOAD(stream)


_YAML_LOAD = jsonargparse.get_loader("yaml")
BOUNDED_YAML = "cvattn_yaml"
jsonargparse.set_loader(BOUNDED_YAML, _bounded_yaml_load, exceptions=(yaml.YAMLError,))


def _config_files(argv: list[str]) -> list[str]:
    """Every ``--config`` file named in ``argv``."""
    files = [argv[i + 1] for i, arg in enumerate(argv[:-1]) if arg in ("--config", "-c")]
    return files + [arg.split("=", 1)[1] for arg in argv if arg.startswith("--config=")]


def check_config_file(path: str) -> None:
    """``ValueError`` naming ``path`` if the config file cannot be read, is not UTF-8, is empty, is not a mapping
    of sections, or expands past ``MAX_YAML_NODES``; a missing file is left to the parser's own message."""
    file = Path(path)
    if not file.is_file():
        return
    if not os.access(file, os.R_OK):
        raise PermissionError(f"Config file {path} cannot be read: permission denied. Make it readable (chmod a+r "
                              f"{path}) or copy it to a file you can read.")
    data = file.read_bytes()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as err:
        line = data[:err.start].count(b"\n") + 1
        raise ValueError(f"Config file {path} is not UTF-8 text (byte {data[err.start]:#04x} on line {line}); save it "
                         f"as UTF-8, e.g. iconv -f latin1 -t utf-8 {path} -o {path}.") from None
    if yaml_nodes(text, f"Config file {path}") == 0:
        try:
            empty = yaml.safe_load(text) is None
        except yaml.YAMLError:
            return   # the parser names the line
        if empty:
            raise ValueError(f"Config file {path} is empty; a train.py config needs at least the model and data "
                             f"sections (start from one in configs/, e.g. configs/quickstart.yaml).")
    try:
        sections = yaml.safe_load(text)
    except yaml.YAMLError:
        return
    if not isinstance(sections, dict):
        raise ValueError(f"Config file {path} holds a {type(sections).__name__} ({str(sections)[:40]!r}), not a "
                         f"mapping of sections (model:, data:, trainer: ...); see configs/quickstart.yaml.")


def _check_training_length(trainer) -> None:
    """A run that would train nothing is refused before any file is written (Lightning would test the untrained
    model and exit 0)."""
    for key, disabled in (("max_epochs", "-1 (no limit)"), ("max_steps", "-1 (no limit)")):
        value = trainer.get(key)
        if value is not None and (value == 0 or value < -1):
            raise ValueError(f"trainer.{key} is {value}, which trains {'nothing' if value == 0 else 'no step'}; give a "
                             f"positive number of {key[4:]} (or {disabled}), e.g. --trainer.{key} 10.")
    limit = trainer.get("limit_train_batches")
    if limit is not None and not isinstance(limit, bool) and limit == 0:
        raise ValueError("trainer.limit_train_batches is 0, which trains nothing; give a positive number of batches or "
                         "a fraction in (0, 1], e.g. --trainer.limit_train_batches 1.0.")


def _experiment(config: dict) -> dict:
    """The parts of a resolved config that define its run (``cvattn.runs.experiment_of``), without the keys that do
    not change the numbers (``NOT_EXPERIMENT``)."""
    def strip(value):
        if isinstance(value, dict):
            return {k: strip(v) for k, v in value.items() if k not in NOT_EXPERIMENT}
        return value
    return strip(experiment_of(config))


class SaveConfigWhenTraining(SaveConfigCallback):
    """LightningCLI's ``config.yaml`` writer, except that a resumed run (its directory has a config.yaml) writes it
    only once training has resumed (after its first step): a resume that fails before then leaves it as it was."""

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        # A resumed run's directory has its config.yaml already (trainer.ckpt_path is not set yet at setup).
        if stage != "fit" or not (Path(trainer.log_dir or ".") / self.config_filename).is_file():
            super().setup(trainer, pl_module, stage)

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, *args, **kwargs) -> None:
        if not self.already_saved:
            super().setup(trainer, pl_module, "fit")


def build_cli(argv: list[str] | None = None) -> CvattnCLI:
    """``train.py``'s CLI on ``argv`` (default: the command line), parsed and instantiated, not run."""
    args = sys.argv[1:] if argv is None else argv
    name = run_name(args)
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
            config_file=config_file(args),
            parser_kwargs={"exit_on_error": False},
            save_config_callback=SaveConfigWhenTraining,
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
    check_config_file(str(config))   # readable, UTF-8, a mapping, and no alias bomb
    try:
        sections = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise ValueError(f"Config {str(config)!r} is not valid YAML: {err}") from None
    if not isinstance(sections, dict) or not {"model", "data"} <= sections.keys():
        raise ValueError(f"Config {str(config)!r} needs 'model' and 'data' sections, as train.py configs have.")
    for name in ("model", "data"):  # a section given as a file (configs/_base/...) is relative to the config
        if isinstance(sections[name], str):
            check_config_file(str(path.parent / sections[name]))
            sections[name] = yaml.safe_load((path.parent / sections[name]).read_text())
    args = {"model": sections["model"], "data": sections["data"],
            "trainer": {"logger": False, "enable_progress_bar": False, "enable_model_summary": False}}
    with warnings.catch_warnings():
        # LightningCLI warns when `args` is given while sys.argv holds this program's own flags.
        warnings.filterwarnings("ignore", message="LightningCLI's args parameter")
        # exit_on_error=False: a bad value is a ValueError naming it (the caller's error), not train.py's usage text
        # printed under another program's name.
        cli = CvattnCLI(L.LightningModule, L.LightningDataModule, subclass_mode_model=True, subclass_mode_data=True,
                        run=False, save_config_callback=None, seed_everything_default=False, args=args,
                        parser_kwargs={"exit_on_error": False})
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
    union = _compat.UNION_VALUE.search(message)
    if union:
        key, subtypes, value = union.groups()
        accepted = _describe_types(subtypes)
        return (f"Bad value for {key}: {value.strip().splitlines()[0]!r}; accepted: {accepted}. Give one of these, "
                f"e.g. --{key} {_example(subtypes)}.")
    if _compat.UNEXPECTED_CONFIG.match(message):
        return ("The config holds no sections (an empty file?); a train.py config needs at least the model and data "
                "sections, see configs/quickstart.yaml.")
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


_TYPE_NAMES = {"int": "an integer", "float": "a number", "str": "a string", "bool": "true or false",
               "NoneType": "null", "dict": "a mapping"}


def _describe_types(subtypes: str) -> str:
    """``"an integer or null"`` from jsonargparse's ``[<class 'int'>, <class 'NoneType'>]``, literals listed."""
    parts: list[str] = []
    for literal, cls in re.findall(r"Literal\[([^\]]*)\]|<class '(?:\w+\.)*(\w+)'>", subtypes):
        parts.extend(value.strip() for value in literal.split(",")) if literal else \
            parts.append(_TYPE_NAMES.get(cls, f"a {cls}"))
    return ", ".join(dict.fromkeys(parts[:-1])) + (f" or {parts[-1]}" if len(parts) > 1 else "".join(parts))


def _example(subtypes: str) -> str:
    literal = re.search(r"Literal\[([^\],]*)", subtypes)
    if literal:
        return literal.group(1).strip().strip("'")
    return "1" if "int" in subtypes or "float" in subtypes else "null"

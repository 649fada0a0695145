"""cvattn._compat: each private Lightning, jsonargparse and argparse detail cvattn relies on still holds.

An upgrade that moves or renames one fails here, with a message naming the pin it was checked under, instead of in
the middle of a training run (or, for the error texts, silently: a rewrite that no longer matches falls back to
jsonargparse's nested report)."""
from __future__ import annotations

import csv
import json
import importlib.metadata
import inspect
import re
import tomllib
from pathlib import Path

import lightning as L
import pytest
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers.csv_logs import ExperimentWriter
from helpers import tiny_config, write_config, write_image_folder

import cvattn.config
from cvattn import _compat

REPO = Path(__file__).resolve().parents[1]


def _moved(what: str, pin: str) -> str:
    package = pin.split("==")[0]
    return (f"{what}: cvattn._compat relies on it as of {pin}, and the installed {package} is "
            f"{importlib.metadata.version(package)}. Update cvattn/_compat.py (and this pin) together.")


@pytest.mark.parametrize("pin", [_compat.LIGHTNING_PIN, _compat.JSONARGPARSE_PIN])
def test_the_pins_are_pyprojects_and_installed(pin):
    dependencies = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    assert pin in {re.sub(r"\[.*\]", "", d) for d in dependencies}, \
        f"{pin} (cvattn/_compat.py) is not what pyproject.toml pins: {dependencies}"
    package, version = pin.split("==")
    assert importlib.metadata.version(package) == version, _moved(f"{package} is not at its pin", pin)


@pytest.mark.parametrize("name, parameters", [
    ("_should_save_on_train_epoch_end", ["self", "trainer"]),
    ("_should_skip_saving_checkpoint", ["self", "trainer"]),
    ("_monitor_candidates", ["self", "trainer"]),
    ("_save_last_checkpoint", ["self", "trainer", "monitor_candidates"]),
])
def test_model_checkpoint_private_steps_exist(name, parameters):
    method = getattr(ModelCheckpoint, name, None)
    assert callable(method), _moved(f"ModelCheckpoint.{name} is gone", _compat.LIGHTNING_PIN)
    assert list(inspect.signature(method).parameters) == parameters, \
        _moved(f"ModelCheckpoint.{name} now takes {list(inspect.signature(method).parameters)}, not {parameters}",
               _compat.LIGHTNING_PIN)


def test_experiment_writer_calls_the_hook_the_continuing_writer_overrides(tmp_path):
    calls = []

    class Recording(ExperimentWriter):
        def _check_log_dir_exists(self) -> None:
            calls.append((self.metrics_file_path, list(self.metrics), self._fs is not None))

    Recording(log_dir=str(tmp_path / "run"))
    assert calls == [(str(tmp_path / "run" / "metrics.csv"), [], True)], _moved(
        "ExperimentWriter.__init__ no longer calls _check_log_dir_exists() once metrics_file_path, metrics and _fs "
        "are set", _compat.LIGHTNING_PIN)


def test_metrics_keeping_writer_puts_the_old_rows_first(tmp_path):
    metrics = tmp_path / "metrics.csv"
    metrics.write_text("epoch,step,train/loss\n0,0,2.5\n0,1,2.25\n")
    writer = _compat.MetricsKeepingWriter(log_dir=str(tmp_path))
    writer.log_metrics({"train/loss": 2.0, "epoch": 0}, step=2)
    writer.save()
    with metrics.open(newline="") as file:
        rows = list(csv.DictReader(file))
    assert [(row["step"], row["train/loss"]) for row in rows] == [("0", "2.5"), ("1", "2.25"), ("2", "2.0")], \
        _moved("ExperimentWriter.save no longer appends under metrics_keys", _compat.LIGHTNING_PIN)


def test_metrics_keeping_writer_keeps_the_file_until_it_saves_then_forgets_and_adds_columns(tmp_path):
    metrics = tmp_path / "metrics.csv"
    old = "epoch,step,train/loss\n0,0,2.5\n0,1,2.25\n0,2,2.1\n0,2,\n"
    metrics.write_text(old)
    writer = _compat.MetricsKeepingWriter(log_dir=str(tmp_path))
    writer.forget_from_step = 2
    assert metrics.read_text() == old                       # a resume that fails now leaves it as it was
    writer.log_metrics({"train/loss": 2.0, "val/acc": 0.5, "epoch": 0}, step=2)
    writer.save()
    with metrics.open(newline="") as file:
        rows = list(csv.DictReader(file))
    assert [(row["step"], row["train/loss"], row["val/acc"]) for row in rows] == \
        [("0", "2.5", ""), ("1", "2.25", ""), ("2", "2.0", "0.5")], \
        _moved("ExperimentWriter.save no longer rewrites the file with a new header", _compat.LIGHTNING_PIN)


def test_model_checkpoint_keeps_every_n_train_steps():
    from lightning.pytorch.callbacks import ModelCheckpoint
    assert _compat.every_n_train_steps(ModelCheckpoint(every_n_train_steps=50)) == 50
    assert _compat.every_n_train_steps(ModelCheckpoint()) == 0, \
        _moved("ModelCheckpoint._every_n_train_steps", _compat.LIGHTNING_PIN)


def test_rank_zero_experiment_is_the_decorator_csv_logger_uses():
    from lightning.pytorch.loggers import CSVLogger
    assert callable(_compat.rank_zero_experiment)
    assert isinstance(inspect.getattr_static(CSVLogger, "experiment"), property), \
        _moved("CSVLogger.experiment is no longer a property", _compat.LIGHTNING_PIN)


# --- jsonargparse's error texts --------------------------------------------------------------------------------------

@pytest.fixture
def config(tmp_path, monkeypatch) -> dict:
    monkeypatch.chdir(tmp_path)
    return tiny_config(write_image_folder(tmp_path / "images", per_class=3))


def raw_parse_error(config: dict | str | None, *args: str, monkeypatch) -> str:
    """The message jsonargparse raises for ``config`` (a dict, the text of a file, or None: no such file) plus
    ``args``, before cvattn rewrites it."""
    seen = []
    rewrite = cvattn.config.explain_parse_error
    monkeypatch.setattr(cvattn.config, "explain_parse_error", lambda message, parser: seen.append(message) or
                        rewrite(message, parser))
    path = Path("tiny.yaml") if config is not None else Path("nowhere.yaml")
    if isinstance(config, dict):
        write_config(path, config)
    elif isinstance(config, str):
        path.write_text(config)
    with pytest.raises(ValueError):
        cvattn.config.build_cli(["--config", str(path), *args])
    assert len(seen) == 1, f"no parse error reached cvattn.config.explain_parse_error: {seen}"
    return seen[0]


def _edit(config: dict, dotted: str, value) -> dict:
    *parents, key = dotted.split(".")
    section = config
    for name in parents:
        section = section.setdefault(name, {})
    section[key] = value
    return config


def _check(pattern: re.Pattern, message: str, groups: tuple, match: bool = False) -> None:
    found = (pattern.match if match else pattern.search)(message)
    assert found and found.groups() == groups, _moved(
        f"jsonargparse's error text changed: {pattern.pattern!r} no longer finds {groups} in {message!r}",
        _compat.JSONARGPARSE_PIN)


def test_unknown_key_in_init_args(config, monkeypatch):
    message = raw_parse_error(_edit(config, "model.init_args.lrr", 1), monkeypatch=monkeypatch)
    _check(_compat.UNKNOWN_KEY, message, ("lrr", None, None))
    _check(_compat.CLASS_PATH, message, ("cvattn.lightning.ImageClassifier",))
    _check(_compat.PARSER_KEY, message, ("model",))
    assert _compat.GIVEN_VALUE.search(message), _moved("no 'Given value' echo to cut", _compat.JSONARGPARSE_PIN)


@pytest.mark.parametrize("group, key", [("trainer", "max_epohcs"), ("checkpoint", "every_n_train_step")])
def test_unknown_key_in_a_group(config, monkeypatch, group, key):
    message = raw_parse_error(_edit(config, f"{group}.{key}", 1), monkeypatch=monkeypatch)
    _check(_compat.UNKNOWN_KEY, message, (None, group, key))


def test_unknown_top_level_key(config, monkeypatch):
    config["trainr"] = config.pop("trainer")
    message = raw_parse_error(config, monkeypatch=monkeypatch)
    found = _compat.UNKNOWN_KEY.search(message)
    assert found and found.group(1).split(".")[0] == "trainr" and not _compat.CLASS_PATH.search(message), _moved(
        f"jsonargparse's error text for an unknown top-level key changed: {message!r}", _compat.JSONARGPARSE_PIN)


def test_class_path_of_a_missing_class(config, monkeypatch):
    message = raw_parse_error(_edit(config, "model.class_path", "cvattn.lightning.ImageClasifier"),
                              monkeypatch=monkeypatch)
    _check(_compat.MISSING_CLASS, message,
           ("cvattn.lightning.ImageClasifier", "cvattn.lightning", "ImageClasifier"))


def test_value_of_the_wrong_type(config, monkeypatch):
    message = raw_parse_error(_edit(config, "model.init_args.lr", "fast"), monkeypatch=monkeypatch)
    found = _compat.BAD_VALUE.search(message)
    assert found and found.groups()[:3] == ("model", "lr", "float") and found.group(4).splitlines()[0] == "fast", \
        _moved(f"jsonargparse's error text for a bad value changed: {message!r}", _compat.JSONARGPARSE_PIN)


def test_unknown_command_line_option(config, monkeypatch):
    message = raw_parse_error(config, "--trainr.max_epochs", "2", monkeypatch=monkeypatch)
    _check(_compat.UNRECOGNIZED, message, ("--trainr.max_epochs",), match=True)


def test_missing_config_file(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    message = raw_parse_error(None, monkeypatch=monkeypatch)
    _check(_compat.MISSING_FILE, message, (f"'{tmp_path / 'nowhere.yaml'}'",), match=True)


def test_config_that_is_not_yaml(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    message = raw_parse_error("trainer: {max_epochs: 1\nmodel: [\n", monkeypatch=monkeypatch)
    assert _compat.NOT_YAML.match(message), _moved(f"the not-YAML error text changed: {message!r}",
                                                   _compat.JSONARGPARSE_PIN)
    assert _compat.YAML_POSITION.findall(message) == ["line 1, column 10", "line 2, column 6"], _moved(
        f"the YAML error position changed: {message!r}", _compat.JSONARGPARSE_PIN)


def test_parser_actions_list_the_options(config):
    write_config(Path("tiny.yaml"), config)
    cli = cvattn.config.build_cli(["--config", "tiny.yaml"])
    options = {option for action in _compat.parser_actions(cli.parser) for option in action.option_strings}
    assert {"--trainer.max_epochs", "--ckpt_path", "--checkpoint.every_n_train_steps"} <= options, \
        "argparse.ArgumentParser._actions no longer lists the parser's options (Python's argparse changed)"


def test_continuing_csv_logger_opens_its_writer_once_in_the_log_dir(tmp_path):
    from cvattn.lightning import ContinuingCSVLogger
    logger = ContinuingCSVLogger(save_dir=str(tmp_path), name="tiny")
    writer = logger.experiment
    assert isinstance(writer, _compat.MetricsKeepingWriter) and logger.experiment is writer, \
        _moved("CSVLogger no longer caches its writer in _experiment", _compat.LIGHTNING_PIN)
    assert writer.log_dir == logger.log_dir == str(tmp_path / "tiny" / "version_0")
    assert (tmp_path / "tiny" / "version_0").is_dir()


def test_a_constructors_error_is_the_cause_of_jsonargparses_report(config, monkeypatch):
    from jsonargparse import ArgumentParser
    parser = ArgumentParser(exit_on_error=False)
    parser.add_argument("--model", type=L.LightningModule)
    write_config(Path("tiny.yaml"), config)
    parsed = parser.parse_args(["--model", json.dumps(_edit(config, "model.init_args.lr", 0.0)["model"])])
    with pytest.raises((ValueError, TypeError)) as raised:
        parser.instantiate(parsed)
    error = _compat.constructor_error(raised.value)
    assert isinstance(error, ValueError) and str(error) == "lr must be > 0, got 0.0.", _moved(
        f"jsonargparse no longer raises a constructor's error as the cause of its own: {raised.value!r}",
        _compat.JSONARGPARSE_PIN)


def test_a_value_no_type_of_a_union_accepts(config, monkeypatch):
    message = raw_parse_error(config, "--trainer.precision", "17", monkeypatch=monkeypatch)
    found = _compat.UNION_VALUE.search(message)
    assert found and found.group(1) == "trainer.precision" and "Literal[64, 32, 16]" in found.group(2) and \
        found.group(3).strip() == "17", _moved(f"the Union error reads {message!r}", _compat.JSONARGPARSE_PIN)


def test_an_empty_config(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr("cvattn.config.check_config_file", lambda path: None)   # which names the file first
    message = raw_parse_error("", monkeypatch=monkeypatch)
    assert _compat.UNEXPECTED_CONFIG.match(message), _moved(f"the empty-config error reads {message!r}",
                                                            _compat.JSONARGPARSE_PIN)


def test_jsonargparse_loads_configs_through_the_mode_loader(tmp_path, monkeypatch):
    """The YAML alias bound sits in the loader of cvattn's parser mode: a --config file goes through it."""
    import jsonargparse

    import cvattn.config
    seen, load = [], cvattn.config._YAML_LOAD
    monkeypatch.setattr(cvattn.config, "_YAML_LOAD", lambda stream: seen.append(stream) or load(stream))
    (tmp_path / "c.yaml").write_text("trainer: &t {max_epochs: 1}\n")
    parser = jsonargparse.ArgumentParser(parser_mode=cvattn.config.BOUNDED_YAML, exit_on_error=False)
    parser.add_argument("--config", action=jsonargparse.ActionConfigFile)
    parser.add_argument("--trainer", type=dict)
    assert parser.parse_args(["--config", str(tmp_path / "c.yaml")]).trainer == {"max_epochs": 1}
    assert any("max_epochs" in str(stream) for stream in seen), _moved(
        "jsonargparse no longer reads --config files with the loader of its parser_mode", _compat.JSONARGPARSE_PIN)

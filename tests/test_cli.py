"""train.py's command line: one-paragraph errors with suggestions, `--ckpt_path last`, run-directory hygiene,
and the configs accepting the distributed and fast-path switches unchanged.

The tiny image folder and config come from helpers.py and the ``config_path`` fixture from conftest.py."""
from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from helpers import REPO, error_lines, write_config


def run_main(argv: list[str], capsys) -> str:
    """``main(argv)`` must fail: returns its single ``error:`` paragraph."""
    from cvattn.cli import main
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 1
    lines = error_lines(capsys.readouterr().err)
    assert len(lines) == 1, lines
    return lines[0]


@pytest.mark.parametrize("where, key, suggestion", [
    ("model.init_args", "lrr", "'lr'"),
    ("data.init_args", "batchsize", "'batch_size'"),
    ("trainer", "max_epohcs", "'max_epochs'"),
    ("checkpoint", "every_n_train_step", "'every_n_train_steps'"),
    ("", "trainr", "'trainer'"),
])
def test_config_key_typo_names_the_key_and_the_closest_one(config_path, capsys, where, key, suggestion):
    config = yaml.safe_load(config_path.read_text())
    if not where:
        config[key] = config.pop("trainer")
    else:
        section = config
        for name in where.split("."):
            section = section.setdefault(name, {})
        section[key] = 1
    write_config(config_path, config)
    message = run_main(["--config", str(config_path)], capsys)
    assert f"Unknown key '{key}'" in message and f"Did you mean {suggestion}" in message


def test_command_line_typo_suggests_the_option(config_path, capsys):
    message = run_main(["--config", str(config_path), "--trainr.max_epochs", "2"], capsys)
    assert "Unknown option --trainr.max_epochs. Did you mean --trainer.max_epochs" in message
    message = run_main(["--config", str(config_path), "--model.init_args.lrr", "2"], capsys)
    assert "Unknown key 'lrr' in model.init_args (cvattn.lightning.ImageClassifier). Did you mean 'lr'?" in message


@pytest.mark.parametrize("edit, expected", [
    (lambda c: c["model"]["init_args"].update(lr="fast"),
     "Bad value for model.init_args.lr: expected a float, got 'fast'"),
    (lambda c: c["model"].update(class_path="cvattn.lightning.ImageClasifier"),
     "Unknown class_path 'cvattn.lightning.ImageClasifier'. Did you mean cvattn.lightning.ImageClassifier"),
    (lambda c: c["model"]["init_args"].update(model="convnet3"), "Unknown model 'convnet3'. Did you mean 'convnet4', 'convnet2'"),
    (lambda c: c["model"]["init_args"].update(lr=0.0), "lr must be > 0, got 0.0"),
    (lambda c: c["data"]["init_args"].update(batch_size=-4), "batch_size must be a positive integer, got -4"),
    (lambda c: c["data"]["init_args"].update(root="no_such_folder"), "Image folder no_such_folder does not exist"),
], ids=["type", "class_path", "model_name", "zero_lr", "negative_batch_size", "missing_folder"])
def test_bad_values_give_the_constructors_message(config_path, capsys, edit, expected):
    config = yaml.safe_load(config_path.read_text())
    edit(config)
    write_config(config_path, config)
    assert expected in run_main(["--config", str(config_path)], capsys)


def test_malformed_yaml_and_missing_config(config_path, capsys):
    config_path.write_text("trainer: {max_epochs: 1\nmodel: [\n")
    assert run_main(["--config", str(config_path)], capsys).startswith("error: The config is not valid YAML:")
    assert "nowhere.yaml' does not exist." in run_main(["--config", "nowhere.yaml"], capsys)


def test_corrupt_image_stops_training_with_its_name(config_path, capsys):
    (config_path.parent / "images" / "dog" / "3.png").write_bytes(b"not a png at all")
    message = run_main(["--config", str(config_path)], capsys)
    assert "Cannot decode image" in message and "dog/3.png" in message
    assert not Path("runs").exists()


def test_ckpt_path_last_without_a_run(config_path, capsys):
    message = run_main(["--config", str(config_path), "--ckpt_path", "last"], capsys)
    assert "--ckpt_path last found nothing to resume: no runs/tiny/version_*/checkpoints/last.ckpt" in message
    assert not Path("runs").exists()


def test_newest_last_checkpoint_skips_runs_without_one(tmp_path):
    from cvattn.runs import newest_last_checkpoint
    for version, has_last in (("version_0", True), ("version_2", True), ("version_10", False), ("version_x", True)):
        (tmp_path / version / "checkpoints").mkdir(parents=True)
        if has_last:
            (tmp_path / version / "checkpoints" / "last.ckpt").touch()
    assert newest_last_checkpoint(tmp_path) == (2, tmp_path / "version_2" / "checkpoints" / "last.ckpt")


def test_failed_run_removes_only_what_it_created(tmp_path, monkeypatch):
    from cvattn.runs import first_missing, remove_partial_run
    kept = tmp_path / "runs" / "a" / "version_0"
    created = first_missing(kept)
    (kept / "checkpoints").mkdir(parents=True)
    (kept / "checkpoints" / "last.ckpt").touch()
    remove_partial_run(kept, created)
    assert (kept / "checkpoints" / "last.ckpt").exists()          # a checkpoint is kept for --ckpt_path last
    partial = tmp_path / "runs" / "b" / "version_0"
    created = first_missing(partial)
    assert created == tmp_path / "runs" / "b"
    partial.mkdir(parents=True)
    (partial / "config.yaml").touch()
    remove_partial_run(partial, created)
    assert not (tmp_path / "runs" / "b").exists() and (tmp_path / "runs" / "a").exists()
    empty = tmp_path / "empty"
    (empty / "mine").mkdir(parents=True)                  # the user's own folder, given as save_dir
    monkeypatch.chdir(empty)
    run = Path("mine/c/version_0")                        # relative, as train.py's run directories are
    created = first_missing(run)
    run.mkdir(parents=True)
    remove_partial_run(run, created)
    assert Path("mine").is_dir() and not any(Path("mine").iterdir())   # what existed before stays
    existing = Path("mine/d/version_0")
    existing.mkdir(parents=True)
    remove_partial_run(existing, first_missing(existing))  # nothing created: nothing removed
    assert existing.is_dir()


def _files(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()}


def _printed_paths(stdout: str) -> dict[str, str]:
    return dict(line.split(": ", 1) for line in stdout.splitlines()
                if line.startswith(("best checkpoint", "last checkpoint", "metrics")))


@pytest.mark.parametrize("logger", [[], ["--trainer.logger", "false"]], ids=["csv_logger", "no_logger"])
def test_fast_dev_run_writes_nothing_and_prints_no_missing_path(config_path, capsys, logger):
    from cvattn.cli import main
    before = _files(config_path.parent)
    main(["--config", str(config_path), "--trainer.fast_dev_run", "true", *logger])
    assert _files(config_path.parent) == before
    assert {name: path.strip() for name, path in _printed_paths(capsys.readouterr().out).items()} == \
        {"best checkpoint": "(none saved)"}


def test_runs_without_a_logger_each_get_their_own_run_directory(config_path, capsys):
    """Without a logger Lightning would save checkpoints and config.yaml in the working directory, the second run
    over the first."""
    from cvattn.cli import main
    before = _files(config_path.parent)
    for version in (0, 1):
        main(["--config", str(config_path), "--trainer.logger", "false"])
        printed = _printed_paths(capsys.readouterr().out)
        run = Path("runs/tiny") / f"version_{version}"
        assert Path(printed["last checkpoint"].strip()) == run / "checkpoints" / "last.ckpt"
        assert "metrics" not in printed and all(Path(p.strip()).is_file() for p in printed.values()), printed
    written = _files(config_path.parent) - before
    assert {path for path in written if not path.startswith("runs/tiny/version_")} == set(), written
    for version in (0, 1):
        assert {f"runs/tiny/version_{version}/config.yaml",
                f"runs/tiny/version_{version}/checkpoints/last.ckpt"} <= written


@pytest.mark.parametrize("config", sorted((REPO / "configs").glob("*.yaml")), ids=lambda p: p.stem)
def test_configs_take_the_distributed_and_fast_path_switches(config, tmp_path, monkeypatch):
    """Every shipped config builds a 2-process DDP trainer with bf16 unchanged (nothing runs or downloads here)."""
    from lightning.pytorch.strategies import DDPStrategy

    from cvattn.checkpoint import AtomicCheckpointIO
    from cvattn.config import build_cli
    monkeypatch.chdir(tmp_path)
    cli = build_cli(["--config", str(config), "--trainer.accelerator", "cpu", "--trainer.devices", "2",
                      "--trainer.strategy", "ddp", "--trainer.num_nodes", "1", "--trainer.precision", "bf16-mixed"])
    assert isinstance(cli.trainer.strategy, DDPStrategy)
    assert cli.trainer.num_devices == 2 and cli.trainer.num_nodes == 1
    assert cli.trainer.precision == "bf16-mixed"
    assert isinstance(cli.trainer.strategy.checkpoint_io, AtomicCheckpointIO)

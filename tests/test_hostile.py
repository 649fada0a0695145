"""Hostile input to `python train.py`: each case ends with ONE `error:` paragraph on stderr, no traceback, exit code
≠ 0, and no run directory left behind; a grayscale image in an RGB folder just trains.

All cases run as concurrent subprocesses from one fixture (each pays the ~6 s import of torch and Lightning); the
variants of these cases (zero lr, negative batch size, a corrupt rather than truncated image, a missing image folder)
run in-process in test_cli.

The second half reproduces the damage a hostile-but-realistic user did to finished runs (two configs of one name,
a resume with another optimiser, a resume that fails, a kill before the first validation, an alias bomb, a failed
run in the user's own folder) and the values that slipped through the door, and asserts each cannot happen now:
the finished run byte-identical, one error paragraph naming the value, nothing written."""
from __future__ import annotations

import json
import os
import subprocess
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import lightning as L
import pytest
import torch
from PIL import Image
from helpers import error_lines, tiny_config, train, write_config, write_image_folder

pytestmark = pytest.mark.slow


class Payload:
    """Unpickling this would run ``touch <marker>``."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def _config(case: Path, images: Path, **edits) -> list[str]:
    config = tiny_config(images)
    for dotted, value in edits.items():
        *parents, key = dotted.split(".")
        section = config
        for name in parents:
            section = section[name]
        section[key] = value
    return ["--config", str(write_config(case / "tiny.yaml", config))]


def _image_folder(case: Path) -> Path:
    return write_image_folder(case / "images", per_class=6)


def malformed_yaml(case: Path) -> list[str]:
    (case / "tiny.yaml").write_text("trainer: {max_epochs: 1\nmodel: [\n")
    return ["--config", "tiny.yaml"]


def key_typo(case: Path) -> list[str]:
    return _config(case, _image_folder(case), **{"model.init_args.lrr": 0.1})


def negative_lr(case: Path) -> list[str]:
    return _config(case, _image_folder(case), **{"model.init_args.lr": -0.1})


def zero_batch_size(case: Path) -> list[str]:
    return _config(case, _image_folder(case), **{"data.init_args.batch_size": 0})


def truncated_image(case: Path) -> list[str]:
    images = _image_folder(case)
    data = (images / "cat" / "0.png").read_bytes()
    (images / "cat" / "0.png").write_bytes(data[: len(data) // 2])
    return _config(case, images, **{"data.init_args.num_workers": 1})   # the error crosses a worker process


def grayscale_image(case: Path) -> list[str]:
    images = _image_folder(case)
    Image.new("L", (16, 16), 128).save(images / "cat" / "0.png")
    return _config(case, images)


def foreign_checkpoint(case: Path) -> list[str]:
    from cvattn.lightning import ImageClassifier
    other = ImageClassifier("resnet20", num_classes=2, in_chans=3)
    torch.save({"state_dict": other.state_dict(), "hyper_parameters": dict(other.hparams), "global_step": 0},
               case / "other.ckpt")
    return [*_config(case, _image_folder(case)), "--ckpt_path", "other.ckpt"]


def not_a_checkpoint(case: Path) -> list[str]:
    (case / "notes.ckpt").write_text("these are my notes, not weights")
    return [*_config(case, _image_folder(case)), "--ckpt_path", "notes.ckpt"]


def pickle_payload(case: Path) -> list[str]:
    torch.save({"state_dict": {}, "payload": Payload(case / "pwned")}, case / "evil.ckpt")
    return [*_config(case, _image_folder(case)), "--ckpt_path", "evil.ckpt"]


def missing_checkpoint(case: Path) -> list[str]:
    return [*_config(case, _image_folder(case)), "--ckpt_path", "nowhere/last.ckpt"]


def unwritable_runs(case: Path) -> list[str]:
    (case / "runs").write_text("a file where the runs directory should be")   # root ignores permission bits
    return _config(case, _image_folder(case))


def empty_dataset(case: Path) -> list[str]:
    images = _image_folder(case)
    for image in images.rglob("*.png"):
        image.unlink()
    return _config(case, images)


# case → (the error paragraph must contain this; None: the run must succeed)
CASES = {
    malformed_yaml: "The config is not valid YAML",
    key_typo: "Unknown key 'lrr' in model.init_args (cvattn.lightning.ImageClassifier). Did you mean 'lr'?",
    negative_lr: "lr must be > 0, got -0.1",
    zero_batch_size: "batch_size must be a positive integer, got 0",
    truncated_image: "Cannot decode image",
    grayscale_image: None,
    foreign_checkpoint: "does not fit the configured model (it was trained as 'resnet20')",
    not_a_checkpoint: "is not a readable PyTorch checkpoint",
    pickle_payload: "weights_only=True refuses",
    missing_checkpoint: "nowhere/last.ckpt' does not exist",
    unwritable_runs: "Cannot create the run directory runs/tiny/version_0: runs is not a directory",
    empty_dataset: "but no images in them",
}


@pytest.fixture(scope="module")
def results(tmp_path_factory) -> dict[str, tuple[Path, subprocess.CompletedProcess]]:
    def run(case) -> tuple[Path, subprocess.CompletedProcess]:
        directory = tmp_path_factory.mktemp(case.__name__)
        process = train(directory, *case(directory))
        stdout, stderr = process.communicate(timeout=300)
        return directory, subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr)

    with ThreadPoolExecutor(max_workers=4) as pool:
        return dict(zip((case.__name__ for case in CASES), pool.map(run, CASES)))


@pytest.mark.parametrize("case", [case for case, expected in CASES.items() if expected], ids=lambda c: c.__name__)
def test_one_clear_error_and_nothing_left_behind(results, case):
    directory, result = results[case.__name__]
    lines = error_lines(result.stderr)
    assert result.returncode == 1, result.stderr[-3000:]
    assert len(lines) == 1 and CASES[case] in lines[0], result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    runs = directory / "runs"
    assert not runs.exists() or runs.is_file(), sorted(map(str, runs.rglob("*")))


def test_pickle_payload_never_runs(results):
    directory, _ = results["pickle_payload"]
    assert (directory / "evil.ckpt").exists() and not (directory / "pwned").exists()


def test_grayscale_image_in_an_rgb_folder_trains(results):
    directory, result = results["grayscale_image"]
    assert result.returncode == 0, result.stderr[-3000:]
    assert (directory / "runs" / "tiny" / "version_0" / "checkpoints" / "last.ckpt").is_file()


# --- Nothing lost, nothing silent: the damage a hostile-but-realistic user did, and each value checked at the door ---
# These run in-process (main(argv)), each on a tiny run of a few steps.

def _snapshot(run: Path) -> dict[str, bytes]:
    return {str(p.relative_to(run)): p.read_bytes() for p in sorted(run.rglob("*")) if p.is_file()}


def _main(argv: list[str], capsys) -> tuple[int, str]:
    """``main(argv)``: (exit code, its single ``error:`` paragraph or '')."""
    from cvattn.cli import main
    try:
        main(argv)
        code = 0
    except SystemExit as exit_info:
        code = exit_info.code
    lines = error_lines(capsys.readouterr().err)
    assert len(lines) <= 1, lines
    return code, lines[0] if lines else ""


@pytest.fixture
def workdir(tmp_path, monkeypatch) -> Path:
    monkeypatch.chdir(tmp_path)
    write_image_folder(tmp_path / "images", per_class=4)
    return tmp_path


def _write(path: Path, **edits) -> str:
    config = tiny_config(Path("images"))
    for dotted, value in edits.items():
        *parents, key = dotted.split(".")
        section = config
        for name in parents:
            section = section.setdefault(name, {})
        section[key] = value
    path.parent.mkdir(parents=True, exist_ok=True)
    return str(write_config(path, config))


def test_two_configs_of_the_same_name_never_share_a_run(workdir, capsys):
    a = _write(workdir / "expA" / "config.yaml")
    b = _write(workdir / "expB" / "config.yaml", **{"model.init_args.lr": 0.01})
    assert _main(["--config", a, "--trainer.max_steps", "3"], capsys)[0] == 0
    run_a = workdir / "runs" / "config" / "version_0"
    before = _snapshot(run_a)
    assert "test/acc" in (run_a / "metrics.csv").read_text()
    code, message = _main(["--config", b, "--ckpt_path", "last"], capsys)
    assert code == 1 and "found nothing to resume: no runs/config-" in message
    assert _snapshot(run_a) == before
    assert _main(["--config", b, "--trainer.max_steps", "3"], capsys)[0] == 0
    assert _snapshot(run_a) == before
    (run_b,) = [p for p in (workdir / "runs").iterdir() if p.name != "config"]
    assert run_b.name.startswith("config-") and (run_b / "version_0" / "checkpoints" / "last.ckpt").is_file()
    assert json.loads((run_b / "version_0" / "run.json").read_text())["config_file"] == str(Path(b).resolve())
    # Each config resumes its own run.
    assert _main(["--config", a, "--ckpt_path", "last", "--trainer.max_steps", "4"], capsys)[0] == 0
    assert _snapshot(run_b / "version_0") == _snapshot(run_b / "version_0")
    assert "version_1" not in {p.name for p in (workdir / "runs" / "config").iterdir()}


@pytest.mark.parametrize("change, expected", [
    (["--model.init_args.optimizer", "adamw"], "model.init_args.optimizer: 'sgd' in the run, 'adamw' now"),
    (["--model.init_args.lr", "0.5"], "model.init_args.lr: 0.05 in the run, 0.5 now"),
    (["--data.init_args.batch_size", "2"], "data.init_args.batch_size: 4 in the run, 2 now"),
    (["--seed_everything", "1"], "seed_everything: 0 in the run, 1 now"),
], ids=["optimizer", "lr", "batch_size", "seed"])
def test_a_refused_resume_leaves_the_finished_run_byte_identical(workdir, capsys, change, expected):
    config = _write(workdir / "tiny.yaml")
    assert _main(["--config", config, "--trainer.max_steps", "3"], capsys)[0] == 0
    run = workdir / "runs" / "tiny" / "version_0"
    before = _snapshot(run)
    code, message = _main(["--config", config, "--ckpt_path", "last", *change], capsys)
    assert code == 1 and expected in message and str(Path(config).resolve()) in message, message
    assert _snapshot(run) == before and sorted(p.name for p in run.parent.iterdir()) == ["version_0"]
    if change[0] == "--model.init_args.optimizer":   # the checkpoint's path, not 'last': the optimiser is checked too
        code, message = _main(["--config", config, "--ckpt_path", str(run / "checkpoints" / "last.ckpt"), *change],
                              capsys)
        assert code == 1 and "was trained with optimizer 'sgd', the config asks for 'adamw'" in message, message
        assert _snapshot(run) == before and sorted(p.name for p in run.parent.iterdir()) == ["version_0"]


def test_a_resume_that_fails_in_its_first_step_leaves_the_records(workdir, capsys):
    config = _write(workdir / "tiny.yaml")
    assert _main(["--config", config, "--trainer.max_steps", "3"], capsys)[0] == 0
    run = workdir / "runs" / "tiny" / "version_0"
    before = _snapshot(run)
    for image in (workdir / "images").rglob("*.png"):
        image.write_bytes(b"not a png")
    code, message = _main(["--config", config, "--ckpt_path", "last", "--trainer.max_epochs", "2"], capsys)
    assert code == 1 and "Cannot decode image" in message
    assert {k: v for k, v in _snapshot(run).items() if k != "hparams.yaml"} == \
        {k: v for k, v in before.items() if k != "hparams.yaml"}


class RaiseAtStep(L.Callback):
    """Stops training with an error before training step ``step`` (a kill, as far as the run's files go)."""

    def __init__(self, step: int):
        self.step = step

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.global_step == self.step:
            raise ValueError(f"killed before step {self.step}")


def test_every_n_train_steps_saves_before_the_first_validation(workdir, capsys):
    """8 steps an epoch, a checkpoint every 2: a kill before step 5 (no validation yet) loses one step."""
    write_image_folder(workdir / "images", per_class=20)
    config = _write(workdir / "tiny.yaml", **{"checkpoint.every_n_train_steps": 2, "trainer.callbacks": [
        {"class_path": "test_hostile.RaiseAtStep", "init_args": {"step": 5}}]})
    code, message = _main(["--config", config], capsys)
    assert code == 1 and "killed before step 5" in message
    last = torch.load(workdir / "runs/tiny/version_0/checkpoints/last.ckpt", weights_only=True)
    assert last["global_step"] == 4


def test_billion_laughs_is_refused_before_it_is_expanded(workdir, capsys):
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x]"]
    lines += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 9)}]" for i in range(1, 10)]
    (workdir / "laughs.yaml").write_text("\n".join(lines) + "\n")
    assert (workdir / "laughs.yaml").stat().st_size < 1500
    code, message = _main(["--config", "laughs.yaml"], capsys)
    assert code == 1 and "Config file laughs.yaml expands to" in message and "billion laughs" in message
    value = "{" + ", ".join(line.replace(": ", ": ", 1) for line in lines[:8]) + "}"
    code, message = _main(["--config", _write(workdir / "tiny.yaml"), "--model.init_args.model_kwargs", value],
                          capsys)
    assert code == 1 and "A YAML value expands to" in message, message
    assert not (workdir / "runs").exists()


def test_a_failed_run_removes_only_what_it_created(workdir, capsys):
    (workdir / "mine").mkdir()
    (workdir / "images" / "dog" / "1.png").write_bytes(b"corrupt")
    config = _write(workdir / "tiny.yaml")
    code, message = _main(["--config", config, "--trainer.logger.init_args.save_dir", "mine"], capsys)
    assert code == 1 and "Cannot decode image" in message
    assert (workdir / "mine").is_dir() and not any((workdir / "mine").iterdir())
    code, _ = _main(["--config", config, "--trainer.logger.init_args.save_dir", "new/deeper"], capsys)
    assert code == 1 and not (workdir / "new").exists()


# (command-line flags, or config edits) → the error must contain this; nothing may be written.
AT_THE_DOOR = {
    "in_chans_override": (["--model.init_args.in_chans", "1"],
                          "model.init_args.in_chans is 1, but the data gives in_chans=3"),
    "num_classes_override": (["--model.init_args.num_classes", "5"],
                             "model.init_args.num_classes is 5, but the data gives num_classes=2"),
    "in_chans_in_model_kwargs": ({"model.init_args.model_kwargs": {"width": 8, "in_chans": 3}},
                                 "model_kwargs sets in_chans, which the data gives the model"),
    "zero_epochs": (["--trainer.max_epochs", "0"], "trainer.max_epochs is 0, which trains nothing"),
    "zero_steps": (["--trainer.max_steps", "0"], "trainer.max_steps is 0, which trains nothing"),
    "negative_steps": (["--trainer.max_steps", "-5"], "trainer.max_steps is -5"),
    "zero_train_batches": (["--trainer.limit_train_batches", "0"], "trainer.limit_train_batches is 0"),
    "epochs_as_word": (["--trainer.max_epochs", "ten"],
                       "Bad value for trainer.max_epochs: 'ten'; accepted: an integer or null"),
    "precision_17": (["--trainer.precision", "17"], "Bad value for trainer.precision: '17'; accepted: 64, 32, 16, "),
    "resume_unknown_optimizer": (["--model.init_args.optimizer", "adamm"], "Unknown optimizer 'adamm'"),
}


@pytest.mark.parametrize("case", AT_THE_DOOR, ids=str)
def test_bad_values_are_refused_at_the_door_naming_the_value(workdir, capsys, case):
    change, expected = AT_THE_DOOR[case]
    config = _write(workdir / "tiny.yaml", **(change if isinstance(change, dict) else {}))
    flags = change if isinstance(change, list) else []
    code, message = _main(["--config", config, *flags], capsys)
    assert code == 1 and expected in message, message
    assert not (workdir / "runs").exists()


@pytest.mark.parametrize("content, expected", [
    (b"", "Config file bad.yaml is empty"),
    (b"# only a comment\n", "Config file bad.yaml is empty"),
    ("trainer: {max_epochs: 1}\nmodel: caf\xe9\n".encode("latin1"),
     "Config file bad.yaml is not UTF-8 text (byte 0xe9 on line 2); save it as UTF-8"),
    (b"just a string\n", "Config file bad.yaml holds a str"),
], ids=["empty", "comment_only", "latin1", "scalar"])
def test_config_files_that_are_not_configs_are_named(workdir, capsys, content, expected):
    (workdir / "bad.yaml").write_bytes(content)
    code, message = _main(["--config", "bad.yaml"], capsys)
    assert code == 1 and expected in message, message
    assert not (workdir / "runs").exists()


def test_checkpoints_get_the_umask_mode_and_an_unreadable_one_says_permission_denied(tmp_path, monkeypatch):
    from cvattn.checkpoint import AtomicCheckpointIO, load_checkpoint
    umask = os.umask(0o022)
    try:
        AtomicCheckpointIO().save_checkpoint({"step": torch.tensor(1)}, tmp_path / "last.ckpt")
    finally:
        os.umask(umask)
    assert (tmp_path / "last.ckpt").stat().st_mode & 0o777 == 0o644
    (tmp_path / "last.ckpt").chmod(0o600)
    real_access = os.access
    monkeypatch.setattr(os, "access", lambda path, mode: False if Path(path).name == "last.ckpt"
                        else real_access(path, mode))   # root (the CI user) reads any file
    with pytest.raises(PermissionError, match="cannot be read: permission denied"):
        load_checkpoint(tmp_path / "last.ckpt")


def test_a_run_records_its_config_and_can_be_named(workdir, capsys):
    config = _write(workdir / "tiny.yaml")
    assert _main(["--config", config, "--trainer.max_steps", "2", "--trainer.logger.init_args.name", "mine"],
                 capsys)[0] == 0
    record = json.loads((workdir / "runs" / "mine" / "version_0" / "run.json").read_text())
    assert record["config_file"] == str(Path(config).resolve()) and len(record["experiment_hash"]) == 16
    assert "trainer" not in record["experiment"] and record["experiment"]["model"]["init_args"]["lr"] == 0.05

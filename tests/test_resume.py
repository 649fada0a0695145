"""Exact resume after SIGKILL, the exit code after SIGTERM, determinism, and atomic checkpoint writes.

The slow tests run `python train.py` four times on a tiny config (8 steps an epoch, 3 epochs, a checkpoint every 2
steps, one loader worker): twice uninterrupted, once paused before step 11 (mid-epoch 1, one step after the step-10
checkpoint) and SIGKILLed by the test, then resumed with `--ckpt_path last`."""
from __future__ import annotations

import csv
import signal
import time
from pathlib import Path
from types import SimpleNamespace

import lightning as L
import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset
from helpers import tiny_config, train, write_config, write_image_folder

import cvattn.checkpoint
from cvattn.checkpoint import AtomicCheckpointIO, ExactResume, LastCheckpoint, check_checkpoint_fits

PAUSE_AT_STEP = '''
import time
from pathlib import Path

import lightning as L


class PauseAtStep(L.Callback):
    """Touches ``marker``, then sleeps before training step ``step`` until the test kills the process."""

    def __init__(self, step: int, marker: str):
        self.step, self.marker = step, marker

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.global_step == self.step:
            Path(self.marker).touch()
            time.sleep(600)
'''
STEPS_PER_EPOCH, KILL_AT_STEP = 8, 11


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> Path:
    base = tmp_path_factory.mktemp("resume")
    images = write_image_folder(base / "images")
    (base / "pause.py").write_text(PAUSE_AT_STEP)

    def start(name: str, *args: str, pause: bool = False):
        (base / name).mkdir(exist_ok=True)
        config = tiny_config(images, max_epochs=3, num_workers=1)
        config["checkpoint"] = {"every_n_train_steps": 2}
        if pause:
            config["trainer"]["callbacks"] = [{"class_path": "pause.PauseAtStep",
                                               "init_args": {"step": KILL_AT_STEP, "marker": str(base / "paused")}}]
        write_config(base / name / "tiny.yaml", config)
        return train(base / name, "--config", "tiny.yaml", *args, pythonpath=(base,))

    first, second, killed = start("first"), start("second"), start("killed", pause=True)
    deadline = time.monotonic() + 240
    while not (base / "paused").exists():
        assert killed.poll() is None, killed.communicate()[1][-3000:]
        assert time.monotonic() < deadline, "the run to be killed never reached its pause"
        time.sleep(0.2)
    killed.send_signal(signal.SIGKILL)
    killed.communicate()
    resumed = start("killed", "--ckpt_path", "last")
    for process in (first, second, resumed):
        _, stderr = process.communicate(timeout=300)
        assert process.returncode == 0, stderr[-3000:]
    return base


def _metrics(run: Path) -> list[dict[str, str]]:
    with (run / "runs" / "tiny" / "version_0" / "metrics.csv").open(newline="") as file:
        return list(csv.DictReader(file))


def _last_checkpoint(run: Path) -> dict:
    return torch.load(run / "runs" / "tiny" / "version_0" / "checkpoints" / "last.ckpt", weights_only=True)


def _assert_same_weights(a: dict, b: dict) -> None:
    assert a["state_dict"].keys() == b["state_dict"].keys()
    assert all(torch.equal(a["state_dict"][k], b["state_dict"][k]) for k in a["state_dict"])


@pytest.mark.slow
def test_same_config_and_seed_give_the_same_metrics(runs):
    first, second = _metrics(runs / "first"), _metrics(runs / "second")
    assert first == second and first[-1]["test/acc"] != ""
    _assert_same_weights(_last_checkpoint(runs / "first"), _last_checkpoint(runs / "second"))


@pytest.mark.slow
def test_sigkill_mid_epoch_then_ckpt_path_last_ends_bitwise_like_an_uninterrupted_run(runs):
    killed = runs / "killed"
    assert sorted(p.name for p in (killed / "runs" / "tiny").iterdir()) == ["version_0"]   # logging went on in it
    assert not list(killed.rglob("*.tmp"))
    uninterrupted, resumed = _metrics(runs / "first"), _metrics(killed)
    assert [row["step"] for row in resumed] == [row["step"] for row in uninterrupted]
    interrupted_epoch = str(KILL_AT_STEP // STEPS_PER_EPOCH)
    for expected, got in zip(uninterrupted, resumed):
        if got["epoch"] == interrupted_epoch and got["train/loss_epoch"]:
            # Lightning keeps no running epoch means in checkpoints: this epoch's averages cover the resumed part.
            continue
        assert got == expected
    assert resumed[-1]["test/acc"] == uninterrupted[-1]["test/acc"] != ""
    _assert_same_weights(_last_checkpoint(runs / "first"), _last_checkpoint(killed))


TERM_AT_STEP = """
import os
import signal

import lightning as L


class TermAtStep(L.Callback):
    def __init__(self, step: int):
        self.step = step

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.global_step == self.step:
            os.kill(os.getpid(), signal.SIGTERM)
"""


@pytest.mark.slow
@pytest.mark.parametrize("term_step", [3, STEPS_PER_EPOCH + 2])
def test_sigterm_exits_143_naming_the_resume_and_tests_nothing(tmp_path, term_step):
    (tmp_path / "term.py").write_text(TERM_AT_STEP)
    config = tiny_config(write_image_folder(tmp_path / "images"), max_epochs=3)
    config["trainer"]["callbacks"] = [{"class_path": "term.TermAtStep", "init_args": {"step": term_step}}]
    write_config(tmp_path / "tiny.yaml", config)
    process = train(tmp_path, "--config", "tiny.yaml", pythonpath=(tmp_path,))
    _, stderr = process.communicate(timeout=300)
    assert process.returncode == 128 + signal.SIGTERM, stderr[-3000:]
    assert "stopped by SIGTERM" in stderr
    if term_step > STEPS_PER_EPOCH:   # the end of epoch 0 wrote last.ckpt
        assert f"resume from {Path('runs/tiny/version_0/checkpoints/last.ckpt')} with the same command plus " \
               "--ckpt_path last" in stderr
    else:                             # the first checkpoint waits for the first validation (val/acc)
        assert "no checkpoint was saved yet" in stderr
    rows = _metrics(tmp_path)
    assert rows and max(int(row["step"]) for row in rows) <= term_step
    assert not any(row.get("test/acc") for row in rows)


# ---------------------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("interruption", [OSError(28, "No space left on device"), KeyboardInterrupt()])
def test_interrupted_save_leaves_the_old_checkpoint_and_no_temporary_file(tmp_path, monkeypatch, interruption):
    target = tmp_path / "last.ckpt"
    AtomicCheckpointIO().save_checkpoint({"step": torch.tensor(1)}, target)
    before = target.read_bytes()

    def save_half_then_fail(obj, file):
        file.write(b"PK\x03\x04 half a zip archive")
        raise interruption

    monkeypatch.setattr(cvattn.checkpoint.torch, "save", save_half_then_fail)
    with pytest.raises(type(interruption)):
        AtomicCheckpointIO().save_checkpoint({"step": torch.tensor(2)}, target)
    assert target.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["last.ckpt"]
    monkeypatch.undo()
    AtomicCheckpointIO().save_checkpoint({"step": torch.tensor(3)}, target)
    assert AtomicCheckpointIO().load_checkpoint(target)["step"] == 3


class WorseningModel(L.LightningModule):
    """Trains a linear layer; its logged val/acc falls every epoch, so only the first epoch is ever the best."""

    def __init__(self):
        super().__init__()
        self.layer = torch.nn.Linear(2, 1)

    def training_step(self, batch, batch_idx):
        return self.layer(batch[0]).square().mean()

    def validation_step(self, batch, batch_idx):
        self.log("val/acc", 1.0 - 0.1 * self.current_epoch)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def test_last_checkpoint_holds_the_newest_epoch_when_the_metric_gets_worse(tmp_path):
    loader = DataLoader(TensorDataset(torch.randn(8, 2)), batch_size=4)
    checkpoint = LastCheckpoint(dirpath=tmp_path, monitor="val/acc", mode="max", save_last=True)
    trainer = L.Trainer(max_epochs=3, callbacks=[checkpoint], logger=False, enable_progress_bar=False,
                        enable_model_summary=False, default_root_dir=tmp_path)
    model = WorseningModel()
    trainer.fit(model, loader, loader)
    last = torch.load(tmp_path / "last.ckpt", weights_only=True)
    assert last["epoch"] == 2 and last["global_step"] == 6
    assert torch.equal(last["state_dict"]["layer.weight"], model.layer.weight)
    assert torch.load(checkpoint.best_model_path, weights_only=True)["epoch"] == 0


def test_checkpoint_of_another_model_names_the_keys():
    from cvattn.lightning import ImageClassifier
    model = ImageClassifier("convnet2", {"width": 8}, num_classes=2, in_chans=3)
    wider = ImageClassifier("convnet2", {"width": 16}, num_classes=2, in_chans=3)
    other = ImageClassifier("resnet20", num_classes=2, in_chans=3)
    check_checkpoint_fits({"state_dict": model.state_dict()}, model, "same.ckpt")
    with pytest.raises(ValueError, match=r"trained as 'resnet20'\): missing keys: \d+ \(e\.g\. model\.blocks.*"
                                         r"unexpected keys: \d+ \(e\.g\. model\.") as error:
        check_checkpoint_fits({"state_dict": other.state_dict(), "hyper_parameters": dict(other.hparams)}, model,
                              "other.ckpt")
    assert "other.ckpt" in str(error.value)
    with pytest.raises(ValueError, match=r"keys of another shape: \d+ \(e\.g\. model\.blocks\.0\.bn1\.bias \(16,\) in "
                                         r"the checkpoint vs \(8,\)"):
        check_checkpoint_fits({"state_dict": wider.state_dict()}, model, "wider.ckpt")
    with pytest.raises(ValueError, match="not a checkpoint written by train.py"):
        check_checkpoint_fits(model.model.state_dict(), model, "plain.pt")


def test_exact_resume_restores_the_random_state_and_the_loader_position():
    class Loader:
        def __init__(self):
            self.position = {"epoch": 1, "batches": 5}

        def state_dict(self):
            return dict(self.position)

        def load_state_dict(self, state):
            self.position = state

    saved_loader, checkpoint = Loader(), {}
    torch.manual_seed(0)
    ExactResume().on_save_checkpoint(SimpleNamespace(train_dataloader=saved_loader), None, checkpoint)
    expected = torch.rand(3)
    restored_loader, callback = Loader(), ExactResume()
    restored_loader.position = {"epoch": 0, "batches": 0}
    callback.on_load_checkpoint(None, None, checkpoint)
    torch.rand(100)                                     # whatever runs between loading and the first batch
    callback.on_train_start(SimpleNamespace(train_dataloader=[restored_loader]), None)
    assert torch.equal(torch.rand(3), expected)
    assert restored_loader.position == {"epoch": 1, "batches": 5}

"""Checkpoint files: written atomically, read with ``weights_only=True``, checked against the model, resumed exactly.

``AtomicCheckpointIO`` is the Lightning ``CheckpointIO`` that ``train.py`` installs: a checkpoint is written to a
temporary file in the same directory, flushed to disk and renamed over the target, so a run killed mid-write
leaves either the old file or the new one, never half of one. Loading never unpickles arbitrary objects.
``check_checkpoint_fits`` turns Lightning's long key-mismatch error into one paragraph before training starts.
``LastCheckpoint`` is the ``ModelCheckpoint`` that ``train.py`` configures: its ``last.ckpt`` is the newest state.
``ExactResume`` carries what Lightning's checkpoints lack for a bitwise resume: torch's global random state and
the training loader's place in its epoch (every other piece of data randomness is a function of
``(seed, epoch, index)``, see ``cvattn.data.sampler``).
"""
from __future__ import annotations

import os
import pickle
import re
import tempfile
from pathlib import Path
from typing import Any

import lightning as L
import torch
import torch.nn as nn
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.plugins.io import TorchCheckpointIO
from lightning.pytorch.utilities import rank_zero_warn

from cvattn._compat import every_n_train_steps, save_last_checkpoint, saves_on_train_epoch_end, skips_saving
from cvattn.checks import state_dict_mismatch

_UNREADABLE = "{path!r} is not a readable PyTorch checkpoint (truncated, or not a file that torch.save wrote)."


def load_checkpoint(path: str | os.PathLike, map_location: Any = "cpu") -> dict[str, Any]:
    """``torch.load(path, weights_only=True)`` with errors that say what is wrong with the file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"Checkpoint {str(path)!r} does not exist (or is not a file).")
    if not os.access(path, os.R_OK):
        raise PermissionError(f"Checkpoint {str(path)!r} cannot be read: permission denied (mode "
                              f"{path.stat().st_mode & 0o777:o}). Ask its owner to make it readable, e.g. "
                              f"chmod a+r {path}.")
    try:
        checkpoint = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as err:
        if refused := re.search(r"GLOBAL ([\w.]+)", str(err)):
            raise ValueError(
                f"Checkpoint {str(path)!r} was not loaded: it asks to import {refused.group(1)}, and weights_only=True "
                f"refuses to unpickle anything but tensors and plain containers (that could run arbitrary code). Only "
                f"load checkpoints written by cvattn/Lightning or plain state_dicts."
            ) from None
        raise ValueError(_UNREADABLE.format(path=str(path))) from None
    except PermissionError:
        raise PermissionError(f"Checkpoint {str(path)!r} cannot be read: permission denied.") from None
    except Exception:  # a truncated or foreign file fails in the zip reader or the unpickler, with many types
        raise ValueError(_UNREADABLE.format(path=str(path))) from None
    if not isinstance(checkpoint, dict):
        raise ValueError(f"Checkpoint {str(path)!r} holds a {type(checkpoint).__name__}, not a dict of weights.")
    return checkpoint


def _umask_mode() -> int:
    """The mode a new file gets from ``open()`` under the current umask (0644 under umask 022)."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


class AtomicCheckpointIO(TorchCheckpointIO):
    """Write through a temporary file and ``os.replace``; load with ``weights_only=True``. The file gets the mode
    ``open()`` would give it (``tempfile.mkstemp`` makes 0600, unreadable to a serving process of another user)."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options: Any = None) -> None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        try:
            os.fchmod(fd, _umask_mode())
            with os.fdopen(fd, "wb") as file:
                torch.save(checkpoint, file)
                file.flush()
                os.fsync(file.fileno())
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    def load_checkpoint(self, path, map_location: Any = None, weights_only: bool | None = None) -> dict[str, Any]:
        return load_checkpoint(path, map_location=map_location or "cpu")


class LastCheckpoint(ModelCheckpoint):
    """Lightning's ``ModelCheckpoint`` with ``last.ckpt`` rewritten at every checkpoint event, best or not.

    Since Lightning 2.6 ``save_last=True`` writes ``last.ckpt`` only when a top-k checkpoint is written at the same
    step, so with a monitored metric ``last.ckpt`` is the best epoch, and ``--ckpt_path last`` silently dropped every
    epoch trained since (found in a 100-epoch run: epochs 51-54 missing from ``last.ckpt``). This restores the
    earlier meaning: after each validation (or each training epoch, when the callback saves there) the newest state
    is in ``last.ckpt``. With ``every_n_train_steps`` it is also written every that many steps even before the first
    validation, when the monitored metric has no value yet and Lightning skips the save (a kill at step 550 with
    ``every_n_train_steps: 50`` lost all 550). Under ``fast_dev_run`` it saves nothing. The same arguments as
    ``ModelCheckpoint``.
    """

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, *args, **kwargs) -> None:
        super().on_train_batch_end(trainer, pl_module, *args, **kwargs)
        every = every_n_train_steps(self)
        if every >= 1 and trainer.global_step % every == 0:
            self._save_last_if_missed(trainer)

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        super().on_validation_end(trainer, pl_module)
        if not saves_on_train_epoch_end(self, trainer):
            self._save_last_if_missed(trainer)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        super().on_train_epoch_end(trainer, pl_module)
        if saves_on_train_epoch_end(self, trainer):
            self._save_last_if_missed(trainer)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # Lightning 2.6 writes a missing last.ckpt here even under fast_dev_run, which is meant to save nothing
        # (and then has no run directory: the file landed in the working directory).
        if not trainer.fast_dev_run:
            super().on_train_end(trainer, pl_module)

    def _save_last_if_missed(self, trainer: L.Trainer) -> None:
        # Skipped when this step was already saved (then last.ckpt was written with it), and outside fitting.
        if self.save_last and not skips_saving(self, trainer):
            save_last_checkpoint(self, trainer)


def check_checkpoint_fits(checkpoint: dict[str, Any], module: nn.Module, path: str | os.PathLike) -> None:
    """``ValueError`` naming the missing, unexpected and reshaped keys if ``checkpoint`` (read from ``path``) cannot
    restore ``module``, or naming the optimiser or schedule if the checkpoint's were another (Lightning would fail
    on the optimiser's state only once training starts, e.g. with ``KeyError: 'step'``)."""
    if "state_dict" not in checkpoint:
        raise ValueError(f"{str(path)!r} is a plain dict (keys {sorted(checkpoint)[:5]}), not a checkpoint written by "
                         f"train.py; --ckpt_path needs a Lightning checkpoint (with 'state_dict', optimiser and loop "
                         f"states), e.g. runs/<config>/version_N/checkpoints/last.ckpt.")
    if problems := state_dict_mismatch(checkpoint["state_dict"], module.state_dict()):
        trained_as = checkpoint.get("hyper_parameters", {}).get("model")
        origin = f" (it was trained as {trained_as!r})" if isinstance(trained_as, str) else ""
        raise ValueError(f"Checkpoint {str(path)!r} does not fit the configured model{origin}: {problems}. "
                         f"Resume with the config that wrote it, or train from scratch without --ckpt_path.")
    saved, configured = checkpoint.get("hyper_parameters") or {}, getattr(module, "hparams", {})
    for name in ("optimizer", "scheduler"):
        if name in saved and name in configured and saved[name] != configured[name]:
            raise ValueError(f"Checkpoint {str(path)!r} was trained with {name} {saved[name]!r}, the config asks for "
                             f"{configured[name]!r}: its {name} state cannot be resumed into another {name}. Resume "
                             f"with --model.init_args.{name} {saved[name]}, or start from its weights in a new run "
                             f"without --ckpt_path.")


class ExactResume(L.Callback):
    """Saves what a Lightning checkpoint lacks for a bitwise resume, and puts it back at ``on_train_start``.

    - torch's global random state (CPU, and the current CUDA device), so dropout, stochastic depth and sampled glimpse
      locations continue as in an uninterrupted run. With several processes every rank restores rank 0's state
      (ranks are seeded alike).
    - the training loader's place in its epoch, for loaders with ``state_dict``/``load_state_dict``
      (``cvattn.data.ResumableDataLoader``). Lightning saves it too, but restores it only when it builds the loader
      after loading the checkpoint, and ``trainer.estimated_stepping_batches`` in ``configure_optimizers`` builds it
      before. ``on_train_start`` comes after both and before the first batch is drawn.
    """

    def __init__(self):
        self._to_restore: dict[str, Any] | None = None

    def on_save_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict) -> None:
        state = {"torch_rng": torch.get_rng_state(),
                 "train_loaders": [loader.state_dict() for loader in _train_loaders(trainer)]}
        if torch.cuda.is_available():
            state["cuda_rng"] = torch.cuda.get_rng_state()
        checkpoint["exact_resume"] = state

    def on_load_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict) -> None:
        self._to_restore = checkpoint.get("exact_resume")

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._to_restore is None:
            return
        torch.set_rng_state(self._to_restore["torch_rng"])
        if "cuda_rng" in self._to_restore and torch.cuda.is_available():
            torch.cuda.set_rng_state(self._to_restore["cuda_rng"])
        loaders, states = _train_loaders(trainer), self._to_restore["train_loaders"]
        if len(loaders) == len(states):
            for loader, state in zip(loaders, states):
                loader.load_state_dict(state)
        else:
            rank_zero_warn(f"The checkpoint holds the positions of {len(states)} training loaders, this run has "
                           f"{len(loaders)} that can take one: the resumed epoch starts from its first batch.")
        self._to_restore = None


def _train_loaders(trainer: L.Trainer) -> list[Any]:
    """The trainer's training loaders that can save their place in the epoch."""
    loaders = trainer.train_dataloader
    if isinstance(loaders, dict):
        loaders = list(loaders.values())
    elif not isinstance(loaders, (list, tuple)):
        loaders = [loaders]
    return [loader for loader in loaders if hasattr(loader, "state_dict") and hasattr(loader, "load_state_dict")]


def load_weights(module: L.LightningModule, path: str | os.PathLike) -> None:
    """Load a Lightning checkpoint (``state_dict`` of the module) or a bare network's ``state_dict``; a checkpoint
    of another architecture is a ``ValueError`` naming the missing, unexpected and mis-shaped keys."""
    checkpoint = load_checkpoint(path)
    state = checkpoint.get("state_dict", checkpoint)
    network = getattr(module, "model", None)
    target: nn.Module = module
    if not module.state_dict().keys() & state.keys() and isinstance(network, nn.Module):
        target = network   # a bare network's state_dict
    if problems := state_dict_mismatch(state, target.state_dict()):
        raise ValueError(
            f"Checkpoint {str(path)!r} does not fit the config's model ({type(network or module).__name__}): "
            f"{problems}. Use the config the checkpoint was trained with (runs/<name>/version_N/config.yaml).")
    target.load_state_dict(state)

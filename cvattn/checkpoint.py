"""Checkpoint files: written atomically, read with ``weights_only=True``.

``AtomicCheckpointIO`` is the Lightning ``CheckpointIO`` that ``train.py`` installs: a checkpoint is written to a
temporary file in the same directory, flushed to disk and renamed over the target, so a run killed mid-write
leaves either the old file or the new one, never half of one. Loading never unpickles arbitrary objects.
"""
from __future__ import annotations

import os
import pickle
import tempfile
import zipfile
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.plugins.io import TorchCheckpointIO


def load_checkpoint(path: str | os.PathLike, map_location: Any = "cpu") -> dict[str, Any]:
    """``torch.load(path, weights_only=True)`` with errors that say what is wrong with the file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"Checkpoint {str(path)!r} does not exist (or is not a file).")
    try:
        checkpoint = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as err:
        raise ValueError(
            f"Checkpoint {str(path)!r} holds objects other than tensors and plain containers, so it was not "
            f"loaded (weights_only=True refuses to unpickle arbitrary code). Only load checkpoints written by "
            f"cvattn/Lightning or plain state_dicts. Detail: {str(err).splitlines()[0]}"
        ) from None
    except (RuntimeError, EOFError, zipfile.BadZipFile) as err:
        raise ValueError(f"{str(path)!r} is not a readable PyTorch checkpoint (truncated or another kind of file): "
                         f"{str(err).splitlines()[0]}") from None
    if not isinstance(checkpoint, dict):
        raise ValueError(f"Checkpoint {str(path)!r} holds a {type(checkpoint).__name__}, not a dict of weights.")
    return checkpoint


class AtomicCheckpointIO(TorchCheckpointIO):
    """Write through a temporary file and ``os.replace``; load with ``weights_only=True``."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options: Any = None) -> None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        try:
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

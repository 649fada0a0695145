"""Run directories: ``runs/<config name>/version_N``, as ``train.py`` lays them out.

A run directory holds ``metrics.csv``, the resolved ``config.yaml`` and ``checkpoints/`` (the best and the last
checkpoint). This module names and finds them (``run_name``, ``next_version``, ``newest_last_checkpoint``), checks
that one can be written before training starts (``unwritable_ancestor``, ``check_writable``), removes one a failed
run left without a checkpoint (``remove_partial_run``), and drops the metrics rows a resumed run logs again
(``forget_metrics_from``). No run overwrites another: a new run takes the next free ``version_N``.
"""
from __future__ import annotations

import csv
import os
import shutil
import tempfile
from pathlib import Path


def run_name(argv: list[str]) -> str:
    """The stem of the ``--config`` file in ``argv`` (``configs/quickstart.yaml`` → ``quickstart``), or 'cvattn'."""
    for i, arg in enumerate(argv):
        if arg in ("--config", "-c") and i + 1 < len(argv):
            return Path(argv[i + 1]).stem
        if arg.startswith("--config="):
            return Path(arg.split("=", 1)[1]).stem
    return "cvattn"


def _versions(root: Path) -> dict[int, Path]:
    """``{N: root/version_N}`` for the run directories under ``root``."""
    prefix = "version_"
    return {int(p.name[len(prefix):]): p for p in root.glob(f"{prefix}*")
            if p.is_dir() and p.name[len(prefix):].isdigit()}


def next_version(root: Path) -> Path:
    """``root/version_N`` with N one more than the largest run under ``root`` (0 for the first), as the CSV logger
    numbers its runs."""
    return root / f"version_{max(_versions(root), default=-1) + 1}"


def newest_last_checkpoint(root: Path) -> tuple[int, Path]:
    """``(N, root/version_N/checkpoints/last.ckpt)`` with the largest N that has one."""
    found = {n: run / "checkpoints" / "last.ckpt" for n, run in _versions(root).items()
             if (run / "checkpoints" / "last.ckpt").exists()}
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


def check_writable(run_dir: Path) -> None:
    """``PermissionError`` before training if the run directory cannot be created, rather than after the first
    epoch."""
    if problem := unwritable_ancestor(run_dir):
        raise PermissionError(f"Cannot create the run directory {run_dir}: {problem[0]} {problem[1]}. Run from a "
                              f"writable folder or set --trainer.logger.init_args.save_dir to one.")


def remove_partial_run(run_dir: Path) -> None:
    """Remove a run directory this process created if it holds no checkpoint (a checkpoint is kept for resume),
    then its parents left empty, up to the working directory."""
    if not run_dir.is_dir() or any(run_dir.rglob("*.ckpt")):
        return
    shutil.rmtree(run_dir)
    for parent in run_dir.parents:
        if parent.resolve() == Path.cwd() or not parent.is_dir() or any(parent.iterdir()):
            break
        parent.rmdir()


def forget_metrics_from(metrics: Path, step: int) -> None:
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

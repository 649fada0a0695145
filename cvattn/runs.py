"""Run directories: ``runs/<run name>/version_N``, as ``train.py`` lays them out.

A run directory holds ``run.json`` (which config made it), ``metrics.csv``, the resolved ``config.yaml`` and
``checkpoints/`` (the best and the last checkpoint). This module names and finds them (``run_name``,
``unique_run_name``, ``next_version``, ``newest_last_checkpoint``), records and checks which experiment a run is
(``experiment_of``, ``write_run_record``, ``check_same_experiment``), checks that one can be written before training
starts (``unwritable_ancestor``, ``check_writable``), removes exactly what a failed run created when it left no
checkpoint (``first_missing``, ``remove_partial_run``), and drops the metrics rows a resumed run logs again
(``forget_metrics_from``). No run overwrites another: a new run takes the next free ``version_N`` of a name that only
its config file uses, and ``--ckpt_path last`` resumes only a run of the same experiment.

A run's identity is its config file's path and the hash of the resolved ``seed_everything``, ``model`` and ``data``
sections: what decides the numbers. The ``trainer`` and ``checkpoint`` sections (devices, precision, the number of
epochs, logging) are not part of it, so a run may be resumed on other hardware or trained for longer.
"""
from __future__ import annotations

import csv
import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

RUN_RECORD = "run.json"
EXPERIMENT_SECTIONS = ("seed_everything", "model", "data")


def config_file(argv: list[str]) -> str | None:
    """The ``--config`` file named in ``argv`` (the first, if several), or ``None``."""
    for i, arg in enumerate(argv):
        if arg in ("--config", "-c") and i + 1 < len(argv):
            return argv[i + 1]
        if arg.startswith("--config="):
            return arg.split("=", 1)[1]
    return None


def run_name(argv: list[str]) -> str:
    """The stem of the ``--config`` file in ``argv`` (``configs/quickstart.yaml`` → ``quickstart``), or 'cvattn'."""
    config = config_file(argv)
    return Path(config).stem if config else "cvattn"


def _short_hash(text: str, length: int = 8) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:length]


def read_run_record(run_dir: Path) -> dict[str, Any] | None:
    """The ``run.json`` of ``run_dir``, or ``None`` for a run without one (or with an unreadable one)."""
    try:
        record = json.loads((run_dir / RUN_RECORD).read_text())
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) else None


def unique_run_name(root: Path, name: str, config: str | None) -> str:
    """``name``, unless runs under ``root/name`` were made by another config file (``expA/config.yaml`` and
    ``expB/config.yaml`` both have the stem ``config``): then ``name-<hash of this config's path>``, so that two
    configs never share a run directory."""
    if config is None:
        return name
    mine = str(Path(config).resolve())
    for run in _versions(root / name).values():
        record = read_run_record(run)
        if record is not None and record.get("config_file") not in (None, mine):
            return f"{name}-{_short_hash(mine)}"
    return name


def experiment_of(config: dict[str, Any]) -> dict[str, Any]:
    """The sections of a resolved config that define the experiment (``EXPERIMENT_SECTIONS``)."""
    return {key: config.get(key) for key in EXPERIMENT_SECTIONS}


def experiment_hash(experiment: dict[str, Any]) -> str:
    return _short_hash(json.dumps(experiment, sort_keys=True, default=str), 16)


def write_run_record(run_dir: Path, config: str | None, experiment: dict[str, Any]) -> None:
    """``run_dir/run.json``: the config file that made the run and the hash and values of its experiment."""
    record = {"config_file": str(Path(config).resolve()) if config else None,
              "experiment_hash": experiment_hash(experiment), "experiment": experiment}
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / RUN_RECORD).write_text(json.dumps(record, indent=1, sort_keys=True, default=str) + "\n")


def _differences(saved: Any, now: Any, prefix: str = "") -> list[str]:
    if isinstance(saved, dict) and isinstance(now, dict):
        return [d for key in sorted(saved.keys() | now.keys(), key=str)
                for d in _differences(saved.get(key), now.get(key), f"{prefix}{key}.")]
    return [] if saved == now else [f"{prefix[:-1]}: {saved!r} in the run, {now!r} now"]


def check_same_experiment(run_dir: Path, config: str | None, experiment: dict[str, Any]) -> None:
    """``ValueError`` naming both config files and the values that differ if ``run_dir`` was made by another
    experiment (a run without ``run.json``, from before runs recorded one, passes)."""
    record = read_run_record(run_dir)
    if record is None or record.get("experiment_hash") == experiment_hash(experiment):
        return
    # Through JSON, as the record was written, so that a tuple and a list of the same values compare equal.
    now = json.loads(json.dumps(experiment, default=str))
    differences = _differences(record.get("experiment"), now) or ["(the record does not list its values)"]
    shown = "; ".join(differences[:3]) + (f"; and {len(differences) - 3} more" if len(differences) > 3 else "")
    raise ValueError(f"--ckpt_path last will not resume {run_dir}: it was made by config {record.get('config_file')} "
                     f"and this is config {Path(config).resolve() if config else '(none)'}, a different experiment "
                     f"({shown}). Resume with the config that made the run, or start a new run without --ckpt_path "
                     f"(or name it with --trainer.logger.init_args.name).")


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


def first_missing(directory: Path) -> Path | None:
    """The outermost of ``directory`` and its parents that does not exist yet (what creating ``directory`` creates),
    or ``None`` if ``directory`` exists. Taken before a run starts, it is what ``remove_partial_run`` may remove."""
    missing = [p for p in (directory, *directory.parents) if not p.exists()]
    return missing[-1] if missing else None


def remove_partial_run(run_dir: Path, created: Path | None) -> None:
    """Remove what a failed run created, ``created`` (from ``first_missing`` before the run) and below, if it holds no
    checkpoint (a checkpoint is kept for resume): ``run_dir``, then each parent up to ``created`` that is left empty.
    A folder that existed before the run (``created`` is ``None``, or below it) is never removed."""
    if created is None or not run_dir.is_dir() or any(run_dir.rglob("*.ckpt")):
        return
    if created != run_dir and created not in run_dir.parents:
        return
    shutil.rmtree(run_dir)
    for parent in run_dir.parents:
        if created not in (parent, *parent.parents) or not parent.is_dir() or any(parent.iterdir()):
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
    try:
        with os.fdopen(fd, "w", newline="") as file:
            writer = csv.DictWriter(file, fieldnames=reader.fieldnames)
            writer.writeheader()
            writer.writerows(rows)
        os.chmod(tmp, metrics.stat().st_mode & 0o777)   # mkstemp makes 0600: keep the file's own mode
        os.replace(tmp, metrics)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise

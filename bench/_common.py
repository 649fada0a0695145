"""What the results scripts share: where ``train.py`` runs land, what they measured, what they ran on."""
from __future__ import annotations

import csv
import os
import platform
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]


def hardware(accelerator: str) -> str:
    """The GPU's name when one is used, else the CPU and the thread count."""
    if accelerator != "cpu" and torch.cuda.is_available():
        return torch.cuda.get_device_name(0)
    return f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads"


def newest_run(run_name: str) -> Path:
    """``runs/<run_name>/version_N`` with the largest N."""
    runs = list((ROOT / "runs" / run_name).glob("version_*"))
    if not runs:
        raise FileNotFoundError(f"No run {ROOT / 'runs' / run_name}/version_*: train it first.")
    return max(runs, key=lambda p: int(p.name.split("_")[1]))


def test_accuracy(run_dir: Path) -> float:
    """The last ``test/acc`` a run logged (NaN if it logged none)."""
    with open(run_dir / "metrics.csv") as file:
        values = [float(row["test/acc"]) for row in csv.DictReader(file) if row.get("test/acc")]
    return values[-1] if values else float("nan")


def split_threads(jobs: int) -> tuple[dict | None, str]:
    """The environment for ``jobs`` runs at once, and the words that say so in a table's header.

    Parallel runs split the cores between them: threads competing for a core slow every run down many times.
    """
    if jobs <= 1:
        return None, ""
    threads = max(1, (os.cpu_count() or 1) // jobs)
    return {**os.environ, "OMP_NUM_THREADS": str(threads)}, f", {jobs} runs at once with {threads} thread(s) each"

"""``ContinuingCSVLogger``: the CSV logger ``train.py`` runs log with (``runs/<run name>/version_N/metrics.csv``)."""
from __future__ import annotations

from lightning.pytorch.loggers import CSVLogger

from cvattn._compat import ExperimentWriter, MetricsKeepingWriter, open_csv_experiment, rank_zero_experiment


class ContinuingCSVLogger(CSVLogger):
    """Lightning's ``CSVLogger``, except that a writer opened on an existing run directory appends to its
    metrics.csv instead of deleting it: a run resumed with ``--ckpt_path last``, and the test after a ``ddp_spawn``
    fit (it runs in new processes, so with a new writer), keep the rows logged before them.

    ``forget_from_step`` (set by ``train.py`` when it resumes from a checkpoint of that step) drops the rows logged
    at or after it, which the resumed run logs again; not before the resumed run logs its first row, so a resume
    that fails before training leaves metrics.csv as it was."""

    forget_from_step: int | None = None

    @property
    @rank_zero_experiment
    def experiment(self) -> ExperimentWriter:
        writer = open_csv_experiment(self, MetricsKeepingWriter)
        if self.forget_from_step is not None:
            writer.forget_from_step, self.forget_from_step = self.forget_from_step, None
        return writer

"""``ContinuingCSVLogger``: the CSV logger ``train.py`` runs log with (``runs/<config name>/version_N/metrics.csv``)."""
from __future__ import annotations

from lightning.pytorch.loggers import CSVLogger

from cvattn._compat import ExperimentWriter, MetricsKeepingWriter, open_csv_experiment, rank_zero_experiment


class ContinuingCSVLogger(CSVLogger):
    """Lightning's ``CSVLogger``, except that a writer opened on an existing run directory carries its metrics.csv
    over instead of deleting it: a run resumed with ``--ckpt_path last``, and the test after a ``ddp_spawn`` fit
    (it runs in new processes, so with a new writer), keep the rows logged before them."""

    @property
    @rank_zero_experiment
    def experiment(self) -> ExperimentWriter:
        return open_csv_experiment(self, MetricsKeepingWriter)

"""Saliency maps for every cvattn model family, pictures of them, and numbers that say whether they are right.

``saliency(model, images, method=...)`` (see ``available_methods(model)``), ``overlay``/``saliency_grid``/
``draw_glimpses``, the metrics ``pointing_game``/``energy_in_box``/``deletion_auc``/``insertion_auc``/``road``,
``evaluate(model, datamodule, methods)``, the sanity check ``randomisation_test`` (with ``spearman``/``ssim``),
and ``python -m cvattn.saliency`` (docs/saliency.md).
"""
from cvattn.saliency.api import BASELINES, default_methods, saliency
from cvattn.saliency.evaluate import evaluate
from cvattn.saliency.metrics import (RoadCurve, deletion_auc, energy_in_box, insertion_auc, noisy_linear_imputation,
                                     pointing_game, road)
from cvattn.saliency.overlay import draw_glimpses, figure_to_array, overlay, saliency_grid
from cvattn.saliency.registry import available_methods, register_method
from cvattn.saliency.sanity import randomisation_test, spearman, ssim

__all__ = [
    "BASELINES", "RoadCurve", "available_methods", "default_methods", "deletion_auc", "draw_glimpses",
    "energy_in_box", "evaluate", "figure_to_array", "insertion_auc", "noisy_linear_imputation", "overlay",
    "pointing_game", "randomisation_test", "register_method", "road", "saliency", "saliency_grid", "spearman", "ssim",
]

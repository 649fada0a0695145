"""Saliency maps for every cvattn model family, pictures of them, and numbers that say whether they are right.

``saliency(model, images, method=...)`` (see ``available_methods(model)``), ``overlay``/``saliency_grid``/
``draw_glimpses``, the metrics ``pointing_game``/``energy_in_box``/``deletion_auc``/``insertion_auc``,
``evaluate(model, datamodule, methods)``, and ``python -m cvattn.saliency`` (docs/saliency.md).
"""
from cvattn.saliency.api import BASELINES, default_methods, saliency
from cvattn.saliency.evaluate import evaluate
from cvattn.saliency.metrics import deletion_auc, energy_in_box, insertion_auc, pointing_game
from cvattn.saliency.overlay import draw_glimpses, figure_to_array, overlay, saliency_grid
from cvattn.saliency.registry import available_methods, register_method

__all__ = [
    "BASELINES", "available_methods", "default_methods", "deletion_auc", "draw_glimpses", "energy_in_box",
    "evaluate", "figure_to_array", "insertion_auc", "overlay", "pointing_game", "register_method", "saliency",
    "saliency_grid",
]

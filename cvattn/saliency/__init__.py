"""Saliency maps for every cvattn model family, pictures of them, and numbers that say whether they are right.

``saliency(model, images, method=...)`` (``available_methods(model)`` lists every method that applies,
``default_methods(model)`` the ones run when none are named), the signed attributions
``integrated_gradients_attribution``/``occlusion_attribution``/``guided_backprop`` and the CAM building blocks
``activation_and_gradient``/``first_component``, ``adapt`` (the view through which timm, torchvision and Hugging Face
classifiers are read), ``overlay``/``overlay_row``/``saliency_grid``/``draw_glimpses``, the metrics
``pointing_game``/``energy_in_box``/``deletion_auc``/``insertion_auc``/``road``, ``evaluate(model, datamodule,
methods)``, the sanity check ``randomisation_test`` (with ``spearman``/``ssim``) and ``randomised_copy`` (its last
step as a model, for scoring any method on a randomised network), and ``python -m cvattn.saliency`` (docs/saliency.md).
"""
from cvattn.saliency.adapters import adapt
from cvattn.saliency.api import BASELINES, saliency
from cvattn.saliency.evaluate import evaluate
from cvattn.saliency.methods.gradcam import activation_and_gradient, first_component
from cvattn.saliency.methods.gradients import guided_backprop, integrated_gradients_attribution
from cvattn.saliency.methods.occlusion import occlusion_attribution
from cvattn.saliency.metrics import (RoadCurve, deletion_auc, energy_in_box, insertion_auc, noisy_linear_imputation,
                                     pointing_game, road)
from cvattn.saliency.overlay import draw_glimpses, figure_to_array, overlay, overlay_row, saliency_grid
from cvattn.saliency.registry import available_methods, default_methods, register_method
from cvattn.saliency.sanity import randomisation_test, randomised_copy, spearman, ssim

__all__ = [
    "BASELINES", "RoadCurve", "activation_and_gradient", "adapt", "available_methods", "default_methods",
    "deletion_auc", "draw_glimpses", "energy_in_box", "evaluate", "figure_to_array", "first_component",
    "guided_backprop", "insertion_auc", "integrated_gradients_attribution", "noisy_linear_imputation",
    "occlusion_attribution", "overlay", "overlay_row", "pointing_game", "randomisation_test", "randomised_copy",
    "register_method", "road", "saliency", "saliency_grid", "spearman", "ssim",
]

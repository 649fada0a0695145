"""LightningModules (``ImageClassifier`` for every classification model, ``RAMModule`` for hard attention) and
the ``SaliencyCallback`` that logs overlay grids during training."""
from cvattn.lightning.callbacks import SaliencyCallback
from cvattn.lightning.classifier import ImageClassifier
from cvattn.lightning.ram import RAMModule

__all__ = ["ImageClassifier", "RAMModule", "SaliencyCallback"]

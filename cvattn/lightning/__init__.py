"""LightningModules: ``ImageClassifier`` for every classification model, ``RAMModule`` for hard attention."""
from cvattn.lightning.classifier import ImageClassifier

__all__ = ["ImageClassifier"]

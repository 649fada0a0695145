"""LightningModules: ``ImageClassifier`` for every classification model, ``RAMModule`` for hard attention."""
from cvattn.lightning.classifier import ImageClassifier
from cvattn.lightning.ram import RAMModule

__all__ = ["ImageClassifier", "RAMModule"]

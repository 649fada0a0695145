"""LightningModules (``ImageClassifier`` for every classification model, ``MultiLabelClassifier`` for several
classes per image, ``RAMModule`` for hard attention, all on ``AttentionModule``, the shared base), the
``SaliencyCallback`` that logs overlay grids during training, and the ``ContinuingCSVLogger`` that ``train.py``
runs log with."""
from cvattn.lightning.base import AttentionModule
from cvattn.lightning.callbacks import SaliencyCallback
from cvattn.lightning.classifier import ImageClassifier
from cvattn.lightning.loggers import ContinuingCSVLogger
from cvattn.lightning.multilabel import ExactTopKAccuracy, MultiLabelClassifier
from cvattn.lightning.ram import RAMModule

__all__ = [
    "AttentionModule", "ContinuingCSVLogger", "ExactTopKAccuracy", "ImageClassifier", "MultiLabelClassifier",
    "RAMModule", "SaliencyCallback",
]

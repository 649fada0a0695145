"""cvattn: a computer-vision attention model zoo.

SE, ECA, CBAM attention CNNs, a Vision Transformer whose attention can always be read, and the recurrent
attention model (hard attention trained with REINFORCE); Lightning training from YAML; saliency maps for every
family.
"""
from cvattn.layers import create_attn, list_attn
from cvattn.models import create_model, list_models

__version__ = "0.1.0"
__all__ = ["create_attn", "create_model", "list_attn", "list_models", "__version__"]

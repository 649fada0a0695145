"""Registered models. Importing a model file registers its constructors."""
from cvattn.models import attnpool, convnet, ram, resnet, st_cnn, vit  # noqa: F401  (registers their models)
from cvattn.models._registry import create_model, is_model, list_models, register_model

__all__ = ["create_model", "is_model", "list_models", "register_model"]

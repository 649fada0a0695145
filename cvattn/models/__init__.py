"""Registered models. Importing a model file registers its constructors."""
from cvattn.models._registry import create_model, is_model, list_models, register_model
from cvattn.models import convnet, resnet  # noqa: F401  (registers their models)

for _optional in ("vit", "ram"):
    # Model files land one issue at a time; each registers itself when present.
    try:
        __import__(f"cvattn.models.{_optional}")
    except ModuleNotFoundError as _err:
        if _err.name != f"cvattn.models.{_optional}":
            raise

__all__ = ["create_model", "is_model", "list_models", "register_model"]

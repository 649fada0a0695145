"""How a state_dict differs from a model's: shared by the checkpoint loaders and ``VisionTransformer``."""
from __future__ import annotations

from typing import Any


def state_dict_differences(saved: dict[str, Any], expected: dict[str, Any]) -> tuple[list[str], ...]:
    """Sorted (missing, unexpected, reshaped) keys of ``saved`` against the ``expected`` state_dict; all empty when
    ``saved`` restores it."""
    common = expected.keys() & saved.keys()
    return (sorted(expected.keys() - saved.keys()), sorted(saved.keys() - expected.keys()),
            sorted(k for k in common if saved[k].shape != expected[k].shape))

"""One home for the checks of user-given values and the wording of their errors.

Every value a user passes (a config key, a constructor argument, a tensor, a file) is checked where it enters,
with an error that names the value, what is accepted and, where there is one, the fix. The pieces here are shared
by the models, blocks, LightningModules, checkpoints and CLIs, so the same mistake reads the same everywhere.
"""
from __future__ import annotations

import difflib
import numbers
from collections.abc import Iterable, Mapping
from typing import Any

import torch


def did_you_mean(value: object, choices: Iterable[str], n: int = 3, quote: bool = True) -> str:
    """``" Did you mean 'a', 'b'?"`` with the up to ``n`` choices closest to ``value``, or ``""`` if none is close."""
    close = difflib.get_close_matches(str(value), list(choices), n=n)
    return f" Did you mean {', '.join(map(repr, close) if quote else close)}?" if close else ""


def check_choice(kind: str, value: str, accepted: Iterable[str]) -> str:
    """``value`` if it is one of ``accepted``, else a ``ValueError`` naming it, the closest choice and the rest."""
    accepted = tuple(accepted)
    if value not in accepted:
        raise ValueError(f"Unknown {kind} {value!r}.{did_you_mean(value, accepted, n=1)} Accepted: "
                         f"{', '.join(map(repr, accepted))}.")
    return value


def check_positive(name: str, value: float) -> float:
    """``value`` if it is > 0, else a ``ValueError`` naming ``name`` and ``value``."""
    if not value > 0:
        raise ValueError(f"{name} must be > 0, got {value}.")
    return value


def check_count(name: str, value: int) -> int:
    """``value`` if it is a positive int (a number of steps, samples, pixels), else a ``ValueError`` naming ``name``."""
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}.")
    return value


def check_channels(owner: str, channels: int) -> int:
    """``channels`` if it is a positive int, else a ``ValueError`` naming ``owner`` (the block or model)."""
    if not isinstance(channels, int) or isinstance(channels, bool) or channels < 1:
        raise ValueError(f"{owner} needs a positive integer number of channels, got {channels!r}.")
    return channels


def check_images(owner: str, x: Any, in_chans: int) -> torch.Tensor:
    """``x`` if it is a (B, in_chans, H, W) tensor, else a ``ValueError`` naming ``owner`` and the shape it got.

    The one input check of every model's forward: a wrong channel count or a missing batch dimension fails here,
    at the model's door, rather than as a shape error from inside its first convolution.
    """
    if not isinstance(x, torch.Tensor) or x.ndim != 4 or x.shape[1] != in_chans:
        got = f"a tensor of shape {tuple(x.shape)}" if isinstance(x, torch.Tensor) else f"a {type(x).__name__}"
        raise ValueError(f"{owner} was built for in_chans={in_chans} and takes (B, {in_chans}, H, W) images; "
                         f"got {got}.")
    return x


def state_dict_mismatch(saved: Mapping[str, Any], expected: Mapping[str, Any], examples: int = 3) -> str:
    """What keeps ``saved`` from restoring a model whose state_dict is ``expected``, in one sentence; ``""`` when
    it fits: ``"missing keys: 2 (e.g. fc.weight, fc.bias); keys of another shape: 1 (e.g. stem.weight (8, 1, 3, 3)
    in the checkpoint vs (16, 1, 3, 3) in the model)"``."""
    common = expected.keys() & saved.keys()
    missing = sorted(expected.keys() - saved.keys())
    unexpected = sorted(saved.keys() - expected.keys())
    reshaped = [f"{key} {tuple(saved[key].shape)} in the checkpoint vs {tuple(expected[key].shape)} in the model"
                for key in sorted(common) if tuple(saved[key].shape) != tuple(expected[key].shape)]
    return "; ".join(f"{kind}: {len(keys)} (e.g. {', '.join(keys[:examples])})" for kind, keys in
                     (("missing keys", missing), ("unexpected keys", unexpected), ("keys of another shape", reshaped))
                     if keys)


def check_int_range(name: str, value: Any, low: int, high: int | None = None, note: str = "") -> int:
    """``value`` if it is an integer (not a bool, not a float such as ``1e9``) in ``[low, high]``, else a
    ``ValueError`` naming ``name``, the value and the accepted range; ``note`` (e.g. what the value means, or the
    fix) follows the range. ``high=None``: no upper bound."""
    if low == 1 and high is None:
        accepted = "a positive integer"
    elif high is None:
        accepted = f">= {low}"
    else:
        accepted = f"an integer in [{low}, {high}]"
    note = f" {note}" if note else ""
    if not isinstance(value, numbers.Integral) or isinstance(value, bool):
        hint = f" (write {int(value)})" if isinstance(value, float) and value.is_integer() else ""
        raise ValueError(f"{name} must be {accepted}{note}, got {value!r}, a {type(value).__name__}{hint}.")
    if value < low or (high is not None and value > high):
        raise ValueError(f"{name} must be {accepted}{note}, got {value}.")
    return int(value)


def check_open_interval(name: str, value: Any, low: float, high: float, note: str = "") -> float:
    """``value`` if it is a real number (not a bool) with ``low < value < high``, else a ``ValueError`` naming
    ``name`` and the value; ``note`` says what the value means."""
    note = f" {note}" if note else ""
    if not isinstance(value, numbers.Real) or isinstance(value, bool) or not low < value < high:
        raise ValueError(f"{name} must be in ({low:g}, {high:g}){note}, got {value!r}.")
    return float(value)

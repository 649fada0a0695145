"""Read the attention a model applied: ``with capture_attention(model) as maps: model(x)``.

Blocks are found by the ``cvattn.contracts.AttentionBlock`` protocol, not by class: every module with an
``attn_kind`` and a ``gate`` submodule, whose output is the attention it applies. Forward hooks on those gates
collect it only while the ``with`` block is open, so an ordinary forward pays nothing.
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

import torch
import torch.nn as nn

from cvattn.checks import did_you_mean
from cvattn.contracts import ATTN_KINDS, AttentionBlock


def attention_blocks(model: nn.Module) -> dict[str, nn.Module]:
    """The attention blocks of ``model`` (modules offering ``attn_kind`` and ``gate``) by module path, in forward
    order. A block whose ``attn_kind`` is not one of ``ATTN_KINDS`` is a ``ValueError`` naming it."""
    found = {name: m for name, m in model.named_modules() if isinstance(m, AttentionBlock)}
    for name, block in found.items():
        if block.attn_kind not in ATTN_KINDS:
            hint = did_you_mean(block.attn_kind, ATTN_KINDS, n=1)
            raise ValueError(
                f"{type(block).__name__} at {name!r} declares attn_kind={block.attn_kind!r}.{hint} "
                f"An attention block's attn_kind says how to read its gate's output: 'channel' (B, C, 1, 1) or "
                f"'spatial' (B, 1, H, W).")
    return found


@contextmanager
def capture_attention(model: nn.Module) -> Iterator[dict[str, torch.Tensor]]:
    """Collect every attention gate's output during forwards inside the block.

    Yields a dict ``{block path: gate output}``: channel gates (B, C, 1, 1), spatial gates (B, 1, H, W). The
    tensors stay in the autograd graph (gradient-weighted maps need that); ``.detach()`` them to keep.
    A block run twice keeps its last output.
    """
    maps: dict[str, torch.Tensor] = {}

    def keep(name: str):
        def hook(_module, _inputs, output):
            maps[name] = output
        return hook

    handles = [block.gate.register_forward_hook(keep(name)) for name, block in attention_blocks(model).items()]
    try:
        yield maps
    finally:
        for handle in handles:
            handle.remove()

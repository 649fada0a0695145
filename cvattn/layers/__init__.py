"""Attention blocks: one concept per file, one constructor vocabulary (``channels`` first, ``rd_ratio``,
``act_layer``, ``gate_layer``), built by name with ``create_attn``."""
from cvattn.layers.capture import attention_blocks, capture_attention
from cvattn.layers.cbam import CbamModule, ChannelAttn, SpatialAttn
from cvattn.layers.create_attn import create_attn, get_attn, list_attn
from cvattn.layers.eca import EcaModule, eca_kernel_size
from cvattn.layers.helpers import make_divisible
from cvattn.layers.se import SEModule

__all__ = [
    "CbamModule", "ChannelAttn", "EcaModule", "SEModule", "SpatialAttn", "attention_blocks", "capture_attention",
    "create_attn", "eca_kernel_size", "get_attn", "list_attn", "make_divisible",
]

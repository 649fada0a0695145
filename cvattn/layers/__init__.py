"""Attention blocks: one concept per file, one constructor vocabulary (``channels`` first, ``rd_ratio``,
``act_layer``, ``gate_layer``), built by name with ``create_attn``."""
from cvattn.layers.capture import attention_blocks, capture_attention
from cvattn.layers.cbam import CbamModule, ChannelAttn, SpatialAttn
from cvattn.layers.create_attn import create_attn, get_attn, list_attn
from cvattn.layers.eca import EcaModule, eca_kernel_size
from cvattn.layers.helpers import make_divisible
from cvattn.layers.se import SEModule
from cvattn.layers.bam import BamModule
from cvattn.layers.ceca import CecaModule
from cvattn.layers.coord_attn import CoordAttn
from cvattn.layers.ese import EffectiveSEModule
from cvattn.layers.gates import ChannelGate, SpatialGate
from cvattn.layers.gather_excite import GatherExcite
from cvattn.layers.global_context import GlobalContext
from cvattn.layers.light_cbam import LightCbamModule, LightChannelAttn, LightSpatialAttn
from cvattn.layers.non_local import NonLocalAttn
from cvattn.layers.selective_kernel import SelectiveKernel
from cvattn.layers.triplet import TripletAttention

__all__ = [
    "CbamModule", "ChannelAttn", "EcaModule", "SEModule", "SpatialAttn", "attention_blocks", "capture_attention",
    "create_attn", "eca_kernel_size", "get_attn", "list_attn", "make_divisible",
    "BamModule", "CecaModule", "ChannelGate", "CoordAttn", "EffectiveSEModule", "GatherExcite", "GlobalContext",
    "LightCbamModule", "LightChannelAttn", "LightSpatialAttn", "NonLocalAttn", "SelectiveKernel", "SpatialGate",
    "TripletAttention",
]

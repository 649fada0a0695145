"""Models people already have, explained by the same ``saliency()`` call: timm, torchvision and Hugging Face.

``adapt(model)`` returns ``model`` itself when it already meets ``cvattn.contracts`` (cvattn's own networks, or a
user's model offering the attributes), else an *attention view* of it that meets ``AttentionReader``:

- timm's Vision Transformers whose blocks use ``timm.layers.Attention`` (``vit_*``, ``deit_*`` distilled ones
  included, register tokens; ``global_pool`` ``'token'`` or ``'avg'``);
- torchvision's ``VisionTransformer`` (``vit_b_16`` …);
- Hugging Face ``ViTForImageClassification`` / ``DeiTForImageClassification`` (``transformers``, optional);
  other Hugging Face image classifiers get a view whose ``forward`` returns the logits tensor (for Grad-CAM).

The view is the same network under a subclass that adds ``forward_attention``, ``grid_size_for`` and what else
the contract needs: it shares the model's parameters, buffers, submodules and hooks (a shallow copy of its
``__dict__``; the original is its ``adapted_model``), so no weight is copied and module paths (``layer=``,
``blocks=``) are the model's own, which a wrapper module holding the model as a child would prefix. Its train/eval
flag is its own. ``forward_attention`` switches each layer to its explicit attention path for one forward (timm:
``fused_attn = False``; torchvision: ``nn.MultiheadAttention``'s maths written out; Hugging Face: the eager
implementation), reads the softmax the forward multiplied the values with, and restores every flag and removes
every hook in ``finally``: nothing stays written to the model. Logits and maps come from that one forward.

CNNs need no view: Grad-CAM finds their last feature map (``gradcam.default_layer``) and the gate maps find the
foreign attention blocks in ``FOREIGN_ATTENTION_BLOCKS`` (timm's SE/ECA/CBAM and the SE of EfficientNets), a table
of other libraries' classes, since those carry a ``gate`` but no ``attn_kind``; cvattn's own blocks are found by
the ``AttentionBlock`` protocol.

Transformers with other attention (timm's Swin, BEiT, EVA …) are not read: the attention methods report what does
apply to them (Grad-CAM with ``layer=`` a module whose output is a (B, C, h, w) map).
"""
from __future__ import annotations

from contextlib import contextmanager
from functools import lru_cache, partial
from typing import Iterator

import torch
import torch.nn as nn
import torch.nn.functional as F

from cvattn.contracts import AttentionBlock, AttentionReader

# Other libraries' attention blocks: "module.Class" → (attn_kind, name of the submodule whose output is the gate).
FOREIGN_ATTENTION_BLOCKS: dict[str, tuple[str, str]] = {
    "timm.layers.squeeze_excite.SEModule": ("channel", "gate"),
    "timm.layers.squeeze_excite.EffectiveSEModule": ("channel", "gate"),
    "timm.layers.eca.EcaModule": ("channel", "gate"),
    "timm.layers.eca.CecaModule": ("channel", "gate"),
    "timm.layers.cbam.ChannelAttn": ("channel", "gate"),
    "timm.layers.cbam.LightChannelAttn": ("channel", "gate"),
    "timm.layers.cbam.SpatialAttn": ("spatial", "gate"),
    "timm.layers.cbam.LightSpatialAttn": ("spatial", "gate"),
    "timm.models._efficientnet_blocks.SqueezeExcite": ("channel", "gate"),
    "torchvision.ops.misc.SqueezeExcitation": ("channel", "scale_activation"),
}
FOREIGN_LIBRARIES = ("timm.", "torchvision.", "transformers.")
READABLE_POOLS = ("token", "avg")


def _class_path(module: nn.Module) -> str:
    return f"{type(module).__module__}.{type(module).__qualname__}"


def attention_kind(module: nn.Module) -> str | None:
    """'channel' or 'spatial' for an attention block (cvattn's protocol, or a known foreign class), else None."""
    if isinstance(module, AttentionBlock):
        return module.attn_kind
    known = FOREIGN_ATTENTION_BLOCKS.get(_class_path(module))
    return known[0] if known else None


def attention_gate(module: nn.Module) -> nn.Module:
    """The submodule whose output is the attention block's gate."""
    known = FOREIGN_ATTENTION_BLOCKS.get(_class_path(module))
    return module.get_submodule(known[1]) if known and not isinstance(module, AttentionBlock) else module.gate


def is_foreign(model: nn.Module) -> bool:
    """A timm, torchvision or Hugging Face module."""
    return type(model).__module__.startswith(FOREIGN_LIBRARIES)


def expected_channels(model: nn.Module) -> int | None:
    """The number of input channels the model takes: its ``in_chans``, or for a timm, torchvision or Hugging Face
    model the stem's (its first ``nn.Conv2d``); None when unknown."""
    in_chans = getattr(model, "in_chans", None)
    if isinstance(in_chans, int):
        return in_chans
    if is_foreign(model):
        stem = next((m for m in model.modules() if isinstance(m, nn.Conv2d)), None)
        return stem.in_channels if stem is not None else None
    return None


def adapt(model: nn.Module) -> nn.Module:
    """``model`` when it meets the contracts (or no adapter knows it), else its attention view (module docstring)."""
    if isinstance(model, AttentionReader) or "adapted_model" in model.__dict__:
        return model
    for matches, reader in _ADAPTERS:
        if matches(model):
            return _view(model, reader)
    return model


def _view(model: nn.Module, reader: type) -> nn.Module:
    """The same network as an instance of ``reader`` + its class: shared state, its own train/eval flag."""
    view_class = _view_class(type(model), reader)
    view = view_class.__new__(view_class)
    view.__dict__.update(model.__dict__)     # the same _modules/_parameters/_buffers/hook dicts, not copies
    view.__dict__["adapted_model"] = model   # via __dict__: nn.Module.__setattr__ would register it as a child
    view.__dict__.update(reader.contract_attributes(view))
    return view


@lru_cache(maxsize=None)
def _view_class(model_class: type, reader: type) -> type:
    return type(model_class.__name__, (reader, model_class), {"__module__": model_class.__module__})


def _check_grid(owner: str, image_size: tuple[int, int], built: tuple[int, int], patch: tuple[int, int]) -> None:
    if tuple(image_size) != tuple(built):
        raise ValueError(f"{owner} was built for {built[0]}×{built[1]} images and takes no other size; got "
                         f"{image_size[0]}×{image_size[1]}. Resize the images to {built[0]}×{built[1]} "
                         f"(patches of {patch[0]}×{patch[1]}).")


@contextmanager
def _pre_hooks(modules: list[nn.Module], hook) -> Iterator[None]:
    handles = []
    try:
        for module in modules:
            handles.append(module.register_forward_pre_hook(hook))
        yield
    finally:
        for handle in handles:
            handle.remove()


def _stacked(logits: torch.Tensor, maps: list[torch.Tensor], stack: bool):
    return logits, torch.stack(maps, dim=1) if stack else maps


# --- timm -------------------------------------------------------------------------------------------------------

def _is_timm_vit(model: nn.Module) -> bool:
    """A timm ViT (``vision_transformer.VisionTransformer`` or a subclass: DeiT, distilled, hybrid) whose every
    block's attention is ``timm.layers.Attention``, pooled by the class token or the patch mean."""
    if not type(model).__module__.startswith("timm."):
        return False
    from timm.layers import Attention
    from timm.models.vision_transformer import VisionTransformer

    return (isinstance(model, VisionTransformer) and len(model.blocks) > 0
            and all(type(getattr(block, "attn", None)) is Attention for block in model.blocks)
            and model.global_pool in READABLE_POOLS and model.attn_pool is None
            and not getattr(model, "pool_include_prefix", False))


class TimmViTReader:
    """``AttentionReader`` for a timm ViT: ``num_prefix_tokens`` and ``global_pool`` are timm's own attributes.

    timm's ``Attention`` runs ``F.scaled_dot_product_attention`` while ``fused_attn`` is on (it never forms the
    weights); with it off it computes ``attn = softmax(q·kᵀ·scale); attn = self.attn_drop(attn); x = attn @ v``,
    the same maths. A forward pre-hook on ``attn_drop`` receives that softmax, the tensor in the graph.
    """

    @staticmethod
    def contract_attributes(view: nn.Module) -> dict:
        return {"in_chans": view.patch_embed.proj.in_channels}

    def grid_size_for(self, image_size) -> tuple[int, int]:
        embed = self.patch_embed
        height, width = int(image_size[0]), int(image_size[1])
        if not self.dynamic_img_size and embed.img_size is not None and getattr(embed, "strict_img_size", True):
            _check_grid(type(self).__name__, (height, width), embed.img_size, embed.patch_size)
        if hasattr(embed, "dynamic_feat_size"):
            return tuple(embed.dynamic_feat_size((height, width)))
        return tuple(embed.grid_size)

    def forward_attention(self, x: torch.Tensor, stack: bool = True):
        self.grid_size_for(x.shape[-2:])          # a clear error for a wrong size, before timm's assert
        layers = [block.attn for block in self.blocks]
        fused = [layer.fused_attn for layer in layers]
        maps: list[torch.Tensor] = []
        try:
            for layer in layers:
                layer.fused_attn = False
            with _pre_hooks([layer.attn_drop for layer in layers], lambda _m, args: maps.append(args[0])):
                logits = self(x)
        finally:
            for layer, flag in zip(layers, fused):
                layer.fused_attn = flag
        return _stacked(logits, maps, stack)


# --- torchvision -------------------------------------------------------------------------------------------------

def _is_torchvision_vit(model: nn.Module) -> bool:
    if not type(model).__module__.startswith("torchvision."):
        return False
    from torchvision.models.vision_transformer import VisionTransformer

    return isinstance(model, VisionTransformer)


class TorchvisionViTReader:
    """``AttentionReader`` for torchvision's ``VisionTransformer``: class token first, read by the head.

    Its ``EncoderBlock`` calls ``self_attention(x, x, x, need_weights=False)``. ``need_weights=True`` would not do:
    ``nn.MultiheadAttention`` returns a reshaped copy of its weights that no logit depends on, so no gradient
    reaches it. For one forward each ``self_attention`` runs its maths written out instead (``explicit_attention``:
    its own in/out projections and dropout, softmax(q·kᵀ/√d)·v as in ``F.multi_head_attention_forward``), whose
    weights are the tensor the values are multiplied with.
    """

    @staticmethod
    def contract_attributes(view: nn.Module) -> dict:
        return {"in_chans": view.conv_proj.in_channels, "num_prefix_tokens": 1, "global_pool": "token",
                "default_cam_layer": f"encoder.layers.encoder_layer_{len(view.encoder.layers) - 1}.ln_1"}

    def grid_size_for(self, image_size) -> tuple[int, int]:
        size = (int(image_size[0]), int(image_size[1]))
        _check_grid(type(self).__name__, size, (self.image_size, self.image_size), (self.patch_size, self.patch_size))
        return size[0] // self.patch_size, size[1] // self.patch_size

    def forward_attention(self, x: torch.Tensor, stack: bool = True):
        self.grid_size_for(x.shape[-2:])
        maps: list[torch.Tensor] = []
        layers = [block.self_attention for block in self.encoder.layers]
        try:
            for layer in layers:    # an instance attribute shadows the class's forward until it is deleted
                layer.forward = partial(explicit_attention, layer, maps)
            logits = self(x)
        finally:
            for layer in layers:
                layer.__dict__.pop("forward", None)
        return _stacked(logits, maps, stack)


def explicit_attention(mha: nn.MultiheadAttention, maps: list[torch.Tensor], query: torch.Tensor, key: torch.Tensor,
                       value: torch.Tensor, **_) -> tuple[torch.Tensor, torch.Tensor]:
    """Batch-first self-attention of ``nn.MultiheadAttention`` (packed in-projection, no mask), weights kept."""
    B, T, C = query.shape
    heads = mha.num_heads
    qkv = F.linear(query, mha.in_proj_weight, mha.in_proj_bias)                 # (B, T, 3C)
    q, k, v = qkv.reshape(B, T, 3, heads, C // heads).permute(2, 0, 3, 1, 4)    # each (B, heads, T, d_head)
    attn = ((q * (C // heads) ** -0.5) @ k.transpose(-2, -1)).softmax(-1)      # (B, heads, T, T)
    maps.append(attn)
    out = F.dropout(attn, mha.dropout, mha.training) @ v                        # (B, heads, T, d_head)
    return mha.out_proj(out.transpose(1, 2).reshape(B, T, C)), attn


# --- Hugging Face transformers ------------------------------------------------------------------------------------

def _is_hf_classifier(model: nn.Module) -> bool:
    """A Hugging Face image classifier (``…ForImageClassification``): its forward returns an output object."""
    return (type(model).__module__.startswith("transformers.")
            and type(model).__name__.endswith("ForImageClassification"))


def _is_hf_vit(model: nn.Module) -> bool:
    """``ViTForImageClassification`` or ``DeiTForImageClassification`` (class token read by the classifier)."""
    return _is_hf_classifier(model) and type(model).__name__ in ("ViTForImageClassification",
                                                                  "DeiTForImageClassification")


class HuggingFaceLogits:
    """A Hugging Face image classifier whose ``forward(images)`` returns the logits tensor (CNNs: Grad-CAM)."""

    @staticmethod
    def contract_attributes(view: nn.Module) -> dict:
        return {"in_chans": view.config.num_channels}

    def forward(self, pixel_values: torch.Tensor, **kwargs) -> torch.Tensor:
        return super().forward(pixel_values=pixel_values, **kwargs).logits


class HuggingFaceViTReader(HuggingFaceLogits):
    """``AttentionReader`` for Hugging Face ViT/DeiT classifiers (transformers 5); ``forward`` returns the logits
    tensor.

    Each attention module returns ``(output, weights)``, the weights being the softmax the eager implementation
    multiplied the values with; the config's attention implementation is set to ``'eager'`` for that one forward
    (SDPA returns no weights) and restored afterwards.
    """

    @staticmethod
    def contract_attributes(view: nn.Module) -> dict:
        base = getattr(view, view.base_model_prefix)
        # transformers 5 keeps the blocks in `layers`, 4 in `encoder.layer`
        layers = "layers" if hasattr(base, "layers") else "encoder.layer"
        depth = len(base.get_submodule(layers))
        return {"in_chans": view.config.num_channels, "global_pool": "token",
                "num_prefix_tokens": 2 if getattr(base.embeddings, "distillation_token", None) is not None else 1,
                "default_cam_layer": f"{view.base_model_prefix}.{layers}.{depth - 1}.layernorm_before"}

    def grid_size_for(self, image_size) -> tuple[int, int]:
        size, patch = self.config.image_size, self.config.patch_size
        size = (size, size) if isinstance(size, int) else tuple(size)
        patch = (patch, patch) if isinstance(patch, int) else tuple(patch)
        _check_grid(type(self).__name__, (int(image_size[0]), int(image_size[1])), size, patch)
        return size[0] // patch[0], size[1] // patch[1]

    def forward_attention(self, x: torch.Tensor, stack: bool = True):
        self.grid_size_for(x.shape[-2:])
        config = self.config
        implementation = config._attn_implementation
        # The modules whose output is (attn_output, attn_weights): what `output_attentions=True` would collect,
        # read by hooks removed afterwards (transformers' own collecting hooks stay on a model once installed).
        attention_class = getattr(self, self.base_model_prefix)._can_record_outputs["attentions"]
        maps: list[torch.Tensor] = []
        handles = [module.register_forward_hook(lambda _m, _args, output: maps.append(output[1]))
                   for module in self.modules() if isinstance(module, attention_class)]
        try:
            config._attn_implementation = "eager"
            logits = self(x)
        finally:
            config._attn_implementation = implementation
            for handle in handles:
                handle.remove()
        return _stacked(logits, maps, stack)


_ADAPTERS = ((_is_timm_vit, TimmViTReader), (_is_torchvision_vit, TorchvisionViTReader),
            (_is_hf_vit, HuggingFaceViTReader), (_is_hf_classifier, HuggingFaceLogits))

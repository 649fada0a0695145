"""Spatial transformer (Jaderberg, Simonyan, Zisserman, Kavukcuoglu. "Spatial Transformer Networks", NIPS 2015;
docs/references.md, "Spatial transformers").

A localisation network reads the input U and regresses the parameters θ of a transform; a grid generator maps
every point of the output grid through θ to a point of the input (``F.affine_grid``), and a bilinear sampler reads
the input there (``F.grid_sample``): V = sample(U, T_θ(G)). Everything is differentiable, so the localisation net
learns, from the classification loss alone, where to look and how to undo rotation and scale.

Coordinates are the paper's normalised ones, x and y in [-1, 1] over the image, with PyTorch's
``align_corners=False`` reading: -1 and 1 are the outer *edges* of the border pixels, so a region [a, b] in
normalised x is the pixel interval [(a + 1)·W/2, (b + 1)·W/2] and the boxes below share the datamodules' convention
(``(x0, y0, x1, y1)`` in pixels, exclusive ends; docs/design.md, "Batches").

``transform`` constrains θ (B, 2, 3), which maps output (x_t, y_t, 1) to input (x_s, y_s):

- ``'affine'``: all six entries free, [[a, b, tx], [c, d, ty]];
- ``'scale_translation'``: [[s, 0, tx], [0, s, ty]], the paper's attention variant (isotropic scale and
  translation: a square crop and zoom, §3.1 "Attention");
- ``'translation'``: [[1, 0, tx], [0, 1, ty]];
- ``'identity'``: θ fixed at [[1, 0, 0], [0, 1, 0]], no localisation net: the whole image, resampled to
  ``out_size``. Not an attention mechanism but its control: with ``out_size`` below the input's size it is a plain
  bilinear resize, so an ST-CNN compared with it (rather than with the CNN on the full-size input) shows what the
  learned θ adds beyond the resizing.

The last fully connected layer predicts only the free parameters; its weight starts at 0 and its bias at the
identity, so a fresh transformer returns its input unchanged at ``out_size=None`` (up to float rounding in the
grid, about 1e-6 relative), and training starts from the plain network.

Localisation net (``loc_width`` = w, ``loc_hidden`` = h): conv 5×5 (w) → max-pool 2 → act → conv 5×5 (w) →
max-pool 2 → act → adaptive average pool to 4×4 → fc (h) → act → fc (number of free parameters). The paper's
localisation nets differ per experiment (see its appendix); this one is cvattn's small default of the same shape.

Deviations:
- ``norm=True`` (not the default, not in the paper) adds BatchNorm after the localisation net's convolutions and
  its hidden fc layer. Without it, on cluttered 60×60 canvases trained with AdamW, every hidden ReLU of the
  localisation net switched off within the first few hundred steps, so θ froze at its initial identity for every image
  (0 of 32 hidden units alive after 3000 steps); with it, units stay on and θ follows the object, but the test
  error was not lower (docs/results.md, "Spatial transformer"), so the paper's un-normalised net stays the default.
  Training with ``norm=True`` needs batches of more than one image (BatchNorm's batch statistics).
- The adaptive pool makes the localisation net independent of the input size (the paper sizes its fc layers for
  each input size). Convolutions are padded (``'same'``), so inputs down to 4×4 are accepted.
- Sampling outside the input reads zeros (``padding_mode='zeros'``), as the paper's bilinear kernel sums over
  the input pixels only.
- A θ whose whole grid falls outside the image is not an error: the output is then all padding; each forward
  records, per image, whether that happened (``last_outside``) and warns once per transformer (a localisation net
  sent far out usually means too large a learning rate for it).
"""
from __future__ import annotations

import warnings

import torch
import torch.nn as nn
import torch.nn.functional as F

from cvattn.checks import check_channels, check_choice, check_count

TRANSFORMS = ("affine", "scale_translation", "translation", "identity")
# The identity θ in each transform's free parameters (what the last fc layer's bias starts at).
_IDENTITY = {"affine": (1.0, 0.0, 0.0, 0.0, 1.0, 0.0), "scale_translation": (1.0, 0.0, 0.0), "translation": (0.0, 0.0)}


def theta_from_params(params: torch.Tensor, transform: str) -> torch.Tensor:
    """The (B, 2, 3) affine θ of ``transform`` from its free parameters (B, k) (module docstring)."""
    if transform == "affine":
        return params.view(-1, 2, 3)
    if transform == "identity":
        return params.new_tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]]).expand(params.shape[0], 2, 3)
    if transform == "scale_translation":
        scale, tx, ty = params.unbind(1)
    else:
        (tx, ty), scale = params.unbind(1), params.new_ones(params.shape[0])
    zero = torch.zeros_like(scale)
    return torch.stack([torch.stack([scale, zero, tx], 1), torch.stack([zero, scale, ty], 1)], 1)   # (B, 2, 3)


def theta_boxes(theta: torch.Tensor, image_size: tuple[int, int]) -> torch.Tensor:
    """The input region that θ (B, 2, 3) samples, as pixel boxes (B, 4) ``(x0, y0, x1, y1)`` of an image of
    ``image_size`` (H, W): the bounding box of the output's four corners (±1, ±1) mapped through θ (for a scale and
    translation, the region itself; for a rotation or shear, the box around the parallelogram). Not clipped: a
    region reaching outside the image gives a box reaching outside it."""
    height, width = image_size
    corners = theta.new_tensor([[-1.0, -1.0, 1.0], [1.0, -1.0, 1.0], [-1.0, 1.0, 1.0], [1.0, 1.0, 1.0]])   # (4, 3)
    points = corners @ theta.transpose(1, 2)                                       # (B, 4, 2) normalised (x, y)
    pixels = (points + 1) * theta.new_tensor([width, height]) / 2                  # (B, 4, 2) in pixels
    return torch.cat([pixels.amin(1), pixels.amax(1)], dim=1)                       # (B, 4)


class SpatialTransformer(nn.Module):
    """Warp the input by an affine θ that a localisation net predicts from it (module docstring).

    ``forward(x (B, C, H, W)) -> (B, C, *out_size)``; ``out_size=None`` keeps (H, W).

    After each forward: ``last_theta`` (B, 2, 3), detached, the θ just used; ``last_outside`` (B,) bool, the images
    whose sampling grid fell entirely outside the input; ``sampled_boxes(image_size)`` the regions sampled, as
    pixel boxes.

    Args:
        channels: input channels.
        transform: ``'affine'``, ``'scale_translation'`` (the paper's attention), ``'translation'``, or
            ``'identity'`` (no localisation net: the resizing control).
        out_size: output (H, W), or one int for a square; ``None``: the input's size.
        loc_width: channels of the localisation net's convolutions.
        loc_hidden: units of its hidden fully connected layer.
        act_layer: its activation.
        norm: BatchNorm in the localisation net (default ``False``: none, as in the paper; see Deviations).
    """

    def __init__(self, channels: int, transform: str = "affine", out_size: int | tuple[int, int] | None = None,
                 loc_width: int = 16, loc_hidden: int = 32, act_layer: type[nn.Module] = nn.ReLU,
                 norm: bool = False):
        super().__init__()
        check_channels("SpatialTransformer", channels)
        check_choice("transform", transform, TRANSFORMS)
        check_count("loc_width", loc_width)
        check_count("loc_hidden", loc_hidden)
        if not isinstance(norm, bool):
            raise ValueError(f"norm must be True (BatchNorm in the localisation net) or False (none, as in the "
                             f"paper), got {norm!r}.")
        if out_size is not None:
            sizes = (out_size, out_size) if isinstance(out_size, int) and not isinstance(out_size, bool) else out_size
            if not isinstance(sizes, (tuple, list)) or len(sizes) != 2:
                raise ValueError(f"out_size must be None (the input's size), an int or an (H, W) pair, got "
                                 f"{out_size!r}.")
            out_size = (check_count("out_size height", sizes[0]), check_count("out_size width", sizes[1]))
        self.channels = channels
        self.transform = transform
        self.out_size = out_size
        self.localisation = self.regressor = None                              # 'identity': nothing to learn
        if transform != "identity":
            self._build_localisation(channels, loc_width, loc_hidden, act_layer, norm)
        self.last_theta: torch.Tensor | None = None
        self.last_outside: torch.Tensor | None = None
        self._warned_outside = False

    def _build_localisation(self, channels: int, loc_width: int, loc_hidden: int, act_layer: type[nn.Module],
                            norm: bool) -> None:
        norm_2d = (lambda: nn.BatchNorm2d(loc_width)) if norm else nn.Identity                    # noqa: E731
        self.localisation = nn.Sequential(
            nn.Conv2d(channels, loc_width, 5, padding=2), norm_2d(), nn.MaxPool2d(2), act_layer(),
            nn.Conv2d(loc_width, loc_width, 5, padding=2), norm_2d(), nn.MaxPool2d(2), act_layer(),
            nn.AdaptiveAvgPool2d(4), nn.Flatten(),
            nn.Linear(loc_width * 16, loc_hidden), nn.BatchNorm1d(loc_hidden) if norm else nn.Identity(), act_layer(),
        )
        identity = _IDENTITY[self.transform]
        self.regressor = nn.Linear(loc_hidden, len(identity))
        nn.init.zeros_(self.regressor.weight)
        with torch.no_grad():
            self.regressor.bias.copy_(torch.tensor(identity))

    def predict_theta(self, x: torch.Tensor) -> torch.Tensor:
        """θ (B, 2, 3) for images x (B, C, H, W), of this transformer's constrained form."""
        if self.localisation is None:                                              # 'identity'
            return theta_from_params(x.new_zeros(x.shape[0], 0, dtype=torch.float32), self.transform)
        features = self.localisation(x)                                            # (B, loc_hidden)
        # θ in float32 even under autocast: bfloat16's 8-bit mantissa would misplace the grid by whole pixels.
        with torch.autocast(device_type=x.device.type, enabled=False):
            params = self.regressor(features.float())                              # (B, free parameters)
        return theta_from_params(params, self.transform)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 4 or x.shape[1] != self.channels or min(x.shape[-2:]) < 4:
            raise ValueError(f"SpatialTransformer was built for channels={self.channels} and takes (B, "
                             f"{self.channels}, H, W) inputs with H, W >= 4; got a tensor of shape {tuple(x.shape)}.")
        theta = self.predict_theta(x)                                              # (B, 2, 3)
        return self.sample(x, theta)

    def sample(self, x: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
        """x (B, C, H, W) sampled through a given θ (B, 2, 3) (the forward pass after the localisation net)."""
        height, width = self.out_size or x.shape[-2:]
        dtype = torch.promote_types(x.dtype, torch.float32)      # a bfloat16 grid would be off by whole pixels
        grid = F.affine_grid(theta.to(dtype), [x.shape[0], x.shape[1], height, width], align_corners=False)
        self.last_theta = theta.detach()
        self._record_outside(grid.detach())                                         # grid (B, h, w, 2)
        out = F.grid_sample(x.to(dtype), grid, mode="bilinear", padding_mode="zeros", align_corners=False)
        return out.to(x.dtype)

    def _record_outside(self, grid: torch.Tensor) -> None:
        outside = ~(grid.abs() <= 1).all(-1).flatten(1).any(1)                      # (B,) no sample inside
        self.last_outside = outside
        if not self._warned_outside and bool(outside.any()):
            self._warned_outside = True
            warnings.warn(
                f"SpatialTransformer: the sampling grid of {int(outside.sum())} of {outside.numel()} images lies "
                f"entirely outside the input, so their output is all padding (zeros). last_outside marks them; "
                f"this warning is given once per transformer. If it persists in training, lower the localisation "
                f"net's learning rate.", RuntimeWarning, stacklevel=3)

    def sampled_boxes(self, image_size: tuple[int, int]) -> torch.Tensor:
        """The regions the last forward sampled, as pixel boxes (B, 4) ``(x0, y0, x1, y1)`` of an input of
        ``image_size`` (H, W) (``theta_boxes``)."""
        if self.last_theta is None:
            raise RuntimeError("SpatialTransformer.sampled_boxes needs a forward pass first: it reads last_theta.")
        return theta_boxes(self.last_theta, image_size)

    def extra_repr(self) -> str:
        return f"channels={self.channels}, transform={self.transform!r}, out_size={self.out_size}"

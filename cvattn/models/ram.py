"""Recurrent attention model (Mnih, Heess, Graves, Kavukcuoglu. "Recurrent Models of Visual Attention", NIPS 2014).

The model sees the image only through T glimpses. A glimpse is k square patches centred at a location l: the first
g×g pixels, each next one twice as wide, all reduced to g×g. At every step a glimpse network embeds
(patches, l), a recurrent core updates its state h, a location network draws the next l from a Gaussian with
fixed std around a function of h, and after the last glimpse an action network classifies. Locations are
sampled, so no gradient reaches them: the location network learns by REINFORCE (``cvattn.lightning.RAMModule``).

Paper sizes are the defaults: glimpse network 128 (what) / 128 (where) → 256, ReLU;
core a ReLU RNN of 256. ``ram_28``: g=8, k=1, 6 glimpses; ``ram_60``: g=12, k=3, 8; ``ram_100``: g=12, k=4, 8.

Conventions:
- A location is (x, y) in [-1, 1]²: x runs left → right over the width, y top → bottom over the height, (0, 0) is
  the image centre and (-1, -1) the top-left corner of the top-left pixel (``grid_sample`` with
  ``align_corners=False``). On an image of width W the centre is at pixel coordinate (x + 1)·W/2.
- Patch i (i = 0..k-1) is g·2^i input pixels wide.

Choices the paper leaves open, and deviations:
- The patches are read from an image pyramid: level i averages the image over 2^i × 2^i blocks (area
  averaging, as the paper's "downsampled" suggests; point-sampling straight at g×g would alias), and patch i is the
  g×g window of level i whose centre is nearest to l. So patch 0 is centred to the nearest pixel corner and patch i
  to within 2^(i-1) pixels: each patch is placed on its own grid, at its own resolution. No gradient flows to the
  location, so finer placement buys nothing, and the pyramid is built once per image for all T glimpses. One
  ``gather`` per level reads the windows of the whole batch, and the pyramid serves all T glimpses (timings against
  cutting the largest patch at the exact centre and pooling it: docs/results.md).
- Outside the image the sensor sees ``pad_value`` (one per channel): it should be black after the datamodule's
  normalisation, -mean/std: 0 for cvattn's canvases (not standardised), -0.81 for standardised Fashion-MNIST
  (``RAMModule`` sets it from the datamodule).
- The policy mean is tanh(linear(h)), so it stays in (-1, 1). A sample is clamped to [-1, 1], and its
  log-probability is that of the clamped (censored) Gaussian: the density inside, the tail mass at ±1. So the
  log-probability is always that of the location actually looked at.
- The first location also comes from the policy, read from the zero initial state: a learned starting point.
- The location and baseline networks read the detached state: REINFORCE trains the location network only, the
  squared-error fit the baseline only, cross-entropy the rest (the hybrid loss).
- In ``eval()`` mode the model looks at the policy mean; ``sample=True`` samples anyway (Monte-Carlo evaluation).
- ``random_glimpses=True`` is the paper's control: locations uniform in [-1, 1]², no location network.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from functools import partial
from typing import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from cvattn.checks import check_images, did_you_mean
from cvattn.models._registry import register_model

CORES = {"rnn": partial(nn.RNNCell, nonlinearity="relu"), "lstm": nn.LSTMCell, "gru": nn.GRUCell}
MAX_PATCH_TO_IMAGE = 4  # a biggest patch over 4× the image would be mostly padding


@dataclass
class GlimpseTrajectory:
    """Where the model looked, for a batch of B images over T glimpses with k scales.

    ``locations`` (B, T, 2): the glimpse centres actually used, (x, y) in [-1, 1].
    ``means`` (B, T, 2): the policy means they were drawn around (zeros for random glimpses).
    ``patch_sizes`` (k,): patch widths in input pixels, g·2^i.
    ``log_probs`` (B, T): log π(l_t | h_t) of ``locations`` (zeros for random glimpses).
    ``baselines`` (B, T): the predicted reward b_t, read before l_t was chosen.
    """

    locations: torch.Tensor
    means: torch.Tensor
    patch_sizes: torch.Tensor
    log_probs: torch.Tensor
    baselines: torch.Tensor


def _pixel_centres(locations: torch.Tensor, image_size: int | tuple[int, int]) -> torch.Tensor:
    """(x, y) in [-1, 1] → pixel coordinates (x + 1)·W/2, (y + 1)·H/2."""
    height, width = (image_size, image_size) if isinstance(image_size, int) else image_size
    return (locations + 1) * locations.new_tensor([width, height]) / 2


def glimpse_boxes(trajectory: GlimpseTrajectory, image_size: int | tuple[int, int]) -> torch.Tensor:
    """Pixel boxes ``(x0, y0, x1, y1)`` of every patch, (B, T, k, 4), ``x1``/``y1`` exclusive like the
    datamodules' object boxes, centred on the locations (the sensor reads patch i from its pyramid level's nearest
    window, at most 2^(i-1) pixels away). Not clipped: near a border a patch reaches outside the image."""
    centres = _pixel_centres(trajectory.locations, image_size)[:, :, None, :]  # (B, T, 1, 2)
    half = (trajectory.patch_sizes.to(centres) / 2)[:, None]                    # (k, 1)
    return torch.cat([centres - half, centres + half], dim=-1)                 # (B, T, k, 4)


def final_glimpse_hit_rate(trajectory: GlimpseTrajectory, boxes: torch.Tensor,
                           image_size: int | tuple[int, int]) -> float:
    """Fraction of images whose last glimpse is centred inside the object's box ``(B, 4)`` (x0, y0, x1, y1)."""
    centre = _pixel_centres(trajectory.locations[:, -1], image_size)           # (B, 2)
    boxes = boxes.to(centre)
    inside = (centre >= boxes[:, :2]) & (centre < boxes[:, 2:])
    return inside.all(1).float().mean().item()


class GlimpseSensor(nn.Module):
    """ρ(x, l): ``num_scales`` patches centred at ``loc``, patch i g·2^i pixels wide, each reduced to g×g.

    ``forward(x (B, C, H, W), loc (B, 2)) -> (B, k, C, g, g)`` is ``read(pyramid(x), loc)``: a model taking T
    glimpses of the same images builds their pyramid once. Batched: one ``gather`` per level, no loop over images.
    """

    def __init__(self, glimpse_size: int = 12, num_scales: int = 3, in_chans: int = 1,
                 pad_value: float | Sequence[float] = 0.0):
        super().__init__()
        for name, value in (("glimpse_size", glimpse_size), ("num_scales", num_scales), ("in_chans", in_chans)):
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"GlimpseSensor needs a positive integer {name}, got {value!r}.")
        pad = torch.as_tensor(pad_value, dtype=torch.float32).flatten()
        if pad.numel() not in (1, in_chans):
            raise ValueError(f"pad_value takes one float or one per channel ({in_chans}); got {pad_value!r}.")
        self.glimpse_size = glimpse_size
        self.num_scales = num_scales
        self.patch_sizes = [glimpse_size * 2 ** i for i in range(num_scales)]
        self.register_buffer("pad_value", pad.expand(in_chans).clone())
        self.register_buffer("level_scales", 2.0 ** torch.arange(num_scales)[:, None], persistent=False)  # (k, 1)

    def check_image_size(self, height: int, width: int) -> None:
        """``ValueError`` if a glimpse is larger than the image or the largest patch is mostly padding."""
        if self.glimpse_size > min(height, width):
            raise ValueError(f"glimpse_size={self.glimpse_size} is larger than the {height}×{width} image; use a "
                             f"glimpse of at most {min(height, width)} pixels.")
        largest = self.patch_sizes[-1]
        if largest > MAX_PATCH_TO_IMAGE * max(height, width):
            raise ValueError(
                f"num_scales={self.num_scales} makes the largest patch {largest} pixels wide (glimpse_size·2^(k-1)),"
                f" more than {MAX_PATCH_TO_IMAGE}× the {height}×{width} image, so it would be mostly padding; "
                f"use num_scales ≤ {int(math.log2(MAX_PATCH_TO_IMAGE * max(height, width) / self.glimpse_size)) + 1}."
            )

    def pyramid(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Levels 0..k-1 of (B, C, H, W) images: level i averages 2^i × 2^i blocks, ⌈H/2^i⌉ × ⌈W/2^i⌉ pixels."""
        check_images("GlimpseSensor", x, self.pad_value.numel())
        self.check_image_size(*x.shape[-2:])
        levels = [x]
        for _ in range(self.num_scales - 1):
            levels.append(self._halve(levels[-1]))
        return levels

    def _halve(self, level: torch.Tensor) -> torch.Tensor:
        """Means of 2×2 blocks; an odd last row or column is averaged with ``pad_value``, what lies beyond it."""
        batch, chans, height, width = level.shape
        pad = self.pad_value.to(level.dtype).view(1, chans, 1, 1)
        if height % 2:
            level, height = torch.cat([level, pad.expand(batch, chans, 1, width)], 2), height + 1
        if width % 2:
            level, width = torch.cat([level, pad.expand(batch, chans, height, 1)], 3), width + 1
        rows = level.reshape(batch, chans, height // 2, 2 * width)                 # row pairs side by side
        rows = (rows[..., :width] + rows[..., width:]).view(batch, chans, height // 2, width // 2, 2)
        return (rows[..., 0] + rows[..., 1]) * 0.25                                # (B, C, H/2, W/2)

    def read(self, levels: list[torch.Tensor], loc: torch.Tensor) -> torch.Tensor:
        """(B, k, C, g, g) glimpses at ``loc`` (B, 2) from the levels of ``pyramid``."""
        if len(levels) != self.num_scales:
            raise ValueError(f"read takes the {self.num_scales} levels of this sensor's pyramid(x); got "
                             f"{len(levels)} level(s).")
        batch, chans, height, width = levels[0].shape
        if loc.shape != (batch, 2):
            raise ValueError(f"loc must be (B, 2) = ({batch}, 2) (x, y) in [-1, 1]; got {tuple(loc.shape)}.")
        g, k = self.glimpse_size, self.num_scales
        level_sizes = loc.new_tensor([level.shape[:-3:-1] for level in levels], dtype=torch.long)   # (k, 2) w, h
        centre = _pixel_centres(loc.detach(), (height, width))[:, None]              # (B, 1, 2) x, y in pixels
        corner = torch.round(centre / self.level_scales - g / 2).long()               # (B, k, 2) in level pixels
        coords = corner[..., None] + torch.arange(g, device=loc.device)               # (B, k, 2, g) columns, rows
        # Columns and rows outside a level read a clamped pixel, then get pad_value.
        clamped = torch.minimum(coords.clamp(min=0), level_sizes[..., None] - 1)
        index = clamped[:, :, 1, :, None] * level_sizes[:, :1, None] + clamped[:, :, 0, None, :]  # (B, k, g, g)
        patches = torch.stack([level.flatten(2).gather(2, index[:, i].reshape(batch, 1, -1).expand(-1, chans, -1))
                               for i, level in enumerate(levels)], dim=1).view(batch, k, chans, g, g)
        inside = clamped == coords
        inside = inside[:, :, 1, :, None] & inside[:, :, 0, None, :]                  # (B, k, g, g)
        pad = self.pad_value.to(patches.dtype).view(1, 1, chans, 1, 1)
        return torch.where(inside[:, :, None], patches, pad)                          # (B, k, C, g, g)

    def forward(self, x: torch.Tensor, loc: torch.Tensor) -> torch.Tensor:
        return self.read(self.pyramid(x), loc)


class GlimpseNetwork(nn.Module):
    """g_t = ReLU(W_what·ReLU(W_ρ·ρ(x, l)) + W_where·ReLU(W_l·l)), the paper's glimpse network."""

    def __init__(self, in_features: int, glimpse_hidden: int = 128, loc_hidden: int = 128, out_features: int = 256):
        super().__init__()
        self.fc_glimpse = nn.Linear(in_features, glimpse_hidden)
        self.fc_loc = nn.Linear(2, loc_hidden)
        self.fc_what = nn.Linear(glimpse_hidden, out_features)
        self.fc_where = nn.Linear(loc_hidden, out_features)

    def forward(self, patches: torch.Tensor, loc: torch.Tensor) -> torch.Tensor:
        what = F.relu(self.fc_glimpse(patches.flatten(1)))                         # (B, glimpse_hidden)
        where = F.relu(self.fc_loc(loc))                                          # (B, loc_hidden)
        return F.relu(self.fc_what(what) + self.fc_where(where))                  # (B, out_features)


def censored_normal_log_prob(value: torch.Tensor, mean: torch.Tensor, std: float) -> torch.Tensor:
    """log-probability of ``clamp(N(mean, std), -1, 1)`` at ``value``: the density inside, the tail mass at ±1."""
    density = -0.5 * ((value - mean) / std) ** 2 - math.log(std * math.sqrt(2 * math.pi))
    below = torch.special.log_ndtr((-1 - mean) / std)
    above = torch.special.log_ndtr((mean - 1) / std)
    return torch.where(value <= -1, below, torch.where(value >= 1, above, density))


class RecurrentAttention(nn.Module):
    """The recurrent attention model; ``model(x)`` gives logits, ``model(x, return_trajectory=True)`` gives
    ``(logits, GlimpseTrajectory)``.

    Not a feature backbone (``cvattn.contracts.FeatureBackbone``): it has no feature map, so no ``feature_info`` or
    ``forward_features``, and ``create_model(..., features_only=True)`` is refused.

    Args:
        num_classes, in_chans: classes of the action network and image channels.
        num_glimpses: T, glimpses per image.
        glimpse_size: g, the first patch's width and every patch's output width, in pixels.
        num_scales: k, patches per glimpse.
        glimpse_hidden, loc_hidden: the glimpse network's "what" and "where" widths (paper: 128/128).
        hidden_size: the glimpse network's output and the core's state (paper: 256).
        core: ``'rnn'`` (ReLU RNN, the paper's), ``'lstm'`` or ``'gru'``.
        std: the location policy's fixed std, in [-1, 1] units (0.05–0.17 works; docs/references.md, "Recurrent
            attention model").
        pad_value: what the sensor sees outside the image, one float or one per channel.
        random_glimpses: look at uniformly random locations instead (the policy control).
    """

    def __init__(
        self,
        num_classes: int = 10,
        in_chans: int = 1,
        num_glimpses: int = 8,
        glimpse_size: int = 12,
        num_scales: int = 3,
        glimpse_hidden: int = 128,
        loc_hidden: int = 128,
        hidden_size: int = 256,
        core: str = "rnn",
        std: float = 0.15,
        pad_value: float | Sequence[float] = 0.0,
        random_glimpses: bool = False,
    ):
        super().__init__()
        if not isinstance(num_glimpses, int) or num_glimpses < 1:
            raise ValueError(f"num_glimpses must be an integer ≥ 1, got {num_glimpses!r}.")
        if not std > 0:
            raise ValueError(f"std (the location policy's standard deviation) must be > 0, got {std!r}; "
                             f"values around 0.05–0.17 work in [-1, 1] units.")
        if core not in CORES:
            raise ValueError(f"Unknown core {core!r}.{did_you_mean(core, CORES, n=1)} Accepted: "
                             f"{', '.join(map(repr, CORES))}.")
        self.num_glimpses = num_glimpses
        self.std = std
        self.sensor = GlimpseSensor(glimpse_size, num_scales, in_chans, pad_value)
        self.glimpse_net = GlimpseNetwork(num_scales * in_chans * glimpse_size ** 2, glimpse_hidden, loc_hidden,
                                          hidden_size)
        self.core = CORES[core](hidden_size, hidden_size)
        self.location_net = None if random_glimpses else nn.Linear(hidden_size, 2)
        self.baseline_net = nn.Linear(hidden_size, 1)
        self.head = nn.Linear(hidden_size, num_classes)

    def _locate(self, state: torch.Tensor, sample: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Next location (detached), the policy mean and the location's log-probability, from a detached state."""
        if self.location_net is None:
            loc = torch.rand(state.shape[0], 2, device=state.device, dtype=state.dtype) * 2 - 1
            return loc, torch.zeros_like(loc), loc.new_zeros(state.shape[0])
        mean = torch.tanh(self.location_net(state))                               # (B, 2)
        loc = (mean + self.std * torch.randn_like(mean)).clamp(-1, 1) if sample else mean
        loc = loc.detach()
        return loc, mean, censored_normal_log_prob(loc, mean, self.std).sum(-1)

    def forward(self, x: torch.Tensor, return_trajectory: bool = False, sample: bool | None = None):
        """``sample``: draw locations from the policy (default: in training mode) or look at its mean."""
        sample = self.training if sample is None else sample
        hidden = x.new_zeros(x.shape[0], self.head.in_features)                   # (B, hidden_size)
        state = (hidden, hidden) if isinstance(self.core, nn.LSTMCell) else hidden
        levels = self.sensor.pyramid(x)
        steps = []
        for _ in range(self.num_glimpses):
            detached = hidden.detach()
            baseline = self.baseline_net(detached).squeeze(1)                    # (B,)
            loc, mean, log_prob = self._locate(detached, sample)                 # (B, 2), (B, 2), (B,)
            glimpse = self.glimpse_net(self.sensor.read(levels, loc), loc)         # (B, hidden_size)
            state = self.core(glimpse, state)
            hidden = state[0] if isinstance(state, tuple) else state
            steps.append((loc, mean, log_prob, baseline))
        logits = self.head(hidden)                                                # (B, num_classes)
        if not return_trajectory:
            return logits
        locations, means, log_probs, baselines = (torch.stack(parts, dim=1) for parts in zip(*steps))
        patch_sizes = torch.tensor(self.sensor.patch_sizes, device=x.device)
        return logits, GlimpseTrajectory(locations, means, patch_sizes, log_probs, baselines)


def _ram(defaults: dict, kwargs: dict) -> RecurrentAttention:
    if kwargs.pop("features_only", False):
        raise ValueError("The recurrent attention model has no feature maps, so no features_only backbone: it sees "
                         "the image only through glimpses, and its state is a vector (B, hidden_size). Read "
                         "where it looked with model(x, return_trajectory=True), or use a CNN or ViT as a backbone.")
    return RecurrentAttention(**{**defaults, **kwargs})


@register_model
def ram_28(**kwargs) -> RecurrentAttention:
    """28×28 MNIST setting: 6 glimpses of one 8×8 patch."""
    return _ram(dict(num_glimpses=6, glimpse_size=8, num_scales=1), kwargs)


@register_model
def ram_60(**kwargs) -> RecurrentAttention:
    """60×60 translated / cluttered setting: 8 glimpses of 3 scales (12, 24, 48 px) at 12×12."""
    return _ram(dict(num_glimpses=8, glimpse_size=12, num_scales=3), kwargs)


@register_model
def ram_100(**kwargs) -> RecurrentAttention:
    """100×100 cluttered setting: 8 glimpses of 4 scales (12, 24, 48, 96 px) at 12×12."""
    return _ram(dict(num_glimpses=8, glimpse_size=12, num_scales=4), kwargs)

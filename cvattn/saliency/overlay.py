"""Pictures of saliency maps, matplotlib only (no OpenCV, no pyplot state: figures are ``matplotlib.figure.Figure``).

- ``overlay``: an image with its map blended on top, as a uint8 RGB array.
- ``saliency_grid``: one row per image: the image (class and probability in the title, the object box if given),
  then map | overlay for each method.
- ``overlay_row``: one image, then its overlay for each method (a photo as the model saw it).
- ``draw_glimpses``: a RAM's glimpse path on an axes, one numbered box per step.
"""
from __future__ import annotations

from typing import Sequence

import matplotlib
import numpy as np
import torch
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

ArrayLike = torch.Tensor | np.ndarray


def _numpy(x: ArrayLike) -> np.ndarray:
    return x.detach().float().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x, dtype=np.float32)


def to_rgb(image: ArrayLike, mean: Sequence[float] | None = None, std: Sequence[float] | None = None) -> np.ndarray:
    """A model input (C, H, W) or (H, W) → float (H, W, 3) in [0, 1], undoing ``mean``/``std`` if given.

    Without ``mean``/``std``, values outside [0, 1] are min-max scaled for display.
    """
    array = _numpy(image)
    if array.ndim == 2:
        array = array[None]
    if array.ndim != 3 or array.shape[0] not in (1, 3):
        raise ValueError(f"image must be (C, H, W) with 1 or 3 channels, or (H, W); got shape {array.shape}.")
    if (mean is None) != (std is None):
        raise ValueError("Give both mean and std (the datamodule's), or neither.")
    if mean is not None:
        array = array * np.asarray(std, np.float32)[:, None, None] + np.asarray(mean, np.float32)[:, None, None]
    elif array.min() < 0 or array.max() > 1:
        array = (array - array.min()) / max(float(array.max() - array.min()), 1e-12)
    array = np.clip(array, 0, 1).transpose(1, 2, 0)                              # (H, W, C)
    return np.repeat(array, 3, axis=2) if array.shape[2] == 1 else array


def overlay(image: ArrayLike, saliency: ArrayLike, alpha: float = 0.5, cmap: str = "jet",
            mean: Sequence[float] | None = None, std: Sequence[float] | None = None) -> np.ndarray:
    """``image`` (C, H, W) with ``saliency`` (H, W) in [0, 1] blended on top in ``cmap``: uint8 (H, W, 3)."""
    if not 0 <= alpha <= 1:
        raise ValueError(f"alpha is the map's opacity and must be in [0, 1], got {alpha}.")
    rgb = to_rgb(image, mean, std)
    heat = _numpy(saliency)
    if heat.shape != rgb.shape[:2]:
        raise ValueError(f"saliency must be (H, W) = {rgb.shape[:2]} like the image; got {heat.shape}.")
    colored = matplotlib.colormaps[cmap](np.clip(heat, 0, 1))[..., :3]            # (H, W, 3)
    return np.round(255 * ((1 - alpha) * rgb + alpha * colored)).astype(np.uint8)


def saliency_grid(
    images: torch.Tensor,
    maps_by_method: dict[str, torch.Tensor],
    labels: Sequence[int] | torch.Tensor | None = None,
    probs: Sequence[float] | torch.Tensor | None = None,
    class_names: Sequence[str] | None = None,
    boxes: torch.Tensor | None = None,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    alpha: float = 0.5,
    cmap: str = "jet",
) -> Figure:
    """Figure with one row per image: image | (map | overlay) per method.

    ``labels``/``probs``: the class shown in each row's title and its probability (e.g. the prediction);
    ``boxes`` (B, 4): object boxes drawn on the images; ``mean``/``std``: to show the images un-normalised.
    """
    if not maps_by_method:
        raise ValueError("maps_by_method is empty: give at least one {method: (B, H, W) maps}.")
    for method, maps in maps_by_method.items():
        if maps.shape != (images.shape[0], *images.shape[-2:]):
            raise ValueError(f"maps of {method!r} have shape {tuple(maps.shape)}; expected (B, H, W) = "
                             f"{(images.shape[0], *images.shape[-2:])} like the images.")
    rows, cols = images.shape[0], 1 + 2 * len(maps_by_method)
    figure = Figure(figsize=(1.5 * cols, 1.6 * rows), layout="constrained")
    axes = figure.subplots(rows, cols, squeeze=False)
    for row in range(rows):
        axes[row, 0].imshow(to_rgb(images[row], mean, std))
        axes[row, 0].set_title(_title(row, labels, probs, class_names), fontsize=8)
        if boxes is not None:
            x0, y0, x1, y1 = boxes[row].tolist()
            axes[row, 0].add_patch(Rectangle((x0 - 0.5, y0 - 0.5), x1 - x0, y1 - y0, fill=False, color="lime", lw=1))
        for col, (method, maps) in enumerate(maps_by_method.items()):
            axes[row, 1 + 2 * col].imshow(_numpy(maps[row]), cmap=cmap, vmin=0, vmax=1)
            axes[row, 2 + 2 * col].imshow(overlay(images[row], maps[row], alpha, cmap, mean, std))
            if row == 0:
                axes[row, 1 + 2 * col].set_title(f"{method}\nmap", fontsize=8)
                axes[row, 2 + 2 * col].set_title(f"{method}\noverlay", fontsize=8)
    for ax in axes.flat:
        ax.set_axis_off()
    return figure


def overlay_row(image: ArrayLike, maps_by_method: dict[str, ArrayLike], title: str = "",
                mean: Sequence[float] | None = None, std: Sequence[float] | None = None, alpha: float = 0.5,
                cmap: str = "jet", inches: float = 2.6) -> Figure:
    """Figure of one row: ``image`` (C, H, W) titled ``title``, then its overlay for each method ``{name: (H, W)}``.

    ``mean``/``std``: to show the model's normalised input as the picture it was made from.
    """
    if not maps_by_method:
        raise ValueError("maps_by_method is empty: give at least one {method: (H, W) map}.")
    cols = 1 + len(maps_by_method)
    figure = Figure(figsize=(inches * cols, inches + 0.4), layout="constrained")
    axes = figure.subplots(1, cols, squeeze=False)[0]
    axes[0].imshow(to_rgb(image, mean, std))
    axes[0].set_title(title, fontsize=9)
    for ax, (method, heat) in zip(axes[1:], maps_by_method.items()):
        ax.imshow(overlay(image, heat, alpha, cmap, mean, std))
        ax.set_title(method, fontsize=9)
    for ax in axes:
        ax.set_axis_off()
    return figure


def _title(row: int, labels, probs, class_names) -> str:
    if labels is None:
        return ""
    label = int(labels[row])
    name = class_names[label] if class_names is not None else str(label)
    return name if probs is None else f"{name} {float(probs[row]):.0%}"


def draw_glimpses(ax: Axes, trajectory, image_size: int | tuple[int, int], index: int = 0, scale: int = 0,
                  cmap: str = "autumn") -> None:
    """Draw image ``index``'s glimpses from a RAM ``GlimpseTrajectory`` on ``ax``: the patch of ``scale`` (0: the
    finest) at every step, coloured from first to last, numbered from 1, joined by the path of the centres."""
    from cvattn.models.ram import glimpse_boxes

    boxes = glimpse_boxes(trajectory, image_size)[index, :, scale].detach().cpu()     # (T, 4)
    steps = boxes.shape[0]
    colors = matplotlib.colormaps[cmap](np.linspace(0, 1, steps))
    centres = (boxes[:, :2] + boxes[:, 2:]) / 2 - 0.5                                  # pixel-index coordinates
    ax.plot(centres[:, 0], centres[:, 1], color="white", lw=0.8, alpha=0.7)
    for step, (x0, y0, x1, y1) in enumerate(boxes.tolist()):
        ax.add_patch(Rectangle((x0 - 0.5, y0 - 0.5), x1 - x0, y1 - y0, fill=False, color=colors[step], lw=1.2))
        ax.text(x0 - 0.5, y0 - 0.5, str(step + 1), color=colors[step], fontsize=7, va="bottom", ha="left")


def figure_to_array(figure: Figure) -> np.ndarray:
    """Render ``figure`` to a uint8 (H, W, 3) RGB array."""
    canvas = FigureCanvasAgg(figure)
    canvas.draw()
    return np.asarray(canvas.buffer_rgba())[..., :3].copy()

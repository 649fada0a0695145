"""Does the map depend on the model? The model-parameter randomisation test, and the two similarities it reads.

Adebayo, Gilmer, Muelly, Goodfellow, Hardt, Kim (NeurIPS 2018, "Sanity Checks for Saliency Maps"; docs/references.md,
"Saliency evaluation") showed that several popular maps pass localisation tests while being independent of the
model's parameters: an edge detector also points at the object. Their cascading randomisation re-initialises the
model's layers from the top down, one more at each step, and compares the map of the randomised model with the
trained model's. A map that explains the model decorrelates as its layers are destroyed; a map that does not
(``'brightness'``, ``'center'``) keeps correlation 1 at every step.

- ``randomisation_test``: on a deep copy, the parametrised modules (those holding parameters of their own, in
  ``named_modules`` order) are re-initialised from the last one back, and after each the maps for the same target
  classes are compared with the trained model's by ``spearman`` and ``ssim``, per image, then averaged.
- ``randomised_copy``: the cascade's last step, every parametrised module re-initialised: the model whose score a
  benchmark reports beside the trained model's (a method that scores as well on it says nothing about the model).
- ``spearman``: Spearman's rank correlation over the pixels, ties sharing their average rank (as
  ``scipy.stats.spearmanr``); nan when a map is constant.
- ``ssim``: the structural similarity of Wang, Bovik, Sheikh, Simoncelli (IEEE TIP 2004) with a Gaussian window
  (σ = 1.5, truncated at 3.5 σ: 11 × 11), population covariances, K1 = 0.01, K2 = 0.03, averaged over the pixels
  whose window lies inside the image: scikit-image's ``structural_similarity(gaussian_weights=True, sigma=1.5,
  use_sample_covariance=False, data_range=1)``.

Deviations: a module is re-initialised by its own ``reset_parameters`` (PyTorch's default initialisation, which
for BatchNorm also resets the running statistics) where it has one, otherwise each of its parameters is drawn from
a normal distribution with that parameter's own standard deviation (0.02 when it has none); Adebayo et al.
re-initialise from a truncated normal. Draws are seeded by ``seed`` on the model's device, without touching the
global random state.
"""
from __future__ import annotations

import copy
from typing import Iterator

import torch
import torch.nn as nn
import torch.nn.functional as F

from cvattn.saliency.adapters import adapt
from cvattn.saliency.api import saliency
from cvattn.saliency.metrics import pointing_game
from cvattn.saliency.runtime import TargetType, inspection_mode, resolve_targets, unwrap

SSIM_TRUNCATE = 3.5   # Gaussian window radius in σ, scikit-image's (and scipy.ndimage's default 4.0 is not used)


def _rows(a: torch.Tensor, b: torch.Tensor, name: str) -> tuple[torch.Tensor, torch.Tensor]:
    if a.shape != b.shape or a.ndim < 2:
        raise ValueError(f"{name} compares maps of one shape, (B, H, W) or (H, W); got {tuple(a.shape)} and "
                         f"{tuple(b.shape)}.")
    return a.detach().to(torch.float64), b.detach().to(torch.float64)


def average_ranks(values: torch.Tensor) -> torch.Tensor:
    """Ranks 1..M along the last dimension of (N, M) ``values``, ties sharing their average rank."""
    rows, length = values.shape
    ordered, order = values.sort(dim=1)
    starts = torch.ones_like(ordered, dtype=torch.bool)
    starts[:, 1:] = ordered[:, 1:] != ordered[:, :-1]
    groups = (starts.cumsum(1) - 1 + torch.arange(rows, device=values.device)[:, None] * length).flatten()
    positions = torch.arange(1, length + 1, dtype=torch.float64, device=values.device).repeat(rows)
    sums = torch.zeros(rows * length, dtype=torch.float64, device=values.device).index_add_(0, groups, positions)
    counts = torch.zeros_like(sums).index_add_(0, groups, torch.ones_like(positions))
    mean_rank = (sums / counts.clamp(min=1))[groups].view(rows, length)          # in sorted order
    return torch.empty_like(mean_rank).scatter_(1, order, mean_rank)


def spearman(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Spearman's rank correlation (B,) between maps ``a`` and ``b`` (B, H, W) over their pixels (module
    docstring); a (H, W) pair gives a 0-dimensional tensor."""
    a, b = _rows(a, b, "spearman")
    ra, rb = (average_ranks(x.reshape(-1, x.shape[-2] * x.shape[-1])) for x in (a, b))
    ra, rb = ra - ra.mean(1, keepdim=True), rb - rb.mean(1, keepdim=True)
    norms = ra.norm(dim=1) * rb.norm(dim=1)
    rho = torch.where(norms > 0, (ra * rb).sum(1) / torch.where(norms > 0, norms, 1.0), torch.nan)
    return rho.view(a.shape[:-2])


def ssim(a: torch.Tensor, b: torch.Tensor, data_range: float = 1.0, sigma: float = 1.5) -> torch.Tensor:
    """Mean structural similarity (B,) of maps ``a`` and ``b`` (B, H, W) (module docstring)."""
    a, b = _rows(a, b, "ssim")
    radius = int(SSIM_TRUNCATE * sigma + 0.5)
    if min(a.shape[-2:]) < 2 * radius + 1:
        raise ValueError(f"ssim's {2 * radius + 1}x{2 * radius + 1} window (sigma={sigma}) needs maps at least that "
                         f"large; got {tuple(a.shape[-2:])}.")
    offsets = torch.arange(-radius, radius + 1, dtype=torch.float64, device=a.device)
    gauss = torch.exp(-0.5 * (offsets / sigma) ** 2)
    gauss = gauss / gauss.sum()

    def local_mean(x: torch.Tensor) -> torch.Tensor:                             # separable, valid positions only
        return F.conv2d(F.conv2d(x, gauss.view(1, 1, 1, -1)), gauss.view(1, 1, -1, 1))

    x, y = (t.reshape(-1, 1, *t.shape[-2:]) for t in (a, b))                       # (N, 1, H, W)
    mx, my = local_mean(x), local_mean(y)
    vx, vy, cxy = local_mean(x * x) - mx ** 2, local_mean(y * y) - my ** 2, local_mean(x * y) - mx * my
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    index = (2 * mx * my + c1) * (2 * cxy + c2) / ((mx ** 2 + my ** 2 + c1) * (vx + vy + c2))
    return index.mean((1, 2, 3)).view(a.shape[:-2])


def parametrised_modules(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """``(path, module)`` of every module holding parameters of its own, in ``named_modules`` order (the model
    itself is named ``'(root)'`` when it holds some, e.g. a ViT's class token and position embedding)."""
    return [(path or "(root)", module) for path, module in model.named_modules()
            if next(module.parameters(recurse=False), None) is not None]


@torch.no_grad()
def reinitialise(module: nn.Module) -> None:
    """Fresh parameters for ``module``'s own parameters (module docstring, "Deviations")."""
    if callable(getattr(module, "reset_parameters", None)):
        module.reset_parameters()
        return
    for param in module.parameters(recurse=False):
        std = param.std().item() if param.numel() > 1 else 0.0
        param.normal_(0.0, std if std > 0 else 0.02)


def _cascade(model: nn.Module, seed: int) -> Iterator[tuple[str, nn.Module]]:
    """Cascading randomisation of a deep copy of ``model``: re-initialises its parametrised modules one at a time,
    from the output side, and yields ``(module path, the copy)`` after each; seeded by ``seed`` without touching the
    global random state (the fork lasts until the generator is exhausted or closed)."""
    randomised = copy.deepcopy(model)
    layers = parametrised_modules(randomised)
    if not layers:
        raise ValueError(f"{type(model).__name__} has no parameters to randomise.")
    device = next(randomised.parameters()).device
    with torch.random.fork_rng(devices=[device.index] if device.type == "cuda" else []):
        torch.manual_seed(seed)
        for path, module in reversed(layers):
            reinitialise(module)
            yield path, randomised


def randomised_copy(model: nn.Module, seed: int = 0) -> nn.Module:
    """A deep copy of ``model`` with every parametrised module re-initialised (``reinitialise``, seeded by ``seed``
    without touching the global random state); ``model`` is not modified."""
    for _, randomised in _cascade(unwrap(model), seed):
        pass
    return randomised


def randomisation_test(
    model: nn.Module,
    images: torch.Tensor,
    method: str = "gradcam",
    target: TargetType = None,
    boxes: torch.Tensor | None = None,
    seed: int = 0,
    tolerance: float | None = None,
    **options,
) -> list[dict[str, float | str]]:
    """Cascading model-parameter randomisation (module docstring): one row per step.

    Returns ``[{layer, spearman, ssim[, pointing_game]}, ...]``: the first row (``layer='none'``) compares the
    trained model's maps with themselves (and gives its pointing game); row k names the k-th module re-initialised
    counting from the top, all those above it being re-initialised too. ``spearman`` and ``ssim`` are means over
    the images (images whose maps are constant count as nan in the Spearman mean and are left out of it).

    Args:
        model: a network, ``ImageClassifier`` or ``RAMModule``; it is not modified.
        images: (B, C, H, W), normalised as the model was trained.
        method, options: as ``saliency``; target: the classes explained, the same for every randomised model
            (default: the trained model's predictions).
        boxes: (B, 4) object boxes: also report each model's ``pointing_game`` (``tolerance``, ``seed`` as there).
        seed: seeds the re-initialisation.
    """
    model = unwrap(model)
    with inspection_mode(model), torch.no_grad():
        targets = resolve_targets(target, adapt(model)(images.detach()))
    trained = saliency(model, images, method, target=targets, **options)          # (B, H, W)
    def row(layer: str, maps: torch.Tensor) -> dict[str, float | str]:
        entry = {"layer": layer, "spearman": spearman(trained, maps).nanmean().item(),
                 "ssim": ssim(trained, maps).mean().item()}
        if boxes is not None:
            entry["pointing_game"] = pointing_game(maps, boxes.to(maps.device), tolerance, seed).float().mean().item()
        return entry

    table = [row("none", trained)]
    for path, randomised in _cascade(model, seed):
        table.append(row(path, saliency(randomised, images, method, target=targets, **options)))
    return table

"""Several objects of different classes on one cluttered canvas, for class-conditional saliency scores.

On a single-object canvas the object is the largest bright thing, so a map that ignores the model (the input's
brightness, blurred) already points at it; with ``k`` objects of ``k`` different classes, a map for class c must
find *that* class's object, and a class-agnostic map points at the right one only about 1/k of the time.

A sample holds the image ``index`` plus ``k - 1`` images of ``k - 1`` other classes (the classes drawn uniformly
among the other classes of the split, then one image of each), each augmented when training, placed whole and
without overlap on top of the usual clutter (``cvattn.data.canvas``: distractor crops first, then the objects, the
sum clipped to 255). Placement: each object at a uniform position that overlaps no object placed before it (at most
``PLACEMENT_TRIES`` draws each); when that fails, the whole layout falls back to a grid of
``(canvas // h) × (canvas // w)`` slots, ``k`` of them chosen at random, each object at a random offset inside its
slot. So every ``k`` up to the grid's size fits, and a sample is a pure function of ``(seed, epoch, index)`` as
on the other canvases.

Deviations: none from the single-object canvas beyond the above; this setting is cvattn's (Mnih et al. 2014 place
one object per canvas).
"""
from __future__ import annotations

from collections.abc import Sequence

import albumentations as A
import numpy as np
import torch

from cvattn.data.canvas import CanvasDataset
from cvattn.data.dataset import Images, split_key

PLACEMENT_TRIES = 100   # uniform draws per object before the grid layout takes over


def max_objects(canvas_size: int, object_size: tuple[int, int]) -> int:
    """How many ``object_size`` (H, W) objects always fit side by side on a ``canvas_size``² canvas."""
    return (canvas_size // object_size[0]) * (canvas_size // object_size[1])


def check_num_objects(num_objects: int, canvas_size: int | None, object_size: tuple[int, int],
                      num_classes: int) -> None:
    """Raise ``ValueError`` unless ``num_objects`` objects of ``object_size``, all of different classes, fit."""
    if not isinstance(num_objects, int) or isinstance(num_objects, bool) or num_objects < 1:
        raise ValueError(f"num_objects must be a positive integer (1: one object per canvas), got {num_objects!r}.")
    if num_objects == 1:
        return
    if canvas_size is None:
        raise ValueError(f"num_objects={num_objects} needs a canvas: set canvas_size (e.g. 100).")
    if num_objects > num_classes:
        raise ValueError(f"num_objects={num_objects}: the objects of a canvas are of different classes and there are "
                         f"{num_classes}; use num_objects <= {num_classes}.")
    fit = max_objects(canvas_size, object_size)
    if num_objects > fit:
        needed = canvas_size
        while max_objects(needed, object_size) < num_objects:
            needed += 1
        raise ValueError(
            f"num_objects={num_objects} {object_size[0]}x{object_size[1]} objects do not fit without overlap on a "
            f"{canvas_size}x{canvas_size} canvas: at most {fit} fit; use num_objects <= {fit} or canvas_size >= "
            f"{needed}."
        )


class MultiObjectCanvasDataset(CanvasDataset):
    """``(image, multi_hot, boxes, classes)`` samples: ``num_objects`` objects of different classes on a canvas.

    ``image`` float32 ``(C, canvas_size, canvas_size)``; ``multi_hot`` float32 ``(num_classes,)``, 1 for the
    classes present; ``boxes`` float32 ``(num_objects, 4)``, each object's ``(x0, y0, x1, y1)`` with exclusive
    ends; ``classes`` int64 ``(num_objects,)``, each object's class, in the order of ``boxes`` (the first object
    is image ``index``). Other arguments as ``CanvasDataset``.
    """

    def __init__(
        self,
        images: Images,
        labels: torch.Tensor,
        mean: Sequence[float],
        std: Sequence[float],
        canvas_size: int,
        num_objects: int,
        num_classes: int,
        num_distractors: int = 0,
        distractor_size: int = 8,
        transform: A.Compose | None = None,
        seed: int = 0,
        train: bool = False,
    ):
        super().__init__(images, labels, mean, std, canvas_size, num_distractors, distractor_size, transform, seed,
                         train)
        check_num_objects(num_objects, canvas_size, self.source_size, num_classes)
        if labels.min() < 0 or labels.max() >= num_classes:
            raise ValueError(f"labels span [{labels.min()}, {labels.max()}]; num_classes={num_classes} needs them in "
                             f"[0, {num_classes - 1}].")
        self.by_class = {c: (labels == c).nonzero()[:, 0] for c in labels.unique().tolist()}
        if num_objects > len(self.by_class):
            raise ValueError(f"num_objects={num_objects} objects of different classes, but these images hold only "
                             f"{len(self.by_class)} classes; use num_objects <= {len(self.by_class)}.")
        self.num_objects = num_objects
        self.num_classes = num_classes

    def __getitem__(self, key: int | tuple[int, int]):
        epoch, index = split_key(key)
        rng = self.sample_rng(epoch, index)
        first = int(self.labels[index])
        others = [c for c in self.by_class if c != first]
        classes = [first] + rng.choice(others, self.num_objects - 1, replace=False).tolist()
        items = [index] + [int(self.by_class[c][rng.integers(len(self.by_class[c]))]) for c in classes[1:]]
        objects = [self.augmented(item, rng) for item in items]           # k × (h, w, C) uint8
        canvas = self.cluttered(rng, index, objects[0].shape[2])          # (size, size, C) int32
        sizes = [self.check_fits(obj) for obj in objects]
        corners = self._layout(rng, sizes)                                 # k × (y0, x0)
        for obj, (h, w), (y0, x0) in zip(objects, sizes, corners):
            canvas[y0:y0 + h, x0:x0 + w] += obj
        image = np.minimum(canvas, 255).astype(np.uint8)
        boxes = torch.tensor([[x0, y0, x0 + w, y0 + h] for (h, w), (y0, x0) in zip(sizes, corners)],
                             dtype=torch.float32)                          # (k, 4)
        multi_hot = torch.zeros(self.num_classes)
        multi_hot[classes] = 1.0
        return self.normalise(image), multi_hot, boxes, torch.tensor(classes)

    def _layout(self, rng: np.random.Generator, sizes: list[tuple[int, int]]) -> list[tuple[int, int]]:
        """Top-left corners (y0, x0) of non-overlapping boxes of ``sizes`` (module docstring)."""
        size = self.canvas_size
        placed: list[tuple[int, int, int, int]] = []                       # (y0, x0, y1, x1)
        for h, w in sizes:
            for y0, x0 in rng.integers(0, (size - h + 1, size - w + 1), size=(PLACEMENT_TRIES, 2)).tolist():
                if all(y0 >= b[2] or b[0] >= y0 + h or x0 >= b[3] or b[1] >= x0 + w for b in placed):
                    placed.append((y0, x0, y0 + h, x0 + w))
                    break
            else:
                return self._grid_layout(rng, sizes)
        return [(y0, x0) for y0, x0, _, _ in placed]

    def _grid_layout(self, rng: np.random.Generator, sizes: list[tuple[int, int]]) -> list[tuple[int, int]]:
        height, width = max(h for h, _ in sizes), max(w for _, w in sizes)
        rows, cols = self.canvas_size // height, self.canvas_size // width
        if rows * cols < len(sizes):
            raise ValueError(f"{len(sizes)} augmented objects of up to {height}x{width} do not fit without overlap "
                             f"on the {self.canvas_size}x{self.canvas_size} canvas.")
        cell_h, cell_w = self.canvas_size // rows, self.canvas_size // cols
        slots = rng.permutation(rows * cols)[:len(sizes)].tolist()
        return [((slot // cols) * cell_h + int(rng.integers(cell_h - h + 1)),
                 (slot % cols) * cell_w + int(rng.integers(cell_w - w + 1))) for slot, (h, w) in zip(slots, sizes)]

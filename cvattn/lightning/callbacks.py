"""``SaliencyCallback``: watch where the model looks while it trains.

Every ``every_n_epochs`` validation epochs (not the sanity check) it draws the same validation images, the first
``num_images`` of the validation loader, with the saliency maps of ``methods`` (``cvattn.saliency.saliency_grid``:
the object boxes when the loader gives them; on multi-object canvases, every object's box and class) and sends the figure to every logger that takes images: TensorBoard's ``add_figure``, or any logger with a
``log_image(key, images, step)`` method (Weights & Biases' signature). When none does (the CSV logger, no logger),
it writes ``<trainer.log_dir>/saliency/epoch=N.png`` (N counted from 0, as in checkpoint names).

YAML::

    trainer:
      callbacks:
        - class_path: cvattn.lightning.SaliencyCallback
          init_args: {every_n_epochs: 5, num_images: 8, methods: [spatial_gate, gradcam]}
"""
from __future__ import annotations

from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.loggers import TensorBoardLogger
from matplotlib.figure import Figure

from cvattn.saliency import available_methods, default_methods, figure_to_array, saliency, saliency_grid
from cvattn.saliency.runtime import first_samples, inspection_mode, objects_of, unwrap


class SaliencyCallback(L.Callback):
    """Log an overlay grid of fixed validation images every ``every_n_epochs`` epochs (see the module docstring).

    Args:
        every_n_epochs: draw after validation epochs N − 1, 2N − 1, … (epochs counted from 0).
        num_images: how many validation images (the first ones of the loader, the same every time).
        methods: saliency methods; default ``default_methods(model)``: its native maps, gradcam and gradcam++.
    """

    def __init__(self, every_n_epochs: int = 1, num_images: int = 8, methods: list[str] | None = None):
        super().__init__()
        if every_n_epochs < 1 or num_images < 1:
            raise ValueError(f"every_n_epochs and num_images must be ≥ 1; got every_n_epochs={every_n_epochs}, "
                             f"num_images={num_images}.")
        self.every_n_epochs = every_n_epochs
        self.num_images = num_images
        self.methods = methods
        self._batch: list[torch.Tensor] | None = None   # the loader's columns (runtime.objects_of) on the CPU

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if self.methods is not None:
            model = unwrap(pl_module)
            unknown = [m for m in self.methods if m not in available_methods(model)]
            if unknown:
                raise ValueError(f"SaliencyCallback methods {unknown} do not apply to {type(model).__name__}; "
                                 f"methods that do: {', '.join(available_methods(model))}.")

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking or (trainer.current_epoch + 1) % self.every_n_epochs:
            return
        # trainer.log_dir is a collective (rank 0 broadcasts it): every rank reads it, or rank 0 waits for the others.
        folder = Path(trainer.log_dir or trainer.default_root_dir) / "saliency"
        if trainer.is_global_zero:
            self._log(trainer, self.figure(trainer, pl_module), folder)

    def _fixed_batch(self, trainer: L.Trainer) -> list[torch.Tensor]:
        if self._batch is None:
            loaders = trainer.val_dataloaders
            self._batch = first_samples(loaders[0] if isinstance(loaders, (list, tuple)) else loaders, self.num_images)
        return self._batch

    def figure(self, trainer: L.Trainer, pl_module: L.LightningModule) -> Figure:
        """The overlay grid of the fixed validation images, at the model's current weights."""
        batch = self._fixed_batch(trainer)
        images, classes, boxes = objects_of(batch)                  # classes (B, k), boxes (B, k, 4) or None
        images = images.to(pl_module.device)
        model = unwrap(pl_module)
        maps = {method: saliency(model, images, method) for method in self.methods or default_methods(model)}
        with inspection_mode(model), torch.no_grad():
            probs, predicted = model(images).softmax(1).max(1)
        datamodule = trainer.datamodule
        return saliency_grid(images, maps, predicted, probs, getattr(datamodule, "class_names", None), boxes,
                             getattr(datamodule, "mean", None), getattr(datamodule, "std", None),
                             object_classes=classes if len(batch) > 3 else None)   # multi-object: list the classes

    def _log(self, trainer: L.Trainer, figure: Figure, folder: Path) -> None:
        logged = False
        for logger in trainer.loggers:
            if isinstance(logger, TensorBoardLogger):
                logger.experiment.add_figure("saliency", figure, global_step=trainer.global_step)
            elif callable(getattr(logger, "log_image", None)):
                logger.log_image(key="saliency", images=[figure_to_array(figure)], step=trainer.global_step)
            else:
                continue
            logged = True
        if not logged:
            folder.mkdir(parents=True, exist_ok=True)
            figure.savefig(folder / f"epoch={trainer.current_epoch}.png", dpi=100)

"""The gallery's figures, from the models ``bench/saliency_results.py`` trained, as small PNGs under docs/figures/.

    python bench/make_figures.py [--objects 1] [--rows 4] [--out docs/figures] [--allow-missing] [--seed 0]

- ``attention_families.png`` (the README's figure): the same cluttered test canvases in rows; columns: the image
  with its object's box, the plain CNN's Grad-CAM, the SE and ECA channel gates, the CBAM spatial gate, the ViT's
  attention rollout and the RAM's glimpse path.
- ``vit_heads.png``: the ViT's class-token attention for every head and layer of one correctly classified canvas.
- ``ram_glimpses.png``: the RAM's glimpse path on canvases it classifies correctly and wrongly.
- ``class_conditional.png``: canvases with three garments; for each method, its map for each garment's class in
  turn (that garment's box outlined): Grad-CAM of the plain CNN and the per-class pooling head's attention move to
  the garment of the class asked for, the CBAM spatial gate draws the same map whatever the class (the benchmark's
  class-conditional pointing game, docs/saliency.md). From the multi-object models (trained on three garments).
- ``sanity_check.png``: Grad-CAM of the trained plain CNN beside Grad-CAM of the same network with every layer
  re-initialised, as the last step of ``cvattn.saliency.randomisation_test`` (Adebayo et al. 2018,
  docs/references.md, "Saliency evaluation"): a map that survives the randomisation shows the image, not the
  model; the title gives the two maps' Spearman correlation.

Every model is the best-validation checkpoint of ``saliency_results.best_checkpoint(model, objects)``, built from
its run's ``config.yaml``; the canvases are the first test canvases of that run's data. A missing checkpoint is an
error naming the command that trains it; ``--allow-missing`` leaves its column (or figure) out instead.
"""
from __future__ import annotations

import argparse
import io
import sys
from pathlib import Path

import matplotlib
import torch
import torch.nn.functional as F
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle
from PIL import Image

import saliency_results as bench
from _common import ROOT
from cvattn.checkpoint import load_weights
from cvattn.config import build_from_config
from cvattn.saliency import draw_glimpses, overlay, randomised_copy, saliency, spearman
from cvattn.saliency.runtime import objects_of

MAX_BYTES = 300_000   # per PNG: the README and the gallery load every figure
DPI = 80
# The main figure's columns: (title, benchmark model, saliency method; None: the RAM's glimpse path drawn).
COLUMNS = [
    ("plain CNN · Grad-CAM", "convnet4", "gradcam"),
    ("SE · channel gate", "se_convnet4", "channel_gate"),
    ("ECA · channel gate", "eca_convnet4", "channel_gate"),
    ("CBAM · spatial gate", "cbam_convnet4", "spatial_gate"),
    ("ViT · rollout", "vit", "rollout"),
    ("RAM · glimpses", "ram", None),
]

# The class-conditional figure's rows: (title, benchmark model trained on three garments, saliency method).
CLASS_ROWS = [
    ("plain CNN · Grad-CAM", "convnet4", "gradcam"),
    ("per-class pooling head", "classattn_convnet4", "pool_attention"),
    ("CBAM · spatial gate", "cbam_convnet4", "spatial_gate"),
]


class MissingCheckpoints(FileNotFoundError):
    """Models the benchmark has not trained; the message gives each one's training command."""


def missing_message(missing: list[str], objects: int) -> str:
    """The error for untrained models: each one's training command, and the way around."""
    commands = "\n".join(f"  {model}: {' '.join(command_words(model, objects))}" for model in missing)
    return (f"no trained checkpoint for {', '.join(missing)} (objects={objects}). Train each with the "
            f"command below (from the repository root), or run bench/saliency_results.py, which trains them all; "
            f"or pass --allow-missing to leave these models out of the figures.\n{commands}")


def command_words(model: str, objects: int) -> list[str]:
    """``saliency_results.train_command``, run by ``python`` (not by this interpreter's path)."""
    return ["python", *(word for word in bench.train_command(model, objects) if word != sys.executable)]


def trainable(model: str, objects: int) -> bool:
    """Whether the benchmark trains ``model`` for canvases of ``objects`` objects (the RAM: one object only)."""
    try:
        bench.train_command(model, objects)
    except ValueError:
        return False
    return True


def run_config(checkpoint: Path) -> Path:
    """The ``config.yaml`` of the ``train.py`` run that wrote ``checkpoint``."""
    for folder in checkpoint.parents:
        if (folder / "config.yaml").is_file():
            return folder / "config.yaml"
    raise FileNotFoundError(f"No config.yaml in the run folders above {checkpoint}: train.py writes one per run.")


def load(checkpoint: Path):
    """(the trained LightningModule in eval mode, its run's datamodule)."""
    module, data = build_from_config(run_config(checkpoint))
    load_weights(module, checkpoint)
    data.data_dir = str(ROOT / data.data_dir)   # train.py ran in the repository's root (an absolute one stays)
    return module.eval(), data


def test_canvases(data, count: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The first ``count`` test canvases: (images, target classes, boxes (B, K, 4)); with several objects per canvas
    the target is the first object's class."""
    data.num_workers = 0
    data.setup("test")
    images, labels, boxes, *classes = next(iter(data.test_dataloader()))
    target = classes[0][:, 0] if classes else labels
    boxes = boxes if boxes.ndim == 3 else boxes[:, None]
    return images[:count], target[:count], boxes[:count]


def show_image(ax, image: torch.Tensor, data, boxes: torch.Tensor | None = None, heat: torch.Tensor | None = None):
    """``image`` (with ``heat`` blended on it) on ``ax``, its object boxes outlined, without axes."""
    heat = torch.zeros(image.shape[-2:]) if heat is None else heat
    ax.imshow(overlay(image, heat, alpha=0 if heat.abs().sum() == 0 else 0.5, mean=data.mean, std=data.std))
    for x0, y0, x1, y1 in ([] if boxes is None else boxes.tolist()):
        ax.add_patch(Rectangle((x0 - 0.5, y0 - 0.5), x1 - x0, y1 - y0, fill=False, color="lime", lw=0.8))
    ax.set_xlim(-0.5, image.shape[-1] - 0.5)
    ax.set_ylim(image.shape[-2] - 0.5, -0.5)
    ax.set_axis_off()


def save(figure: Figure, path: Path) -> Path:
    """``figure`` as a 256-colour PNG of at most ``MAX_BYTES`` (an AssertionError says by how much it is over)."""
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=DPI, facecolor="white")
    buffer.seek(0)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.open(buffer).convert("RGB").quantize(256).save(path, optimize=True)
    size = path.stat().st_size
    assert size <= MAX_BYTES, f"{path} is {size} bytes, over {MAX_BYTES}: lower DPI or --rows"
    return path


def families_figure(models: dict, data, rows: int) -> Figure:
    """The README's figure: rows of test canvases; the image, then one column per trained model of ``COLUMNS``."""
    images, target, boxes = test_canvases(data, rows)
    columns = [column for column in COLUMNS if column[1] in models]
    figure = Figure(figsize=(1.45 * (1 + len(columns)), 1.5 * len(images) + 0.3), layout="constrained")
    axes = figure.subplots(len(images), 1 + len(columns), squeeze=False)
    for row in range(len(images)):
        show_image(axes[row, 0], images[row], data, boxes[row])
    axes[0, 0].set_title("image", fontsize=8)
    for col, (title, model, method) in enumerate(columns, start=1):
        module = models[model]
        if method is None:                                  # the RAM: its glimpse path, drawn
            with torch.no_grad():
                _, trajectory = module.model(images, return_trajectory=True)
            for row in range(len(images)):
                show_image(axes[row, col], images[row], data, boxes[row])
                draw_glimpses(axes[row, col], trajectory, data.image_size, index=row)
        else:
            maps = saliency(module, images, method, target=target)
            for row in range(len(images)):
                show_image(axes[row, col], images[row], data, boxes[row], maps[row])
        axes[0, col].set_title(title, fontsize=8)
    return figure


def class_conditional_figure(models: dict, data, canvases: int = 2) -> Figure:
    """For each of the first ``canvases`` multi-object test canvases and each trained model of ``CLASS_ROWS``: the
    canvas, then the model's map for each garment's class, with that garment's box."""
    data.num_workers = 0
    data.setup("test")
    images, classes, boxes = objects_of(next(iter(data.test_dataloader())))  # (B, C, H, W), (B, k), (B, k, 4)
    rows = [(title, model, method) for title, model, method in CLASS_ROWS if model in models]
    objects = classes.shape[1]
    figure = Figure(figsize=(1.45 * (1 + objects), 1.5 * canvases * len(rows) + 0.3), layout="constrained")
    axes = figure.subplots(canvases * len(rows), 1 + objects, squeeze=False)
    images, classes, boxes = images[:canvases], classes[:canvases], boxes[:canvases]
    for offset, (title, model, method) in enumerate(rows):
        # (objects, canvases, H, W): map j of every canvas is for its j-th garment's class
        maps = [saliency(models[model], images, method, target=classes[:, j]) for j in range(objects)]
        for index in range(canvases):
            row = axes[index * len(rows) + offset]
            show_image(row[0], images[index], data, boxes[index])
            row[0].set_title(title, fontsize=7)
            for j in range(objects):
                show_image(row[1 + j], images[index], data, boxes[index, j:j + 1], maps[j][index])
                row[1 + j].set_title(f"map for {data.class_names[classes[index, j]]}", fontsize=7)
    return figure


def vit_heads_figure(vit, data) -> Figure:
    """The class token's attention over the patches for every head (and their mean) of every layer, on the first
    correctly classified test canvas."""
    images, target, boxes = test_canvases(data, 64)
    with torch.no_grad():
        logits, attn = vit.model.forward_attention(images)             # (B, layers, heads, T, T)
    correct = (logits.argmax(1) == target).nonzero().flatten()
    index = int(correct[0]) if len(correct) else 0
    rows = attn[index, :, :, 0, vit.model.num_prefix_tokens:]          # (layers, heads, patches)
    rows = torch.cat([rows, rows.mean(1, keepdim=True)], 1)            # + the head average
    layers, heads, patches = rows.shape
    grid = int(patches ** 0.5)
    maps = F.interpolate(rows.reshape(layers * heads, 1, grid, grid), size=images.shape[-2:], mode="bilinear")
    maps = maps[:, 0].reshape(layers, heads, *images.shape[-2:])
    low, high = maps.amin((2, 3), keepdim=True), maps.amax((2, 3), keepdim=True)
    maps = (maps - low) / (high - low).clamp_min(1e-12)
    figure = Figure(figsize=(1.3 * heads, 1.4 * layers + 0.3), layout="constrained")
    axes = figure.subplots(layers, heads, squeeze=False)
    for layer in range(layers):
        for head in range(heads):
            show_image(axes[layer, head], images[index], data, boxes[index], maps[layer, head])
            axes[layer, head].set_title(f"layer {layer} · {'mean' if head == heads - 1 else f'head {head}'}",
                                        fontsize=7)
    verdict = "correct" if len(correct) else "wrong (no correct one in the batch)"
    figure.suptitle(f"ViT class-token attention, {data.class_names[target[index]]} ({verdict})", fontsize=9)
    return figure


def ram_figure(ram, data, per_case: int = 3) -> Figure:
    """Glimpse paths on the first ``per_case`` test canvases the RAM classifies correctly, then wrongly."""
    images, target, boxes = test_canvases(data, 256)
    with torch.no_grad():
        logits, trajectory = ram.model(images, return_trajectory=True)
    predicted = logits.argmax(1)
    cases = {"correct": (predicted == target).nonzero().flatten()[:per_case],
             "wrong": (predicted != target).nonzero().flatten()[:per_case]}
    figure = Figure(figsize=(1.8 * per_case, 4.0), layout="constrained")
    axes = figure.subplots(2, per_case, squeeze=False)
    for row, (case, indices) in enumerate(cases.items()):
        if not len(indices):
            axes[row, 0].text(0, 0.5, f"no {case} case among {len(images)} canvases", fontsize=8)
        for col, ax in enumerate(axes[row]):
            ax.set_axis_off()
            if col < len(indices):
                i = int(indices[col])
                show_image(ax, images[i], data, boxes[i])
                draw_glimpses(ax, trajectory, data.image_size, index=i)
                ax.set_title(f"{case}: {data.class_names[target[i]]}\n→ {data.class_names[predicted[i]]}",
                             fontsize=7)
    return figure


def sanity_figure(cnn, data, rows: int, name: str) -> Figure:
    """Grad-CAM of the trained CNN beside Grad-CAM of it fully randomised, with their Spearman correlation."""
    images, target, boxes = test_canvases(data, rows)
    trained = saliency(cnn, images, "gradcam", target=target)
    random_maps = saliency(randomised_copy(cnn).eval(), images, "gradcam", target=target)
    figure = Figure(figsize=(4.5, 1.45 * len(images) + 0.5), layout="constrained")
    axes = figure.subplots(len(images), 3, squeeze=False)
    for row in range(len(images)):
        show_image(axes[row, 0], images[row], data, boxes[row])
        show_image(axes[row, 1], images[row], data, boxes[row], trained[row])
        show_image(axes[row, 2], images[row], data, boxes[row], random_maps[row])
    for col, title in enumerate(["image", "Grad-CAM, trained", "Grad-CAM, randomised"]):
        axes[0, col].set_title(title, fontsize=8)
    correlation = spearman(trained, random_maps).nanmean().item()
    figure.suptitle(f"{name}: Spearman(trained, randomised) = {correlation:.2f}", fontsize=8)
    return figure


def make_figures(out: Path, objects: int = 1, rows: int = 4, allow_missing: bool = False,
                 seed: int = 0) -> list[Path]:
    """Write the figures of the trained models into ``out``; raise ``MissingCheckpoints`` (with the training
    commands) when one is missing and ``allow_missing`` is not set, or when none is trained."""
    wanted = [model for _, model, _ in COLUMNS if trainable(model, objects)]
    checkpoints = {model: bench.best_checkpoint(model, objects) for model in wanted}
    missing = [model for model, checkpoint in checkpoints.items() if checkpoint is None]
    if missing and (not allow_missing or len(missing) == len(wanted)):
        raise MissingCheckpoints(missing_message(missing, objects))
    torch.manual_seed(seed)
    models, datas = {}, {}
    for model, checkpoint in checkpoints.items():
        if checkpoint is not None:
            models[model], datas[model] = load(Path(checkpoint))
    # Every column shows the canvases of the first model's data, which every model must take as its input.
    data = next(iter(datas.values()))
    data.num_objects = objects              # the multi-object models (trained on 3) are shown on `objects` too

    def seen(d):
        return d.image_size, d.in_chans, tuple(d.mean), tuple(d.std)

    other = [model for model, d in datas.items() if seen(d) != seen(data)]
    if other:
        raise ValueError(f"{', '.join(other)} were trained on other images than {next(iter(datas))} "
                         f"({seen(data)}: size, channels, mean, std): retrain them with the benchmark's commands.")
    for model in missing:
        print(f"left out (not trained): {model}; train it with: {' '.join(command_words(model, objects))}")
    written = [save(families_figure(models, data, rows), out / "attention_families.png")]
    if "vit" in models:
        written.append(save(vit_heads_figure(models["vit"], data), out / "vit_heads.png"))
    if "ram" in models:
        written.append(save(ram_figure(models["ram"], data), out / "ram_glimpses.png"))
    cnn = next((m for m in ("convnet4", "se_convnet4", "eca_convnet4", "cbam_convnet4") if m in models), None)
    if cnn is not None:
        written.append(save(sanity_figure(models[cnn], data, min(rows, 3), cnn), out / "sanity_check.png"))
    multi = {model: bench.best_checkpoint(model, 3) for _, model, _ in CLASS_ROWS}
    if multi["convnet4"] is not None:
        for model in [model for model, checkpoint in multi.items() if checkpoint is None]:
            print(f"left out of class_conditional.png (not trained): {model}; train it with: "
                  f"{' '.join(command_words(model, 3))}")
        loaded = {model: load(Path(checkpoint)) for model, checkpoint in multi.items() if checkpoint is not None}
        data = loaded["convnet4"][1]
        data.num_objects = 3
        written.append(save(class_conditional_figure({model: module for model, (module, _) in loaded.items()}, data),
                            out / "class_conditional.png"))
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--objects", type=int, default=1, choices=[1, 2, 3], help="objects per canvas")
    parser.add_argument("--rows", type=int, default=4, help="canvases in the main figure")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "figures")
    parser.add_argument("--allow-missing", action="store_true", help="leave untrained models out")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.rows < 1:
        parser.error(f"--rows must be at least 1, got {args.rows}.")
    matplotlib.use("Agg")
    try:
        written = make_figures(args.out, args.objects, args.rows, args.allow_missing, args.seed)
    except MissingCheckpoints as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    for path in written:
        print(f"wrote {path} ({path.stat().st_size / 1000:.0f} kB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

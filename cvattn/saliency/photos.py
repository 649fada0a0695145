"""Saliency on your own photos with any timm model: find and check the files, build the model and its weights, run
the model's own preprocessing, and draw each photo as the model saw it with the maps on top.

- ``find_photos(paths)``: files as given, folders as their image files (by extension, not recursive); other files
  in a folder are skipped with a note.
- ``check_photo``/``load_photo``: read through PIL with a pixel limit checked from the header before decoding (a
  decompression-bomb guard in place of PIL's ``Image.MAX_IMAGE_PIXELS``, so the limit is the caller's);
  grayscale, palette and CMYK images become RGB, transparency is composited on white, EXIF rotation is applied
  (a phone photo is upright, as a viewer shows it).
- ``create_timm_model(name, pretrained=..., weights=...)``: ``timm.create_model`` with one clear error for an
  unknown name (closest names), missing weights offline (how to get them) and a weights file that does not fit.
- ``class_names(model)``: ImageNet names from timm's offline class info for 1k/21k-class models, else None.
- ``explain_photos(model, photos, methods, gallery)``: in batches, the model's data config (resize, crop, mean,
  std; ``timm.data.resolve_data_config``), the top classes, a map per method for the top class, one figure per
  photo (``overlay_row``: the crop the model saw, then an overlay per method) saved at once into the gallery.
"""
from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Sequence

import torch
import torch.nn as nn
from PIL import Image, ImageOps, UnidentifiedImageError

from cvattn.checkpoint import load_checkpoint
from cvattn.checks import did_you_mean, state_dict_mismatch
from cvattn.saliency.api import saliency
from cvattn.saliency.gallery import Gallery
from cvattn.saliency.overlay import overlay_row

IMAGE_SUFFIXES = frozenset(suffix.lower() for suffix, kind in Image.registered_extensions().items()
                           if kind in Image.OPEN)
DEFAULT_MAX_PIXELS = 89_478_485   # PIL's own default limit (a 9459 × 9459 image); --max-pixels raises it
BATCH_SIZE = 8                    # photos per forward; each figure is written as soon as it is drawn
TOP_K = 5


def find_photos(paths: Sequence[str | Path]) -> tuple[list[Path], list[str]]:
    """The photo files of ``paths`` (files as given, folders as their image files in name order) and notes on
    what was skipped: a folder's files whose extension is not an image format PIL reads, and its sub-folders."""
    photos, notes = [], []
    for path in map(Path, paths):
        if path.is_dir():
            entries = sorted(path.iterdir())
            found = [p for p in entries if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES]
            skipped = [p.name for p in entries if p not in found and not p.name.startswith(".")]
            if skipped:
                notes.append(f"skipped in {str(path)!r} (not image files; sub-folders are not searched): "
                             f"{', '.join(skipped)}")
            if not found:
                raise ValueError(f"Folder {str(path)!r} holds no image files ({', '.join(sorted(IMAGE_SUFFIXES)[:8])}, "
                                 f"...); give image files or a folder of them.")
            photos += found
        elif path.is_file():
            photos.append(path)
        else:
            raise FileNotFoundError(f"--image {str(path)!r} does not exist (give image files or folders of them).")
    return photos, notes


@contextmanager
def _pixel_limit(max_pixels: int) -> Iterator[None]:
    """PIL's bomb check off (it warns, then fails at twice its limit), so the caller's ``max_pixels`` decides."""
    saved = Image.MAX_IMAGE_PIXELS
    Image.MAX_IMAGE_PIXELS = None
    try:
        yield
    finally:
        Image.MAX_IMAGE_PIXELS = saved


def _open(path: Path, max_pixels: int) -> Image.Image:
    try:
        image = Image.open(path)
    except (OSError, SyntaxError, ValueError) as err:   # UnidentifiedImageError, or a header cut short
        why = "" if isinstance(err, UnidentifiedImageError) else f" ({err})"
        raise ValueError(f"{str(path)!r} is not an image file PIL can read, or it is damaged{why}; give JPEG, PNG, "
                         f"WebP, ... files.") from None
    width, height = image.size
    if width * height > max_pixels:
        image.close()
        raise ValueError(f"{str(path)!r} is {width} × {height} = {width * height:,} pixels, over the limit of "
                         f"{max_pixels:,} (a guard against decompression bombs); if you trust the file, raise it "
                         f"with --max-pixels {width * height}.")
    return image


def check_photo(path: Path, max_pixels: int = DEFAULT_MAX_PIXELS) -> None:
    """Raise unless ``path`` is an image PIL can identify, within ``max_pixels``; reads the header only."""
    with _pixel_limit(max_pixels):
        _open(path, max_pixels).close()


def load_photo(path: Path, max_pixels: int = DEFAULT_MAX_PIXELS) -> Image.Image:
    """``path`` decoded as an upright RGB image (transparency on white)."""
    with _pixel_limit(max_pixels), _open(path, max_pixels) as image:
        try:
            image = ImageOps.exif_transpose(image)
            image.load()
        except (OSError, SyntaxError, ValueError) as err:   # truncated or corrupt data past the header
            raise ValueError(f"{str(path)!r} could not be decoded ({err}); the file is damaged.") from None
        if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
            image = image.convert("RGBA")
            canvas = Image.new("RGBA", image.size, (255, 255, 255, 255))
            return Image.alpha_composite(canvas, image).convert("RGB")
        return image.convert("RGB")


# --- the model ------------------------------------------------------------------------------------------------------

def _hub_caches() -> str:
    from huggingface_hub.constants import HF_HUB_CACHE

    return f"{HF_HUB_CACHE} (Hugging Face Hub, where timm keeps most weights) or {torch.hub.get_dir()}/checkpoints"


def _weights_source(name: str) -> str:
    """Where timm would download ``name``'s weights from, for a person to fetch them by hand."""
    from timm.models import get_pretrained_cfg

    if name.startswith("hf-hub:"):
        return f"model.safetensors from https://huggingface.co/{name[len('hf-hub:'):].split('@')[0]}"
    try:
        config = get_pretrained_cfg(name)
    except RuntimeError:
        config = None
    if config is not None and config.hf_hub_id:
        return f"model.safetensors from https://huggingface.co/{config.hf_hub_id}"
    if config is not None and config.url:
        return config.url
    return "the weights file"


def check_model_name(name: str) -> None:
    """Raise unless timm knows ``name`` (an architecture, with or without a ``.tag``; ``hf-hub:``/``local-dir:``
    names are resolved by timm when the model is built)."""
    import timm

    if ":" in name:
        return
    if timm.is_model(name):
        try:
            timm.models.get_pretrained_cfg(name)
        except RuntimeError:   # a known architecture with an unknown tag
            tags = timm.list_pretrained(f"{name.split('.')[0]}.*")
            raise ValueError(f"timm's {name.split('.')[0]} has no weights tagged {name.split('.', 1)[1]!r}."
                             f"{did_you_mean(name, tags)} Tags: {', '.join(tags[:8]) or 'none'}.") from None
        return
    choices = timm.list_models() + (timm.list_pretrained() if "." in name else [])
    raise ValueError(f"Unknown timm model {name!r}.{did_you_mean(name, choices)} List names with "
                     f"timm.list_models('*{name.split('.')[0][:6]}*'), or give 'hf-hub:<user>/<repo>'.")


def create_timm_model(name: str, pretrained: bool = False, weights: str | Path | None = None) -> nn.Module:
    """``timm.create_model(name)`` in eval mode: with timm's pretrained weights (``pretrained``), a local
    ``weights`` file (a state_dict or timm checkpoint; a classifier of another size is rebuilt to fit), or
    neither (random weights)."""
    import timm

    check_model_name(name)
    if pretrained and weights is not None:
        raise ValueError("Give --pretrained or --weights FILE, not both.")
    try:
        model = timm.create_model(name, pretrained=pretrained)
    except OSError as err:   # offline: huggingface_hub's LocalEntryNotFoundError, urllib's URLError, ...
        first_line = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        if not pretrained:
            raise ValueError(f"Could not build {name!r}: timm needs the Hugging Face Hub for its config "
                             f"({first_line}). Offline, use the architecture's timm name (e.g. resnet50) with "
                             f"--weights FILE.") from None
        raise ValueError(f"Could not get the pretrained weights of {name!r} through timm ({type(err).__name__}: "
                         f"{first_line}). Either run once with a network connection (timm caches them in "
                         f"{_hub_caches()}; later runs read the cache, also offline), or download "
                         f"{_weights_source(name)} where there is a network and pass it with --weights FILE. "
                         f"HF_HUB_OFFLINE=1 skips the download attempts.") from None
    except RuntimeError as err:   # timm: "No pretrained weights exist for ...", "Invalid pretrained tag ..."
        if not pretrained or "pretrained" not in str(err):
            raise
        tags = timm.list_pretrained(f"{name.split('.')[0]}.*")
        raise ValueError(f"timm has no pretrained weights for {name!r} ({err}). "
                         + (f"Tags with weights: {', '.join(tags[:8])}." if tags else
                            "Use --weights FILE, or a model name from timm.list_pretrained().")) from None
    if weights is not None:
        model = _load_weights_file(model, name, Path(weights))
    return model.eval()


def _read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    if path.suffix == ".safetensors":
        if not path.is_file():
            raise FileNotFoundError(f"--weights {str(path)!r} does not exist (or is not a file).")
        from safetensors.torch import load_file

        try:
            return load_file(path)
        except Exception as err:  # safetensors raises its own error types for a bad header or truncated data
            raise ValueError(f"--weights {str(path)!r} is not a readable .safetensors file ({err}).") from None
    checkpoint = load_checkpoint(path)   # torch.load(weights_only=True), with its errors
    for key in ("state_dict_ema", "model_ema", "state_dict", "model"):   # the order timm's load_checkpoint reads
        if isinstance(checkpoint.get(key), dict):
            return checkpoint[key]
    return checkpoint


def _load_weights_file(model: nn.Module, name: str, path: Path) -> nn.Module:
    import timm
    from timm.models import clean_state_dict

    state = clean_state_dict(_read_state_dict(path))   # without DDP's "module." or torch.compile's prefixes
    head = model.pretrained_cfg.get("classifier")
    head_weight = state.get(f"{head}.weight") if isinstance(head, str) else None
    if isinstance(head_weight, torch.Tensor) and head_weight.ndim == 2 and head_weight.shape[0] != model.num_classes:
        # A fine-tuned model: the classifier says how many classes it has.
        model = timm.create_model(name, num_classes=head_weight.shape[0])
    if problems := state_dict_mismatch(state, model.state_dict()):
        raise ValueError(f"--weights {str(path)!r} does not fit timm's {name!r}: {problems}. Give --model the "
                         f"architecture the weights were trained as.")
    model.load_state_dict(state)
    return model


def class_names(model: nn.Module) -> list[str] | None:
    """Short ImageNet class names ("goldfinch") for a model with the classes of an ImageNet subset (1k, 21k, ...),
    from the class lists timm ships (no network); None for other models."""
    from timm.data import ImageNetInfo, infer_imagenet_subset

    subset = infer_imagenet_subset(model)
    if subset is None:
        return None
    info = ImageNetInfo(subset)
    return [info.index_to_description(index).split(",")[0] for index in range(model.num_classes)]


# --- the figures ----------------------------------------------------------------------------------------------------

def safe_stem(path: Path) -> str:
    """A file-name-safe version of ``path``'s stem, for the figure's name."""
    stem = "".join(c if c.isascii() and (c.isalnum() or c in "-_") else "_" for c in path.stem).strip("_")
    return stem[:60] or "image"


def explain_photos(model: nn.Module, photos: Sequence[Path], methods: Sequence[str], gallery: Gallery,
                   device: torch.device | str = "cpu", max_pixels: int = DEFAULT_MAX_PIXELS,
                   names: Sequence[str] | None = None, label: str = "", batch_size: int | None = None) -> None:
    """Draw each photo as ``model`` saw it, with an overlay per method for its top class, into ``gallery``.

    Photos go through the model's timm data config in batches of ``batch_size`` (default ``BATCH_SIZE``); each
    figure is saved as soon as it is drawn. ``names``: class names (default: ImageNet's where the model has its
    classes, else "class N"); ``label``: appended to every title (e.g. "random weights").
    """
    from timm.data import create_transform, resolve_data_config

    config = resolve_data_config({}, model=model)
    transform = create_transform(**config, is_training=False)
    names = names if names is not None else class_names(model)
    model = model.to(device).eval()
    top_k = min(TOP_K, model.num_classes)
    batch_size = batch_size or BATCH_SIZE
    width = max(3, len(str(len(photos) - 1)))
    for start in range(0, len(photos), batch_size):
        batch = photos[start:start + batch_size]
        images = torch.stack([transform(load_photo(path, max_pixels)) for path in batch]).to(device)
        with torch.no_grad():
            probs, classes = model(images).softmax(1).topk(top_k)                            # (B, k)
        maps = {method: saliency(model, images, method) for method in methods}           # (B, H, W), top class
        for row, path in enumerate(batch):
            top = [(names[c] if names is not None else f"class {c}", float(p))
                   for c, p in zip(classes[row].tolist(), probs[row].tolist())]
            title = f"{top[0][0]} {top[0][1]:.0%}"
            figure = overlay_row(images[row], {m: v[row] for m, v in maps.items()},
                                 title + (f"\n({label})" if label else ""), config["mean"], config["std"])
            gallery.add_figure(figure, f"{start + row:0{width}d}-{safe_stem(path)}.png",
                               caption=f"{path.name}: {title}" + (f" ({label})" if label else ""), classes=top)

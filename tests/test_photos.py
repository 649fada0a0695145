"""``python -m cvattn.saliency --image ...``: saliency on your own photos with a timm model, offline.

A random-weight timm ``resnet18`` and photos made here with PIL. Every bad input is one ``error:`` paragraph, exit
status 2 and no output folder (nor a hidden partial one beside it); figures are written as they are drawn.
"""
import io
import re
import struct
import zlib
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
from matplotlib.figure import Figure
from PIL import Image
from timm.data import ImageNetInfo, create_transform, resolve_data_config

from cvattn.saliency import photos
from cvattn.saliency.cli import main
from cvattn.saliency.gallery import Gallery
from cvattn.saliency.overlay import overlay, overlay_row

torch.set_num_threads(1)
RANDOM = ["--model", "resnet18", "--random-weights", "--methods", "gradcam"]


def noise(height: int, width: int, channels: int = 3, seed: int = 0) -> np.ndarray:
    shape = (height, width, channels) if channels > 1 else (height, width)
    return np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)


@pytest.fixture
def folder(tmp_path) -> Path:
    """A JPEG, a grayscale PNG, an RGBA PNG with a transparent half, and a text file."""
    folder = tmp_path / "photos"
    folder.mkdir()
    Image.fromarray(noise(60, 80)).save(folder / "bird.jpg")
    Image.fromarray(noise(50, 50, 1, seed=1)).save(folder / "gray.png")
    rgba = noise(40, 40, 4, seed=2)
    rgba[:, :20, 3] = 0
    Image.fromarray(rgba).save(folder / "rgba.png")
    (folder / "notes.txt").write_text("not a photo")
    return folder


class StrictHTML(HTMLParser):
    """Fails on an unclosed or mis-nested element; collects the links."""
    VOID = {"meta", "img", "br", "hr", "link", "input"}

    def __init__(self):
        super().__init__()
        self.stack, self.links, self.tags = [], [], []

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        self.links += [value for name, value in attrs if name in ("href", "src")]
        if tag not in self.VOID:
            self.stack.append(tag)

    def handle_endtag(self, tag):
        assert self.stack and self.stack[-1] == tag, f"</{tag}> closes {self.stack[-1:]}"
        self.stack.pop()


def check_page(out: Path) -> StrictHTML:
    text = (out / "index.html").read_text(encoding="utf-8")
    assert text.startswith("<!DOCTYPE html>")
    parser = StrictHTML()
    parser.feed(text)
    parser.close()
    assert parser.stack == []
    assert all(not link.startswith(("/", "http")) and (out / link).is_file() for link in parser.links)
    return parser


def leftovers(root: Path) -> list[str]:
    return [p.name for p in root.rglob(".*partial*")]


def test_folder_of_photos_gives_one_figure_each_and_a_gallery(folder, tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["--image", str(folder), *RANDOM, "--out", str(out)]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["000-bird.png", "001-gray.png", "002-rgba.png", "index.html"]
    assert "skipped" in capsys.readouterr().err and "notes.txt" in (out / "index.html").read_text()
    page = check_page(out)
    assert page.tags.count("figure") == 3 and page.tags.count("li") == 15            # top-5 of each photo
    figure = Image.open(out / "000-bird.png")
    assert figure.width > 1.5 * figure.height                                          # image | overlay
    text = (out / "index.html").read_text()
    info = ImageNetInfo()
    names = {info.index_to_description(i).split(",")[0] for i in range(1000)}
    top1 = re.search(r"bird\.jpg: (.+?) \d+% \(random weights\)", text).group(1)
    assert top1 in names


def test_the_model_sees_timms_preprocessing_and_the_figure_shows_that_crop(folder, tmp_path, monkeypatch):
    seen = []
    monkeypatch.setattr(photos, "overlay_row", lambda image, maps, title, mean, std: seen.append(
        (image, maps, title, mean, std)) or Figure())

    assert main(["--image", str(folder / "bird.jpg"), *RANDOM, "--out", str(tmp_path / "out")]) == 0
    model = timm.create_model("resnet18")
    config = resolve_data_config({}, model=model)
    expected = create_transform(**config)(Image.open(folder / "bird.jpg").convert("RGB"))
    image, maps, title, mean, std = seen[0]
    assert torch.allclose(image, expected) and image.shape == (3, 224, 224)
    assert (mean, std) == (config["mean"], config["std"]) and list(maps) == ["gradcam"]
    assert title.endswith("\n(random weights)")


def test_grayscale_rgba_and_exif_rotation_become_upright_rgb(tmp_path):
    gray = tmp_path / "gray.png"
    Image.fromarray(noise(8, 8, 1)).save(gray)
    loaded = np.asarray(photos.load_photo(gray))
    assert loaded.shape == (8, 8, 3) and (loaded[..., 0] == loaded[..., 2]).all()
    rgba = noise(8, 8, 4)
    rgba[..., 3] = 0
    Image.fromarray(rgba).save(tmp_path / "clear.png")
    assert (np.asarray(photos.load_photo(tmp_path / "clear.png")) == 255).all()     # transparent → white
    exif = Image.Exif()
    exif[0x0112] = 6                                                                  # "rotate 90° clockwise"
    Image.fromarray(noise(10, 20)).save(tmp_path / "phone.jpg", exif=exif)
    assert photos.load_photo(tmp_path / "phone.jpg").size == (10, 20)


def test_own_weights_file_timm_checkpoint_and_a_fine_tuned_head(tmp_path):
    torch.manual_seed(0)
    model = timm.create_model("resnet18", num_classes=10).eval()
    state = {f"module.{k}": v for k, v in model.state_dict().items()}                 # as DDP saves it
    torch.save({"state_dict": state, "epoch": 3}, tmp_path / "ft.pth.tar")
    loaded = photos.create_timm_model("resnet18", weights=tmp_path / "ft.pth.tar")
    x = torch.randn(1, 3, 64, 64)
    assert loaded.num_classes == 10 and torch.equal(loaded(x), model(x))
    assert photos.class_names(loaded) is None
    from safetensors.torch import save_file

    save_file(model.state_dict(), tmp_path / "model.safetensors")
    assert torch.equal(photos.create_timm_model("resnet18", weights=tmp_path / "model.safetensors")(x), model(x))
    Image.fromarray(noise(30, 30)).save(tmp_path / "a.png")
    out = tmp_path / "out"
    assert main(["--image", str(tmp_path / "a.png"), "--model", "resnet18", "--weights", str(tmp_path / "ft.pth.tar"),
                 "--methods", "gradcam", "--out", str(out)]) == 0
    assert re.search(r"<li>class \d [\d.]+%</li>", (out / "index.html").read_text())


def png_header(width: int, height: int) -> bytes:
    """A PNG that claims ``width`` × ``height`` and holds almost no pixel data: decoding it would be the bomb."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


def truncated_jpeg() -> bytes:
    data = io.BytesIO()
    Image.fromarray(noise(256, 256)).save(data, "JPEG")
    return data.getvalue()[:len(data.getvalue()) * 2 // 3]


def offline(*args, **kwargs):
    from huggingface_hub.errors import LocalEntryNotFoundError

    raise LocalEntryNotFoundError("An error happened while trying to locate the file on the Hub and we cannot find "
                                  "the requested files in the local cache.")


@pytest.mark.parametrize("case, message", [
    ("corrupt file", r"bad\.jpg' is not an image file PIL can read"),
    ("named text file", r"notes\.txt' is not an image file PIL can read"),
    ("truncated JPEG", r"cut\.jpg' could not be decoded \(image file is truncated"),
    ("over --max-pixels", r"80 × 60 = 4,800 pixels, over the limit of 100 .* --max-pixels 4800"),
    ("--max-pixels 0", r"--max-pixels must be > 0, got 0"),
    ("decompression bomb", r"30000 × 30000 = 900,000,000 pixels, over the limit of 89,478,485"),
    ("folder without images", r"holds no image files"),
    ("missing file", r"--image '.*absent\.jpg' does not exist"),
    ("unknown model", r"Unknown timm model 'resnt18'\. Did you mean 'resnet18'"),
    ("pretrained offline", r"Could not get the pretrained weights of 'resnet18' through timm "
                           r"\(LocalEntryNotFoundError.*run once with a network connection \(timm caches them in .*"
                           r"download model\.safetensors from https://huggingface\.co/timm/resnet18\.a1_in1k .*"
                           r"--weights FILE"),
    ("unknown tag", r"timm's resnet18 has no weights tagged 'a9_in1k'\. Did you mean 'resnet18\.a\d_in1k'"),
    ("architecture without weights", r"timm has no pretrained weights for 'botnet50ts_256'.*Use --weights FILE"),
    ("hf-hub name offline", r"Could not build 'hf-hub:timm/resnet18\.a1_in1k': timm needs the Hugging Face Hub for "
                            r"its config .* --weights FILE"),
    ("method that does not apply", r"--methods \['rollout'\] do not apply to ResNet; methods that do: gradcam"),
    ("unknown method", r"unknown method 'gradcamm'\. Did you mean 'gradcam'"),
    ("no weights", r"needs weights: --pretrained .*--weights FILE.*--random-weights"),
    ("weights of another model", r"does not fit timm's 'resnet18': unexpected keys: \d+ \(e\.g\. layer1\.2\."),
    ("option of the other mode", r"--num-images is not for --image"),
    ("out not empty", r"--out '.*out' is a folder that is not empty; choose a new --out"),
])
def test_errors_exit_2_and_write_nothing(folder, tmp_path, capsys, monkeypatch, case, message):
    out = tmp_path / "out"
    image, model = [str(folder / "bird.jpg")], RANDOM
    if case == "corrupt file":
        (folder / "bad.jpg").write_bytes(b"\xff\xd8 not really a jpeg" * 10)
        image = [str(folder)]
    elif case == "named text file":
        image = [str(folder / "notes.txt")]
    elif case == "truncated JPEG":
        (folder / "cut.jpg").write_bytes(truncated_jpeg())
        image = [str(folder)]                     # the header is fine: fails while decoding, in the gallery
    elif case == "over --max-pixels":
        model = [*RANDOM, "--max-pixels", "100"]
    elif case == "--max-pixels 0":
        model = [*RANDOM, "--max-pixels", "0"]
    elif case == "decompression bomb":
        (folder / "bomb.png").write_bytes(png_header(30000, 30000))
        image = [str(folder / "bomb.png")]
    elif case == "folder without images":
        (tmp_path / "docs").mkdir()
        (tmp_path / "docs" / "readme.md").write_text("")
        image = [str(tmp_path / "docs")]
    elif case == "missing file":
        image = [str(folder / "absent.jpg")]
    elif case == "unknown model":
        model = ["--model", "resnt18", "--random-weights"]
    elif case == "pretrained offline":
        monkeypatch.setattr(timm.models._hub, "hf_hub_download", offline)
        model = ["--model", "resnet18", "--pretrained"]
    elif case == "unknown tag":
        model = ["--model", "resnet18.a9_in1k", "--pretrained"]
    elif case == "architecture without weights":
        model = ["--model", "botnet50ts_256", "--pretrained"]
    elif case == "hf-hub name offline":
        monkeypatch.setattr(timm.models._hub, "hf_hub_download", offline)
        model = ["--model", "hf-hub:timm/resnet18.a1_in1k", "--random-weights"]
    elif case == "method that does not apply":
        model = ["--model", "resnet18", "--random-weights", "--methods", "rollout"]
    elif case == "unknown method":
        model = ["--model", "resnet18", "--random-weights", "--methods", "gradcamm"]
    elif case == "no weights":
        model = ["--model", "resnet18"]
    elif case == "weights of another model":
        torch.save(timm.create_model("resnet34").state_dict(), tmp_path / "resnet34.pth")
        model = ["--model", "resnet18", "--weights", str(tmp_path / "resnet34.pth")]
    elif case == "option of the other mode":
        model = [*RANDOM, "--num-images", "3"]
    elif case == "out not empty":
        out.mkdir()
        (out / "keep.txt").write_text("mine")
    code = main(["--image", *image, *model, "--out", str(out)])
    assert code == 2
    err = capsys.readouterr().err
    assert re.search(message, err), err
    assert err.count("error:") == 1
    assert (sorted(p.name for p in out.iterdir()) == ["keep.txt"]) if case == "out not empty" else not out.exists()
    assert leftovers(tmp_path) == []


def test_pretrained_and_weights_are_exclusive(folder, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["--image", str(folder), "--model", "resnet18", "--pretrained", "--weights", "w.pth", "--out",
              str(tmp_path / "out")])
    assert exit_.value.code == 2 and "not allowed with argument" in capsys.readouterr().err


def many_photos(tmp_path, count: int) -> Path:
    folder = tmp_path / "many"
    folder.mkdir()
    for index in range(count):
        Image.fromarray(noise(24, 24, seed=index)).save(folder / f"p{index:02d}.png")
    return folder


def test_figures_are_written_batch_by_batch(tmp_path, monkeypatch):
    """Each figure is saved as soon as it is drawn: at most one is alive, and batch k starts after batch k-1's
    figures are on disk."""
    folder, out = many_photos(tmp_path, 7), tmp_path / "out"
    monkeypatch.setattr(photos, "BATCH_SIZE", 3)
    written_before_batch, alive, peak = [], [0], [0]
    real_saliency, real_row, real_add = photos.saliency, photos.overlay_row, Gallery.add_figure

    def saliency(model, images, method):
        written_before_batch.append(len(list(tmp_path.glob(".out.partial*/*.png"))))
        return real_saliency(model, images, method)

    def overlay_row(*args):
        alive[0] += 1
        peak[0] = max(peak[0], alive[0])
        return real_row(*args)

    def add_figure(self, figure, *args, **kwargs):
        real_add(self, figure, *args, **kwargs)
        alive[0] -= 1

    monkeypatch.setattr(photos, "saliency", saliency)
    monkeypatch.setattr(photos, "overlay_row", overlay_row)
    monkeypatch.setattr(Gallery, "add_figure", add_figure)
    assert main(["--image", str(folder), *RANDOM, "--out", str(out)]) == 0
    assert written_before_batch == [0, 3, 6] and peak[0] == 1
    assert len(list(out.glob("*.png"))) == 7


@pytest.mark.parametrize("error", [RuntimeError("out of memory"), KeyboardInterrupt()])
def test_a_failure_midway_leaves_no_output(tmp_path, monkeypatch, error):
    folder, out = many_photos(tmp_path, 5), tmp_path / "new" / "out"
    monkeypatch.setattr(photos, "BATCH_SIZE", 2)
    calls, real_saliency = [], photos.saliency

    def failing(model, images, method):
        calls.append(len(list((tmp_path / "new").glob(".out.partial*/*.png"))))
        if len(calls) == 2:
            raise error
        return real_saliency(model, images, method)

    monkeypatch.setattr(photos, "saliency", failing)
    with pytest.raises(type(error)):
        main(["--image", str(folder), *RANDOM, "--out", str(out)])
    assert calls == [0, 2]                                   # two figures were on disk when it failed
    assert not (tmp_path / "new").exists()                   # nor the parent this run created


def test_html_escapes_file_names_and_links_safe_figure_names(tmp_path):
    folder = tmp_path / "odd"
    folder.mkdir()
    Image.fromarray(noise(20, 20)).save(folder / "a&b <i>.png")
    out = tmp_path / "out"
    assert main(["--image", str(folder), *RANDOM, "--out", str(out)]) == 0
    page = check_page(out)
    assert "i" not in page.tags                                    # the name is text, not markup
    assert "a&amp;b &lt;i&gt;.png" in (out / "index.html").read_text()
    assert (out / "000-a_b__i.png").is_file()


def test_help_explains_both_modes(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["--help"])
    text = capsys.readouterr().out
    assert exit_.value.code == 0
    for needle in ("--image", "--pretrained", "--weights", "--random-weights", "--max-pixels", "--checkpoint",
                   "--config", "index.html", "metrics.json", "exit with status 2"):
        assert needle in text, needle


def test_empty_out_folder_is_used(folder, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    assert main(["--image", str(folder / "bird.jpg"), *RANDOM, "--out", str(out)]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["000-bird.png", "index.html"]


def test_out_taken_meanwhile_is_an_error_not_an_overwrite(folder, tmp_path, monkeypatch, capsys):
    out, real_add = tmp_path / "out", Gallery.add_figure

    def add_figure(self, *args, **kwargs):
        real_add(self, *args, **kwargs)
        out.mkdir(exist_ok=True)
        (out / "theirs.png").write_bytes(b"")                    # another run finished first

    monkeypatch.setattr(Gallery, "add_figure", add_figure)
    assert main(["--image", str(folder / "bird.jpg"), *RANDOM, "--out", str(out)]) == 2
    assert "was created by something else while this ran" in capsys.readouterr().err
    assert [p.name for p in out.iterdir()] == ["theirs.png"] and leftovers(tmp_path) == []


def test_overlay_row_is_the_image_then_one_overlay_per_method():
    image = torch.rand(3, 8, 8) * 2 - 1
    maps = {"gradcam": torch.rand(8, 8), "rollout": torch.rand(8, 8)}
    figure = overlay_row(image, maps, "goldfinch 93%", mean=(0.5,) * 3, std=(0.5,) * 3)
    axes = figure.get_axes()
    assert [ax.get_title() for ax in axes] == ["goldfinch 93%", "gradcam", "rollout"]
    shown = axes[2].get_images()[0].get_array()
    assert np.array_equal(shown, overlay(image, maps["rollout"], mean=(0.5,) * 3, std=(0.5,) * 3))
    assert np.allclose(axes[0].get_images()[0].get_array(), (image.permute(1, 2, 0).numpy() + 1) / 2, atol=1e-6)
    with pytest.raises(ValueError, match="maps_by_method is empty"):
        overlay_row(image, {}, "")

"""Recurrent attention model: glimpse sensor against a per-image reference, policy and trajectories, the routing
of each loss term's gradients, RAMModule details, bad input, and one short training on a synthetic task."""
from __future__ import annotations

from pathlib import Path

import lightning as L
import pytest
import torch
import torch.nn.functional as F
from lightning.pytorch.callbacks import ModelCheckpoint
from torch.utils.data import DataLoader, TensorDataset

from cvattn.lightning.classifier import ImageClassifier
from cvattn.lightning.ram import RAMModule
from cvattn.models import create_model
from cvattn.models.ram import (
    GlimpseSensor,
    GlimpseTrajectory,
    RecurrentAttention,
    censored_normal_log_prob,
    final_glimpse_hit_rate,
    glimpse_boxes,
)

ROOT = Path(__file__).resolve().parents[1]


def reference_glimpse(image: torch.Tensor, cx: float, cy: float, glimpse_size: int, num_scales: int,
                      pad_value: torch.Tensor) -> torch.Tensor:
    """(k, C, g, g): for one image centred at pixel point (cx, cy), patch i of g·2^i pixels starts at the multiple
    of 2^i nearest to the centre minus half the patch; cut from a canvas padded with ``pad_value``, area-resized."""
    chans, height, width = image.shape
    patches = []
    for i in range(num_scales):
        size = glimpse_size * 2 ** i
        canvas = pad_value.view(chans, 1, 1).repeat(1, height + 2 * size, width + 2 * size)
        canvas[:, size:size + height, size:size + width] = image
        x0 = round(cx / 2 ** i - glimpse_size / 2) * 2 ** i + size
        y0 = round(cy / 2 ** i - glimpse_size / 2) * 2 ** i + size
        crop = canvas[:, y0:y0 + size, x0:x0 + size]
        patches.append(F.interpolate(crop[None], size=(glimpse_size, glimpse_size), mode="area")[0])
    return torch.stack(patches)


def to_location(cx: float, cy: float, height: int, width: int) -> torch.Tensor:
    return torch.tensor([2 * cx / width - 1, 2 * cy / height - 1])


def centre_of(loc: torch.Tensor, height: int, width: int) -> list[float]:
    """The pixel point the sensor computes from ``loc`` (float32, so a .5 tie rounds as it does in the sensor)."""
    return ((loc + 1) * torch.tensor([width, height]) / 2).tolist()


# A non-square image, so that mixing up x and y fails.
HEIGHT, WIDTH = 36, 44
CENTRES = [(22, 18), (9, 27), (0, 0), (44, 36), (3, 35), (47, -2), (30, 1)]  # (x, y) pixels; interior, borders, outside


@pytest.fixture
def sensor() -> GlimpseSensor:
    return GlimpseSensor(glimpse_size=4, num_scales=3, in_chans=2, pad_value=[-0.5, 1.5])


def test_sensor_matches_per_image_reference(sensor):
    torch.manual_seed(0)
    images = torch.randn(len(CENTRES), 2, HEIGHT, WIDTH)
    loc = torch.stack([to_location(cx, cy, HEIGHT, WIDTH) for cx, cy in CENTRES])
    out = sensor(images, loc)
    assert out.shape == (len(CENTRES), 3, 2, 4, 4)
    for image, glimpse, point in zip(images, out, loc):
        torch.testing.assert_close(glimpse, reference_glimpse(image, *centre_of(point, HEIGHT, WIDTH), 4, 3,
                                                              sensor.pad_value), atol=1e-5, rtol=0)


def test_sensor_places_each_patch_on_its_own_grid(sensor):
    """Sub-pixel centres: patch i sits on the 2^i-pixel grid nearest the centre (the reference), so patch 0
    follows the nearest pixel corner and the coarser ones move in steps of their own pixels."""
    torch.manual_seed(1)
    image = torch.randn(1, 2, HEIGHT, WIDTH)
    centres = [(cx + dx, cy + dy) for cx, cy in [(20, 15), (1, 34), (43, 0)]
               for dx, dy in [(0.3, 0.0), (0.0, -0.4), (0.45, 0.45), (0.7, 0.0), (1.6, 2.9)]]
    for cx, cy in centres:
        point = to_location(cx, cy, HEIGHT, WIDTH)
        torch.testing.assert_close(sensor(image, point[None])[0], reference_glimpse(
            image[0], *centre_of(point, HEIGHT, WIDTH), 4, 3, sensor.pad_value), atol=1e-5, rtol=0)
    finest = [sensor(image, to_location(20 + dx, 15, HEIGHT, WIDTH)[None])[0, 0] for dx in (0, 0.3, 0.7, 1)]
    torch.testing.assert_close(finest[1], finest[0])
    torch.testing.assert_close(finest[2], finest[3])
    assert not torch.equal(finest[2], finest[0])


def test_pyramid_levels_average_blocks_and_pad_odd_edges():
    sensor = GlimpseSensor(glimpse_size=2, num_scales=3, in_chans=1, pad_value=-1.0)
    image = torch.randn(2, 1, 7, 10)                                    # odd height: its last row meets padding
    levels = sensor.pyramid(image)
    assert [tuple(level.shape[-2:]) for level in levels] == [(7, 10), (4, 5), (2, 3)]
    canvas = torch.full((2, 1, 8, 12), -1.0)
    canvas[:, :, :7, :10] = image
    torch.testing.assert_close(levels[1], F.avg_pool2d(canvas, 2)[..., :, :5])
    torch.testing.assert_close(levels[2], F.avg_pool2d(canvas, 4))


def test_sensor_axes_are_x_then_y():
    image = torch.zeros(1, 1, HEIGHT, WIDTH)
    image[0, 0, 5, 30] = 1.0                                          # row 5, column 30
    sensor = GlimpseSensor(glimpse_size=2, num_scales=1)
    seen = sensor(image, to_location(31, 6, HEIGHT, WIDTH)[None])   # the 2×2 patch over rows 5-6, columns 30-31
    torch.testing.assert_close(seen[0, 0, 0], torch.tensor([[1.0, 0.0], [0.0, 0.0]]))
    assert sensor(image, to_location(6, 31, HEIGHT, WIDTH)[None]).sum() == 0


def test_sensor_passes_gradients_to_the_image(sensor):
    image = torch.randn(2, 2, HEIGHT, WIDTH, requires_grad=True)
    sensor(image, torch.zeros(2, 2)).sum().backward()
    assert image.grad is not None and image.grad.abs().sum() > 0


@pytest.mark.parametrize("name, size, core", [("ram_28", 28, "rnn"), ("ram_60", 60, "lstm"), ("ram_100", 100, "gru")])
def test_model_outputs_and_trajectory(name, size, core):
    torch.manual_seed(0)
    model = create_model(name, num_classes=7, in_chans=1, core=core)
    images = torch.randn(3, 1, size, size)
    logits, trajectory = model(images, return_trajectory=True)
    steps, scales = model.num_glimpses, model.sensor.num_scales
    assert logits.shape == (3, 7)
    assert trajectory.locations.shape == trajectory.means.shape == (3, steps, 2)
    assert trajectory.log_probs.shape == trajectory.baselines.shape == (3, steps)
    assert trajectory.patch_sizes.tolist() == [model.sensor.glimpse_size * 2 ** i for i in range(scales)]
    assert trajectory.locations.abs().max() <= 1 and not trajectory.locations.requires_grad
    assert torch.isfinite(trajectory.log_probs).all()
    assert model(images).shape == (3, 7)


def test_paper_sizes_are_the_defaults():
    model = create_model("ram_60")
    assert (model.num_glimpses, model.sensor.glimpse_size, model.sensor.num_scales) == (8, 12, 3)
    assert model.glimpse_net.fc_glimpse.out_features == model.glimpse_net.fc_loc.out_features == 128
    assert isinstance(model.core, torch.nn.RNNCell) and model.core.nonlinearity == "relu"
    assert model.core.hidden_size == model.glimpse_net.fc_what.out_features == 256
    assert (create_model("ram_28").num_glimpses, create_model("ram_28").sensor.patch_sizes) == (6, [8])
    assert create_model("ram_100").sensor.patch_sizes == [12, 24, 48, 96]


def test_training_samples_and_eval_looks_at_the_mean():
    torch.manual_seed(0)
    model = create_model("ram_28", std=0.2)
    images = torch.randn(4, 1, 28, 28)
    first, second = (model(images, return_trajectory=True)[1] for _ in range(2))
    assert not torch.equal(first.locations, second.locations)
    model.eval()
    logits, trajectory = model(images, return_trajectory=True)
    torch.testing.assert_close(trajectory.locations, trajectory.means.detach())
    assert torch.equal(logits, model(images))
    sampled = model(images, return_trajectory=True, sample=True)[1]
    assert not torch.equal(sampled.locations, trajectory.locations)


def test_log_probs_are_those_of_the_locations_used():
    torch.manual_seed(0)
    model = create_model("ram_28", std=0.8)  # wide, so that some samples are clamped to the border
    trajectory = model(torch.randn(64, 1, 28, 28), return_trajectory=True)[1]
    clamped = trajectory.locations.abs() == 1
    assert clamped.any() and (~clamped).any()
    expected = censored_normal_log_prob(trajectory.locations, trajectory.means, 0.8).sum(-1)
    torch.testing.assert_close(trajectory.log_probs, expected)
    normal = torch.distributions.Normal(trajectory.means, 0.8)
    per_axis = censored_normal_log_prob(trajectory.locations, trajectory.means, 0.8)
    torch.testing.assert_close(per_axis[~clamped], normal.log_prob(trajectory.locations)[~clamped])
    at_right = trajectory.locations == 1
    torch.testing.assert_close(per_axis[at_right].exp(), 1 - normal.cdf(torch.ones_like(trajectory.means))[at_right])


def test_censored_normal_is_a_distribution():
    mean, std = torch.tensor(0.7), 0.3
    inside = torch.linspace(-1, 1, 20001)[1:-1]
    density = censored_normal_log_prob(inside, mean, std).exp()
    edges = censored_normal_log_prob(torch.tensor([-1.0, 1.0]), mean, std).exp()
    total = torch.trapezoid(density, inside) + edges.sum()
    assert abs(total.item() - 1) < 1e-3


def test_random_glimpses_ignore_the_policy():
    torch.manual_seed(0)
    model = create_model("ram_60", random_glimpses=True).eval()
    assert model.location_net is None
    images = torch.randn(16, 1, 60, 60)
    first, second = (model(images, return_trajectory=True)[1] for _ in range(2))
    assert not torch.equal(first.locations, second.locations)
    assert first.locations.min() < -0.9 and first.locations.max() > 0.9
    assert torch.equal(first.log_probs, torch.zeros(16, 8))


def make_trajectory(locations: list[list[list[float]]], patch_sizes: list[int]) -> GlimpseTrajectory:
    loc = torch.tensor(locations)
    zeros = torch.zeros(loc.shape[:2])
    return GlimpseTrajectory(loc, torch.zeros_like(loc), torch.tensor(patch_sizes), zeros, zeros)


def test_glimpse_boxes_and_final_hit_rate():
    trajectory = make_trajectory([[[0.0, 0.0], [-1.0, 0.5]], [[0.5, -0.5], [0.2, 0.2]]], [12, 24])
    boxes = glimpse_boxes(trajectory, (60, 80))                       # H=60, W=80
    assert boxes.shape == (2, 2, 2, 4)
    assert boxes[0, 0, 0].tolist() == [34, 24, 46, 36]                 # centre (40, 30)
    assert boxes[0, 1, 1].tolist() == [-12, 33, 12, 57]                # centre (0, 45), the 24-px patch
    objects = torch.tensor([[0.0, 40.0, 10.0, 50.0], [0.0, 0.0, 10.0, 10.0]])  # final centres (0, 45), (48, 36)
    assert final_glimpse_hit_rate(trajectory, objects, (60, 80)) == 0.5


def tiny_module(**kwargs) -> RAMModule:
    model_kwargs = dict(num_glimpses=3, glimpse_hidden=16, loc_hidden=16, hidden_size=32)
    model_kwargs.update(kwargs.pop("model_kwargs", {}))
    return RAMModule("ram_28", model_kwargs, num_classes=4, **kwargs)


PARTS = {
    "location": lambda m: m.location_net,
    "baseline": lambda m: m.baseline_net,
    "core": lambda m: m.core,
    "glimpse": lambda m: m.glimpse_net,
    "action": lambda m: m.head,
}


def gradient_reach(term: str) -> dict[str, bool]:
    """Which parts of the model receive a nonzero gradient from one loss term alone."""
    torch.manual_seed(0)
    module = tiny_module()
    terms = module.loss_terms(torch.randn(32, 1, 28, 28), torch.randint(0, 4, (32,)))
    terms[term].backward()
    return {part: any(p.grad is not None and p.grad.abs().sum() > 0 for p in get(module.model).parameters())
            for part, get in PARTS.items()}


def test_cross_entropy_never_reaches_the_location_network():
    assert gradient_reach("ce") == dict(location=False, baseline=False, core=True, glimpse=True, action=True)


def test_reinforce_trains_the_location_network_only():
    assert gradient_reach("reinforce") == dict(location=True, baseline=False, core=False, glimpse=False,
                                               action=False)


def test_baseline_fit_trains_the_baseline_only():
    assert gradient_reach("baseline_mse") == dict(location=False, baseline=True, core=False, glimpse=False,
                                                  action=False)


def test_non_finite_loss_stops_training_and_keeps_the_last_good_checkpoint(tmp_path):
    images, labels = torch.randn(16, 1, 28, 28), torch.randint(0, 4, (16,))
    images[12:] = float("nan")                                             # the 4th batch of 4
    checkpoint = ModelCheckpoint(dirpath=tmp_path, every_n_train_steps=1, save_last=True)
    trainer = L.Trainer(max_epochs=1, callbacks=[checkpoint], logger=False, enable_progress_bar=False,
                        enable_model_summary=False, default_root_dir=tmp_path)
    with pytest.raises(FloatingPointError, match="global step 3, batch 3"):
        trainer.fit(tiny_module(), DataLoader(TensorDataset(images, labels), batch_size=4))
    saved = torch.load(tmp_path / "last.ckpt", weights_only=True)
    assert saved["global_step"] == 3
    assert all(torch.isfinite(value).all() for value in saved["state_dict"].values())


class StatsDataModule(L.LightningDataModule):
    """Random 28×28 images and a datamodule's normalisation statistics."""

    mean, std = (0.25,), (0.5,)

    def train_dataloader(self) -> DataLoader:
        return DataLoader(TensorDataset(torch.randn(8, 1, 28, 28), torch.randint(0, 4, (8,))), batch_size=4)


def fit_briefly(module: RAMModule, tmp_path: Path) -> None:
    trainer = L.Trainer(max_steps=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, default_root_dir=tmp_path)
    trainer.fit(module, datamodule=StatsDataModule())


def test_pad_value_comes_from_the_datamodule_and_is_saved(tmp_path):
    module = tiny_module()
    fit_briefly(module, tmp_path)
    assert module.model.sensor.pad_value.tolist() == [-0.5]
    torch.save(module.state_dict(), tmp_path / "weights.pt")
    restored = tiny_module()
    restored.load_state_dict(torch.load(tmp_path / "weights.pt", weights_only=True))
    assert restored.model.sensor.pad_value.tolist() == [-0.5]

    explicit = tiny_module(model_kwargs=dict(pad_value=0.25))
    fit_briefly(explicit, tmp_path)
    assert explicit.model.sensor.pad_value.tolist() == [0.25]


def test_training_samples_several_trajectories_per_image():
    torch.manual_seed(0)
    module = tiny_module(train_samples=3, model_kwargs=dict(std=0.5))
    module.log = lambda *args, **kwargs: None
    seen = []
    module.model.register_forward_hook(lambda model, args, output: seen.append((args[0], output[1])))
    images, labels = torch.randn(4, 1, 28, 28), torch.randint(0, 4, (4,))
    module.training_step((images, labels), 0)
    (batch, trajectory), = seen
    assert torch.equal(batch, images.repeat_interleave(3, 0))          # each image's 3 copies side by side
    locations = trajectory.locations.view(4, 3, -1, 2)
    for copies in locations:                                             # drawn independently for every copy
        assert not torch.equal(copies[0], copies[1]) and not torch.equal(copies[1], copies[2])


def test_monte_carlo_evaluation_averages_sampled_trajectories():
    images, labels = torch.randn(6, 1, 28, 28), torch.randint(0, 4, (6,))
    module = tiny_module(mc_samples=5, model_kwargs=dict(std=0.5)).eval()
    logged = {}
    module.log = lambda name, value, **kwargs: logged.__setitem__(name, value)
    torch.manual_seed(3)
    module.validation_step((images, labels), 0)
    torch.manual_seed(3)
    probs = torch.stack([module.model(images, sample=True).softmax(1) for _ in range(5)]).mean(0)
    torch.testing.assert_close(logged["val/loss"], F.nll_loss(probs.log(), labels))

    module.hparams.mc_samples = 1
    module.validation_step((images, labels), 0)
    torch.testing.assert_close(logged["val/loss"], F.cross_entropy(module.model(images), labels))


@pytest.mark.parametrize("kwargs, match", [
    (dict(std=0.0), "std"),
    (dict(std=-0.1), "std"),
    (dict(num_glimpses=0), "num_glimpses"),
    (dict(core="lstn"), "Did you mean 'lstm'"),
    (dict(glimpse_size=0), "glimpse_size"),
    (dict(pad_value=[0.0, 1.0]), "pad_value"),
])
def test_bad_model_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        RecurrentAttention(**kwargs)


def test_bad_image_sizes():
    with pytest.raises(ValueError, match="glimpse_size=12 is larger than the 10×10 image"):
        create_model("ram_60")(torch.randn(1, 1, 10, 10))
    with pytest.raises(ValueError, match="num_scales=6 makes the largest patch 384"):
        create_model("ram_60", num_scales=6)(torch.randn(1, 1, 60, 60))
    with pytest.raises(ValueError, match=r"in_chans=1 and takes \(B, 1, H, W\) images"):
        create_model("ram_60")(torch.randn(1, 3, 60, 60))
    with pytest.raises(ValueError, match="loc must be"):
        GlimpseSensor()(torch.randn(2, 1, 60, 60), torch.zeros(2, 3))
    with pytest.raises(ValueError, match="3 levels of this sensor's pyramid"):
        GlimpseSensor().read(GlimpseSensor(num_scales=2).pyramid(torch.randn(2, 1, 60, 60)), torch.zeros(2, 2))


def test_bad_module_arguments():
    with pytest.raises(ValueError, match="ImageClassifier"):
        RAMModule("convnet2")
    with pytest.raises(ValueError, match="optimizer"):
        RAMModule(optimizer="adamw")
    with pytest.raises(ValueError, match="mc_samples"):
        RAMModule(mc_samples=0)
    with pytest.raises(ValueError, match="train_samples=0"):
        RAMModule(train_samples=0)


@pytest.mark.parametrize("config", sorted((ROOT / "configs").glob("ram_fashion_mnist_*.yaml")), ids=lambda p: p.stem)
def test_configs_build(config, tmp_path):
    from cvattn.config import CvattnCLI

    cli = CvattnCLI(L.LightningModule, L.LightningDataModule, subclass_mode_model=True, subclass_mode_data=True,
                    run=False, args=["--config", str(config), "--trainer.logger", "false",
                                     f"--trainer.default_root_dir={tmp_path}"])
    assert isinstance(cli.model, ImageClassifier if "conv" in config.stem else RAMModule)
    size = cli.datamodule.image_size
    logits = cli.model.model(torch.zeros(2, 1, *size))
    assert logits.shape == (2, cli.datamodule.num_classes)


def square_quadrants(count: int, generator: torch.Generator) -> TensorDataset:
    """A bright 6×6 square on a black 28×28 canvas; the label is the quadrant it lies in."""
    labels = torch.randint(0, 4, (count,), generator=generator)
    corners = torch.randint(0, 8, (count, 2), generator=generator) + 14 * torch.stack([labels % 2, labels // 2], 1)
    images = torch.zeros(count, 1, 28, 28)
    for image, (x0, y0) in zip(images, corners.tolist()):
        image[0, y0:y0 + 6, x0:x0 + 6] = 1.0
    return TensorDataset(images, labels)


@pytest.mark.slow
def test_reward_rises_above_chance_on_a_synthetic_task(tmp_path):
    torch.manual_seed(0)
    generator = torch.Generator().manual_seed(0)
    train = DataLoader(square_quadrants(2048, generator), batch_size=32, shuffle=True, generator=generator)
    module = tiny_module(model_kwargs=dict(num_scales=2, num_glimpses=4), lr=3e-3, scheduler="none")
    location_before = module.model.location_net.weight.detach().clone()
    trainer = L.Trainer(max_epochs=2, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, default_root_dir=tmp_path)
    trainer.fit(module, train)
    images, labels = square_quadrants(512, generator).tensors
    module.train()
    with torch.no_grad():
        terms = module.loss_terms(images, labels)
    assert terms["reward"] > 0.6                                   # chance: 0.25
    assert terms["baseline"] > 0.5                                 # the baseline follows the reward up
    assert not torch.equal(module.model.location_net.weight, location_before)

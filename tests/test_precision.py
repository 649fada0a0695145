"""Fast paths on CPU: bf16 autocast (what `--trainer.precision bf16-mixed` runs), channels_last and torch.compile
keep the outputs of the attention blocks, the CNNs and the ViT, and the checkpoint keys of the plain model.

Tolerances: bf16 keeps 8 mantissa bits (relative rounding 2^-9 ≈ 0.2%); the errors measured here are ≤ 0.5% of the
output scale for a block and ≤ 1% (relative L2) for whole networks, so the bounds leave 3-5× headroom."""
from __future__ import annotations

import csv
import math
from pathlib import Path

import pytest
import torch
import yaml
from helpers import tiny_config, write_config, write_image_folder

import cvattn
from cvattn.layers import create_attn
from cvattn.lightning import ImageClassifier


def _fp32_and_bf16(module: torch.nn.Module, *inputs: torch.Tensor, method: str = "__call__"):
    with torch.no_grad():
        full = getattr(module, method)(*inputs)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            mixed = getattr(module, method)(*inputs)
    return full, mixed


def _relative_error(full: torch.Tensor, mixed: torch.Tensor) -> float:
    return ((full - mixed.float()).norm() / full.norm()).item()


@pytest.mark.parametrize("name", ["se", "eca", "cbam", "channel", "spatial", "se_timm", "cbam_timm"])
def test_attention_blocks_agree_under_bf16(name):
    torch.manual_seed(0)
    full, mixed = _fp32_and_bf16(create_attn(name, 32).eval(), torch.randn(4, 32, 8, 8))
    assert (full - mixed.float()).abs().max() <= 2e-2 * full.abs().max()


@pytest.mark.parametrize("name", ["resnet20", "se_resnet20", "eca_resnet20", "cbam_resnet20", "spatial_resnet20"])
def test_resnets_agree_under_bf16(name):
    torch.manual_seed(0)
    model = cvattn.create_model(name, num_classes=10, in_chans=3).eval()
    full, mixed = _fp32_and_bf16(model, torch.randn(2, 3, 16, 16))
    assert mixed.dtype == torch.bfloat16                   # autocast did run the convolutions in bf16
    assert _relative_error(full, mixed) < 3e-2


def test_vit_logits_and_attention_agree_under_bf16():
    torch.manual_seed(0)
    model = cvattn.create_model("vit_tiny_patch4_28", num_classes=10, depth=4).eval()
    (logits, attn), (logits16, attn16) = _fp32_and_bf16(model, torch.randn(1, 1, 28, 28), method="forward_attention")
    assert logits16.dtype == torch.bfloat16 and _relative_error(logits, logits16) < 3e-2
    assert (attn - attn16.float()).abs().max() < 1e-2       # attention weights are probabilities in [0, 1]


@pytest.mark.parametrize("name", ["cbam_resnet20", "convnet2"])
def test_channels_last_gives_the_same_outputs(name):
    torch.manual_seed(0)
    model = cvattn.create_model(name, num_classes=10, in_chans=3).eval()
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        expected = model(x)
        model = model.to(memory_format=torch.channels_last)
        got = model(x.contiguous(memory_format=torch.channels_last))
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


def test_classifier_channels_last_switch():
    torch.manual_seed(0)
    kwargs = {"model_kwargs": {"attn_layer": "cbam", "width": 8}, "num_classes": 10, "in_chans": 3}
    plain = ImageClassifier("convnet2", **kwargs).eval()
    fast = ImageClassifier("convnet2", **kwargs, channels_last=True).eval()
    fast.load_state_dict(plain.state_dict())
    conv = next(m for m in fast.model.modules() if isinstance(m, torch.nn.Conv2d))
    assert conv.weight.is_contiguous(memory_format=torch.channels_last)
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(fast(x), plain(x), rtol=1e-5, atol=1e-5)


@pytest.mark.slow
def test_compiled_classifier_keeps_outputs_and_plain_checkpoint_keys():
    """torch.compile with the inductor backend (C++ on CPU): ~40 s the first time on 2 cores, cached after."""
    torch.manual_seed(0)
    plain = ImageClassifier("convnet2", {"width": 8}, num_classes=3, in_chans=3).eval()
    compiled = ImageClassifier("convnet2", {"width": 8}, num_classes=3, in_chans=3, compile=True).eval()
    assert list(compiled.state_dict()) == list(plain.state_dict())      # no `_orig_mod.`, no duplicate copy
    compiled.load_state_dict(plain.state_dict())
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(compiled(x), plain(x), rtol=1e-5, atol=1e-5)


def test_bf16_mixed_and_channels_last_are_config_switches(tmp_path, monkeypatch):
    from cvattn.cli import main
    monkeypatch.chdir(tmp_path)
    config = write_config(tmp_path / "tiny.yaml", tiny_config(write_image_folder(tmp_path / "images", per_class=6)))
    main(["--config", str(config), "--trainer.precision", "bf16-mixed", "--model.init_args.channels_last", "true"])
    run = Path("runs/tiny/version_0")
    assert yaml.safe_load((run / "config.yaml").read_text())["trainer"]["precision"] == "bf16-mixed"
    saved = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)
    assert saved["hyper_parameters"]["channels_last"] is True
    assert all(value.dtype == torch.float32 for value in saved["state_dict"].values() if value.is_floating_point())
    with (run / "metrics.csv").open(newline="") as file:
        test_loss = [row["test/loss"] for row in csv.DictReader(file) if row["test/loss"]]
    assert len(test_loss) == 1 and math.isfinite(float(test_loss[0]))

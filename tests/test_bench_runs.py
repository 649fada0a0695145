"""The results scripts find the run they were asked for, and only that one: a smoke or longer saliency run never
becomes the benchmark's model, and each seed of the spatial-transformer comparison reads its own run."""
import argparse
import sys
from pathlib import Path

import pytest
import torch
import yaml

BENCH = Path(__file__).resolve().parents[1] / "bench"
sys.path.insert(0, str(BENCH))
import saliency_results  # noqa: E402
import st_results  # noqa: E402
import vit_variants  # noqa: E402


def fake_run(folder: Path, version: int, config: dict, test_acc: float | None = None) -> Path:
    run = folder / f"version_{version}"
    (run / "checkpoints").mkdir(parents=True)
    (run / "checkpoints" / "epoch=0-val_acc=0.5.ckpt").write_bytes(b"")
    (run / "config.yaml").write_text(yaml.safe_dump(config))
    (run / "metrics.csv").write_text("step,test/acc\n" + (f"10,{test_acc}\n" if test_acc is not None else ""))
    return run


def test_saliency_runs_with_their_own_steps_do_not_replace_the_benchmarks(tmp_path, monkeypatch):
    monkeypatch.setattr(saliency_results, "ROOT", tmp_path)
    command = saliency_results.train_command("convnet4", 3, 7500)
    assert command[command.index("--trainer.max_steps") + 1] == "7500"
    name = command[command.index("--trainer.logger.init_args.name") + 1]
    assert name != saliency_results.run_name("convnet4", 3)
    assert "--trainer.max_steps" not in saliency_results.train_command("convnet4", 3)

    fake_run(tmp_path / "runs" / name, 0, {})          # only the longer run exists
    assert saliency_results.best_checkpoint("convnet4", 3) is None
    assert saliency_results.best_checkpoint("convnet4", 3, 7500).parents[2].name == name
    with pytest.raises(FileNotFoundError, match="name saliency100_convnet4_k3$"):
        saliency_results.load("convnet4", 3)

    benchmark = fake_run(tmp_path / "runs" / saliency_results.run_name("convnet4", 3), 0, {})
    assert saliency_results.best_checkpoint("convnet4", 3).parents[1] == benchmark
    # the ViT's and the RAM's own step settings give way to the requested ones
    for model, objects in (("vit", 3), ("ram", 1)):
        command = saliency_results.train_command(model, objects, 40)
        assert command[command.index("--trainer.max_steps") + 1] == "40" and command[-1].endswith("_40steps")


def test_saliency_on_mnist_digits_has_its_own_runs_and_refuses_what_it_has_no_config_for(tmp_path, monkeypatch):
    monkeypatch.setattr(saliency_results, "ROOT", tmp_path)
    command = saliency_results.train_command("cbam_convnet4", 3, dataset="mnist")
    assert command[command.index("--config") + 1] == "configs/saliency_mnist_100_multi.yaml"
    name = command[command.index("--trainer.logger.init_args.name") + 1]
    assert name == saliency_results.run_name("cbam_convnet4", 3, dataset="mnist") != saliency_results.run_name(
        "cbam_convnet4", 3)
    fake_run(tmp_path / "runs" / saliency_results.run_name("cbam_convnet4", 3), 0, {})   # the garment model only
    assert saliency_results.best_checkpoint("cbam_convnet4", 3, dataset="mnist") is None
    with pytest.raises(FileNotFoundError, match="cbam_convnet4 \\(objects=3, mnist\\).*saliency_mnist_100_multi"):
        saliency_results.load("cbam_convnet4", 3, dataset="mnist")
    for model, objects in (("convnet4", 1), ("ram", 1)):
        with pytest.raises(ValueError, match="multi-object models only.*--dataset fashion_mnist"):
            saliency_results.train_command(model, objects, dataset="mnist")
    with pytest.raises(ValueError, match="Unknown dataset 'cifar10'; accepted: fashion_mnist, mnist"):
        saliency_results.train_command("convnet4", 3, dataset="cifar10")
    # the command line refuses before training anything (nothing under runs/)
    monkeypatch.setattr(sys, "argv", ["saliency_results.py", "--out", str(tmp_path / "r.md"), "--dataset", "mnist",
                                      "--models", "convnet4", "--train-objects", "3", "1"])
    monkeypatch.setattr(saliency_results.subprocess, "run", lambda *a, **k: pytest.fail("trained"))
    with pytest.raises(SystemExit):
        saliency_results.main()
    assert not (tmp_path / "r.md").exists()


def test_saliency_scores_a_randomised_model_per_seed_and_reports_their_spread(monkeypatch):
    """One seed's randomised model can sit far from another's (docs/results.md): each seed is scored, and the
    table gives the mean and the range, while model-free baselines get no randomised column."""
    monkeypatch.setattr(saliency_results, "load", lambda *args: (torch.nn.Linear(1, 1), False))
    monkeypatch.setattr(saliency_results, "test_data", lambda *args: None)
    monkeypatch.setattr(saliency_results, "accuracy", lambda *args: 0.5)
    seeds = []

    def fake_copy(model, seed):
        seeds.append(seed)
        return ("randomised", seed)

    def fake_evaluate(model, data, methods=None, **kwargs):
        value = {0: 0.1, 1: 0.3, 2: 0.2}[model[1]] if isinstance(model, tuple) else 0.9
        return {method: {"pointing_game": value, "energy_in_box": 0.5, "num_images": 64}
                for method in methods or ["gradcam", "random"]}

    monkeypatch.setattr(saliency_results, "randomised_copy", fake_copy)
    monkeypatch.setattr(saliency_results, "evaluate", fake_evaluate)
    args = argparse.Namespace(max_steps=None, eval_batches=1, auc_batches=0, pixels_per_step=500, seeds=[0, 1, 2],
                              accelerator="cpu", dataset="fashion_mnist", methods=None)
    rows = {row["method"]: row for row in saliency_results.score("convnet4", 1, args)}
    assert seeds == [0, 1, 2]
    assert rows["gradcam"]["randomised"] == [0.1, 0.3, 0.2] and rows["random"]["randomised"] is None
    table = "\n".join(saliency_results.table(list(rows.values())))
    assert "| gradcam | 90.0 | 20.0 (10.0–30.0) |" in table and "| random | 90.0 | — |" in table


def test_saliency_scores_the_methods_asked_for_and_refuses_unknown_or_unfit_ones_before_training(tmp_path,
                                                                                               monkeypatch):
    """``--methods`` replaces the model's default methods (on the trained model and on every randomised copy); a
    name that does not exist, or a method the trained network could not give, stops the run before training."""
    monkeypatch.setattr(saliency_results, "load", lambda *args: (torch.nn.Linear(1, 1), False))
    monkeypatch.setattr(saliency_results, "test_data", lambda *args: None)
    monkeypatch.setattr(saliency_results, "accuracy", lambda *args: 0.5)
    monkeypatch.setattr(saliency_results, "randomised_copy", lambda model, seed: model)
    asked = []

    def fake_evaluate(model, data, methods=None, **kwargs):
        asked.append(methods)
        return {method: {"pointing_game": 0.5, "energy_in_box": 0.5, "num_images": 64}
                for method in (methods or ["gradcam"]) + ["random"]}

    monkeypatch.setattr(saliency_results, "evaluate", fake_evaluate)
    args = argparse.Namespace(max_steps=None, eval_batches=1, auc_batches=0, pixels_per_step=500, seeds=[0],
                              accelerator="cpu", dataset="fashion_mnist", methods=["scorecam", "occlusion"])
    rows = saliency_results.score("cbam_convnet4", 1, args)
    assert asked[0] == ["scorecam", "occlusion"] and {row["method"] for row in rows} == {"scorecam", "occlusion",
                                                                                           "random"}

    saliency_results.check_methods("cbam_convnet4", 3, ["scorecam", "spatial_gate", "occlusion"])
    saliency_results.check_methods("vit", 3, ["grad_rollout"])
    with pytest.raises(ValueError, match="'gradcamm'.*gradcam"):
        saliency_results.check_methods("convnet4", 3, ["gradcamm"])
    with pytest.raises(ValueError, match="grad_rollout, spatial_gate do not apply to se_convnet4; its methods: "
                                         "channel_gate, gradcam"):
        saliency_results.check_methods("se_convnet4", 3, ["gradcam", "grad_rollout", "spatial_gate"])
    monkeypatch.setattr(saliency_results.subprocess, "run", lambda *a, **k: pytest.fail("trained"))
    for methods in (["gradcamm"], ["spatial_gate"]):
        monkeypatch.setattr(sys, "argv", ["saliency_results.py", "--out", str(tmp_path / "r.md"),
                                          "--models", "convnet4", "--methods", *methods])
        with pytest.raises(SystemExit):
            saliency_results.main()
    assert not (tmp_path / "r.md").exists()


def test_st_results_reads_the_run_of_the_asked_seed(tmp_path, monkeypatch):
    monkeypatch.setattr(st_results, "ROOT", tmp_path)
    folder = tmp_path / "runs" / "st_cnn_mnist_60_cluttered"
    data = st_results.DATA["cluttered", "mnist"][0]

    def config(model: str, seed: int, **kwargs) -> dict:
        return {"seed_everything": seed, "data": {"class_path": data},
                "model": {"init_args": {"model": model, "model_kwargs": {"width": 16, **kwargs}}}}

    seed0 = fake_run(folder, 0, config("st_convnet2", 0, transform="affine"), test_acc=0.95)
    seed1 = fake_run(folder, 1, config("st_convnet2", 1, transform="affine"), test_acc=0.96)
    fake_run(folder, 2, config("st_convnet2", 2, transform="affine"))              # still training: no result yet
    fake_run(folder, 3, config("convnet2", 1), test_acc=0.94)                      # the control, beside it
    zoom = fake_run(folder, 4, config("st_convnet2", 1, transform="affine", out_size=30), test_acc=0.97)
    args = dict(width=16, steps=3000, val_every=500, limit_val_batches=20, precision="bf16-mixed",
                limit_test_batches=None, seed=2, transform="affine", out_size=None, loc_norm=False)
    affine = st_results.model_kwargs("st_convnet2", type("Args", (), args), "cluttered")
    assert st_results.finished_run("cluttered", "mnist", "st_convnet2", affine, 0) == seed0
    assert st_results.finished_run("cluttered", "mnist", "st_convnet2", affine, 1) == seed1
    assert st_results.finished_run("cluttered", "mnist", "st_convnet2", affine, 2) is None
    assert st_results.finished_run("cluttered", "mnist", "st_convnet2", {**affine, "width": 32}, 1) is None
    assert st_results.finished_run("cluttered", "mnist", "st_convnet2", {**affine, "out_size": 30}, 1) == zoom
    command = st_results.overrides("cluttered", "mnist", "convnet2", type("Args", (), args))
    assert command[command.index("--seed_everything") + 1] == "2"
    assert yaml.safe_load(command[command.index("--model.init_args.model_kwargs") + 1]) == {"width": 16}
    zoom_args = type("Args", (), {**args, "out_size": 30})               # the fc CNN is sized for what it sees
    assert st_results.model_kwargs("conv_fc_baseline", zoom_args, "rts") == {"img_size": 42}
    assert st_results.model_kwargs("st_conv_fc_baseline", zoom_args, "rts") == {"transform": "affine", "out_size": 30}
    assert st_results.model_kwargs("st_conv_fc_baseline", type("Args", (), args), "rts") == {
        "transform": "affine", "img_size": 42}


def test_vit_variants_refuses_a_batch_limit_beyond_one_epoch(monkeypatch, capsys):
    """Fashion-MNIST's 54 000 training images make 422 batches of 128: a larger limit would train 422 an epoch while
    the run's name and the table claimed more steps."""
    monkeypatch.setattr(vit_variants, "_train", lambda *a, **k: pytest.fail("trained"))
    monkeypatch.setattr(sys, "argv", ["vit_variants.py", "--rows", "learned", "--limit-train-batches", "800"])
    with pytest.raises(SystemExit):
        vit_variants.main()
    assert "between 1 and the 422 batches of one epoch" in capsys.readouterr().err

"""One epoch of ``ImageClassifier`` under a Lightning ``Trainer`` against a plain PyTorch loop doing the same work.

    python bench/bench_lightning_overhead.py [--model convnet2 --attn cbam --width 32 --batches 30 --batch-size 64
                                              --repeats 5 --threads 1]

Both sides train the same module (the quickstart's CBAM ConvNet by default) from the same initial weights on the
same in-memory batches (Fashion-MNIST shaped, 1×28×28, 10 classes) with the optimiser that
``ImageClassifier.configure_optimizers`` builds (SGD with Nesterov momentum, weight-decay groups), and do the same
per-step work: forward, cross-entropy, the accuracy metric's update, the finiteness check, backward, step.
Lightning adds its loop, hooks and ``self.log`` bookkeeping. The two run interleaved ``--repeats`` times and their
medians are compared, so machine noise hits both alike; the final weights of the first pair are compared to show
that the work is the same.

Prints the plain and Lightning epoch times and the overhead: of the epoch loop alone (``on_train_epoch_start`` to
``on_train_epoch_end``) and of the whole ``trainer.fit`` call (trainer setup and teardown included). Target: ≤ 5%.
"""
from __future__ import annotations

import argparse
import copy
import statistics
import time
import warnings

import lightning as L
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset

from cvattn.lightning import ImageClassifier


class EpochTimer(L.Callback):
    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.start = time.perf_counter()

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.seconds = time.perf_counter() - self.start


def plain_epoch(module: ImageClassifier, loader: DataLoader) -> float:
    """The training step of ``ImageClassifier`` without Lightning; returns seconds."""
    optimizer = module.configure_optimizers()
    accuracy = module.metrics["train_acc"]
    module.train()
    start = time.perf_counter()
    for images, labels in loader:
        optimizer.zero_grad()
        logits = module(images)
        loss = F.cross_entropy(logits, labels, label_smoothing=module.hparams.label_smoothing)
        accuracy(logits, labels)
        if not torch.isfinite(loss):
            raise FloatingPointError(f"non-finite loss {loss.item()}")
        loss.backward()
        optimizer.step()
    accuracy.compute()
    accuracy.reset()
    return time.perf_counter() - start


def lightning_epoch(module: ImageClassifier, loader: DataLoader) -> tuple[float, float]:
    """(epoch-loop seconds, whole fit() seconds) of one epoch under a bare Trainer."""
    timer = EpochTimer()
    trainer = L.Trainer(max_epochs=1, accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
                        limit_val_batches=0, callbacks=[timer])
    start = time.perf_counter()
    trainer.fit(module, train_dataloaders=loader)
    return timer.seconds, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="convnet2")
    parser.add_argument("--attn", default="cbam", help="attn_layer of the model ('none' for none)")
    parser.add_argument("--width", type=int, default=32, help="width of convnet2 (ignored by other models)")
    parser.add_argument("--batches", type=int, default=30)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore")           # Lightning's advice about workers and logging intervals

    torch.manual_seed(0)
    n = args.batches * args.batch_size
    data = TensorDataset(torch.randn(n, 1, 28, 28), torch.randint(0, 10, (n,)))
    loader = DataLoader(data, batch_size=args.batch_size)
    model_kwargs = {"attn_layer": None if args.attn == "none" else args.attn}
    if args.model == "convnet2":
        model_kwargs["width"] = args.width
    initial = ImageClassifier(args.model, model_kwargs, num_classes=10, in_chans=1, scheduler="none")
    print(f"{args.model} {model_kwargs}, {args.batches} batches of {args.batch_size}, torch {torch.__version__}, "
          f"lightning {L.__version__}, threads {torch.get_num_threads()}")

    plain_module, lightning_module = copy.deepcopy(initial), copy.deepcopy(initial)
    plain_epoch(plain_module, loader)                                   # warm-up pair, also the same-work check
    lightning_epoch(lightning_module, loader)
    same = all(torch.equal(a, b) for a, b in zip(plain_module.parameters(), lightning_module.parameters()))
    plain, loop, fit = [], [], []
    for _ in range(args.repeats):
        plain.append(plain_epoch(copy.deepcopy(initial), loader))
        epoch_seconds, fit_seconds = lightning_epoch(copy.deepcopy(initial), loader)
        loop.append(epoch_seconds)
        fit.append(fit_seconds)

    plain_s, loop_s, fit_s = map(statistics.median, (plain, loop, fit))
    print(f"same final weights after one epoch: {'yes' if same else 'NO'}")
    print(f"plain PyTorch epoch     {plain_s:8.3f} s   ({n / plain_s:7.0f} img/s)")
    print(f"Lightning epoch loop    {loop_s:8.3f} s   overhead {100 * (loop_s / plain_s - 1):+6.1f}%  (target ≤ 5%)")
    print(f"Lightning whole fit()   {fit_s:8.3f} s   overhead {100 * (fit_s / plain_s - 1):+6.1f}%")


if __name__ == "__main__":
    main()

"""Deterministic training of the small classifiers the workflow builds itself.

The embedded default trains two small CNNs (regular and X-variant) on a 2-core CPU, and the ROAR
family retrains on masked data, so training must be quick, reproducible and need no tuning per
dataset: AdamW under a one-cycle schedule (short warm-up, cosine decay) reaches good accuracy in a
few epochs for both the BatchNorm network and the bias-free X-network, whose lack of
normalisation makes it sensitive to a large initial step size (the warm-up absorbs that).

Reproducibility: weights are initialised by the caller (seed before constructing the network);
here the shuffling order comes from a dedicated generator seeded with `seed`, the global torch
seed is set for anything else random, and deterministic algorithms are requested for the
duration of the call. The same seed on the same machine and thread count gives the same weights.
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TextIO

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from attrflow.data.sample_store import SampleSet

WEIGHT_DECAY = 1e-4
# "sgd" is the recipe CIFAR ResNets are usually trained with (Yang et al., 2023 give only "lr 0.01"):
# momentum 0.9 (Nesterov) and the customary 5e-4 weight decay, under the same one-cycle schedule.
OPTIMISERS = ("adamw", "sgd")
SGD_MOMENTUM = 0.9
SGD_WEIGHT_DECAY = 5e-4
WARMUP_FRACTION = 0.15  # of all optimisation steps, for the one-cycle schedule


@contextmanager
def reproducible_torch(seed: int, threads: int | None) -> Iterator[None]:
    """Seed torch, request deterministic kernels and fix the thread count; restore afterwards."""
    previous_threads = torch.get_num_threads()
    previous_deterministic = torch.are_deterministic_algorithms_enabled()
    previous_warn_only = torch.is_deterministic_algorithms_warn_only_enabled()
    torch.manual_seed(seed)
    # warn_only: on CUDA a few kernels have no deterministic version; warn rather than fail.
    torch.use_deterministic_algorithms(True, warn_only=True)
    if threads:
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(previous_deterministic, warn_only=previous_warn_only)
        torch.set_num_threads(previous_threads)


def evaluate_accuracy(model: nn.Module, samples: SampleSet, batch_size: int = 256) -> float:
    """Top-1 accuracy of `model` (pixel-space input) on `samples`, in eval mode, without grad."""
    if len(samples) == 0:
        raise ValueError("cannot evaluate accuracy on an empty sample set")
    device = next((t.device for t in model.parameters()), torch.device("cpu"))
    was_training = model.training
    model.eval()
    correct = 0
    with torch.no_grad():
        for start in range(0, len(samples), batch_size):
            images = torch.from_numpy(samples.images[start : start + batch_size]).to(device)
            labels = torch.from_numpy(samples.labels[start : start + batch_size]).to(device)
            correct += int((model(images).argmax(dim=1) == labels).sum())
    model.train(was_training)
    return correct / len(samples)


def fit_one_cycle(
    net: nn.Module,
    images: torch.Tensor,
    targets: torch.Tensor,
    loss_of: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    *,
    epochs: int,
    batch_size: int,
    lr: float,
    seed: int,
    log: TextIO,
    device: torch.device,
    optimiser: str = "adamw",
    hits: Callable[[torch.Tensor, torch.Tensor], int] | None = None,
    loss_name: str = "loss",
) -> list[dict[str, Any]]:
    """The training loop every model the workflow trains shares: `optimiser` under a one-cycle
    schedule with peak `lr`, shuffled by a generator seeded with `seed`, `loss_of(net(x), y)` per
    batch. Call it inside `reproducible_torch`. ``hits(outputs, y)`` (the correct predictions of a
    batch) adds a running train accuracy to each epoch's entry. A non-finite loss raises
    `FloatingPointError` at once, and so do non-finite weights after the last step. Returns the
    per-epoch history; `net` is left in train mode, in the contiguous memory format."""
    if optimiser not in OPTIMISERS:
        raise ValueError(f"optimiser must be one of {OPTIMISERS}, got {optimiser!r}")
    n = len(images)
    steps_per_epoch = math.ceil(n / batch_size)
    started = time.perf_counter()
    history = []
    order_generator = torch.Generator().manual_seed(seed)
    # Channels-last lets oneDNN pick faster convolution kernels: ~1.3x on a 2-core CPU.
    net.to(device, memory_format=torch.channels_last).train()
    if optimiser == "sgd":
        stepper: torch.optim.Optimizer = torch.optim.SGD(
            net.parameters(), lr=lr, momentum=SGD_MOMENTUM, nesterov=True, weight_decay=SGD_WEIGHT_DECAY
        )
    else:
        stepper = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=WEIGHT_DECAY)
    schedule = torch.optim.lr_scheduler.OneCycleLR(
        stepper,
        max_lr=lr,
        total_steps=epochs * steps_per_epoch,
        pct_start=WARMUP_FRACTION,
        anneal_strategy="cos",
    )
    for epoch in range(1, epochs + 1):
        net.train()
        order = torch.randperm(n, generator=order_generator)
        loss_sum, correct = 0.0, 0
        for start in range(0, n, batch_size):
            batch = order[start : start + batch_size]
            x = images[batch].to(device).contiguous(memory_format=torch.channels_last)
            y = targets[batch].to(device)
            outputs = net(x)
            loss = loss_of(outputs, y)
            if not torch.isfinite(loss):
                raise FloatingPointError(
                    f"training diverged at epoch {epoch} (loss {float(loss.detach())}); lower lr={lr}"
                )
            stepper.zero_grad(set_to_none=True)
            loss.backward()
            stepper.step()
            schedule.step()
            loss_sum += float(loss.detach()) * len(batch)
            if hits is not None:
                correct += hits(outputs, y)
        entry: dict[str, Any] = {"epoch": epoch, "loss": loss_sum / n}
        message = f"epoch {epoch}/{epochs}: {loss_name} {entry['loss']:.4f}"
        if hits is not None:
            entry["train_accuracy"] = correct / n
            message += f", train accuracy {entry['train_accuracy']:.3f}"
        entry["seconds"] = time.perf_counter() - started
        history.append(entry)
        print(f"{message}, {entry['seconds']:.1f} s", file=log, flush=True)
    net.to(memory_format=torch.contiguous_format)
    broken = [name for name, p in net.named_parameters() if not bool(torch.isfinite(p).all())]
    if broken:
        raise FloatingPointError(
            f"training diverged: parameters {broken[:5]} are not finite after the last step; lower lr={lr}"
        )
    return history


def training_record(
    history: list[dict[str, Any]], *, optimiser: str, epochs: int, batch_size: int, lr: float, seed: int,
    threads: int | None, n_train: int, n_test: int, seconds: float,
) -> dict[str, Any]:
    """What a model card records of a `fit_one_cycle` run, beside the model's own test figures."""
    return {
        "final_loss": history[-1]["loss"],
        "epochs": epochs,
        "steps": epochs * math.ceil(n_train / batch_size),
        "batch_size": batch_size,
        "lr": lr,
        "optimiser": "SGD (Nesterov, momentum 0.9)" if optimiser == "sgd" else "AdamW",
        "weight_decay": SGD_WEIGHT_DECAY if optimiser == "sgd" else WEIGHT_DECAY,
        "schedule": f"one-cycle cosine, warm-up {WARMUP_FRACTION:.0%}",
        "seed": seed,
        "threads": torch.get_num_threads() if threads is None else threads,
        "n_train": n_train,
        "n_test": n_test,
        "seconds": seconds,
        "history": history,
    }


def train_classifier(
    net: nn.Module,
    train: SampleSet,
    test: SampleSet,
    *,
    epochs: int,
    batch_size: int = 64,
    lr: float = 2e-3,
    seed: int = 0,
    threads: int | None = None,
    log: TextIO | None = None,
    device: str | torch.device = "cpu",
    optimiser: str = "adamw",
) -> dict[str, Any]:
    """Train `net` in place on `train` with cross-entropy and report accuracies.

    `net` maps pixel-space images in [0, 1] to logits (a `WrappedModel`, so normalisation is part
    of what is trained through). `lr` is the peak learning rate of the one-cycle schedule, for
    either `optimiser` (``adamw``, or ``sgd`` with Nesterov momentum). A non-finite loss raises
    `FloatingPointError` at once, and so do non-finite weights after the last step. The
    returned metrics hold `test_accuracy` (eval mode, on `test`), `train_accuracy` (running
    accuracy over the last epoch, in train mode: free to compute), per-epoch `history`, the
    number of optimisation `steps` and the wall time in `seconds`. `net` is left in eval mode.
    """
    _check_training_inputs(train, epochs, batch_size, lr)
    log = log if log is not None else sys.stderr
    device = torch.device(device)
    images = torch.from_numpy(train.images)
    labels = torch.from_numpy(train.labels)
    outputs = _output_size(net, images[:1], device)
    if int(labels.max()) >= outputs:
        raise ValueError(
            f"train labels go up to {int(labels.max())} but the network has only {outputs} outputs"
        )
    started = time.perf_counter()
    with reproducible_torch(seed, threads):
        history = fit_one_cycle(
            net, images, labels, F.cross_entropy,
            epochs=epochs, batch_size=batch_size, lr=lr, seed=seed, log=log, device=device, optimiser=optimiser,
            hits=lambda logits, y: int((logits.argmax(dim=1) == y).sum()),
        )
        test_accuracy = evaluate_accuracy(net, test, batch_size=max(batch_size, 256))
    net.eval()
    seconds = time.perf_counter() - started
    print(f"test accuracy {test_accuracy:.4f} after {seconds:.1f} s", file=log, flush=True)
    return {
        "test_accuracy": test_accuracy,
        "train_accuracy": history[-1]["train_accuracy"],
        **training_record(
            history, optimiser=optimiser, epochs=epochs, batch_size=batch_size, lr=lr, seed=seed,
            threads=threads, n_train=len(train), n_test=len(test), seconds=seconds,
        ),
    }


def _check_training_inputs(train: SampleSet, epochs: int, batch_size: int, lr: float) -> None:
    if len(train) == 0:
        raise ValueError("cannot train on an empty sample set")
    if epochs < 1:
        raise ValueError(f"epochs must be at least 1, got {epochs}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    if not (lr > 0 and np.isfinite(lr)):
        raise ValueError(f"lr must be a positive number, got {lr}")


def _output_size(net: nn.Module, probe: torch.Tensor, device: torch.device) -> int:
    num_classes = getattr(net, "num_classes", None)
    if num_classes is not None:
        return int(num_classes)
    was_training = net.training
    net.eval()
    with torch.no_grad():
        size = int(net.to(device)(probe.to(device)).shape[1])
    net.train(was_training)
    return size

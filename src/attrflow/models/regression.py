"""Regression models the workflow trains itself: one output, a score (a total severity).

Khakzar et al. (2021) explain a DenseNet-121 that regresses BrixIA's total severity (0–18) with
a mean squared error (their Eq. 7). The embedded analogue trains the small CNN
(`attrflow.models.small_cnn`) with one output on the severity scenes of
`attrflow.data.regression`: a ``kind: trained`` model whose dataset is a regression task
(its store's ``task`` attr) becomes a regression model; nothing else in its entry changes.

Training follows `attrflow.models.training` (AdamW, one-cycle schedule, deterministic) with the
MSE of the score against the integer label in place of cross-entropy. The head's bias starts at
the train labels' mean, so the first steps learn the variation instead of the offset. The card
records the test split's MSE, MAE, R² and Pearson correlation in ``training`` and
``regression_quality``; its ``test_accuracy`` is the share of test images whose rounded score is
the label (the ``correct`` column of the scores, see `attrflow.jobs.score`).
"""

from __future__ import annotations

import math
import sys
import time
from pathlib import Path
from typing import Any, TextIO

import numpy as np
import torch
from torch import nn

from attrflow.data.sample_store import SampleSet
from attrflow.models.training import fit_one_cycle, reproducible_torch, training_record
from attrflow.models.wrapper import WrappedModel

TASK = "regression"


@torch.no_grad()
def predict_scores(model: nn.Module, samples: SampleSet, batch_size: int = 256) -> np.ndarray:
    """Output 0 of `model` on every sample, in eval mode: (n,) float64."""
    device = next((t.device for t in model.parameters()), torch.device("cpu"))
    was_training = model.training
    model.eval()
    parts = [
        model(torch.from_numpy(samples.images[i : i + batch_size]).to(device))[:, 0].double().cpu()
        for i in range(0, len(samples), batch_size)
    ]
    model.train(was_training)
    return torch.cat(parts).numpy() if parts else np.zeros(0)


def regression_quality(scores: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """MSE, MAE, R² (1 − SSE / SST) and Pearson r of scores against labels; rounded-hit share."""
    from scipy import stats

    labels = labels.astype(np.float64)
    error = scores - labels
    total = float(((labels - labels.mean()) ** 2).sum())
    pearson = float(stats.pearsonr(scores, labels).statistic) if len(labels) > 1 and np.ptp(labels) > 0 and np.ptp(scores) > 0 else float("nan")
    return {
        "mse": float((error**2).mean()),
        "mae": float(np.abs(error).mean()),
        "r2": 1.0 - float((error**2).sum()) / total if total > 0 else float("nan"),
        "pearson": pearson,
        "rounded_accuracy": float((np.round(scores) == labels).mean()),
    }


def train_regressor(
    net: nn.Module,
    train: SampleSet,
    test: SampleSet,
    *,
    epochs: int,
    batch_size: int = 64,
    lr: float = 3e-3,
    seed: int = 0,
    threads: int | None = None,
    log: TextIO | None = None,
    device: str | torch.device = "cpu",
) -> dict[str, Any]:
    """Train `net` (pixel-space input, one output) in place with MSE against the labels."""
    if len(train) == 0 or len(test) == 0:
        raise ValueError("a regression model needs non-empty train and test splits")
    if epochs < 1 or batch_size < 1 or not (lr > 0 and math.isfinite(lr)):
        raise ValueError(f"need epochs >= 1, batch_size >= 1 and lr > 0; got {epochs}, {batch_size}, {lr}")
    log = log if log is not None else sys.stderr
    device = torch.device(device)
    images = torch.from_numpy(train.images)
    targets = torch.from_numpy(train.labels.astype(np.float32))
    started = time.perf_counter()
    with reproducible_torch(seed, threads):
        history = fit_one_cycle(
            net, images, targets, lambda outputs, y: torch.nn.functional.mse_loss(outputs[:, 0], y),
            epochs=epochs, batch_size=batch_size, lr=lr, seed=seed, log=log, device=device, loss_name="train MSE",
        )
        quality = regression_quality(predict_scores(net, test), test.labels)
    net.eval()
    seconds = time.perf_counter() - started
    print(
        f"test MSE {quality['mse']:.4f}, MAE {quality['mae']:.4f}, R² {quality['r2']:.4f}, "
        f"Pearson {quality['pearson']:.4f} after {seconds:.1f} s",
        file=log, flush=True,
    )
    return {
        **{f"test_{k}": v for k, v in quality.items()},
        "loss": "mean squared error against the integer label",
        **training_record(
            history, optimiser="adamw", epochs=epochs, batch_size=batch_size, lr=lr, seed=seed,
            threads=threads, n_train=len(train), n_test=len(test), seconds=seconds,
        ),
    }


def prepare_trained_regressor(
    name: str,
    spec: dict[str, Any],
    dataset_store: Path,
    seed: int,
    threads: int | None,
    log: TextIO,
    device: str | torch.device,
) -> tuple[WrappedModel, dict[str, Any]]:
    """`kind: trained` on a regression dataset: the entry's architecture with one output."""
    from attrflow.data.sample_store import read_samples
    from attrflow.models.architectures import TRAINED_ARCHS, default_cam_layer, trainable_network
    from attrflow.models.cards import model_card
    from attrflow.models.preparation import TRAINED_DEFAULTS

    settings = {**TRAINED_DEFAULTS, **spec}
    if settings["arch"] not in TRAINED_ARCHS:
        raise ValueError(f"model {name!r}: unknown arch {settings['arch']!r}; known: {list(TRAINED_ARCHS)}")
    if settings["x_dnn"]:
        raise ValueError(f"model {name!r}: the regression task trains no X-variant (x_dnn must be false)")
    train = read_samples(dataset_store, "train")
    evaluation = read_samples(dataset_store, "eval")
    torch.manual_seed(seed)
    net = trainable_network(settings["arch"], 1, in_channels=train.images.shape[1], width=int(settings["width"]))
    head = getattr(net, "classifier", None)
    if isinstance(head, nn.Linear) and head.bias is not None:
        with torch.no_grad():
            head.bias.fill_(float(train.labels.mean()))
    # standardised with the train split's per-channel statistics, as the classifiers are
    mean = train.images.mean(axis=(0, 2, 3), dtype=np.float64)
    std = np.maximum(train.images.std(axis=(0, 2, 3), dtype=np.float64), 1e-6)
    cam_layer = spec.get("cam_layer") or default_cam_layer(net)
    model = WrappedModel(
        net, num_classes=1, mean=[round(float(v), 6) for v in mean], std=[round(float(v), 6) for v in std],
        cam_layer=cam_layer, name=name, task=TASK,
    )
    model.cam_module()  # a cam_layer that is not a module of the network fails here, naming it
    print(f"model {name}: training a regression {settings['arch']} on {len(train)} samples of {dataset_store}", file=log, flush=True)
    metrics = train_regressor(
        model, train, evaluation, epochs=int(settings["epochs"]), batch_size=int(settings["batch_size"]),
        lr=float(settings["lr"]), seed=seed, threads=threads, log=log, device=device,
    )
    architecture = {"library": "attrflow", "name": settings["arch"], "kwargs": net.architecture_kwargs(), "x_dnn": False}
    card = model_card(name, spec, model, architecture, metrics["test_rounded_accuracy"], dataset_store)
    card["task"] = TASK
    card["regression_quality"] = {k.removeprefix("test_"): metrics[k] for k in ("test_mse", "test_mae", "test_r2", "test_pearson")}
    card["training"] = metrics
    card["weights_source"] = f"trained here (seed {seed})"
    return model, card

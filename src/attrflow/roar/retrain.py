"""Retrain a fresh network on a (masked) dataset and measure its test accuracy.

Every retrain of one repeat starts from the same initial weights and sees the same batch order
(both come from the repeat's seed), whatever the method, fraction or arm: the accuracies of a
repeat then differ only through the data, which is what ROAR compares. The network is
standardised with the statistics of its own (masked) train split, as a practitioner retraining
on that data would do.

A diverged run (non-finite loss or weights) raises `RetrainDiverged` naming the run; no accuracy
is ever returned for it.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import Any, TextIO

import torch

from attrflow.data.sample_store import SampleSet
from attrflow.models.architectures import trainable_network
from attrflow.models.normalisation import normalisation_for_training
from attrflow.models.training import reproducible_torch, train_classifier
from attrflow.models.wrapper import WrappedModel


class RetrainDiverged(RuntimeError):
    """A ROAR retrain produced a non-finite loss or weights; the message names the run."""


@dataclass(frozen=True)
class Recipe:
    """How every ROAR network is trained: fixed per config, the same for every method."""

    arch: str
    width: int
    epochs: int
    lr: float
    batch_size: int
    optimiser: str
    seed: int

    @classmethod
    def from_params(cls, params: dict[str, Any]) -> Recipe:
        return cls(**{field: params[field] for field in cls.__dataclass_fields__})


def retrain(
    train: SampleSet,
    test: SampleSet,
    recipe: Recipe,
    *,
    num_classes: int,
    run_name: str,
    threads: int | None = None,
    device: str | torch.device = "cpu",
    log: TextIO | None = None,
) -> dict[str, Any]:
    """Train a fresh `recipe.arch` on `train`; return `train_classifier`'s metrics (test accuracy on `test`)."""
    log = log if log is not None else sys.stderr
    with reproducible_torch(recipe.seed, threads):
        net = trainable_network(
            recipe.arch, num_classes, in_channels=train.images.shape[1], width=recipe.width
        )
        mean, std = normalisation_for_training(train, x_dnn=False)
        model = WrappedModel(net, num_classes=num_classes, mean=mean, std=std, name=run_name)
        try:
            metrics = train_classifier(
                model,
                train,
                test,
                epochs=recipe.epochs,
                batch_size=recipe.batch_size,
                lr=recipe.lr,
                optimiser=recipe.optimiser,
                seed=recipe.seed,
                threads=threads,
                log=log,
                device=device,
            )
        except FloatingPointError as err:
            raise RetrainDiverged(
                f"ROAR retrain {run_name} diverged ({err}); no accuracy is recorded. "
                f"Lower roar.lr ({recipe.lr}) or change roar.optimiser ({recipe.optimiser})."
            ) from err
    return metrics

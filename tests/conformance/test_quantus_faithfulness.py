"""Faithfulness Correlation and Sensitivity-N against Quantus 0.6.

What Quantus computes, read from its source (metrics/faithfulness/faithfulness_correlation.py,
sensitivity_n.py, functions/perturb_func.py, helpers/utils.py):

* `FaithfulnessCorrelation` (defaults: ``nr_runs=100``, ``subset_size=224``, ``normalise=True``
  by the maximum |a|, ``abs=False``, ``perturb_baseline="black"``, logits) draws, per run and
  sample, ``subset_size`` indices of the flattened *C×H×W* input with ``np.random.choice``,
  replaces them by the image minimum ("black"), and correlates (Pearson) the attribution sums
  with the logit drops. On one-channel images an element is a pixel: there our registered
  `faithfulness_correlation` must agree with it exactly when both use the same subsets, so we
  hand Quantus our own draws. On colour images Quantus removes single colour values, we remove
  whole pixels: that difference is pinned below.
* `SensitivityN` is not Ancona et al.'s Sensitivity-n: it removes features *cumulatively* in
  descending attribution order, pairs the attribution of the *current step's* features with the
  *cumulative* output drop, and correlates across the images of the batch, one value per step.
  Ours is the per-image correlation over random index sets of size n. Matched settings do not
  exist; the test pins the difference on a case where Ancona's definition is exactly 1.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from torch import nn

from attrflow.metrics import MetricInputs, call_metric, get_metric
from attrflow.metrics.mufidelity import draw_index_subsets
from attrflow.models import WrappedModel

quantus = pytest.importorskip("quantus")

torch.set_num_threads(2)


def cnn(channels: int, seed: int = 0) -> WrappedModel:
    torch.manual_seed(seed)
    net = nn.Sequential(
        nn.Conv2d(channels, 4, 3, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(2),
        nn.Flatten(),
        nn.Linear(16, 3),
    )
    return WrappedModel(net, num_classes=3, mean=[0.4] * channels, std=[0.3] * channels).eval()


class LinearLogit(nn.Module):
    def __init__(self, weight: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("weight", weight)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        score = (z * self.weight).flatten(1).sum(dim=1)
        return torch.stack([score, -score], dim=1)


def data(n: int, channels: int, side: int, seed: int = 1):
    generator = torch.Generator().manual_seed(seed)
    images = torch.rand(n, channels, side, side, generator=generator)
    images[:, :, 0, 0] = 0.0  # Quantus "black" is the image minimum; make it 0 like ours
    maps = torch.randn(n, side, side, generator=generator)
    return images, maps, torch.arange(n) % 3


def run_quantus(metric, model, images, maps, targets, **call):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return metric(
            model=model,
            x_batch=images.numpy(),
            y_batch=targets.numpy(),
            a_batch=maps.unsqueeze(1).numpy(),
            channel_first=True,
            device="cpu",
            **call,
        )


def replay_choice(monkeypatch, draws: np.ndarray, domain: int) -> list[int]:
    """Make Quantus's np.random.choice return our draws: run-major, one call per sample."""
    n, runs, _ = draws.shape
    calls: list[int] = []

    def choice(population, size, replace=True, **kwargs):
        assert (population, replace) == (domain, False)
        k = len(calls)
        calls.append(k)
        return draws[k % n, k // n][:size]

    monkeypatch.setattr(np.random, "choice", choice)
    return calls


def test_faithfulness_correlation_matches_quantus_defaults(monkeypatch):
    side, seed = 16, 5  # 256 pixels > Quantus's default subset_size of 224
    model = cnn(1)
    images, maps, targets = data(3, 1, side, seed=2)
    ours = call_metric(
        get_metric("faithfulness_correlation"),
        MetricInputs(model=model, images=images, maps=maps, targets=targets, labels=targets, ids=[]),
        {},  # every default: 100 subsets of 224 pixels, black, logit, Pearson, signed
        generator=torch.Generator().manual_seed(seed),
    )
    draws = draw_index_subsets(3, 100, side * side, 224, torch.Generator().manual_seed(seed)).numpy()
    calls = replay_choice(monkeypatch, draws, side * side)
    theirs = run_quantus(
        quantus.FaithfulnessCorrelation(return_aggregate=False, disable_warnings=True),
        model,
        images,
        maps,
        targets,
    )
    monkeypatch.undo()
    assert len(calls) == 3 * 100
    assert ours.status == ["ok"] * 3
    np.testing.assert_allclose(ours.values, theirs, rtol=0, atol=1e-5)
    assert np.abs(ours.values).max() > 0.05  # a real, non-trivial correlation was compared


def test_faithfulness_correlation_colour_images_pinned_difference(monkeypatch):
    """Quantus draws colour *elements*; with the pixel-level draws replayed as elements of
    channel 0 only, its removal touches one colour plane where ours removes whole pixels."""
    side = 16
    model = cnn(3)
    images, maps, targets = data(2, 3, side, seed=3)
    domains: list[int] = []
    original = np.random.choice

    def recording(population, *args, **kwargs):
        domains.append(population)
        return original(population, *args, **kwargs)

    monkeypatch.setattr(np.random, "choice", recording)
    run_quantus(
        quantus.FaithfulnessCorrelation(nr_runs=3, return_aggregate=False, disable_warnings=True),
        model,
        images,
        maps,
        targets,
    )
    monkeypatch.undo()
    assert set(domains) == {3 * side * side}  # C·H·W elements, not H·W pixels

    draws = draw_index_subsets(2, 20, side * side, 50, torch.Generator().manual_seed(1)).numpy()
    replay_choice(monkeypatch, draws, 3 * side * side)
    theirs = run_quantus(
        quantus.FaithfulnessCorrelation(nr_runs=20, subset_size=50, return_aggregate=False, disable_warnings=True),
        model,
        images,
        maps,
        targets,
    )
    monkeypatch.undo()
    ours = call_metric(
        get_metric("faithfulness_correlation"),
        MetricInputs(model=model, images=images, maps=maps, targets=targets, labels=targets, ids=[]),
        {"subsets": 20, "subset_size": 50},
        generator=torch.Generator().manual_seed(1),
    )
    assert np.abs(np.asarray(theirs) - ours.values).max() > 1e-3


def test_sensitivity_n_differs_from_quantus_sensitivity_n():
    side = 6
    generator = torch.Generator().manual_seed(4)
    weight = torch.randn(side, side, generator=generator)
    model = WrappedModel(LinearLogit(weight), num_classes=2, mean=[0.0], std=[1.0]).eval()
    images = torch.rand(5, 1, side, side, generator=generator)
    images[:, :, 0, 0] = 0.0
    targets = torch.zeros(5, dtype=torch.long)
    exact = weight * images[:, 0]  # Σ_S A = output drop for every S: Sensitivity-n is 1 for all n
    ours = call_metric(
        get_metric("sensitivity_n"),
        MetricInputs(model=model, images=images, maps=exact, targets=targets, labels=targets, ids=[]),
        {"n": [1, 4, 16], "subsets": 30},
        generator=torch.Generator().manual_seed(0),
    )
    np.testing.assert_allclose(np.stack(ours.curves), 1.0, atol=1e-6)
    theirs = np.asarray(
        run_quantus(
            quantus.SensitivityN(
                features_in_step=1,
                n_max_percentage=0.5,
                normalise=False,
                return_aggregate=False,
                disable_warnings=True,
            ),
            model,
            images,
            exact,
            targets,
        )
    )
    # one value per removal step (the first 50 % of the 36 features), correlated across images
    assert theirs.shape == (18,)
    assert np.nanmax(np.abs(theirs - 1.0)) > 0.1

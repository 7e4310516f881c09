"""Deletion and MuFidelity against Quantus 0.6 on the same model, images and maps.

What Quantus computes, read from its source (metrics/faithfulness/pixel_flipping.py,
faithfulness_correlation.py, functions/perturb_func.py, helpers/utils.py):

* `PixelFlipping` broadcasts the map to the input's shape and ranks *elements* (channel × pixel)
  by ``argsort(-a)``; with a (n, H, W) map the C copies of a pixel tie and sit next to each
  other, so ``features_in_step = C · p`` removes p whole pixels per step, as our
  ``pixels_per_step = p``. Its curve has no 0 % point (the first entry is after the first
  step), its outputs are softmax probabilities (``softmax=True`` by default), and its
  ``perturb_baseline="black"`` is the *minimum of the current perturbed array*, not 0: the
  images here contain a 0 so that both mean 0. Its AUC is ``np.trapz(curve, dx=1)``; ours
  integrates over the removed fraction from 0 %, so areas differ by construction and we check
  the relation rather than equality.
* `FaithfulnessCorrelation` draws ``subset_size`` element indices per run and sample with
  ``np.random.choice`` (a fresh, unseeded draw), removes them, and takes the Pearson correlation
  of the attribution sums with the output drops; its default output is the *logit*.
  Per-pixel cells on single-channel images make its features our cells; we record its draws
  and feed the very same subsets to `subset_fidelity`.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from torch import nn

from attrflow.metrics import MetricInputs, call_metric, get_metric
from attrflow.metrics.mufidelity import grid_cells, subset_fidelity
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


def data(n: int, channels: int, side: int, seed: int = 1):
    generator = torch.Generator().manual_seed(seed)
    images = torch.rand(n, channels, side, side, generator=generator)
    images[:, :, 0, 0] = 0.0  # Quantus "black" = the image minimum
    maps = torch.randn(n, side, side, generator=generator)  # continuous: no ties between pixels
    targets = torch.arange(n) % 3
    return images, maps, targets


def inputs_for(model, images, maps, targets) -> MetricInputs:
    return MetricInputs(model=model, images=images, maps=maps, targets=targets, labels=targets, ids=[])


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


@pytest.mark.parametrize(("channels", "side", "pixels_per_step"), [(1, 8, 4), (3, 6, 2)])
def test_deletion_matches_pixel_flipping(channels, side, pixels_per_step):
    model = cnn(channels)
    images, maps, targets = data(4, channels, side)
    quantus_curves = np.array(
        run_quantus(
            quantus.PixelFlipping(
                features_in_step=channels * pixels_per_step,
                perturb_baseline="black",
                abs=False,
                normalise=False,
                return_auc_per_sample=False,
                disable_warnings=True,
                display_progressbar=False,
            ),
            model,
            images,
            maps,
            targets,
            softmax=True,
        )
    )
    ours = call_metric(
        get_metric("deletion"),
        inputs_for(model, images, maps, targets),
        {"pixels_per_step": pixels_per_step, "fill": "black", "output": "prob", "order": "signed"},
    )
    curves = np.stack(ours.curves)
    assert curves.shape == (4, side * side // pixels_per_step + 1)
    np.testing.assert_allclose(curves[:, 1:], quantus_curves, rtol=0, atol=1e-5)
    # our area starts at the clean image and runs over the removed fraction
    step = pixels_per_step / (side * side)
    np.testing.assert_allclose(ours.values, np.trapezoid(curves, dx=step, axis=1), atol=1e-12)


def test_mufidelity_matches_faithfulness_correlation_on_the_same_subsets(monkeypatch):
    side, runs, size = 8, 40, 13
    np.random.seed(3)  # Quantus draws its subsets from numpy's global generator
    model = cnn(1)
    images, maps, targets = data(3, 1, side, seed=2)
    drawn: list[np.ndarray] = []
    original_choice = np.random.choice

    def recording_choice(*args, **kwargs):
        indices = original_choice(*args, **kwargs)
        drawn.append(np.asarray(indices))
        return indices

    monkeypatch.setattr(np.random, "choice", recording_choice)
    theirs = run_quantus(
        quantus.FaithfulnessCorrelation(
            nr_runs=runs,
            subset_size=size,
            perturb_baseline="black",
            abs=False,
            normalise=False,
            return_aggregate=False,
            disable_warnings=True,
            display_progressbar=False,
        ),
        model,
        images,
        maps,
        targets,
        softmax=True,
    )
    monkeypatch.undo()
    assert len(drawn) == runs * 3  # run-major, one draw per sample
    subsets = torch.zeros(3, runs, side * side, dtype=torch.bool)
    for k, indices in enumerate(drawn):
        subsets[k % 3, k // 3, torch.from_numpy(indices)] = True
    ours = subset_fidelity(
        inputs_for(model, images, maps, targets),
        subsets,
        grid_cells(side, side, side),
        metric="mufidelity",
        fill="black",
        output="prob",
        absolute=False,
    )
    np.testing.assert_allclose(ours.values, theirs, rtol=0, atol=1e-5)
    assert np.abs(ours.values).max() > 0.05  # a real, non-trivial correlation was compared


class LinearLogit(nn.Module):
    def __init__(self, weight: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("weight", weight)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        score = (z * self.weight).flatten(1).sum(dim=1)
        return torch.stack([score, -score], dim=1)


def test_both_correlations_are_one_for_the_exact_linear_attribution():
    side = 8
    generator = torch.Generator().manual_seed(3)
    weight = torch.randn(side, side, generator=generator)
    model = WrappedModel(LinearLogit(weight), num_classes=2, mean=[0.0], std=[1.0]).eval()
    images, _, _ = data(2, 1, side, seed=4)
    targets = torch.zeros(2, dtype=torch.long)
    exact = weight * images[:, 0]
    theirs = run_quantus(
        quantus.FaithfulnessCorrelation(
            nr_runs=30,
            subset_size=12,
            abs=False,
            normalise=False,
            return_aggregate=False,
            disable_warnings=True,
            display_progressbar=False,
        ),
        model,
        images,
        exact,
        targets,
        softmax=False,
    )
    ours = call_metric(
        get_metric("mufidelity"),
        inputs_for(model, images, exact, targets),
        {"grid": side, "output": "logit", "absolute": False, "subsets": 30},
        generator=torch.Generator().manual_seed(0),
    )
    np.testing.assert_allclose(theirs, [1.0, 1.0], atol=1e-5)
    np.testing.assert_allclose(ours.values, [1.0, 1.0], atol=1e-6)

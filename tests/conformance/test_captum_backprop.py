"""Guided Backprop, Deconvolution, DeepLIFT, DeepSHAP and Occlusion against Captum 0.9.

Same model (the `WrappedModel`, normalisation inside, so both sides work in pixel space), same
inputs, float64. GBP and Deconvolution call Captum, so they must agree to rounding (1e-10
relative to the largest attribution). DeepLIFT/DeepSHAP use our own implementation of Captum's
rules (rescale; cross-maximum for max pooling): on networks where no two hooked modules touch,
Captum is right and we agree to 1e-8 relative. Where a ReLU feeds a MaxPool directly (our tiny
CNN, every ResNet stem), Captum's hooks drop the max-pool rule and its maps miss completeness;
the last DeepLIFT test pins that divergence, so that a Captum fix is noticed. Occlusion is ours,
batched; Captum's Occlusion with a (C, p, p) window gives every channel the same score, which
must equal our channel-free map to 1e-6 relative (Captum accumulates its map in float32 even
for float64 inputs).
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from torch import nn

captum_attr = pytest.importorskip("captum.attr")

from tiny_models import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    images,
    regular_cnn,
    targets,
    x_cnn,
)  # noqa: E402

from attrflow.methods.backprop import (
    deconvolution,
    deeplift,
    deepshap,
    guided_backprop,
)  # noqa: E402
from attrflow.methods.occlusion import occlusion  # noqa: E402
from attrflow.models import WrappedModel  # noqa: E402

torch.set_num_threads(1)
F64 = torch.float64


def leaf(x: torch.Tensor) -> torch.Tensor:
    return x.clone().requires_grad_(True)


def assert_close(ours: torch.Tensor, theirs: torch.Tensor, rtol: float) -> None:
    theirs = theirs.detach()
    assert ours.shape == theirs.shape
    scale = float(theirs.abs().max())
    assert torch.allclose(ours, theirs, rtol=rtol, atol=rtol * scale), float(
        (ours - theirs).abs().max() / scale
    )


def captum(explainer, model, *args, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return getattr(captum_attr, explainer)(model).attribute(*args, **kwargs)


def separated_cnn() -> WrappedModel:
    """conv-BN-ReLU-conv-MaxPool-conv-ReLU-GAP-linear: a linear layer between any two hooked
    modules, where Captum's DeepLift is exact."""
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(3, 6, 3, padding=1), nn.BatchNorm2d(6), nn.ReLU(), nn.Conv2d(6, 6, 3, padding=1),
        nn.MaxPool2d(2), nn.Conv2d(6, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
        nn.Flatten(), nn.Linear(8, 5),
    )  # fmt: skip
    with torch.no_grad():
        net[1].running_mean.uniform_(-0.3, 0.3)
        net[1].running_var.uniform_(0.5, 2.0)
    model = WrappedModel(net, num_classes=5, mean=IMAGENET_MEAN, std=IMAGENET_STD, name="separated")
    return model.to(F64).eval().requires_grad_(False)


@pytest.fixture(params=["regular", "x"])
def tiny(request):
    model = regular_cnn(dtype=F64) if request.param == "regular" else x_cnn(dtype=F64)
    return model, images(n=5, dtype=F64), targets(n=5)


def test_guided_backprop_and_deconvolution_match_captum(tiny):
    model, x, t = tiny
    assert_close(
        guided_backprop(model, x, t, max_batch=2).maps,
        captum("GuidedBackprop", model, leaf(x), target=t),
        1e-10,
    )
    assert_close(
        deconvolution(model, x, t, max_batch=3).maps,
        captum("Deconvolution", model, leaf(x), target=t),
        1e-10,
    )


@pytest.mark.parametrize("baseline", ["black", "white", "file"])
def test_deeplift_matches_captum_where_captum_is_exact(tmp_path, baseline):
    model, x, t = separated_cnn(), images(n=5, dtype=F64), targets(n=5)
    reference = images(n=1, seed=9, dtype=F64)[0]
    path = tmp_path / "reference.npy"
    np.save(path, reference.numpy())
    ours = deeplift(
        model,
        x,
        t,
        baseline=baseline,
        baseline_file=str(path) if baseline == "file" else None,
        max_batch=4,
    )
    references = ours.diagnostics["baselines"]
    theirs, delta = captum(
        "DeepLift", model, leaf(x), baselines=references, target=t, return_convergence_delta=True
    )
    assert float(delta.abs().max()) < 1e-10  # Captum is complete on this network
    assert_close(ours.maps, theirs, 1e-8)


def test_deepshap_matches_captum_deepliftshap():
    model, x, t = separated_cnn(), images(n=4, dtype=F64), targets(n=4)
    pool = images(n=3, seed=11, dtype=F64)  # background >= pool: every input uses all of it
    ours = deepshap(model, x, t, background=10, references=pool, max_batch=5)
    theirs = captum("DeepLiftShap", model, leaf(x), baselines=pool, target=t)
    assert_close(ours.maps, theirs, 1e-8)


def test_captum_deeplift_loses_completeness_on_relu_then_maxpool():
    """Why DeepLIFT is ours: on ReLU → MaxPool Captum 0.9 reads the ReLU's output gradient before
    the max-pool rule rewrites it. If this fails, Captum fixed it and DeepLIFT could delegate."""
    model, x, t = regular_cnn(dtype=F64), images(n=5, dtype=F64), targets(n=5)
    ours = deeplift(model, x, t)
    _, delta = captum(
        "DeepLift",
        model,
        leaf(x),
        baselines=torch.zeros_like(x),
        target=t,
        return_convergence_delta=True,
    )
    assert float(ours.diagnostics["completeness_residual"].max()) < 1e-10
    assert float(delta.abs().max()) > 1e-4


@pytest.mark.parametrize("patch,stride", [(3, 2), (4, 4), (5, 3), (1, 1), (10, 1)])
def test_occlusion_matches_captum(tiny, patch, stride):
    model, x, t = tiny
    ours = occlusion(model, x, t, patch_size=patch, stride=stride, max_batch=16)
    theirs = captum(
        "Occlusion", model, x, sliding_window_shapes=(3, patch, patch), strides=(3, stride, stride),
        target=t, baselines=0.0, perturbations_per_eval=16,
    )  # fmt: skip
    assert torch.equal(theirs[:, 0], theirs[:, 2])  # Captum's map is channel-free too
    assert_close(ours.maps, theirs[:, 0].to(F64), 1e-6)

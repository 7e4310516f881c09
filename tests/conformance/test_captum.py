"""Our gradient methods against Captum 0.9 on the same tiny model and inputs.

Captum's quadrature (captum/attr/_utils/approximation_methods.py) for n_steps = n:
* riemann_right: α = linspace(1/n, 1, n), weights 1/n             — identical to our ``right``;
* riemann_left:  α = linspace(0, 1 − 1/n, n), weights 1/n         — identical to our ``left``;
* gausslegendre: leggauss(n) mapped to [0, 1], weights halved      — identical to ours;
* riemann_trapezoid: α = linspace(0, 1, n) (n points, n − 1 intervals) but weights 1/n with
  the ends halved, so the weights sum to (n − 1)/n, not 1. Our ``trapezoid`` with B steps uses
  the same B + 1 points with weights 1/B (ends halved), hence
  ours(B) = (B + 1)/B · captum_trapezoid(n_steps = B + 1).
Captum computes its alphas in float32 (``torch.linspace(...).tolist()``), which perturbs the
maps by ~1e-8 relative; the tolerance here is 1e-5 relative to the largest attribution.
"""

from __future__ import annotations


import pytest
import torch

captum_attr = pytest.importorskip("captum.attr")

from tiny_models import images, regular_cnn, targets, x_cnn  # noqa: E402

from attrflow.methods.gradient import gradient, input_x_gradient  # noqa: E402
from attrflow.methods.integrated_gradients import integrated_gradients  # noqa: E402

torch.set_num_threads(2)
F64 = torch.float64
RTOL = 1e-5


def leaf(x: torch.Tensor) -> torch.Tensor:
    """A fresh input that requires grad: Captum would otherwise flip the flag on ours."""
    return x.clone().requires_grad_(True)


def assert_close(ours: torch.Tensor, theirs: torch.Tensor) -> None:
    theirs = theirs.detach()
    assert ours.shape == theirs.shape
    scale = float(theirs.abs().max())
    assert torch.allclose(ours, theirs, rtol=RTOL, atol=RTOL * scale), float(
        (ours - theirs).abs().max() / scale
    )


@pytest.fixture(params=["regular", "x"])
def setup(request):
    model = regular_cnn(dtype=F64) if request.param == "regular" else x_cnn(dtype=F64)
    return model, images(n=5, dtype=F64), targets(n=5)


def test_gradient_matches_captum_saliency(setup):
    model, x, target = setup
    theirs = captum_attr.Saliency(model).attribute(leaf(x), target=target, abs=False)
    assert_close(gradient(model, x, target, max_batch=3).maps, theirs)
    theirs_abs = captum_attr.Saliency(model).attribute(leaf(x), target=target, abs=True)
    assert_close(gradient(model, x, target, absolute=True).maps, theirs_abs)


def test_input_x_gradient_matches_captum(setup):
    model, x, target = setup
    theirs = captum_attr.InputXGradient(model).attribute(leaf(x), target=target)
    assert_close(input_x_gradient(model, x, target, max_batch=2).maps, theirs)


@pytest.mark.parametrize(
    "rule,captum_method",
    [("gausslegendre", "gausslegendre"), ("right", "riemann_right"), ("left", "riemann_left")],
)
@pytest.mark.parametrize("steps", [2, 9, 32])
def test_integrated_gradients_matches_captum(setup, rule, captum_method, steps):
    model, x, target = setup
    theirs, delta = captum_attr.IntegratedGradients(model).attribute(
        leaf(x),
        baselines=torch.zeros_like(x),
        target=target,
        n_steps=steps,
        method=captum_method,
        return_convergence_delta=True,
    )
    ours = integrated_gradients(
        model, x, target, baseline="black", steps=steps, rule=rule, max_batch=7
    )
    assert_close(ours.maps, theirs)
    # Captum's delta is the signed Σ attributions − (F(x) − F(x')); we store its magnitude
    assert torch.allclose(
        ours.diagnostics["completeness_residual"], delta.abs(), rtol=RTOL, atol=1e-9
    )


@pytest.mark.parametrize("steps", [1, 8, 31])
def test_our_trapezoid_is_captums_rescaled(setup, steps):
    model, x, target = setup
    points = steps + 1
    theirs, delta = captum_attr.IntegratedGradients(model).attribute(
        leaf(x),
        baselines=torch.zeros_like(x),
        target=target,
        n_steps=points,
        method="riemann_trapezoid",
        return_convergence_delta=True,
    )
    ours = integrated_gradients(
        model, x, target, baseline="black", steps=steps, rule="trapezoid", max_batch=7
    )
    assert_close(ours.maps, theirs * points / steps)
    output_delta = (
        theirs.flatten(1).sum(1) - delta
    ).detach()  # F(x) − F(x'), recovered from Captum
    assert torch.allclose(ours.diagnostics["output_delta"], output_delta, rtol=RTOL, atol=1e-9)
    expected_residual = (output_delta - ours.maps.flatten(1).sum(1)).abs()
    assert torch.allclose(
        ours.diagnostics["completeness_residual"], expected_residual, rtol=RTOL, atol=1e-9
    )


def test_integrated_gradients_white_baseline_matches_captum():
    model, x, target = regular_cnn(dtype=F64), images(n=3, dtype=F64), targets(n=3)
    theirs = captum_attr.IntegratedGradients(model).attribute(
        leaf(x), baselines=torch.ones_like(x), target=target, n_steps=16, method="gausslegendre"
    )
    assert_close(
        integrated_gradients(
            model, x, target, baseline="white", steps=16, rule="gausslegendre"
        ).maps,
        theirs,
    )

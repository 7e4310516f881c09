"""Our SmoothGrad wrapper against Captum 0.9's NoiseTunnel on identical noise.

How the noise is made identical. Captum's ``NoiseTunnel._add_noise_to_input`` repeats each
sample ``nt_samples`` times (``repeat_interleave``, sample-major) and adds
``torch.normal(0, stdev_expanded)`` with ``stdev_expanded`` a float32 tensor of that shape, drawn
from the global CPU RNG in one call (with ``nt_samples_batch_size`` left at None).
``torch.normal(0, std)`` fills with standard normals and scales them, so it draws the same
numbers as ``torch.randn`` of that shape. Our wrapper draws ``torch.randn`` of the same
sample-major shape from the injected generator and scales by σ·(max − min) per sample. So:

* the inputs are float32 (Captum's noise is float32 whatever the input dtype);
* every sample spans exactly [0, 1], so σ·range equals Captum's single absolute ``stdevs``;
* Captum runs after ``torch.manual_seed(s)``, ours with ``torch.Generator().manual_seed(s)``
  (a fresh CPU generator with the same seed yields the same stream as the default one).

Captum's ``Saliency`` takes |∇| by default; we pass ``abs=False`` to compare with ``gradient``.
Captum's VarGrad is E[M²] − E[M]² (one pass), ours the two-pass mean of squared deviations:
equal up to rounding, which the tolerance allows.
"""

from __future__ import annotations


import pytest
import torch

captum_attr = pytest.importorskip("captum.attr")

from tiny_models import images, regular_cnn, targets  # noqa: E402

from attrflow.methods.smoothgrad import smoothgrad  # noqa: E402

torch.set_num_threads(2)
VARIANTS = [("smoothgrad", "smoothgrad"), ("squared", "smoothgrad_sq"), ("vargrad", "vargrad")]
SEED, DRAWS, SIGMA = 7, 5, 0.2


def unit_range_images(n: int) -> torch.Tensor:
    x = images(n=n)
    x[:, 0, 0, 0], x[:, 0, 0, 1] = 0.0, 1.0
    return x


def assert_close(ours: torch.Tensor, theirs: torch.Tensor, rtol: float = 1e-5) -> None:
    theirs = theirs.detach()
    assert ours.shape == theirs.shape
    scale = float(theirs.abs().max())
    assert scale > 0
    assert torch.allclose(ours, theirs, rtol=rtol, atol=rtol * scale), float(
        (ours - theirs).abs().max() / scale
    )


def captum_noise_tunnel(explainer, model, x, target, nt_type, **kwargs) -> torch.Tensor:
    torch.manual_seed(SEED)
    return captum_attr.NoiseTunnel(explainer(model)).attribute(
        x.clone().requires_grad_(True),
        nt_type=nt_type,
        nt_samples=DRAWS,
        stdevs=SIGMA,
        target=target,
        **kwargs,
    )


@pytest.mark.parametrize("variant,nt_type", VARIANTS)
def test_smoothgrad_of_gradient_matches_noise_tunnel_saliency(variant, nt_type):
    model, x, target = regular_cnn(), unit_range_images(3), targets(n=3)
    theirs = captum_noise_tunnel(captum_attr.Saliency, model, x, target, nt_type, abs=False)
    ours = smoothgrad(
        model,
        x,
        target,
        n=DRAWS,
        sigma=SIGMA,
        variant=variant,
        generator=torch.Generator().manual_seed(SEED),
        max_batch=4,
    )
    assert_close(ours.maps, theirs)


@pytest.mark.parametrize("variant,nt_type", VARIANTS)
def test_smoothgrad_of_ig_matches_noise_tunnel_integrated_gradients(variant, nt_type):
    model, x, target = regular_cnn(), unit_range_images(2), targets(n=2)
    theirs = captum_noise_tunnel(
        captum_attr.IntegratedGradients,
        model,
        x,
        target,
        nt_type,
        baselines=0.0,
        n_steps=4,
        method="gausslegendre",
    )
    ours = smoothgrad(
        model,
        x,
        target,
        of="integrated_gradients",
        of_params={"steps": 4, "rule": "gausslegendre"},
        n=DRAWS,
        sigma=SIGMA,
        variant=variant,
        generator=torch.Generator().manual_seed(SEED),
        max_batch=7,
    )
    assert_close(ours.maps, theirs)


def test_a_different_seed_gives_different_noise():
    """Guards the conformance above against passing trivially (e.g. if no noise were added)."""
    model, x, target = regular_cnn(), unit_range_images(2), targets(n=2)
    theirs = captum_noise_tunnel(captum_attr.Saliency, model, x, target, "smoothgrad", abs=False)
    ours = smoothgrad(
        model, x, target, n=DRAWS, sigma=SIGMA, generator=torch.Generator().manual_seed(SEED + 1)
    )
    assert not torch.allclose(ours.maps, theirs.detach(), rtol=1e-3, atol=1e-6)

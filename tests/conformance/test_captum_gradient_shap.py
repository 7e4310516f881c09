"""Expected Gradients against Captum 0.9's GradientShap with no noise (stdevs = 0).

GradientShap with stdevs = 0 is EG: per input it draws ``n_samples`` baselines from the given
distribution and one α per (input, draw), and averages (x − x') ⊙ ∇F(x' + α(x − x')). Captum
draws with numpy's global RNG (captum/_utils/common.py `_expand_and_update_baselines`:
``np.random.choice(K, n_samples · n)``, inputs repeated sample-major; then
captum/attr/_core/gradient_shap.py `InputBaselineXGradient.attribute`:
``np.random.uniform(0, 1, n_samples · n)``); the zero-σ noise is drawn from torch and is exactly 0.
We replay those numpy draws from the same seed and feed them to our engine, so both compute the
very same estimate and must agree to rounding.
"""

from __future__ import annotations


import numpy as np
import pytest
import torch

captum_attr = pytest.importorskip("captum.attr")

from tiny_models import images, regular_cnn, targets, x_cnn  # noqa: E402

from attrflow.methods.expected_gradients import integrate_from_references  # noqa: E402

torch.set_num_threads(2)
F64 = torch.float64


def captum_draws(seed: int, pool_size: int, n: int, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The (n, k) baseline rows and α Captum's GradientShap draws after ``np.random.seed(seed)``."""
    rng_state = np.random.get_state()
    np.random.seed(seed)
    rows = np.random.choice(pool_size, k * n)
    alphas = np.random.uniform(0.0, 1.0, k * n)
    np.random.set_state(rng_state)
    return torch.as_tensor(rows).reshape(n, k), torch.as_tensor(alphas, dtype=F64).reshape(n, k)


@pytest.mark.parametrize("model_kind", ["regular", "x"])
@pytest.mark.parametrize("k", [1, 5])
def test_expected_gradients_matches_captum_gradient_shap(model_kind, k):
    model = regular_cnn(dtype=F64) if model_kind == "regular" else x_cnn(dtype=F64)
    n, pool_size = 4, 6
    x, target = images(n, dtype=F64), targets(n)
    pool = images(pool_size, seed=7, dtype=F64)

    np.random.seed(123)
    theirs, delta = captum_attr.GradientShap(model).attribute(
        x.clone().requires_grad_(True),
        baselines=pool,
        n_samples=k,
        stdevs=0.0,
        target=target,
        return_convergence_delta=True,
    )
    rows, alphas = captum_draws(123, pool_size, n, k)
    ours = integrate_from_references(
        model, x, target, pool, rows, alphas, torch.full((n, k), 1.0 / k, dtype=F64), max_batch=3
    )
    theirs = theirs.detach()
    scale = float(theirs.abs().max())
    assert torch.allclose(ours.maps, theirs, rtol=1e-9, atol=1e-9 * scale), float(
        (ours.maps - theirs).abs().max() / scale
    )
    # Captum's delta is per (input, draw): Σ attr_draw − (F(x) − F(x'_draw)); its mean over
    # draws is Σ maps − our output_delta.
    captum_residual = delta.detach().reshape(n, k).mean(dim=1).abs()
    assert torch.allclose(ours.diagnostics["completeness_residual"], captum_residual, rtol=1e-7, atol=1e-10)

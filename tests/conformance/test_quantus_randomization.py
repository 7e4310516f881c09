"""`randomization_sanity` against Quantus 0.6 `MPRT` (model parameter randomisation test).

What Quantus computes, read from its source (metrics/randomisation/mprt.py,
helpers/model/pytorch_model.py `get_random_layer_generator`, functions/similarity_func.py):

* layers: every module of ``named_modules()`` that has a ``reset_parameters`` method, reversed
  for ``layer_order="top_down"``, randomised cumulatively on one deep copy;
* re-initialisation: ``torch.manual_seed(seed + 1)`` then ``module.reset_parameters()`` — the
  *global* RNG, re-seeded with the same seed before every layer;
* similarity: ``correlation_spearman`` (scipy, average ranks) of the flattened maps, after
  ``abs=True`` and ``normalise_by_max`` (the latter does not change ranks); one score per layer,
  ``return_last_correlation`` keeps the fully randomised one.

Matched settings: ``init="reset"``, ``absolute=True``, ``similarity="spearman"``, and layers
whose ``reset_parameters()`` is deterministic (an affine map of the weights, BatchNorm's reset
to γ = 1, β = 0 and fresh running statistics), so both libraries build the very same randomised
models whatever their random streams; then per-layer scores agree to 1e-10.

Differences pinned here and otherwise documented:

* our layer list is the modules that *own parameters*; Quantus' is the modules with
  ``reset_parameters`` — the same for Conv/Linear/BatchNorm stacks;
* our default ``init="normal"`` (N(0, 0.1²), S4-CP) and ``absolute=False`` differ from Quantus'
  defaults (PyTorch's reset, magnitudes) by design, and our random numbers come from the
  injected generator, not a re-seeded global RNG;
* Quantus' ``ssim`` similarity, applied by MPRT to *flattened* maps, is a 1-D SSIM with a
  uniform 7-wide window and a data range taken from the pair; ours is the 2-D SSIM of Wang et al.
  (Gaussian 11 × 11, σ 1.5) on maps scaled to [0, 1]. The values differ; the test shows it.
  (As shipped, MPRT cannot even use Quantus' ``ssim``: it returns a list and MPRT calls
  ``.tolist()`` on it; the test wraps it in ``np.asarray``.)
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from torch import nn

from attrflow.methods import call_method, get_method, reduce_channels
from attrflow.metrics import MetricInputs, call_metric, get_metric
from attrflow.models import WrappedModel

quantus = pytest.importorskip("quantus")

torch.set_num_threads(2)

SIDE, CHANNELS, CLASSES = 12, 2, 3


class ShiftingConv(nn.Conv2d):
    """reset_parameters() replaces the weights by a fixed affine map of themselves (no RNG)."""

    def reset_parameters(self) -> None:
        if not getattr(self, "built", False):
            super().reset_parameters()
            return
        with torch.no_grad():
            self.weight.copy_(0.5 - 0.8 * self.weight.flip(-1))
            self.bias.copy_(-self.bias)


class ShiftingLinear(nn.Linear):
    def reset_parameters(self) -> None:
        if not getattr(self, "built", False):
            super().reset_parameters()
            return
        with torch.no_grad():
            self.weight.copy_(0.3 - self.weight.roll(1, dims=1))
            self.bias.copy_(self.bias + 0.2)


def model() -> WrappedModel:
    torch.manual_seed(0)
    net = nn.Sequential(
        ShiftingConv(CHANNELS, 4, 3, padding=1),
        nn.BatchNorm2d(4),
        nn.Softplus(),
        ShiftingConv(4, 4, 3, padding=1),
        nn.Softplus(),
        nn.AdaptiveAvgPool2d(2),
        nn.Flatten(),
        ShiftingLinear(16, CLASSES),
    )
    with torch.no_grad():
        bn = net[1]
        bn.running_mean.uniform_(-0.2, 0.2)
        bn.running_var.uniform_(0.5, 1.5)
        bn.weight.uniform_(0.5, 1.5)
        bn.bias.uniform_(-0.3, 0.3)
    for module in net.modules():
        module.built = True
    return WrappedModel(
        net, num_classes=CLASSES, mean=[0.4] * CHANNELS, std=[0.3] * CHANNELS
    ).eval()


def data(n: int = 4):
    generator = torch.Generator().manual_seed(1)
    x = torch.rand(n, CHANNELS, SIDE, SIDE, generator=generator)
    return x, torch.arange(n) % CLASSES


GRADIENT = get_method("gradient")


def our_explain(default_model):
    def explain(x, target, model=None, **overrides):
        return reduce_channels(
            call_method(GRADIENT, model or default_model, x, target, overrides).maps
        )

    return explain


def quantus_explain(model, inputs, targets, **kwargs):
    x = torch.as_tensor(inputs, dtype=torch.float32)
    y = torch.as_tensor(targets, dtype=torch.long)
    return reduce_channels(call_method(GRADIENT, model, x, y, {}).maps).unsqueeze(1).numpy()


def ours(net, x, y, **params):
    explain = our_explain(net)
    inputs = MetricInputs(
        model=net,
        images=x,
        maps=explain(x, y),
        targets=y,
        labels=y,
        ids=[str(i) for i in range(len(y))],
        method="saliency",
        method_fn="gradient",
        explain=explain,
    )
    return call_metric(
        get_metric("randomization_sanity"),
        inputs,
        params,
        generator=torch.Generator().manual_seed(0),
    )


def theirs(net, x, y, **kwargs):
    metric = quantus.MPRT(layer_order="top_down", disable_warnings=True, **kwargs)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return metric(
            model=net,
            x_batch=x.numpy(),
            y_batch=y.numpy(),
            a_batch=None,
            explain_func=quantus_explain,
            device="cpu",
        )


def test_per_layer_spearman_matches_quantus_mprt():
    x, y = data()
    scores = theirs(model(), x, y, abs=True, normalise=True)
    layers = [name for name in scores if name != "original"]
    assert layers == ["net.7", "net.3", "net.1", "net.0"]  # the same layers, output side first
    np.testing.assert_allclose(scores["original"], 1.0, atol=1e-10)
    out = ours(model(), x, y, init="reset", absolute=True, similarity="spearman")
    assert out.status == ["ok"] * 4
    expected = np.array([scores[name] for name in layers]).T  # (samples, layers)
    np.testing.assert_allclose(np.stack(out.curves), expected, atol=1e-10)
    np.testing.assert_allclose(out.values, expected[:, -1], atol=1e-10)
    # the signed variant is a different number on the same randomised models
    signed = ours(model(), x, y, init="reset", absolute=False, similarity="spearman")
    assert not np.allclose(signed.values, out.values, atol=1e-3)


def batched_ssim(a, b, batched=False, **kwargs):
    """Quantus' ssim returns a list when batched, which MPRT cannot use (``.tolist()`` fails)."""
    return np.asarray(quantus.similarity_func.ssim(a, b, batched=batched, **kwargs))


def test_quantus_ssim_is_a_flattened_one_dimensional_ssim():
    x, y = data()
    with pytest.raises(AttributeError, match="tolist"):  # Quantus 0.6 as shipped
        theirs(model(), x, y, abs=True, similarity_func=quantus.similarity_func.ssim)
    scores = theirs(model(), x, y, abs=True, normalise=True, similarity_func=batched_ssim)
    theirs_last = np.array(scores["net.0"])
    ours_last = ours(model(), x, y, init="reset", absolute=True, similarity="ssim").values
    assert np.isfinite(theirs_last).all() and np.isfinite(ours_last).all()
    assert np.abs(theirs_last - ours_last).max() > 1e-3  # genuinely different definitions

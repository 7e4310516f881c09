"""LRP against zennit called directly on the bare network.

Ours runs on the `WrappedModel` (pixel input, normalisation inside) and reads relevance off the
pixel gradient; zennit runs on the wrapped `nn.Module` with the normalised input, the same
composite and the output relevance e_target · logit. The two must agree to rounding (float64,
1e-8 relative to the largest relevance), on a CNN with biases and BatchNorm (merged by the
canonizer) and on a bias-free one.
"""

from __future__ import annotations

import pytest
import torch

zennit = pytest.importorskip("zennit")

from tiny_models import CLASSES, images, regular_cnn, targets, x_cnn  # noqa: E402
from zennit import composites as zc  # noqa: E402
from zennit import rules as zr  # noqa: E402
from zennit.attribution import Gradient  # noqa: E402
from zennit.canonizers import SequentialMergeBatchNorm  # noqa: E402
from zennit.types import Linear  # noqa: E402

from attrflow.methods.lrp import lrp  # noqa: E402

F64 = torch.float64


def zennit_composite(name: str, low: torch.Tensor, high: torch.Tensor):
    canon = [SequentialMergeBatchNorm()]
    if name == "epsilon":
        return zc.LayerMapComposite(
            zc.layer_map_base(0.25) + [(Linear, zr.Epsilon(epsilon=0.25))], canonizers=canon
        )
    if name == "alpha2_beta1":
        return zc.LayerMapComposite(
            zc.layer_map_base() + [(Linear, zr.AlphaBeta(alpha=2, beta=1))], canonizers=canon
        )
    if name == "alpha1_beta0":
        return zc.LayerMapComposite(
            zc.layer_map_base() + [(Linear, zr.AlphaBeta(alpha=1, beta=0))], canonizers=canon
        )
    if name == "epsilon_gamma_box":
        return zc.EpsilonGammaBox(low=low, high=high, epsilon=0.25, canonizers=canon)
    cls = {
        "epsilon_plus": zc.EpsilonPlus,
        "epsilon_plus_flat": zc.EpsilonPlusFlat,
        "epsilon_alpha2_beta1": zc.EpsilonAlpha2Beta1,
        "epsilon_alpha2_beta1_flat": zc.EpsilonAlpha2Beta1Flat,
    }[name]
    return cls(epsilon=0.25, canonizers=canon)


@pytest.mark.parametrize("network", [regular_cnn, x_cnn])
@pytest.mark.parametrize(
    "name",
    [
        "epsilon",
        "alpha2_beta1",
        "alpha1_beta0",
        "epsilon_plus",
        "epsilon_plus_flat",
        "epsilon_alpha2_beta1",
        "epsilon_alpha2_beta1_flat",
        "epsilon_gamma_box",
    ],
)
def test_lrp_matches_zennit_on_the_bare_network(network, name):
    model = network(dtype=F64)
    x, t = images(dtype=F64), targets()
    rule_has_epsilon = name not in ("alpha2_beta1", "alpha1_beta0")
    ours = lrp(model, x, t, composite=name, **({"epsilon": 0.25} if rule_has_epsilon else {})).maps
    z = (x - model.mean) / model.std
    low, high = (0 - model.mean) / model.std, (1 - model.mean) / model.std
    onehot = torch.eye(CLASSES, dtype=F64)[t]
    with Gradient(model.net, zennit_composite(name, low, high)) as attributor:
        _, theirs = attributor(z, lambda out: onehot * out)
    scale = float(theirs.abs().max())
    assert scale > 0
    assert torch.allclose(ours, theirs, rtol=1e-8, atol=1e-8 * scale)

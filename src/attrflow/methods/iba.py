"""Information Bottleneck Attribution, per-sample bottleneck (Schulz et al., ICLR 2020).

As used by Zhang et al., 2021 (Sec. 3.1–3.2) and Khakzar et al., MICCAI 2021 (Sec. 2), after the
authors' code (read, not copied). At the layer's output R the network sees

    Z = λ R + (1 − λ) ε,   ε ~ N(μ_R, max(σ_R, min_std)²),   λ = smooth_σ(sigmoid(α)),

with μ_R, σ_R estimated per element (channel × position) over the train split by the cached
``feature_stats`` reference set (`attrflow.methods.references.build_feature_statistics`). α is
optimised per image with Adam on CE(target) + β · mean KL[P(Z|R) ‖ N(μ_R, σ_R²)], ``copies``
noisy copies of the image per step. The attribution is the capacity of the optimised bottleneck,
Σ over channels of the KL, in bits, scaled to bits per input pixel and bilinearly upsampled to
the input (channel-free, ≥ 0).

Defaults and their source:

* ``beta=10`` — Zhang et al., 2021 (β_feat = 10), the IBA code's default; its paper code also runs 1, 100;
* ``steps=10``, ``lr=1.0`` (Adam), ``initial_alpha=5.0`` (λ ≈ 0.993 at the start),
  ``copies=10`` (the code's ``batch_size``: the image repeated with fresh noise), ``sigma=1.0``
  (Gaussian smoothing of λ, kernel 5), ``min_std=0.01``, ``active_threshold=0.01`` — the IBA
  code's defaults;
* ``layer="stage2"`` — Schulz et al. place the bottleneck on VGG-16 conv4_1 and ResNet-50
  ``layer2``, both at 1/8 of the input resolution; stage2 is ResNet's ``layer2``. The
  layerwise entries ``iba_layer1``–``iba_layer4`` (stage1–stage4) give the layer study of Khakzar, 2023.

Choices the papers leave open: the map is the capacity at the optimised λ* (the IBA code reads
the capacity of the last forward pass, one Adam step earlier); inactive elements (nonzero in at
most ``active_threshold`` of the train images) carry no information and are zeroed in Z, as in
the code; λ is capped just below 1 so the KL stays finite. Diagnostics: ``information_bits``
(n,), the layer's total capacity, and ``bottleneck_target_prob`` (n,), the target's probability
under the bottleneck in the last step (mean over copies).

Cost: 1 forward per image to record R, then ``steps`` × ``copies`` forward + backward passes.
"""

from __future__ import annotations

import math

import torch

from attrflow.methods._batching import check_max_batch, evaluation_mode, validate_batch
from attrflow.methods._bottleneck import (
    ActiveThreshold,
    AdamSteps,
    BottleneckLayer,
    BottleneckSettings,
    Copies,
    FeatureBottleneck,
    InformationBeta,
    InitialAlpha,
    LearningRate,
    MinStd,
    SmoothSigma,
    draw_seeds,
    fit_feature_bottleneck,
    information_map,
    layer_statistics,
)
from attrflow.methods.base import DEFAULT_MAX_BATCH, Attribution, MethodNotApplicable, register_method
from attrflow.models.wrapper import is_regression


@register_method("iba", channel_free=True, references="feature_stats")
def iba(
    model: torch.nn.Module,
    x: torch.Tensor,
    target: torch.Tensor,
    *,
    layer: BottleneckLayer = "stage2",
    beta: InformationBeta = 10.0,
    steps: AdamSteps = 10,
    lr: LearningRate = 1.0,
    copies: Copies = 10,
    initial_alpha: InitialAlpha = 5.0,
    sigma: SmoothSigma = 1.0,
    min_std: MinStd = 0.01,
    active_threshold: ActiveThreshold = 0.01,
    references=None,
    generator: torch.Generator | None = None,
    max_batch: int = DEFAULT_MAX_BATCH,
) -> Attribution:
    x, target = validate_batch(model, x, target)
    check_max_batch(max_batch)
    if is_regression(model):  # one output: its log-softmax is 0 whatever the bottleneck lets through
        raise MethodNotApplicable("iba's cross-entropy needs classes; use regression_iba on a regression model")
    settings = BottleneckSettings(beta, steps, lr, copies, initial_alpha, sigma)
    _, module, stats = layer_statistics(references, model, layer, "iba")
    stats = type(stats)(*(t.to(device=x.device, dtype=x.dtype) for t in stats))
    hook = FeatureBottleneck(getattr(model, "net", model), stats, min_std, active_threshold)
    with evaluation_mode(model):
        fit = fit_feature_bottleneck(
            model, x, target, module=module, hook=hook, settings=settings,
            seeds=draw_seeds(x.shape[0], generator), max_batch=max_batch,
        )
    capacity = fit.capacity.detach()
    maps = information_map(capacity, (x.shape[-2], x.shape[-1]))
    return Attribution(
        maps,
        {
            "information_bits": capacity.flatten(1).sum(dim=1) / math.log(2),
            "bottleneck_target_prob": fit.target_probs,
        },
    )

"""LIME (Ribeiro et al., 2016) and KernelSHAP (Lundberg & Lee, 2017) on super-pixels, through Captum.

Both explain the target LOGIT by fitting a linear surrogate g(z) = w₀ + Σ_s w_s z_s on binary
vectors z over the image's super-pixels (segments): z_s = 1 shows segment s of the image,
z_s = 0 shows the baseline there. The weights w_s are the attribution; every pixel of a
segment carries its segment's weight (Captum's ``return_input_shape``), so maps are
channel-free (n, H, W).

* **LIME**: n_samples coalitions with each segment kept with probability 1/2, weighted by an
  exponential kernel exp(−d²/(2·kernel_width²)) of the cosine distance d between the perturbed
  and the original image, fitted by Lasso (``alpha``, Captum's default 0.01). These are Captum's
  defaults for ``Lime``; the original LIME image explainer measures the distance between binary
  vectors instead, with kernel width 0.25 — a different, equally arbitrary choice.
* **KernelSHAP**: coalition sizes drawn from the Shapley kernel, fitted by least squares with
  (near-)infinite weight on the empty and the full coalition, so Σ w_s ≈ F(x) − F(baseline);
  on a model additive in the segments it recovers each segment's contribution exactly.

Segments: a ``n_segments`` × ``n_segments`` grid, or about ``n_segments`` SLIC super-pixels
(scikit-image). Baselines (pixel space): black, white, the image's mean colour or its blur.

**Determinism.** Captum draws its coalitions from torch's global random generator. Each call
seeds it from the injected generator inside `torch.random.fork_rng`, so the same seed gives the
same coalitions and the caller's global random state is left untouched.

Cost per image: n_samples + 1 forward passes (counted in benchmarks/shapley_cost.py), plus one
pass over the batch when it holds several images (Captum's output check), evaluated in chunks of
min(n_samples, max_batch) perturbed copies of one image, and one surrogate fit (scikit-learn, CPU).
"""

from __future__ import annotations

import warnings
from contextlib import contextmanager
from typing import Annotated

import torch

from attrflow.methods._baselines import make_baseline
from attrflow.methods._batching import check_max_batch, evaluation_mode, validate_batch
from attrflow.methods.superpixels import RemovedFill, Segmentation, segment_images
from attrflow.methods.base import DEFAULT_MAX_BATCH, Attribution, register_method
from attrflow.params import Doc, Ge, Gt

# The parameters LIME and KernelSHAP share, declared once (`attrflow.params`).
Coalitions = Annotated[int, Ge(2), Doc("coalitions (perturbed copies) evaluated per image")]
Segments = Annotated[
    Segmentation, Doc("super-pixels: an n_segments × n_segments grid, or about n_segments SLIC segments")
]
SegmentCount = Annotated[int, Ge(1), Doc("grid side (grid) or the requested number of SLIC segments (slic)")]
Compactness = Annotated[float, Gt(0), Doc("SLIC compactness (scikit-image's default 10); slic only")]
SegmentFill = Annotated[
    RemovedFill,
    Doc("what a removed segment shows (pixel space): black, white, the image's mean colour or its blur"),
]
BlurSigma = Annotated[float, Ge(0), Doc("Gaussian blur σ in pixels for baseline 'blur'")]


@contextmanager
def seeded_global_rng(generator: torch.Generator | None, device: torch.device):
    """Seed torch's global generators from ``generator`` for the duration, then restore them."""
    seed = 0
    if generator is not None:
        seed = int(torch.randint(0, 2**62, (1,), generator=generator, device=generator.device))
    devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        yield


def _prepare(model, x, target, method, n_samples, segmentation, n_segments, compactness, baseline, blur_sigma, max_batch):
    x, target = validate_batch(model, x, target)
    check_max_batch(max_batch)
    try:
        segments = segment_images(x, segmentation, n_segments, compactness)
    except ValueError as err:
        raise ValueError(f"{method}: {err}") from err
    reference = make_baseline(model, x, baseline, blur_sigma=blur_sigma, method=method)
    return x, target, segments, reference


def _run(explainer, model, x, target, segments, reference, n_samples, max_batch, generator) -> torch.Tensor:
    with evaluation_mode(model), torch.no_grad(), seeded_global_rng(generator, x.device), warnings.catch_warnings():
        # Captum fits one surrogate per image, which is what LIME means; its warning says only that.
        warnings.filterwarnings("ignore", message="You are providing multiple inputs for Lime")
        maps = explainer.attribute(
            x,
            baselines=reference,
            target=target,
            feature_mask=segments.unsqueeze(1),
            n_samples=n_samples,
            perturbations_per_eval=max(1, min(max_batch, n_samples)),
        )
    # Every channel of a pixel carries its segment's weight; Captum returns the surrogate's
    # float32 coefficients whatever the input's dtype.
    return maps[:, 0].detach().to(x.dtype)


@register_method("lime", channel_free=True)
def lime(
    model: torch.nn.Module,
    x: torch.Tensor,
    target: torch.Tensor,
    *,
    n_samples: Coalitions = 256,
    segmentation: Segments = "grid",
    n_segments: SegmentCount = 8,
    compactness: Compactness = 10.0,
    baseline: SegmentFill = "black",
    blur_sigma: BlurSigma = 10.0,
    kernel_width: Annotated[
        float, Gt(0), Doc("width of the exponential kernel on the cosine distance (Captum's default 1.0)")
    ] = 1.0,
    alpha: Annotated[float, Ge(0), Doc("Lasso regularisation of the surrogate (Captum's default 0.01)")] = 0.01,
    generator: torch.Generator | None = None,
    max_batch: int = DEFAULT_MAX_BATCH,
) -> Attribution:
    """(n, H, W) LIME weights of the super-pixels (module doc)."""
    from captum._utils.models.linear_model import SkLearnLasso
    from captum.attr import Lime
    from captum.attr._core.lime import get_exp_kernel_similarity_function

    x, target, segments, reference = _prepare(
        model, x, target, "lime", n_samples, segmentation, n_segments, compactness, baseline, blur_sigma, max_batch
    )
    explainer = Lime(
        model,
        interpretable_model=SkLearnLasso(alpha=float(alpha)),
        similarity_func=get_exp_kernel_similarity_function("cosine", float(kernel_width)),
    )
    maps = _run(explainer, model, x, target, segments, reference, n_samples, max_batch, generator)
    return Attribution(maps=maps, diagnostics={"baselines": reference})


@register_method("kernel_shap", channel_free=True)
def kernel_shap(
    model: torch.nn.Module,
    x: torch.Tensor,
    target: torch.Tensor,
    *,
    n_samples: Coalitions = 256,
    segmentation: Segments = "grid",
    n_segments: SegmentCount = 8,
    compactness: Compactness = 10.0,
    baseline: SegmentFill = "black",
    blur_sigma: BlurSigma = 10.0,
    generator: torch.Generator | None = None,
    max_batch: int = DEFAULT_MAX_BATCH,
) -> Attribution:
    """(n, H, W) KernelSHAP estimates of the super-pixels' Shapley values (module doc)."""
    from captum.attr import KernelShap

    x, target, segments, reference = _prepare(
        model, x, target, "kernel_shap", n_samples, segmentation, n_segments, compactness, baseline, blur_sigma, max_batch
    )
    maps = _run(KernelShap(model), model, x, target, segments, reference, n_samples, max_batch, generator)
    return Attribution(maps=maps, diagnostics={"baselines": reference})

"""SmoothGrad, its squared variant and VarGrad, as a wrapper over any registered method.

SmoothGrad (Smilkov et al. 2017) averages a method's maps over noisy copies
of the input: A(x) = 1/N Σ_j M(x + ε_j), ε_j ~ N(0, σ_abs²) per element, with
σ_abs = ``sigma``·(max(x) − min(x)) per sample (the paper's "noise level" σ/(x_max − x_min),
PAIR's ``stdev_spread``). ``variant`` picks what is returned over the N draws:

* ``smoothgrad``: the mean of the maps;
* ``squared``: the mean of the squared maps (SmoothGrad², PAIR's ``magnitude=True``);
* ``vargrad``: their variance, population form (1/N Σ (M_j − mean)²; Adebayo et al. 2018),
  computed in two passes so it is never negative.

Every sample's noisy copies are stacked, sample-major ((n·N, C, H, W): sample 0's N copies,
then sample 1's), the target repeated to match, and the inner method is called ONCE on the whole
stack with ``max_batch`` passed through: its own chunking (steps × copies × samples) bounds the
memory. The noise is drawn in one call of the injected generator in that order, so maps do not
depend on ``max_batch``. With ``sigma`` = 0 no noise is drawn at all (the inner method sees x
itself and the generator's state is untouched), so N = 1, σ = 0 reproduces the inner method
bit for bit. Noisy inputs are not clipped to [0, 1], as in the paper, PAIR and Captum.

This is Captum's ``NoiseTunnel`` (``smoothgrad``, ``smoothgrad_sq``, ``vargrad``) with a
per-sample relative σ instead of one absolute std: Captum draws
``torch.normal(0, stdev · ones((n·N, C, H, W)))`` from the global RNG in the same sample-major
order, so with a generator seeded like the global RNG and samples of equal range the noise is
identical (the conformance test checks this).

``of`` names the inner method's registered function and ``of_params`` its parameters; both are
checked when called, with errors naming the parameter. Inner methods that need a reference set
(``references=...``) are refused. The inner method's own diagnostics describe noisy copies,
not x, and are not kept; ``noise_stdev`` (n,) records σ_abs per sample.
"""

from __future__ import annotations

from types import MappingProxyType
from typing import Annotated, Any, Literal

import torch

from attrflow.methods._batching import validate_batch
from attrflow.methods.base import DEFAULT_MAX_BATCH, Attribution, call_method, register_method
from attrflow.params import Doc, Ge, check_params
from attrflow.registry import UnknownEntryError


def _inner_method(of: object, of_params: object) -> tuple[Any, dict[str, Any]]:
    from attrflow.methods import get_method

    try:
        info = get_method(of)
    except UnknownEntryError as err:
        raise ValueError(f"parameter of: {err}") from None
    if info.references is not None:
        raise ValueError(
            f"parameter of: {of!r} needs a {info.references!r} reference set, which smoothgrad "
            f"cannot pass through"
        )
    # the inner method's own declarations check of_params, naming smoothgrad.of_params.<key>
    check_params(info.params, of_params, "smoothgrad.of_params")
    return info, dict(of_params)


@register_method("smoothgrad", differentiable=True)
def smoothgrad(
    model: torch.nn.Module,
    x: torch.Tensor,
    target: torch.Tensor,
    *,
    of: Annotated[
        str,
        Doc("registered function of the method to smooth (checked when called)"),
    ] = "gradient",
    n: Annotated[int, Ge(1), Doc("noisy copies per sample (Smilkov et al.: about 50)")] = 50,
    sigma: Annotated[
        float,
        Ge(0),
        Doc(
            "noise std relative to each sample's value range max − min (Smilkov et al.: 10–20"
            " %)"
        ),
    ] = 0.15,
    variant: Annotated[
        Literal["smoothgrad", "squared", "vargrad"],
        Doc("mean of the maps, mean of their squares, or their variance"),
    ] = "smoothgrad",
    of_params: Annotated[dict[str, Any], Doc("parameters of the inner method")] = MappingProxyType({}),
    generator: torch.Generator | None = None,
    max_batch: int = DEFAULT_MAX_BATCH,
) -> Attribution:
    """``variant`` of method ``of``'s maps over ``n`` noisy copies of each sample (module doc).

    Noise comes from ``generator`` (the global RNG when None); the inner method receives the
    same generator after the noise is drawn, and ``max_batch``.
    """
    x, target = validate_batch(model, x, target)
    info, inner_params = _inner_method(of, of_params)

    samples = x.shape[0]
    value_range = x.flatten(1).amax(dim=1) - x.flatten(1).amin(dim=1)
    noise_stdev = sigma * value_range
    noisy = x.repeat_interleave(n, dim=0)
    if sigma > 0:
        device = generator.device if generator is not None else x.device
        noise = torch.randn(noisy.shape, generator=generator, device=device, dtype=x.dtype)
        noisy = noisy + noise.to(x.device) * noise_stdev.repeat_interleave(n).view(-1, 1, 1, 1)
    inner = call_method(
        info,
        model,
        noisy,
        target.repeat_interleave(n),
        inner_params,
        generator=generator,
        max_batch=max_batch,
    )
    draws = inner.maps.reshape(samples, n, *inner.maps.shape[1:])
    if variant == "smoothgrad":
        maps = draws.mean(dim=1)
    elif variant == "squared":
        maps = (draws * draws).mean(dim=1)
    else:
        maps = (draws - draws.mean(dim=1, keepdim=True)).square().mean(dim=1)
    return Attribution(maps=maps, diagnostics={"noise_stdev": noise_stdev})

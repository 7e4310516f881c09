"""Random attribution: the floor every method and metric is compared against (the LPI supplement (Yang et al., 2023), Hesse et al., 2021 Tab. 3, Khakzar, 2023).

The papers never state the distribution, so it is a parameter. The maps ignore the model and the
target; they depend only on the injected generator, so one seed always gives the same maps.
"""

from __future__ import annotations

from typing import Annotated, Literal

import torch

from attrflow.methods._batching import validate_batch
from attrflow.methods.base import Attribution, register_method
from attrflow.params import Doc


@register_method("random_attribution", channel_free=True)
def random_attribution(
    model: torch.nn.Module,
    x: torch.Tensor,
    target: torch.Tensor,
    *,
    distribution: Annotated[
        Literal["uniform", "normal"],
        Doc("i.i.d. U[0, 1) or N(0, 1) per pixel"),
    ] = "uniform",
    generator: torch.Generator | None = None,
) -> Attribution:
    """(n, H, W) i.i.d. maps drawn from ``generator`` (the global RNG when it is None)."""
    validate_batch(model, x, target)
    n, _, height, width = x.shape
    device = generator.device if generator is not None else x.device
    if distribution == "uniform":
        maps = torch.rand((n, height, width), generator=generator, device=device, dtype=x.dtype)
    elif distribution == "normal":
        maps = torch.randn((n, height, width), generator=generator, device=device, dtype=x.dtype)
    else:
        raise ValueError(
            f"parameter distribution must be 'uniform' or 'normal'; got {distribution!r}"
        )
    return Attribution(maps=maps.to(x.device))
